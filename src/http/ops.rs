//! Health, readiness, metrics, and the published schemas.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use earshot_channel::{ChannelKind, OpenApiPart};
use serde_json::{Value, json};

use super::AppState;
use crate::channels::Channels;

pub fn routes(channels: &Channels) -> axum::Router<AppState> {
    // The channels are fixed for the process's life (a reload that adds one takes a restart), so
    // the document is made and serialized once, here. In `ChannelKind::ALL` order: the same
    // config, the same bytes.
    let parts = ChannelKind::ALL.into_iter().filter_map(|k| channels.get(k)).filter_map(|c| c.openapi());
    let doc = bytes::Bytes::from(serde_json::to_vec(&openapi(parts)).unwrap_or_default());
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/schema/case.json", get(|| async { Json(crate::schema::case_json_schema()) }))
        .route("/v1/schema/event.json", get(|| async { Json(crate::schema::event_json_schema()) }))
        .route("/openapi.json", get(|| async move { ([(header::CONTENT_TYPE, "application/json")], doc) }))
}

/// The process is up and serving.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The database answers and every migration is applied.
async fn readyz(State(st): State<AppState>) -> Response {
    match st.store.ready().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready", "database": st.store.backend() }))).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "Not ready.");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "reason": "database unavailable or not migrated" })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let Some(handle) = &st.metrics else {
        return (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response();
    };
    // Outbox gauges are read at scrape time: the store is the truth, not a counter that drifts.
    match st.store.job_counts().await {
        Ok(counts) => {
            for state in ["pending", "leased", "done", "dead", "discarded"] {
                let n = counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                metrics::gauge!("earshot_outbox_jobs", "state" => state).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "Could not count outbox jobs for /metrics."),
    }
    // Per destination (destinations come from the config, so the labels stay bounded).
    match st.store.outbox_backlog().await {
        Ok(rows) => {
            let now = crate::now_ms();
            let mut seen = st.backlog_destinations.lock().map(|g| g.clone()).unwrap_or_default();
            for b in &rows {
                seen.remove(&b.destination);
                set_backlog(&b.destination, b.pending, b.held, b.dead);
                let age = b.oldest_pending_ms.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
                metrics::gauge!("earshot_outbox_oldest_pending_age_seconds", "destination" => b.destination.clone())
                    .set(age);
            }
            // A destination whose backlog emptied since the last scrape reads 0, not its old value.
            for d in seen {
                set_backlog(&d, 0, 0, 0);
                metrics::gauge!("earshot_outbox_oldest_pending_age_seconds", "destination" => d).set(0.0);
            }
            if let Ok(mut g) = st.backlog_destinations.lock() {
                *g = rows.into_iter().map(|b| b.destination).collect();
            }
        }
        Err(e) => tracing::warn!(error = %e, "Could not read the outbox backlog for /metrics."),
    }
    metrics::counter!("earshot_log_lines_dropped_total").absolute(crate::log_lines_dropped());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

fn set_backlog(destination: &str, pending: i64, held: i64, dead: i64) {
    for (state, n) in [("pending", pending), ("held", held), ("dead", dead)] {
        metrics::gauge!("earshot_outbox_backlog", "destination" => destination.to_owned(), "state" => state)
            .set(n as f64);
    }
}

/// The OpenAPI description of every route served, for integrators' tooling: the core's routes
/// (below) and the `parts` of the enabled channels, which describe their own routes.
fn openapi(parts: impl IntoIterator<Item = OpenApiPart>) -> Value {
    let json_error = earshot_channel::openapi::error_content();
    let [id, timestamp, signature] = earshot_channel::openapi::webhook_headers();
    let int64 = json!({ "type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX });
    // Any 64-bit integer: the routes clamp it to 1–1000 rather than refuse it.
    let limit = json!({ "name": "limit", "in": "query", "required": false,
        "description": "How many, newest first; clamped to 1–1000 (default 50)", "schema": int64.clone() });
    let path_id = |ty: &str, what: &str| {
        let schema = if ty == "integer" { int64.clone() } else { json!({ "type": ty }) };
        json!({ "name": "id", "in": "path", "required": true, "description": what, "schema": schema })
    };
    // Every admin route: the bearer token, and the answers every one of them can give.
    let admin = |mut op: Value| {
        op["security"] = json!([{ "bearer": [] }]);
        let responses = &mut op["responses"];
        responses["400"] =
            json!({ "description": "A bad path parameter or query string", "content": json_error.clone() });
        responses["401"] = json!({ "description": "Missing or wrong bearer token", "content": json_error.clone() });
        responses["503"] = json!({ "description": "The store is unavailable", "content": json_error.clone() });
        op
    };
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": { "title": "Earshot", "version": env!("CARGO_PKG_VERSION") },
        "paths": {
            "/healthz": { "get": { "responses": { "200": { "description": "Up" } } } },
            "/readyz": { "get": { "responses": { "200": { "description": "Ready" }, "503": { "description": "Not ready" } } } },
            "/metrics": { "get": { "responses": { "200": { "description": "Prometheus text" } } } },
            "/v1/schema/case.json": { "get": { "responses": { "200": { "description": "JSON Schema of a case" } } } },
            "/v1/schema/event.json": { "get": { "responses": { "200": { "description": "JSON Schema of a downstream event" } } } },
            "/v1/cases": { "get": admin(json!({ "parameters": [limit.clone(),
                    { "name": "status", "in": "query", "required": false, "schema": { "type": "string",
                        "enum": ["new", "acknowledged", "in_progress", "awaiting_customer", "resolved", "reopened", "closed"] } },
                    { "name": "channel", "in": "query", "required": false, "schema": { "type": "string", "enum": ["web", "email", "telegram", "phone"] } },
                    { "name": "source", "in": "query", "required": false, "schema": { "type": "string" } },
                    { "name": "created_from", "in": "query", "required": false, "description": "RFC 3339; created at or after", "schema": { "type": "string", "format": "date-time" } },
                    { "name": "created_to", "in": "query", "required": false, "description": "RFC 3339; created before", "schema": { "type": "string", "format": "date-time" } },
                    { "name": "breached", "in": "query", "required": false, "schema": { "type": "boolean" } },
                    { "name": "q", "in": "query", "required": false, "description": "Text the case or one of its messages contains", "schema": { "type": "string" } },
                    { "name": "cursor", "in": "query", "required": false, "description": "next_cursor of the previous page", "schema": int64.clone() }],
                "responses": { "200": { "description": "Cases, newest first, and next_cursor while more remain" } } })) },
            "/v1/cases/{case_id}/events": { "post": {
                "summary": "An event from the ticket store about a case (Standard Webhooks, signed with a [[downstream]] secret)",
                "parameters": [
                    { "name": "case_id", "in": "path", "required": true, "schema": { "type": "string" } },
                    id, timestamp, signature
                ],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CaseEventIn" } } } },
                "responses": {
                    "200": { "description": "Applied, already so (changed: false), or a repeat of an applied webhook-id (duplicate: true)" },
                    "400": { "description": "Not an event", "content": json_error.clone() },
                    "401": { "description": "Bad or missing signature, stale timestamp", "content": json_error.clone() },
                    "404": { "description": "No such case", "content": json_error.clone() },
                    "409": { "description": "A transition the status table does not allow (allowed lists the next statuses), or a webhook-id applied before with another body", "content": json_error.clone() },
                    "413": { "description": "Body too large", "content": json_error.clone() },
                    "503": { "description": "Not applied; retry", "content": json_error.clone() }
                }
            }},
            "/v1/feedback/{token}": { "get": {
                "summary": "A survey link: records the answer it carries and shows a thank-you page",
                "parameters": [
                    { "name": "token", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "rating", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 5 } },
                    { "name": "solved", "in": "query", "required": false, "schema": { "type": "string", "enum": ["yes", "no"] } },
                    { "name": "comment", "in": "query", "required": false, "schema": { "type": "string" } }
                ],
                "responses": {
                    "200": { "description": "Recorded (or, without an answer, the survey)", "content": { "text/html": { "schema": { "type": "string" } } } },
                    "400": { "description": "A bad answer", "content": json_error.clone() },
                    "404": { "description": "No such survey", "content": json_error.clone() },
                    "410": { "description": "The survey is closed", "content": { "text/html": { "schema": { "type": "string" } } } },
                    "503": { "description": "Not recorded; retry", "content": json_error.clone() }
                }
            }},
            "/v1/cases/{id}": { "get": admin(json!({ "parameters": [path_id("string", "The case id, case_…")],
                "responses": { "200": { "description": "One case" }, "404": { "description": "No such case", "content": json_error.clone() } } })) },
            "/v1/outbox": { "get": admin(json!({ "parameters": [limit.clone(), { "name": "state", "in": "query", "required": false,
                    "schema": { "type": "string", "enum": ["pending", "held", "leased", "done", "dead", "discarded"] } }],
                "responses": { "200": { "description": "Outbox jobs, newest first; a held job names the job it waits for in held_by" } } })) },
            "/v1/outbox/{id}/replay": { "post": admin(json!({ "parameters": [path_id("integer", "The job id")],
                "responses": { "200": { "description": "Replayed" }, "409": { "description": "No such job, or not dead", "content": json_error.clone() } } })) },
            "/v1/outbox/{id}/discard": { "post": admin(json!({ "parameters": [path_id("integer", "The job id")],
                "responses": { "200": { "description": "Discarded; the jobs it held go on" }, "409": { "description": "No such job, or not dead", "content": json_error.clone() } } })) },
            "/v1/outbox/replay-dead": { "post": admin(json!({ "responses": { "200": { "description": "All dead jobs replayed" } } })) },
            "/v1/quarantine": { "get": admin(json!({ "parameters": [limit.clone()],
                "responses": { "200": { "description": "Quarantined messages" } } })) }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "CaseEventIn": { "type": "object", "required": ["type", "data"], "properties": {
                    "type": { "type": "string", "enum": ["status_changed", "public_reply", "ticket_linked"] },
                    "data": { "type": "object", "description": "status_changed: {status, note?}; public_reply: {text, author_display_name?}; ticket_linked: {ticket_id, ticket_url?}" } } }
            }
        }
    });
    let mut schemas = earshot_channel::openapi::shared_schemas();
    for part in parts {
        if let Some(paths) = doc["paths"].as_object_mut() {
            for (path, item) in part.paths {
                // Two channels on one path (other methods) share its path item.
                match (paths.get_mut(&path), item) {
                    (Some(Value::Object(have)), Value::Object(more)) => have.extend(more),
                    (_, item) => {
                        paths.insert(path, item);
                    }
                }
            }
        }
        schemas.extend(part.schemas);
    }
    if let Some(core) = doc["components"]["schemas"].as_object_mut() {
        core.extend(schemas);
    }
    doc
}
