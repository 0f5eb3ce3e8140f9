//! A channel's share of the gateway's `/openapi.json` (OpenAPI 3.1): the routes it mounts are its
//! own, so it describes them itself ([`crate::Channel::openapi`]), and the gateway adds them to the
//! core's document only when the channel is enabled.
//!
//! The shared schemas (`Error`, every [`crate::ApiError`]; `Receipt`, intake's [`crate::Receipt`])
//! are defined here, beside the types they describe, and always present in the document; a channel
//! refers to them as `#/components/schemas/Error` and `#/components/schemas/Receipt`.

use serde_json::{Map, Value, json};

/// What a channel adds to the document.
#[derive(Debug, Clone, Default)]
pub struct OpenApiPart {
    /// Path → path item, as in the document's `paths`: one operation per route and method the
    /// channel mounts, with every status its handler can answer.
    pub paths: Map<String, Value>,
    /// Name → schema, added to `components.schemas`. Names start with the channel's own
    /// (`WebComplaint`, `PhoneEvent`): the channels share one namespace.
    pub schemas: Map<String, Value>,
}

/// The schemas every channel may refer to; the gateway puts them in every document.
pub fn shared_schemas() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "Error".into(),
        json!({ "type": "object", "required": ["code", "detail"], "properties": {
            "code": { "type": "string" }, "detail": { "type": "string" }, "field": { "type": "string" },
            "allowed": { "type": "array", "items": { "type": "string" } } } }),
    );
    m.insert(
        "Receipt".into(),
        json!({ "type": "object", "required": ["case_id", "case_ref", "status", "duplicate"], "properties": {
            "case_id": { "type": "string" }, "case_ref": { "type": "string" }, "status": { "type": "string" },
            "duplicate": { "type": "boolean" }, "follow_up": { "type": "boolean" },
            "ack": { "type": ["object", "null"], "properties": { "lang": { "type": "string" }, "text": { "type": "string" } } } } }),
    );
    m
}

/// The three Standard Webhooks headers a signed route requires, as parameters.
pub fn webhook_headers() -> [Value; 3] {
    [crate::webhooks::HEADER_ID, crate::webhooks::HEADER_TIMESTAMP, crate::webhooks::HEADER_SIGNATURE]
        .map(|name| json!({ "name": name, "in": "header", "required": true, "schema": { "type": "string" } }))
}

/// The content of an [`crate::ApiError`] answer.
pub fn error_content() -> Value {
    json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } })
}

/// A response answered with an [`crate::ApiError`].
pub fn error(description: &str) -> Value {
    json!({ "description": description, "content": error_content() })
}

/// A response that is an [`crate::ApiError`] or, when axum's own extractor refuses the request
/// before the handler runs (a `Bytes` body over axum's 2 MiB default or unreadable, a path segment
/// that is not UTF-8), axum's plain-text rejection.
pub fn error_or_text(description: &str) -> Value {
    let mut content = error_content();
    content["text/plain"] = json!({ "schema": { "type": "string" } });
    json!({ "description": description, "content": content })
}
