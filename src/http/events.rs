//! The way back: events from the ticket store (`POST /v1/cases/{case_id}/events`) and the survey's
//! feedback links (`GET /v1/feedback/{token}`).
//!
//! An event is checked in this order, and a refusal changes nothing: size, signature (any
//! `[[downstream]]` endpoint's secret; 401), body (400), a `webhook-id` already applied (200, or 409
//! with another body), the case (404), the transition (409 with the statuses allowed next).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use earshot_channel::webhooks::{self, VerifyError};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use crate::config::Endpoint;
use crate::lifecycle::survey::{self, Answer};
use crate::lifecycle::{Applied, Lifecycle, LifecycleError, TicketEvent, status};
use crate::schema::{CaseId, CaseStatus};

/// What the way back needs.
#[derive(Clone)]
pub struct EventsState {
    pub lifecycle: Arc<Lifecycle>,
    /// The `[[downstream]]` endpoints whose secrets may sign events; swapped on SIGHUP.
    pub endpoints: Arc<crate::live::Live<Vec<Endpoint>>>,
}

/// Largest event body accepted.
const MAX_EVENT_BYTES: usize = 256 * 1024;

pub fn routes(state: EventsState) -> axum::Router {
    axum::Router::new()
        .route("/v1/cases/{case_id}/events", post(case_event))
        .route("/v1/feedback/{token}", get(feedback))
        .with_state(state)
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(id) => ApiError::not_found(format!("no case {id}")),
            LifecycleError::InvalidTransition { from, to } => {
                let allowed: Vec<String> = status::next(from).iter().map(|s| s.as_str().to_owned()).collect();
                let list = if allowed.is_empty() { "none: the case is final".to_owned() } else { allowed.join(", ") };
                ApiError {
                    field: Some("data.status".into()),
                    allowed: Some(allowed),
                    ..ApiError::new(
                        StatusCode::CONFLICT,
                        "invalid_transition",
                        format!("the case is {from} and cannot become {to}; allowed next: {list}"),
                    )
                }
            }
            LifecycleError::SurveyClosed => {
                ApiError::new(StatusCode::GONE, "survey_closed", "this survey can no longer be answered")
            }
            LifecycleError::Busy => ApiError::unavailable("busy", "the case kept changing; retry"),
            LifecycleError::Corrupt(detail) => {
                tracing::error!(detail, "Stored case not usable while applying an event.");
                ApiError::unavailable("store_unavailable", "the store is unavailable; retry later")
            }
            LifecycleError::Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusData {
    status: String,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyData {
    text: String,
    #[serde(default)]
    author_display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkData {
    ticket_id: String,
    #[serde(default)]
    ticket_url: Option<String>,
}

fn data<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::bad_request("invalid_field", e.to_string(), "data"))
}

/// Parses an event body. Pure.
fn parse_event(body: &[u8]) -> Result<TicketEvent, ApiError> {
    let ev: EventBody = serde_json::from_slice(body)
        .map_err(|e| ApiError { field: None, ..ApiError::bad_request("malformed_json", e.to_string(), "") })?;
    let long = |s: &str, max: usize, field: &str| -> Result<(), ApiError> {
        if s.trim().is_empty() {
            return Err(ApiError::bad_request("invalid_field", format!("{field} is empty"), field));
        }
        if s.len() > max {
            return Err(ApiError::bad_request("invalid_field", format!("{field} is longer than {max} bytes"), field));
        }
        Ok(())
    };
    match ev.kind.as_str() {
        "status_changed" => {
            let d: StatusData = data(ev.data)?;
            let status = CaseStatus::parse(&d.status).ok_or_else(|| {
                let all: Vec<&str> = CaseStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request(
                    "invalid_field",
                    format!("unknown status {:?}; statuses are {}", d.status, all.join(", ")),
                    "data.status",
                )
            })?;
            if let Some(n) = &d.note {
                long(n, 10_000, "data.note")?;
            }
            Ok(TicketEvent::StatusChanged { status, note: d.note })
        }
        "public_reply" => {
            let d: ReplyData = data(ev.data)?;
            long(&d.text, 100_000, "data.text")?;
            Ok(TicketEvent::PublicReply { text: d.text, author: d.author_display_name })
        }
        "ticket_linked" => {
            let d: LinkData = data(ev.data)?;
            long(&d.ticket_id, 200, "data.ticket_id")?;
            Ok(TicketEvent::TicketLinked { ticket_id: d.ticket_id, ticket_url: d.ticket_url })
        }
        other => Err(ApiError::bad_request(
            "invalid_field",
            format!("unknown event type {other:?}; types are status_changed, public_reply, ticket_linked"),
            "type",
        )),
    }
}

/// The endpoint whose secret signed the request.
fn signer<'a>(endpoints: &'a [Endpoint], headers: &HeaderMap, body: &[u8]) -> Result<&'a Endpoint, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut last = VerifyError::NoMatch;
    for ep in endpoints {
        match ep.keys.verify(
            header(webhooks::HEADER_ID),
            header(webhooks::HEADER_TIMESTAMP),
            header(webhooks::HEADER_SIGNATURE),
            body,
            now,
        ) {
            Ok(()) => return Ok(ep),
            Err(
                e @ (VerifyError::MissingHeader(_) | VerifyError::InvalidTimestamp | VerifyError::StaleTimestamp(_)),
            ) => {
                last = e;
                break;
            }
            Err(e) => last = e,
        }
    }
    let code = match last {
        VerifyError::MissingHeader(_) => "missing_signature",
        VerifyError::InvalidTimestamp | VerifyError::StaleTimestamp(_) => "stale_timestamp",
        VerifyError::NoMatch if endpoints.is_empty() => "no_downstream",
        VerifyError::NoMatch => "invalid_signature",
    };
    let detail = if endpoints.is_empty() {
        "no [[downstream]] endpoint is configured, so no event can be signed".to_owned()
    } else if matches!(last, VerifyError::NoMatch) {
        "the signature matches the secret of no [[downstream]] endpoint".to_owned()
    } else {
        last.to_string()
    };
    Err(ApiError::unauthorized(code, detail))
}

async fn case_event(
    State(st): State<EventsState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(case_id) = path?;
    let body = axum::body::to_bytes(body, MAX_EVENT_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("an event body is at most {MAX_EVENT_BYTES} bytes"),
        )
    })?;
    let endpoints = st.endpoints.get();
    let ep = signer(&endpoints, &headers, &body)?;
    let webhook_id = headers.get(webhooks::HEADER_ID).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let event = parse_event(&body)?;
    // Case ids are ours (`case_` and hex): anything else is no case, and is not looked up.
    if case_id.len() > 64 || !case_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ApiError::not_found(format!("no case {case_id:?}")));
    }
    let digest = earshot_channel::sha256_hex(&body);
    let store = st.lifecycle.store();
    // A repeat is answered before the case is looked at: the case may have moved on since, and a
    // repeat must not then be refused.
    if let Some(stored) = store.inbox_digest(&ep.name, &webhook_id).await? {
        return repeat(&stored, &digest, &case_id);
    }
    match st.lifecycle.ticket_event(&CaseId(case_id.clone()), &ep.name, &webhook_id, &digest, &event).await? {
        Applied::Changed { status } => {
            Ok(Json(json!({ "case_id": case_id, "status": status, "changed": true, "duplicate": false }))
                .into_response())
        }
        Applied::Unchanged { status } => {
            Ok(Json(json!({ "case_id": case_id, "status": status, "changed": false, "duplicate": false }))
                .into_response())
        }
        Applied::Duplicate { digest: stored } => repeat(&stored, &digest, &case_id),
    }
}

fn repeat(stored: &str, digest: &str, case_id: &str) -> Result<Response, ApiError> {
    if stored != digest {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this webhook-id was applied before with a different body; nothing was changed. A new event needs a new webhook-id",
        ));
    }
    Ok(Json(json!({ "case_id": case_id, "changed": false, "duplicate": true })).into_response())
}

#[derive(Deserialize)]
struct FeedbackQuery {
    rating: Option<String>,
    solved: Option<String>,
    comment: Option<String>,
}

/// A feedback link: records the answer it carries and shows a small page in the case's language.
async fn feedback(
    State(st): State<EventsState>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<FeedbackQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(token) = path?;
    let Query(q) = q?;
    let answer: Answer = survey::parse_link(q.rating.as_deref(), q.solved.as_deref(), q.comment.as_deref())
        .map_err(|e| ApiError::bad_request("invalid_query", e, "query"))?;
    // Tokens are ours: anything else is not one, and is not looked up.
    if !token.starts_with("sv_") || token.len() > 64 {
        return Err(ApiError::not_found("no such survey"));
    }
    let (case, _) = st.lifecycle.survey_case(&token).await?.ok_or_else(|| ApiError::not_found("no such survey"))?;
    let status = if answer.is_empty() {
        StatusCode::OK
    } else {
        match st.lifecycle.feedback(&case.id, &answer, "link").await {
            Ok(_) => StatusCode::OK,
            Err(LifecycleError::SurveyClosed) => StatusCode::GONE,
            Err(e) => return Err(e.into()),
        }
    };
    let case = crate::cases::load(&**st.lifecycle.store(), &case.id).await?.unwrap_or(case);
    // Relative links: the page is the survey's own URL.
    let choices = survey::choices(case.lang, "");
    let fb = case.feedback.clone();
    let ctx = json!({
        "case_ref": case.case_ref.to_string(),
        "answered": status == StatusCode::OK && !answer.is_empty(),
        "closed": status == StatusCode::GONE,
        "rating": fb.as_ref().and_then(|f| f.rating),
        "solved": fb.as_ref().and_then(|f| f.solved),
        "choices": if status == StatusCode::GONE { vec![] } else { choices },
    });
    let page = st
        .lifecycle
        .templates()
        .page("feedback/thanks", case.lang, &ctx)
        .map_err(|e| ApiError::unavailable("template_failed", e.to_string()))?;
    Ok((status, Html(page)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events() {
        assert_eq!(
            parse_event(br#"{"type":"status_changed","data":{"status":"in_progress"}}"#).ok(),
            Some(TicketEvent::StatusChanged { status: CaseStatus::InProgress, note: None })
        );
        assert_eq!(
            parse_event(br#"{"type":"public_reply","data":{"text":"hi","author_display_name":"Ann"}}"#).ok(),
            Some(TicketEvent::PublicReply { text: "hi".into(), author: Some("Ann".into()) })
        );
        let bad: &[(&[u8], &str)] = &[
            (b"{", "malformed_json"),
            (br#"{"type":"status_changed","data":{"status":"done"}}"#, "invalid_field"),
            (br#"{"type":"status_changed","data":{}}"#, "invalid_field"),
            (br#"{"type":"public_reply","data":{"text":"  "}}"#, "invalid_field"),
            (br#"{"type":"nope","data":{}}"#, "invalid_field"),
            (br#"{"type":"ticket_linked","data":{"ticket_id":"T-1","x":1}}"#, "invalid_field"),
        ];
        for (body, code) in bad {
            let e = parse_event(body).expect_err("refused");
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, *code), "{}", String::from_utf8_lossy(body));
        }
    }
}
