//! Admin routes (bearer token): cases, the outbox and its dead letters, the quarantine.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::store::JobId;

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/cases", get(list_cases))
        .route("/v1/cases/{id}", get(show_case))
        .route("/v1/outbox", get(list_outbox))
        .route("/v1/outbox/{id}/replay", post(replay))
        .route("/v1/outbox/{id}/discard", post(discard))
        .route("/v1/outbox/replay-dead", post(replay_dead))
        .route("/v1/quarantine", get(quarantine))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = st.admin_token.get();
    let Some(token) = token.as_ref() else {
        return Err(ApiError::unauthorized("admin_disabled", "admin routes are disabled: set server.admin_token"));
    };
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("missing_token", "send Authorization: Bearer <server.admin_token>"))?;
    if same(given.trim().as_bytes(), token.expose_secret().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid_token", "the bearer token is not the admin token"))
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    state: Option<String>,
}

fn limit(q: &ListQuery) -> i64 {
    q.limit.unwrap_or(50).clamp(1, 1000)
}

/// Cases, newest first, filtered; `next_cursor` pages on (absent on the last page).
async fn list_cases(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<crate::cases::CaseQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let Query(q) = q?;
    let filter = q.filter()?;
    let rows = st.store.search_cases(&filter).await?;
    let next = (rows.len() as i64 == filter.limit).then(|| rows.last().map(|r| r.seq)).flatten();
    Ok(Json(json!({ "cases": rows, "next_cursor": next })))
}

async fn show_case(
    State(st): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<crate::store::CaseId>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let Path(id) = id?;
    let case = crate::cases::with_timeline(&*st.store, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no case {id}")))?;
    Ok(Json(case))
}

async fn list_outbox(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let Query(q) = q?;
    if let Some(s) = q.state.as_deref()
        && !matches!(s, "pending" | "held" | "leased" | "done" | "dead" | "discarded")
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            "state must be pending, held, leased, done, dead or discarded",
            "state",
        ));
    }
    let jobs = st.store.list_jobs(q.state.as_deref(), limit(&q)).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

/// What an operator does with a dead job.
#[derive(Clone, Copy)]
enum DeadJobAction {
    /// Pending again with fresh attempts.
    Replay,
    /// Given up on purpose; the later jobs of its case to that destination go on.
    Discard,
}

async fn replay(
    State(st): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    on_dead_job(&st, &headers, id, DeadJobAction::Replay).await
}

async fn discard(
    State(st): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    on_dead_job(&st, &headers, id, DeadJobAction::Discard).await
}

async fn on_dead_job(
    st: &AppState,
    headers: &HeaderMap,
    id: Result<Path<i64>, PathRejection>,
    action: DeadJobAction,
) -> Result<Json<Value>, ApiError> {
    authorize(st, headers)?;
    let Path(id) = id?;
    let now = crate::now_ms();
    let (done, field) = match action {
        DeadJobAction::Replay => (st.store.replay_job(JobId(id), now).await?, "replayed"),
        DeadJobAction::Discard => (st.store.discard_job(JobId(id), now).await?, "discarded"),
    };
    if !done {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_dead", format!("job {id} does not exist or is not dead")));
    }
    st.outbox_wake.notify_one();
    tracing::info!(job = id, action = field, "Dead job {field} by admin API.");
    Ok(Json(json!({ field: 1 })))
}

async fn replay_dead(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let n = st.store.replay_all_dead(crate::now_ms()).await?;
    st.outbox_wake.notify_one();
    tracing::info!(jobs = n, "All dead jobs replayed by admin API.");
    Ok(Json(json!({ "replayed": n })))
}

/// Messages a channel could not parse, kept raw (newest first); `?limit=`.
async fn quarantine(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&st, &headers)?;
    let Query(q) = q?;
    let items = st.store.list_quarantine(limit(&q)).await?;
    Ok(Json(json!({ "items": items })))
}
