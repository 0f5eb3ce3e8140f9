//! The case lifecycle: what the ticket store says about a case (status changes, public replies,
//! ticket links), what the customer answers to the survey, what a channel says about reaching
//! them, and the SLA clocks, each applied as one change.
//!
//! Invariant: a change and everything it causes (customer messages, downstream events, the
//! timeline entry, the survey token) are written in one transaction over the case's `version`
//! ([`Store::apply_change`]). A change computed from a case that has moved on since is not written
//! and is computed again, so two events (or two instances) never both apply theirs, and an SLA
//! breach is announced exactly once. Nothing is sent from here: the outbox sends, per case and
//! destination in the order the jobs were made.

pub mod life;
pub mod status;
pub mod survey;

use std::sync::Arc;
use std::time::Duration;

use earshot_channel::{Outbound, OutboundKind, ReplyRoute, Survey};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Endpoint;
use crate::notify::Templates;
use crate::outbox::Destination;
use crate::schema::{Case, CaseEvent, CaseEventData, CaseId, CaseStatus, EventId, EventType, Feedback};
use crate::store::{CaseChange, ChangeOutcome, InboxKey, NewJob, Store, StoreError};
use life::{Life, SurveyState, Target};
use survey::Answer;

/// What the lifecycle runs with (from `[lifecycle]`, `[survey]`, `[sla]`, `[server]`, `[outbox]`).
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// The statuses the customer is told about.
    pub notify: Vec<CaseStatus>,
    /// How long a survey can be answered.
    pub survey_window: Duration,
    /// Where survey links point (`server.public_url`).
    pub public_url: String,
    pub channel_max_attempts: i64,
    /// How often the SLA clocks are checked.
    pub sla_scan_every: Duration,
}

/// An event from the ticket store (`POST /v1/cases/{case_id}/events`).
#[derive(Debug, Clone, PartialEq)]
pub enum TicketEvent {
    StatusChanged { status: CaseStatus, note: Option<String> },
    PublicReply { text: String, author: Option<String> },
    TicketLinked { ticket_id: String, ticket_url: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no case {0}")]
    NotFound(String),
    #[error("case is {from}; it cannot become {to}")]
    InvalidTransition { from: CaseStatus, to: CaseStatus },
    #[error("this survey is no longer open")]
    SurveyClosed,
    #[error("the case kept changing while this change was applied; retry")]
    Busy,
    #[error("stored case is not valid: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Written, with what it made the case.
    Changed { status: CaseStatus },
    /// Nothing to change (the case already is so).
    Unchanged { status: CaseStatus },
    /// The same event was applied before (its digest as then stored).
    Duplicate { digest: String },
}

pub struct Lifecycle {
    store: Arc<dyn Store>,
    templates: Arc<crate::live::Live<Templates>>,
    downstream: Arc<[Endpoint]>,
    settings: LifecycleSettings,
    wake: Arc<Notify>,
}

/// One change being computed over a case as read.
struct Draft<'a> {
    lc: &'a Lifecycle,
    case: Case,
    route: Option<ReplyRoute>,
    status: CaseStatus,
    life: Life,
    version: i64,
    ticket_id: Option<String>,
    log: Vec<(String, Option<String>, String)>,
    jobs: Vec<NewJob>,
    events: Vec<(EventType, Option<String>, CaseEventData)>,
    survey: Option<(String, i64)>,
    breached: Vec<Target>,
    changed: bool,
    now: i64,
}

fn json_str(v: serde_json::Value) -> String {
    v.to_string()
}

impl<'a> Draft<'a> {
    fn log(&mut self, kind: &str, actor: Option<&str>, data: serde_json::Value) {
        self.log.push((kind.to_owned(), actor.map(str::to_owned), json_str(data)));
        self.changed = true;
    }

    /// Moves the case to `to`, with the SLA clocks' consequences; false when it already is there.
    fn transition(&mut self, to: CaseStatus, actor: &str, note: Option<&str>) -> Result<bool, LifecycleError> {
        let from = self.status;
        if from == to {
            return Ok(false);
        }
        if !status::allowed(from, to) {
            return Err(LifecycleError::InvalidTransition { from, to });
        }
        self.force_status(to, actor, note);
        Ok(true)
    }

    fn force_status(&mut self, to: CaseStatus, actor: &str, note: Option<&str>) {
        let from = self.status;
        if from == CaseStatus::AwaitingCustomer {
            self.life.resume(self.now);
        }
        match to {
            CaseStatus::InProgress => self.life.meet(Target::FirstResponse, self.now),
            CaseStatus::AwaitingCustomer => self.life.pause(self.now),
            // A solution is an answer too.
            CaseStatus::Resolved => {
                self.life.meet(Target::FirstResponse, self.now);
                self.life.meet(Target::Resolution, self.now);
            }
            _ => {}
        }
        self.status = to;
        self.log("status_changed", Some(actor), json!({ "from": from, "to": to, "note": note }));
    }

    /// A message to the customer, through the case's channel; recorded instead when there is no
    /// way to send it.
    fn tell_customer(&mut self, kind: OutboundKind, ctx: serde_json::Value) -> Result<(), LifecycleError> {
        let route = match (&self.route, &self.life.unreachable) {
            (None, _) => Err("the case has no stored reply route (it was made before this version)".to_owned()),
            (_, Some(reason)) => Err(format!("the customer is unreachable on this channel: {reason}")),
            (Some(ReplyRoute::Web { source, callback_url: None }), _) => {
                Err(format!("web source {source} has no callback_url: the case has no way back to the customer"))
            }
            (Some(route), None) => Ok(route.clone()),
        };
        let route = match route {
            Ok(route) => route,
            Err(reason) => {
                self.log("not_sent", Some("gateway"), json!({ "kind": kind.name(), "reason": reason }));
                return Ok(());
            }
        };
        let lang = self.case.lang;
        let text = self
            .lc
            .templates
            .get()
            .message(self.case.channel, kind.name(), lang, &ctx)
            .map_err(|e| LifecycleError::Corrupt(e.to_string()))?;
        let id = EventId::generate();
        let outbound = Outbound {
            id: id.0.clone(),
            kind: kind.clone(),
            case_id: self.case.id.0.clone(),
            case_ref: self.case.case_ref.clone(),
            status: Some(self.status.as_str().to_owned()),
            lang,
            subject: self.case.subject.clone(),
            text,
            html: None,
            reply_route: route.clone(),
        };
        let payload = serde_json::to_string(&outbound).map_err(|e| LifecycleError::Corrupt(e.to_string()))?;
        self.jobs.push(NewJob {
            event_id: id.0,
            kind: kind.name(),
            destination: Destination::channel(route.channel(), route.sender()),
            payload,
            max_attempts: self.lc.settings.channel_max_attempts,
            lease_until: None,
        });
        self.changed = true;
        Ok(())
    }

    /// A downstream event to every endpoint but `except` (the sender of the change), rendered with
    /// the case as it is once the whole change is applied.
    /// Records that the customer can (or cannot) be reached on the case's channel, as `life` now
    /// says, and tells every endpoint: `case.updated` with `reachable` and the reason.
    fn tell_reachability(&mut self, reachable: bool, reason: &str) {
        let (kind, actor) = if reachable { ("reachable", "customer") } else { ("unreachable", "gateway") };
        self.log(kind, Some(actor), json!({ "channel": self.case.channel, "reason": reason }));
        // The case as loaded still shows the mark as it was.
        self.case.unreachable = self.life.unreachable.clone();
        let mut data = CaseEventData::of(self.case.clone());
        data.reachable = Some(reachable);
        data.reason = Some(reason.to_owned());
        self.tell_downstream(EventType::CaseUpdated, None, data);
    }

    fn tell_downstream(&mut self, kind: EventType, except: Option<&str>, data: CaseEventData) {
        self.events.push((kind, except.map(str::to_owned), data));
        self.changed = true;
    }

    fn context(&self) -> serde_json::Value {
        json!({
            "case_ref": self.case.case_ref.to_string(),
            "customer_name": self.case.customer.name,
            "subject": self.case.subject,
            "status": self.status.as_str(),
        })
    }

    fn status_message(&mut self, note: Option<&str>) -> Result<(), LifecycleError> {
        if !self.lc.settings.notify.contains(&self.status) {
            return Ok(());
        }
        let mut ctx = self.context();
        ctx["note"] = json!(note);
        self.tell_customer(OutboundKind::StatusUpdate { status: self.status.as_str().to_owned() }, ctx)
    }

    fn send_survey(&mut self) -> Result<(), LifecycleError> {
        let token = survey::new_token();
        let expires = self.now + self.lc.settings.survey_window.as_millis() as i64;
        let link = format!("{}/v1/feedback/{token}", self.lc.settings.public_url.trim_end_matches('/'));
        let question = survey::question(self.case.lang);
        let choices = survey::choices(self.case.lang, &link);
        let mut ctx = self.context();
        ctx["link"] = json!(link);
        ctx["choices"] = json!(choices);
        ctx["expires"] = json!(life::at(expires).date().to_string());
        self.life.survey = Some(SurveyState { token: token.clone(), sent_at: self.now, expires_at: expires });
        self.survey = Some((token.clone(), expires));
        self.log("survey_sent", Some("gateway"), json!({ "expires_at": expires }));
        let survey = Survey { question: question.into(), choices, link, expires_at: expires, token: token.clone() };
        self.tell_customer(OutboundKind::Survey(survey), ctx)
    }

    /// The case as consumers see it once this change is applied.
    fn snapshot(&self) -> Case {
        let mut case = self.case.clone();
        case.status = self.status;
        case.ticket_id = self.ticket_id.clone();
        self.life.apply_to(&mut case);
        case.updated_at = life::at(self.now);
        case
    }

    fn into_change(mut self, inbox: Option<InboxKey>) -> Result<CaseChange, LifecycleError> {
        let corrupt = |e: serde_json::Error| LifecycleError::Corrupt(e.to_string());
        let case = self.snapshot();
        let now = life::at(self.now);
        for (kind, except, mut data) in std::mem::take(&mut self.events) {
            data.case = case.clone();
            let payload = serde_json::to_string(&CaseEvent { kind, timestamp: now, data }).map_err(corrupt)?;
            for ep in self.lc.downstream.iter().filter(|ep| except.as_deref() != Some(ep.name.as_str())) {
                self.jobs.push(NewJob {
                    event_id: EventId::generate().0,
                    kind: kind.as_str(),
                    destination: Destination::downstream(&ep.name),
                    payload: payload.clone(),
                    max_attempts: i64::from(ep.max_attempts),
                    lease_until: None,
                });
            }
        }
        Ok(CaseChange {
            case_id: self.case.id.clone(),
            version: self.version,
            status: self.status.as_str().to_owned(),
            ticket_id: self.ticket_id.clone(),
            lifecycle: serde_json::to_string(&self.life).map_err(corrupt)?,
            sla_due: self.life.next_due(),
            breached: self.life.breached(),
            log: self.log,
            inbox,
            survey: self.survey,
            jobs: self.jobs,
            now_ms: self.now,
        })
    }
}

impl Lifecycle {
    pub fn new(
        store: Arc<dyn Store>,
        templates: Arc<crate::live::Live<Templates>>,
        downstream: Arc<[Endpoint]>,
        settings: LifecycleSettings,
        wake: Arc<Notify>,
    ) -> Lifecycle {
        Lifecycle { store, templates, downstream, settings, wake }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn templates(&self) -> Arc<Templates> {
        self.templates.get()
    }

    /// Reads the case, lets `f` compute a change, and writes it over the version read; a case that
    /// moved on meanwhile is read again.
    async fn change<F>(
        &self,
        case_id: &CaseId,
        inbox: Option<InboxKey>,
        mut f: F,
    ) -> Result<(Applied, Vec<Target>), LifecycleError>
    where
        F: FnMut(&mut Draft<'_>) -> Result<(), LifecycleError>,
    {
        for _ in 0..16 {
            // One read: the row (with the version a change is written over) and its messages.
            let (state, messages) =
                self.store.get_case(case_id).await?.ok_or_else(|| LifecycleError::NotFound(case_id.to_string()))?;
            let case = crate::cases::from_row(&state, messages)?;
            let status = CaseStatus::parse(&state.status)
                .ok_or_else(|| LifecycleError::Corrupt(format!("case {case_id} has status {:?}", state.status)))?;
            let life = match &state.lifecycle {
                Some(j) => serde_json::from_str(j).map_err(|e| LifecycleError::Corrupt(e.to_string()))?,
                None => Life::from_case(&case),
            };
            let route = state.reply_route.as_deref().and_then(|r| serde_json::from_str(r).ok());
            let mut d = Draft {
                lc: self,
                ticket_id: state.ticket_id.clone(),
                case,
                route,
                status,
                life,
                version: state.version,
                log: Vec::new(),
                jobs: Vec::new(),
                events: Vec::new(),
                survey: None,
                breached: Vec::new(),
                changed: false,
                now: crate::now_ms(),
            };
            f(&mut d)?;
            if !d.changed {
                return Ok((Applied::Unchanged { status: d.status }, Vec::new()));
            }
            let (status, breached, jobs) = (d.status, d.breached.clone(), !d.jobs.is_empty() || !d.events.is_empty());
            match self.store.apply_change(d.into_change(inbox.clone())?).await? {
                ChangeOutcome::Applied => {
                    if jobs {
                        self.wake.notify_one();
                    }
                    return Ok((Applied::Changed { status }, breached));
                }
                ChangeOutcome::Duplicate { digest } => return Ok((Applied::Duplicate { digest }, Vec::new())),
                ChangeOutcome::Stale => continue,
            }
        }
        Err(LifecycleError::Busy)
    }

    /// Applies an event from the ticket store, sent by `endpoint` with `webhook_id`.
    pub async fn ticket_event(
        &self,
        case_id: &CaseId,
        endpoint: &str,
        webhook_id: &str,
        digest: &str,
        event: &TicketEvent,
    ) -> Result<Applied, LifecycleError> {
        let actor = Destination::downstream(endpoint).to_string();
        let inbox =
            InboxKey { endpoint: endpoint.to_owned(), webhook_id: webhook_id.to_owned(), digest: digest.to_owned() };
        let (applied, _) = self
            .change(case_id, Some(inbox), |d| {
                match event {
                    TicketEvent::StatusChanged { status, note } => {
                        let from = d.status;
                        if !d.transition(*status, &actor, note.as_deref())? {
                            return Ok(());
                        }
                        let mut data = CaseEventData::of(d.case.clone());
                        data.previous_status = Some(from);
                        data.reason = note.clone();
                        d.tell_downstream(EventType::CaseUpdated, Some(endpoint), data);
                        d.status_message(note.as_deref())?;
                        if *status == CaseStatus::Resolved {
                            d.send_survey()?;
                        }
                    }
                    TicketEvent::PublicReply { text, author } => {
                        d.life.meet(Target::FirstResponse, d.now);
                        d.log("public_reply", Some(&actor), json!({ "text": text, "author": author }));
                        let mut ctx = d.context();
                        ctx["text"] = json!(text);
                        ctx["author"] = json!(author);
                        d.tell_customer(OutboundKind::AgentReply { author: author.clone() }, ctx)?;
                    }
                    TicketEvent::TicketLinked { ticket_id, ticket_url } => {
                        d.ticket_id = Some(ticket_id.clone());
                        d.log(
                            "ticket_linked",
                            Some(&actor),
                            json!({ "ticket_id": ticket_id, "ticket_url": ticket_url }),
                        );
                    }
                }
                Ok(())
            })
            .await?;
        if let Applied::Changed { status } = &applied {
            metrics::counter!("earshot_case_events_total", "type" => event_type(event)).increment(1);
            tracing::info!(case_id = %case_id, endpoint, event = event_type(event), status = %status, "Ticket store event applied.");
        }
        Ok(applied)
    }

    /// Records the customer's survey answer (`via`: `link`, `reply`, `callback`). An answer within
    /// the survey's window replaces the earlier one and is forwarded again; "not solved" reopens a
    /// resolved (or closed) case. The same answer again changes nothing.
    pub async fn feedback(&self, case_id: &CaseId, answer: &Answer, via: &str) -> Result<Applied, LifecycleError> {
        let (applied, _) = self
            .change(case_id, None, |d| {
                let open = d.life.survey.as_ref().is_some_and(|s| d.now <= s.expires_at);
                if !open {
                    return Err(LifecycleError::SurveyClosed);
                }
                let before = d.life.feedback.clone();
                let merged = Feedback {
                    rating: answer.rating.or(before.as_ref().and_then(|f| f.rating)),
                    solved: answer.solved.or(before.as_ref().and_then(|f| f.solved)),
                    comment: answer.comment.clone().or(before.as_ref().and_then(|f| f.comment.clone())),
                    via: via.to_owned(),
                    answered_at: life::at(d.now),
                };
                let same = before.as_ref().is_some_and(|b| {
                    (b.rating, b.solved, &b.comment) == (merged.rating, merged.solved, &merged.comment)
                });
                if same {
                    return Ok(());
                }
                d.life.feedback = Some(merged.clone());
                d.log(
                    "feedback",
                    Some("customer"),
                    json!({ "rating": merged.rating, "solved": merged.solved, "comment": merged.comment, "via": via }),
                );
                let mut data = CaseEventData::of(d.case.clone());
                data.rating = merged.rating;
                data.solved = merged.solved;
                data.comment = merged.comment.clone();
                d.tell_downstream(EventType::CaseFeedback, None, data);
                if answer.solved == Some(false) && matches!(d.status, CaseStatus::Resolved | CaseStatus::Closed) {
                    let from = d.status;
                    d.force_status(
                        CaseStatus::Reopened,
                        "customer",
                        Some("the customer says the problem is not solved"),
                    );
                    let mut data = CaseEventData::of(d.case.clone());
                    data.previous_status = Some(from);
                    data.reason = Some("the customer says the problem is not solved".into());
                    d.tell_downstream(EventType::CaseUpdated, None, data);
                }
                Ok(())
            })
            .await?;
        if let Applied::Changed { status } = &applied {
            metrics::counter!("earshot_feedback_total", "via" => via.to_owned()).increment(1);
            tracing::info!(case_id = %case_id, via, rating = ?answer.rating, solved = ?answer.solved, status = %status, "Survey answer recorded.");
        }
        Ok(applied)
    }

    /// A channel said the customer cannot be reached: recorded on the case (once per reason), and
    /// every endpoint hears `case.updated` with `reachable: false`.
    pub async fn unreachable(&self, case_id: &CaseId, reason: &str) -> Result<Applied, LifecycleError> {
        let (applied, _) = self
            .change(case_id, None, |d| {
                if d.life.unreachable.as_deref() == Some(reason) {
                    return Ok(());
                }
                d.life.unreachable = Some(reason.to_owned());
                d.tell_reachability(false, reason);
                Ok(())
            })
            .await?;
        if matches!(applied, Applied::Changed { .. }) {
            tracing::warn!(case_id = %case_id, reason, "Customer unreachable on the case's channel; downstream told.");
        }
        Ok(applied)
    }

    /// The customer can be reached again: they texted `START` (`from` is `None`), or they wrote
    /// again on the case from `from`, its own recipient (a bot unblocked). A case marked
    /// unreachable is cleared, and every endpoint hears `case.updated` with `reachable: true`. The
    /// case's channel messages that died as unreachable are sent again, in order (a dead job holds
    /// back the later ones of its case); those that died for another reason (refused, out of
    /// retries) stay dead. Messages meant for the customer while the case was marked unreachable
    /// were never queued: its timeline shows them as `not_sent`.
    pub async fn reachable(
        &self,
        case_id: &CaseId,
        reason: &str,
        from: Option<&str>,
    ) -> Result<Applied, LifecycleError> {
        let (applied, _) = self
            .change(case_id, None, |d| {
                // Another sender on the thread (a colleague in copy) says nothing of the customer.
                let own = d.route.as_ref().and_then(ReplyRoute::recipient).map(|r| r.key());
                if from.is_some_and(|f| own.as_deref() != Some(f)) || d.life.unreachable.take().is_none() {
                    return Ok(());
                }
                d.tell_reachability(true, reason);
                Ok(())
            })
            .await?;
        // An explicit opt-in replays whether or not the case was marked (the mark and the dead
        // job are written apart, so one may be there without the other).
        if matches!(applied, Applied::Changed { .. }) || from.is_none() {
            let now = crate::now_ms();
            let mut replayed = 0;
            for job in self.store.case_jobs(case_id).await? {
                let unreachable = job.last_error.as_deref().is_some_and(|e| e.starts_with("unreachable:"));
                if job.state == "dead"
                    && unreachable
                    && job.destination.is_channel()
                    && self.store.replay_job(job.id, now).await?
                {
                    replayed += 1;
                }
            }
            if replayed > 0 {
                self.wake.notify_one();
            }
            if matches!(applied, Applied::Changed { .. }) || replayed > 0 {
                tracing::info!(case_id = %case_id, reason, replayed, "Customer reachable again on the case's channel; downstream told.");
            }
        }
        Ok(applied)
    }

    /// Announces every SLA target due by now and unmet, once each; returns how many.
    pub async fn check_sla(&self) -> Result<usize, LifecycleError> {
        let mut announced = 0;
        for case_id in self.store.sla_due_cases(crate::now_ms(), 200).await? {
            let result = self
                .change(&case_id, None, |d| {
                    for t in d.life.overdue(d.now) {
                        let due = d.life.due(t);
                        d.life.breach(t, d.now);
                        d.breached.push(t);
                        d.log("sla_breached", Some("gateway"), json!({ "target": t.as_str(), "due_at": due }));
                        let mut data = CaseEventData::of(d.case.clone());
                        data.target = Some(t.as_str().to_owned());
                        data.due_at = Some(life::at(due));
                        d.tell_downstream(EventType::CaseSlaBreached, None, data);
                    }
                    // Listed as due with nothing due (a case stored before its clocks moved): the
                    // stored due time is written again from the clocks.
                    d.changed = true;
                    Ok(())
                })
                .await;
            match result {
                Ok((_, breached)) => {
                    for t in breached {
                        announced += 1;
                        metrics::counter!("earshot_sla_breached_total", "target" => t.as_str()).increment(1);
                        tracing::warn!(case_id = %case_id, target = t.as_str(), "SLA target passed unmet; downstream told.");
                    }
                }
                Err(LifecycleError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(case_id = %case_id, error = %e, "Could not check a case's SLA; will try again.")
                }
            }
        }
        Ok(announced)
    }

    /// Checks the SLA clocks every `sla_scan_every` until `shutdown`.
    pub async fn run_sla(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.sla_scan_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.check_sla().await {
                tracing::warn!(error = %e, "SLA check failed; will try again.");
            }
        }
    }

    /// The case and survey of a feedback token, if the token is known.
    pub async fn survey_case(&self, token: &str) -> Result<Option<(Case, i64)>, LifecycleError> {
        let Some((case_id, expires)) = self.store.survey(token).await? else { return Ok(None) };
        Ok(crate::cases::load(&*self.store, &case_id).await?.map(|c| (c, expires)))
    }
}

fn event_type(e: &TicketEvent) -> &'static str {
    match e {
        TicketEvent::StatusChanged { .. } => "status_changed",
        TicketEvent::PublicReply { .. } => "public_reply",
        TicketEvent::TicketLinked { .. } => "ticket_linked",
    }
}
