//! The web route in the gateway's `/openapi.json`: every status `inbound` (lib.rs) can answer.

use earshot_channel::OpenApiPart;
use earshot_channel::openapi::{error, error_or_text};
use serde_json::json;

pub fn part() -> OpenApiPart {
    let [id, timestamp, signature] = earshot_channel::openapi::webhook_headers();
    let mut part = OpenApiPart::default();
    part.paths.insert(
        "/v1/inbound/web/{source}".into(),
        json!({ "post": {
            "summary": "Submit a complaint from a web site's backend (Standard Webhooks signed)",
            "parameters": [
                { "name": "source", "in": "path", "required": true, "schema": { "type": "string" } },
                id, timestamp, signature
            ],
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/WebComplaint" } } } },
            "responses": {
                "202": { "description": "Stored, or a repeat of a stored webhook-id (duplicate: true)",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Receipt" } } } },
                "400": error_or_text("Malformed body or a field refused (field names it), or a body that could not be read"),
                "401": error("Bad or missing signature, stale timestamp"),
                "404": error("Unknown source"),
                "408": error("The body did not arrive within server.body_read_timeout"),
                "409": error("This webhook-id was received before with a different body"),
                "413": error("Body over max_body_bytes"),
                "429": error("Rate limited; see Retry-After"),
                "503": error("Not stored (store unavailable, or shutting down); retry after Retry-After")
            }
        }}),
    );
    part.schemas.insert(
        "WebComplaint".into(),
        json!({ "type": "object", "required": ["text", "customer"], "properties": {
            "customer": { "type": "object", "properties": {
                "name": { "type": "string" }, "email": { "type": "string" }, "phone": { "type": "string" },
                "user_id": { "type": "string" }, "language": { "type": "string" }, "tier": { "type": "string" } } },
            "subject": { "type": "string" }, "text": { "type": "string" }, "category": { "type": "string" },
            "order_id": { "type": "string" },
            "attachments": { "type": "array", "items": { "type": "object", "required": ["name", "media_type"], "properties": {
                "name": { "type": "string" }, "media_type": { "type": "string" }, "size": { "type": "integer" }, "url": { "type": "string" } } } },
            "metadata": { "type": "object" } } }),
    );
    part
}
