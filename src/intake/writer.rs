//! The group-commit writer: one task, one transaction per batch.
//!
//! It takes the first queued submission, then everything else already queued (up to `max_batch`), and
//! commits them together. While a batch commits, new submissions queue and form the next batch, so
//! the batch size follows the load by itself: one item when idle, hundreds under load.
//!
//! Failure rules: an item that cannot even be rendered fails alone. If the batch transaction fails, the
//! items are retried one transaction each, so one bad item does not fail the others; an item whose own
//! transaction fails too is answered `Unavailable` (503). A transaction either commits whole or not at
//! all, so no failure leaves half a case behind.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use earshot_channel::{IntakeError, Receipt};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::{Builder, Submission, WriterContext};
use crate::store::{Committed, JobOutcome, NewCase, OutcomeKind};

/// One distinct message of a batch and everyone waiting for it (concurrent identical deliveries).
struct Group {
    first: Submission,
    copies: Vec<Submission>,
}

/// Runs `ctx.writers` writer loops on one queue; returns when the queue is closed and drained.
///
/// With more than one (PostgreSQL only), a batch is prepared and committed while another commits,
/// so their network round trips overlap (worth it when the database is on another host; on one
/// 2-core machine it measured no faster). Concurrent batches cannot deadlock, because
/// each locks the rows it inserts in one global order (see the stores' batch commits), and a message sent to
/// two batches at once is still stored once: the second waits on the first's unique key.
pub(super) async fn run_all(rx: mpsc::Receiver<Submission>, ctx: WriterContext) {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let ctx = Arc::new(ctx);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..ctx.writers.max(1) {
        set.spawn(run(rx.clone(), ctx.clone()));
    }
    while set.join_next().await.is_some() {}
    tracing::debug!("Intake writers stopped: queue closed and drained.");
}

async fn run(rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Submission>>>, ctx: Arc<WriterContext>) {
    let mut batch = Vec::with_capacity(ctx.max_batch);
    loop {
        // One writer waits on the queue at a time; it lets go as soon as it has its batch.
        let got = rx.lock().await.recv_many(&mut batch, ctx.max_batch).await;
        if got == 0 {
            return;
        }
        let size = batch.len();
        commit(&ctx, std::mem::take(&mut batch)).await;
        metrics::histogram!("earshot_batch_size").record(size as f64);
    }
}

async fn commit(ctx: &WriterContext, batch: Vec<Submission>) {
    // Identical deliveries in one batch become one group: the store sees each key once.
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<(earshot_channel::ChannelKind, String), usize> = HashMap::new();
    for s in batch {
        let key = (s.inbound.channel, s.inbound.external_id.0.clone());
        match index.get(&key) {
            Some(&i) => groups[i].copies.push(s),
            None => {
                index.insert(key, groups.len());
                groups.push(Group { first: s, copies: Vec::new() });
            }
        }
    }

    let started = std::time::Instant::now();
    let (mut rows, mut prepared) = match prepare(ctx, &mut groups).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, batch = groups.len(), "Intake batch could not be prepared; answering 503.");
            for g in groups {
                answer_group(g, Err(IntakeError::Unavailable(e.to_string())));
            }
            return;
        }
    };

    one_customer_per_contact(ctx, &groups, &mut rows, &mut prepared);

    // A new case's first job to each destination whose loop has room goes in leased, to be handed
    // to that loop after the commit (see `outbox::Dispatch`).
    let now_ms = crate::now_ms();
    for row in rows.iter_mut().filter(|r| !r.follow_up) {
        ctx.dispatch.claim(&mut row.jobs, now_ms);
    }

    let mut outcomes: HashMap<String, Result<Committed, String>> = HashMap::new();
    // Lent to the store, not copied: the rows come back once the commit has returned.
    let rows = Arc::new(rows);
    if !rows.is_empty() {
        metrics::histogram!("earshot_batch_prepare_seconds").record(started.elapsed().as_secs_f64());
        let committing = std::time::Instant::now();
        commit_rows(ctx, rows.clone(), &mut outcomes).await;
        metrics::histogram!("earshot_batch_commit_seconds").record(committing.elapsed().as_secs_f64());
    }
    let mut rows = Arc::unwrap_or_clone(rows);
    // Jobs written leased go to their loops (before any row is rendered again, which drops its claims).
    let mut unhanded = Vec::new();
    for it in rows.iter_mut() {
        let leased = match outcomes.get(&it.message_id) {
            Some(Ok(Committed::Created { leased })) => leased.as_slice(),
            _ => &[],
        };
        unhanded.extend(ctx.dispatch.hand(&it.case_id, it.now_ms, &mut it.jobs, leased));
    }
    if !unhanded.is_empty() {
        release_unhanded(ctx, unhanded).await;
    }
    rerender_for_known_customers(ctx, &groups, &mut rows, &mut prepared, &mut outcomes).await;
    // Jobs written pending wake their destinations' loops to lease them (every loop, if one of
    // those has none running).
    let mut pending: Vec<&crate::outbox::Destination> = Vec::new();
    for it in &rows {
        let Some(Ok(Committed::Created { leased })) = outcomes.get(&it.message_id) else { continue };
        for job in it.jobs.iter().filter(|j| !leased.iter().any(|(e, _)| *e == j.event_id)) {
            if !pending.contains(&&job.destination) {
                pending.push(&job.destination);
            }
        }
    }
    if !pending.is_empty() && !ctx.dispatch.wake(&pending) {
        ctx.outbox_wake.notify_one();
    }
    for it in rows.iter().filter(|it| matches!(outcomes.get(&it.message_id), Some(Ok(Committed::Created { .. })))) {
        if let Some(recipient) = &it.reachable_again {
            reachable_again(ctx, it.case_id.clone(), recipient.clone());
        }
    }

    // Answering (a wake-up per waiter, metrics, logs) is about a tenth of a batch's cycle: it runs
    // on another task, so that the writer takes the next batch at once and the store is not left
    // idle meanwhile. Every answer still follows the commit it reports.
    let builder = ctx.builder.clone();
    tokio::spawn(async move { answer_all(&builder, groups, prepared, &rows, outcomes) });
}

/// Jobs written leased whose delivery loop stopped before they were handed to it (the gateway is
/// stopping): pending again at once, their attempt not counted, instead of waiting out the lease.
async fn release_unhanded(ctx: &WriterContext, ids: Vec<crate::store::JobId>) {
    let n = ids.len();
    let outcomes =
        ids.into_iter().map(|id| JobOutcome { id, attempts: 1, kind: OutcomeKind::Released }).collect::<Vec<_>>();
    match ctx.store.record_outcomes(outcomes, crate::now_ms()).await {
        Ok(_) => tracing::debug!(jobs = n, "Jobs whose delivery loop had stopped are pending again."),
        Err(e) => tracing::warn!(jobs = n, error = %e,
            "Could not release jobs whose delivery loop had stopped; they are sent when their lease ends."),
    }
    ctx.outbox_wake.notify_one();
}

/// The customer wrote again on a case a send had found them unreachable on (a bot they had
/// blocked): unless they are suppressed (a bounce, an opt-out), the case is reachable again if the
/// message came from its own recipient. Off the writer's path; only follow-ups on cases marked
/// unreachable come here.
fn reachable_again(ctx: &WriterContext, case_id: crate::store::CaseId, recipient: String) {
    let (store, lifecycle) = (ctx.store.clone(), ctx.lifecycle.clone());
    tokio::spawn(async move {
        match store.suppressed(std::slice::from_ref(&recipient), crate::now_ms()).await {
            Ok(hit) if hit.is_empty() => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(case_id = %case_id, error = %e, "Could not check the suppression list after a follow-up.");
                return;
            }
        }
        if let Err(e) = lifecycle.reachable(&case_id, "the customer wrote again", Some(&recipient)).await {
            tracing::warn!(case_id = %case_id, error = %e, "Could not mark the case reachable after a follow-up.");
        }
    });
}

/// Answers every waiter of a committed batch.
fn answer_all(
    builder: &Builder,
    groups: Vec<Group>,
    prepared: Vec<Prepared>,
    rows: &[NewCase],
    mut outcomes: HashMap<String, Result<Committed, String>>,
) {
    for (group, prep) in groups.into_iter().zip(prepared) {
        let result = match prep {
            Prepared::Failed(e) => Err(IntakeError::Unavailable(e)),
            Prepared::Event => Ok(Receipt {
                case_id: String::new(),
                case_ref: String::new(),
                status: "event".into(),
                duplicate: false,
                follow_up: false,
                ack: None,
            }),
            Prepared::Row(i, ack) => match outcomes.remove(&rows[i].message_id).map(|r| (r, &rows[i])) {
                Some((Ok(Committed::Created { .. }), item)) => {
                    metrics::counter!("earshot_complaints_ingested_total", "channel" => item.channel).increment(1);
                    if item.follow_up {
                        tracing::info!(case_id = %item.case_id, case_ref = %item.case_ref, channel = item.channel, "Follow-up added to a case.");
                    } else {
                        tracing::info!(
                            case_id = %item.case_id, case_ref = %item.case_ref, channel = item.channel, source = %item.source,
                            "Case created."
                        );
                    }
                    Ok(Receipt {
                        case_id: item.case_id.0.clone(),
                        case_ref: item.case_ref.to_string(),
                        status: if item.follow_up { "open".to_owned() } else { item.status.to_owned() },
                        duplicate: false,
                        follow_up: item.follow_up,
                        ack,
                    })
                }
                Some((Ok(Committed::Duplicate { digest: Some(stored), .. }), item))
                    if item.digest.as_ref().is_some_and(|d| *d != stored) =>
                {
                    metrics::counter!("earshot_idempotency_conflicts_total", "channel" => item.channel).increment(1);
                    tracing::warn!(channel = item.channel, external_id = %item.external_id, "A stored message id came again with other content; refused.");
                    Err(conflict())
                }
                Some((Ok(Committed::Duplicate { case_id, case_ref, status, .. }), item)) => {
                    metrics::counter!("earshot_duplicates_total", "channel" => item.channel).increment(1);
                    tracing::info!(case_id = %case_id, channel = item.channel, external_id = %item.external_id, "Duplicate delivery of a stored message.");
                    let ack =
                        if item.follow_up { None } else { builder.ack_text(&group.first.inbound, case_ref.as_str()) };
                    Ok(Receipt {
                        case_id: case_id.0,
                        case_ref: case_ref.to_string(),
                        status,
                        duplicate: true,
                        follow_up: item.follow_up,
                        ack,
                    })
                }
                Some((Ok(Committed::OtherCustomer { .. }), _)) => {
                    Err(IntakeError::Unavailable("the case could not be rendered for its customer".into()))
                }
                Some((Err(e), item)) => {
                    metrics::counter!("earshot_intake_failures_total").increment(1);
                    tracing::error!(error = %e, channel = item.channel, external_id = %item.external_id, "Message not stored; answering 503.");
                    Err(IntakeError::Unavailable(e))
                }
                None => Err(IntakeError::Unavailable("no commit result".into())),
            },
        };
        answer_group(group, result);
    }
}

/// New cases of one batch that share a contact belong to one customer, as they would if they came
/// one after the other: a later one is rendered again for the customer of the first one that gave
/// the contact (`{phone P}` then `{email E, phone P}` is one customer, not two). Without this each
/// would get a customer of its own, and the contact table would name only the first.
fn one_customer_per_contact(ctx: &WriterContext, groups: &[Group], rows: &mut [NewCase], prepared: &mut [Prepared]) {
    let mut owner: HashMap<earshot_channel::Identity, String> = HashMap::new();
    let now = OffsetDateTime::now_utc();
    for (g, p) in groups.iter().zip(prepared.iter_mut()) {
        let Prepared::Row(i, _) = *p else { continue };
        if rows[i].follow_up {
            continue;
        }
        let earlier = rows[i].identities.iter().find_map(|id| owner.get(id)).cloned();
        if let Some(customer) = earlier.filter(|c| *c != rows[i].customer_id) {
            let send_ack = rows[i].jobs.iter().any(|j| j.kind == "ack");
            let check_customer = rows[i].check_customer;
            match ctx.builder.build(&g.first.inbound, rows[i].seq, Some(customer), now, send_ack) {
                Ok((mut row, _)) => {
                    // The acknowledgement text already rendered names the same case reference.
                    row.check_customer = check_customer;
                    rows[i] = row;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Could not render a case for the customer of an earlier case in its batch; it keeps its own.")
                }
            }
        }
        for id in &rows[i].identities {
            owner.entry(id.clone()).or_insert_with(|| rows[i].customer_id.clone());
        }
    }
}

/// Cases rendered ahead whose contact turned out to belong to a known customer: rendered again
/// for that customer (same sequence number) and committed as a second, small batch. Rare: it
/// takes a returning customer who gives a contact first that they have not used before.
async fn rerender_for_known_customers(
    ctx: &WriterContext,
    groups: &[Group],
    rows: &mut [NewCase],
    prepared: &mut [Prepared],
    outcomes: &mut HashMap<String, Result<Committed, String>>,
) {
    let now = OffsetDateTime::now_utc();
    let mut again: Vec<usize> = Vec::new();
    for (g, p) in groups.iter().zip(prepared.iter_mut()) {
        let Prepared::Row(i, _) = *p else { continue };
        let row = &rows[i];
        let Some(Ok(Committed::OtherCustomer { customer_id })) = outcomes.get(&row.message_id) else { continue };
        let (seq, customer_id) = (row.seq, customer_id.clone());
        outcomes.remove(&row.message_id);
        *p = match ctx.builder.build(&g.first.inbound, seq, Some(customer_id), now, true) {
            Ok((row, ack)) => {
                rows[i] = row;
                again.push(i);
                Prepared::Row(i, ack)
            }
            Err(e) => Prepared::Failed(e.to_string()),
        };
    }
    if again.is_empty() {
        return;
    }
    let again: Arc<Vec<NewCase>> = Arc::new(again.iter().map(|&i| rows[i].clone()).collect());
    commit_rows(ctx, again.clone(), outcomes).await;
    for row in again.iter() {
        if let Some(Err(e)) = outcomes.get(&row.message_id) {
            tracing::error!(error = %e, case_id = %row.case_id, "Case of a known customer not stored; answering 503.");
        }
    }
}

/// Commits `rows` as one batch and records each one's outcome by message id. If the batch fails,
/// its rows are committed one by one, so that one bad row fails alone.
async fn commit_rows(
    ctx: &WriterContext,
    rows: Arc<Vec<NewCase>>,
    outcomes: &mut HashMap<String, Result<Committed, String>>,
) {
    match ctx.store.commit_batch(rows.clone()).await {
        Ok(results) => {
            for (row, r) in rows.iter().zip(results) {
                outcomes.insert(row.message_id.clone(), Ok(r));
            }
        }
        Err(e) if rows.len() > 1 => {
            tracing::warn!(error = %e, batch = rows.len(), "Batch commit failed; committing its items one by one.");
            for row in rows.iter() {
                let r = ctx.store.commit_batch(Arc::new(vec![row.clone()])).await;
                let r = r.map_err(|e| e.to_string()).and_then(|mut v| v.pop().ok_or_else(|| "no result".to_owned()));
                outcomes.insert(row.message_id.clone(), r);
            }
        }
        Err(e) => {
            if let Some(row) = rows.first() {
                outcomes.insert(row.message_id.clone(), Err(e.to_string()));
            }
        }
    }
}

/// What one distinct message of a batch becomes before the commit.
enum Prepared {
    /// Rows to commit (a new case or a follow-up), by index in the batch's rows, with the
    /// acknowledgement text of a new case.
    Row(usize, Option<earshot_channel::AckText>),
    /// An automatic message that belongs to no case, already stored as a channel event.
    Event,
    Failed(String),
}

/// Reads what the rows depend on (sequence numbers, known customers, threads, acknowledgement
/// history) and renders every item: the rows to commit, and what each group became.
async fn prepare(ctx: &WriterContext, groups: &mut [Group]) -> crate::store::Result<(Vec<NewCase>, Vec<Prepared>)> {
    let unnumbered = groups.iter().filter(|g| g.first.prebuilt.is_none()).count();
    let mut seqs = ctx.store.next_seqs(unnumbered).await?.into_iter();
    // Cases rendered ahead have their customer checked by the store, inside the commit.
    let identities: Vec<_> = groups
        .iter()
        .filter(|g| g.first.prebuilt.is_none())
        .flat_map(|g| g.first.inbound.identities.iter().cloned())
        .collect();
    let known = if identities.is_empty() { HashMap::new() } else { ctx.store.customers_for(&identities).await? };
    let now = OffsetDateTime::now_utc();
    let now_ms = crate::now_ms();

    // Recipients (on any channel) that must not get an acknowledgement now: suppressed after a
    // bounce or an unsubscribe, or acknowledged within the window.
    let recipients: Vec<String> = groups.iter().filter_map(|g| Builder::recipient_key(&g.first.inbound)).collect();
    let windowed: Vec<String> = groups
        .iter()
        .filter(|g| !ctx.builder.loop_free.contains(&g.first.inbound.channel))
        .filter_map(|g| Builder::recipient_key(&g.first.inbound))
        .collect();
    let mut silent: HashSet<String> = HashSet::new();
    if !recipients.is_empty() {
        silent.extend(ctx.store.suppressed(&recipients, now_ms).await?);
    }
    if !windowed.is_empty() {
        let since = now_ms - ctx.builder.ack_window.as_millis() as i64;
        silent.extend(ctx.store.acked_since(&windowed, since).await?);
    }

    let mut rows: Vec<NewCase> = Vec::with_capacity(groups.len());
    let mut row = |row: NewCase, ack: Option<earshot_channel::AckText>| {
        rows.push(row);
        Prepared::Row(rows.len() - 1, ack)
    };
    let mut out = Vec::with_capacity(groups.len());
    for g in groups.iter_mut() {
        let inbound = &g.first.inbound;
        if inbound.identities.is_empty() {
            out.push(Prepared::Failed("a message needs at least one identity".to_owned()));
            continue;
        }
        if let Some(mut pre) = g.first.prebuilt.take() {
            // Rendered for a new customer: the store checks that none of its contacts is known.
            pre.row.check_customer = true;
            out.push(row(*pre.row, pre.ack));
            continue;
        }
        let customer = inbound.identities.iter().find_map(|i| known.get(i).cloned());
        let Some(seq) = seqs.next() else {
            out.push(Prepared::Failed("no case sequence number".to_owned()));
            continue;
        };
        // A message whose thread cannot be looked up fails alone, not its whole batch.
        match thread_case(ctx, inbound, customer.as_deref()).await {
            Ok(Some(case)) => {
                out.push(match ctx.builder.build_follow_up(inbound, case, now) {
                    Ok(r) => row(r, None),
                    Err(e) => Prepared::Failed(e.to_string()),
                });
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, channel = %inbound.channel, external_id = %inbound.external_id, "Thread lookup failed; this message alone is refused.");
                out.push(Prepared::Failed(e.to_string()));
                continue;
            }
        }
        if let Some(kind) = inbound.automatic {
            // An automatic message that answers nothing of ours: keep it, make no case, answer nothing.
            record_unthreaded(ctx, inbound, kind, now_ms).await?;
            out.push(Prepared::Event);
            continue;
        }
        let recipient = Builder::recipient_key(inbound);
        let send_ack = !ctx.builder.is_own_address(inbound) && recipient.as_ref().is_none_or(|r| !silent.contains(r));
        if !send_ack {
            tracing::info!(recipient = ?recipient, "No acknowledgement: own address, suppressed, or acknowledged within the window.");
        }
        // Later messages of this batch from the same address wait for the window too.
        if let Some(r) = recipient.filter(|_| send_ack && !ctx.builder.loop_free.contains(&inbound.channel)) {
            silent.insert(r);
        }
        out.push(match ctx.builder.build(inbound, seq, customer, now, send_ack) {
            Ok((r, ack)) => row(r, ack),
            Err(e) => Prepared::Failed(e.to_string()),
        });
    }
    Ok((rows, out))
}

/// The case a message continues, if any. A reply to one of the case's messages (or to one of our
/// messages about it) continues it whoever sends it; a case reference in the subject only when the
/// sender is the case's customer, so a stranger quoting someone else's reference makes a new case.
async fn thread_case(
    ctx: &WriterContext,
    inbound: &earshot_channel::Inbound,
    customer: Option<&str>,
) -> crate::store::Result<Option<crate::schema::Case>> {
    let Some(hint) = &inbound.thread else { return Ok(None) };
    let ids: Vec<String> = hint.in_reply_to.iter().map(|e| e.0.clone()).filter(|s| !s.is_empty()).collect();
    let events: Vec<String> = ids.iter().filter_map(|id| super::our_event_id(id)).map(str::to_owned).collect();
    if !ids.is_empty() || !hint.case_refs.is_empty() {
        let hits = ctx.store.find_thread(inbound.channel.as_str(), &ids, &events, &hint.case_refs).await?;
        let chosen = hits.iter().find(|h| h.matched != h.case_ref.as_str()).or_else(|| {
            hits.iter().find(|h| h.matched == h.case_ref.as_str() && customer == Some(h.customer_id.as_str()))
        });
        if let Some(hit) = chosen {
            return crate::cases::load(&*ctx.store, &hit.case_id).await;
        }
    }
    // A chat: the sender's open case takes the message, if it moved within the window.
    if let (Some(window), Some(customer)) = (hint.open_case_within_secs, customer) {
        let since = crate::now_ms() - i64::try_from(window.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Some(id) = ctx.store.open_case_of(customer, inbound.channel.as_str(), since).await? {
            return crate::cases::load(&*ctx.store, &id).await;
        }
    }
    Ok(None)
}

async fn record_unthreaded(
    ctx: &WriterContext,
    inbound: &earshot_channel::Inbound,
    kind: earshot_channel::AutoKind,
    now_ms: i64,
) -> crate::store::Result<()> {
    let data = serde_json::json!({ "subject": inbound.subject, "text": inbound.text, "reason": "automatic message outside any case" });
    ctx.store
        .record_event(&crate::store::NewEvent {
            channel: inbound.channel.as_str(),
            source: inbound.source.clone(),
            kind: serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            external_id: inbound.external_id.0.clone(),
            sender: inbound.identities.first().map(|i| i.value.clone()),
            subject: inbound.subject.clone(),
            data: data.to_string(),
            raw: inbound.raw.clone(),
            now_ms,
        })
        .await?;
    metrics::counter!("earshot_channel_events_total", "channel" => inbound.channel.as_str(), "kind" => "automatic")
        .increment(1);
    tracing::info!(channel = %inbound.channel, external_id = %inbound.external_id, kind = ?kind, "Automatic message outside any case: stored as an event, not acknowledged.");
    Ok(())
}

/// A message id already stored with other content.
fn conflict() -> IntakeError {
    IntakeError::Conflict(
        "this message id was received before with a different body; nothing was changed. A new complaint needs \
         a new id (for the web channel, a new webhook-id); a retry must send the same body"
            .into(),
    )
}

fn answer_group(group: Group, result: Result<Receipt, IntakeError>) {
    let latency = |s: &Submission| s.enqueued.elapsed().as_secs_f64();
    let first_digest = group.first.inbound.content_digest.clone();
    for copy in group.copies {
        metrics::histogram!("earshot_ingest_latency_seconds").record(latency(&copy));
        // Copies of one id in one batch: the same id with another body is refused, as it is later.
        let differs = copy.inbound.content_digest.is_some() && copy.inbound.content_digest != first_digest;
        let r = match &result {
            _ if differs => Err(conflict()),
            Ok(receipt) => Ok(Receipt { duplicate: true, ..receipt.clone() }),
            Err(IntakeError::Conflict(_)) => Err(conflict()),
            Err(e) => Err(IntakeError::Unavailable(e.to_string())),
        };
        if copy.reply.send(r).is_err() {
            tracing::debug!("A duplicate's caller went away before its answer.");
        }
    }
    metrics::histogram!("earshot_ingest_latency_seconds").record(latency(&group.first));
    if group.first.reply.send(result).is_err() {
        // The client hung up; the case is stored all the same and a retry will be a duplicate.
        tracing::debug!("A caller went away before its answer.");
    }
}
