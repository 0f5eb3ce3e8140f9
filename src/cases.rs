//! Reading cases back as the schema's [`Case`]: the JSON stored when the case was made, with what
//! has changed since (status, ticket id, SLA clocks, survey answer, reachability) laid over it.

use crate::lifecycle::life::Life;
use crate::schema::{Case, CaseStatus, Message, SCHEMA_VERSION};
use crate::store::{CaseId, CaseRow, Store, StoreError};

/// The case with its messages and current state, or `None` if there is no such case.
pub async fn load(store: &dyn Store, id: &CaseId) -> Result<Option<Case>, StoreError> {
    match store.get_case(id).await? {
        Some((row, messages)) => from_row(&row, messages).map(Some),
        None => Ok(None),
    }
}

/// The case of a stored row and its messages' JSON.
pub fn from_row(row: &CaseRow, messages: Vec<String>) -> Result<Case, StoreError> {
    let id = &row.id;
    let mut case: Case = serde_json::from_str(&row.data).map_err(|e| StoreError::Corrupt(format!("case {id}: {e}")))?;
    for m in messages {
        let m: Message =
            serde_json::from_str(&m).map_err(|e| StoreError::Corrupt(format!("message of case {id}: {e}")))?;
        case.messages.push(m);
    }
    case.schema_version = SCHEMA_VERSION;
    case.ticket_id = row.ticket_id.clone();
    if let Some(status) = CaseStatus::parse(&row.status) {
        case.status = status;
    }
    if let Some(life) = row.lifecycle.as_deref().and_then(|l| serde_json::from_str::<Life>(l).ok()) {
        life.apply_to(&mut case);
    }
    Ok(case)
}

/// A case with its whole timeline, oldest first: messages in, messages out (with their delivery
/// state), status changes with who made them, replies, feedback, SLA events. What
/// `GET /v1/cases/{id}` and `earshot cases show` print.
pub async fn with_timeline(store: &dyn Store, id: &CaseId) -> Result<Option<serde_json::Value>, StoreError> {
    use serde_json::json;
    let Some(case) = load(store, id).await? else { return Ok(None) };
    let mut timeline: Vec<(i64, serde_json::Value)> = Vec::new();
    for m in &case.messages {
        let at = (m.received_at.unix_timestamp_nanos() / 1_000_000) as i64;
        timeline.push((at, json!({ "at": m.received_at, "kind": "message_in", "actor": "customer", "message_id": m.id, "channel": m.channel, "text": m.text })));
    }
    for job in store.case_jobs(id).await? {
        let rfc = crate::lifecycle::life::at(job.created_at);
        let entry = if job.destination.is_channel() {
            let out: Option<earshot_channel::Outbound> = serde_json::from_str(&job.payload).ok();
            json!({
                "at": rfc, "kind": "message_out", "actor": "gateway", "message": job.kind, "job": job.id,
                "event_id": job.event_id, "state": job.state, "attempts": job.attempts, "last_error": job.last_error,
                "text": out.map(|o| o.text),
            })
        } else {
            json!({
                "at": rfc, "kind": "event_out", "actor": "gateway", "event": job.kind, "destination": job.destination,
                "job": job.id, "event_id": job.event_id, "state": job.state, "attempts": job.attempts,
                "last_error": job.last_error,
            })
        };
        timeline.push((job.created_at, entry));
    }
    for e in store.case_log(id).await? {
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap_or_default();
        timeline.push((
            e.created_at,
            json!({ "at": crate::lifecycle::life::at(e.created_at), "kind": e.kind, "actor": e.actor, "data": data }),
        ));
    }
    // Stable: entries of one instant keep the order above (a message, then what it caused).
    timeline.sort_by_key(|(at, _)| *at);
    let mut v = serde_json::to_value(&case).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    v["timeline"] = json!(timeline.into_iter().map(|(_, e)| e).collect::<Vec<_>>());
    Ok(Some(v))
}

/// Filters of a case listing (`GET /v1/cases`, `earshot cases list`); every one optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseQuery {
    pub limit: Option<i64>,
    pub status: Option<String>,
    pub channel: Option<String>,
    pub source: Option<String>,
    /// RFC 3339; cases created at or after.
    pub created_from: Option<String>,
    /// RFC 3339; cases created before.
    pub created_to: Option<String>,
    pub breached: Option<bool>,
    /// Text the case or one of its messages contains (case-insensitive for ASCII).
    pub q: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

impl CaseQuery {
    /// The store's filter, every value checked (a precise 400 otherwise).
    pub fn filter(self) -> Result<crate::store::CaseFilter, earshot_channel::ApiError> {
        use earshot_channel::ApiError;
        if let Some(s) = &self.status
            && CaseStatus::parse(s).is_none()
        {
            let all: Vec<&str> = CaseStatus::ALL.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("status must be one of {}", all.join(", ")),
                "status",
            ));
        }
        if let Some(c) = &self.channel
            && earshot_channel::ChannelKind::parse(c).is_none()
        {
            return Err(ApiError::bad_request(
                "invalid_field",
                "channel must be web, email, telegram or phone",
                "channel",
            ));
        }
        if self.q.as_deref().is_some_and(|q| q.contains('\0') || q.len() > 500) {
            return Err(ApiError::bad_request("invalid_field", "q must be text of at most 500 bytes", "q"));
        }
        if self.source.as_deref().is_some_and(|s| s.contains('\0')) {
            return Err(ApiError::bad_request("invalid_field", "source must be text", "source"));
        }
        let time = |v: Option<&str>, field: &'static str| -> Result<Option<i64>, ApiError> {
            v.map(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                    .map_err(|_| {
                        ApiError::bad_request("invalid_field", format!("{field} must be an RFC 3339 time"), field)
                    })
            })
            .transpose()
        };
        Ok(crate::store::CaseFilter {
            created_from: time(self.created_from.as_deref(), "created_from")?,
            created_to: time(self.created_to.as_deref(), "created_to")?,
            status: self.status,
            channel: self.channel,
            source: self.source,
            breached: self.breached,
            text: self.q,
            before_seq: self.cursor,
            limit: self.limit.unwrap_or(50).clamp(1, 1000),
        })
    }
}
