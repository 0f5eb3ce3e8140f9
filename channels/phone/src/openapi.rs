//! The phone routes in the gateway's `/openapi.json`: every status each handler in lib.rs can
//! answer. The provider's callbacks share `checked_form` (415, 413, 400, 403) and `caller` (400);
//! only the ones that reach intake can answer 503. None can answer 409: their messages carry no
//! content digest, so a repeated id is a duplicate, never a conflict (the PBX event's does).

use earshot_channel::OpenApiPart;
use earshot_channel::openapi::{error, error_or_text};
use serde_json::{Value, json};

use crate::SMS_ROUTE;

const FORM: &str = "application/x-www-form-urlencoded";

/// A form callback from the provider: `fields` are the form's parameters this route reads,
/// `required` those it refuses to go without (the provider sends more, which are ignored);
/// `intake`, whether it reaches intake (and so can answer 503).
fn callback(summary: &str, fields: &[(&str, &str)], required: &[&str], intake: bool) -> Value {
    let properties: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(name, what)| ((*name).to_owned(), json!({ "type": "string", "description": what })))
        .collect();
    let mut responses = json!({
        "200": { "description": "TwiML", "content": { "text/xml": { "schema": { "type": "string" } } } },
        "400": error("X-Twilio-Signature missing, a required parameter missing (field names it), From not a phone number, or a body that could not be read"),
        "403": error("X-Twilio-Signature does not match the public URL and the form"),
        "413": error("Body over channels.phone.max_body_bytes"),
        "415": error("Not application/x-www-form-urlencoded")
    });
    if intake {
        responses["503"] = error(
            "The store is unavailable, or the gateway is shutting down; nothing was stored, the provider may retry",
        );
    }
    json!({ "post": {
        "summary": summary,
        "parameters": [{ "name": "X-Twilio-Signature", "in": "header", "required": true,
            "description": "Base64 HMAC-SHA1, keyed with auth_token, of channels.phone.public_url + the path and query, then every form parameter's name and value sorted by name",
            "schema": { "type": "string" } }],
        "requestBody": { "required": true, "content": { FORM: {
            "schema": { "type": "object", "properties": properties, "required": required } } } },
        "responses": responses
    }})
}

pub fn part() -> OpenApiPart {
    let from = ("From", "The caller's number");
    let call_sid = ("CallSid", "The provider's id of the call");
    let digits = ("Digits", "The keys pressed");
    let mut part = OpenApiPart::default();
    let mut path = |p: &str, item: Value| part.paths.insert(p.to_owned(), item);
    let mut sms = callback(
        "An SMS to the hotline's number: a complaint, a follow-up, or a keyword (STATUS, STOP, START) answered in the TwiML",
        &[
            from,
            ("MessageSid", "The provider's id of the message (or SmsSid)"),
            ("SmsSid", "The older name of MessageSid"),
            ("Body", "The text"),
            ("NumMedia", "How many MediaUrlN / MediaContentTypeN pairs follow"),
        ],
        &["From"],
        true,
    );
    // MessageSid, or SmsSid as older callbacks name it: one of the two.
    sms["post"]["requestBody"]["content"][FORM]["schema"]["anyOf"] =
        json!([{ "required": ["MessageSid"] }, { "required": ["SmsSid"] }]);
    path(SMS_ROUTE, sms);
    path(
        "/v1/inbound/phone/voice",
        callback("A call comes in: the greeting and the menu", &[from, call_sid], &["From"], false),
    );
    path(
        "/v1/inbound/phone/voice/menu",
        callback("The key pressed at the menu", &[from, call_sid, digits], &["From"], false),
    );
    path(
        "/v1/inbound/phone/voice/recorded",
        callback(
            "The complaint is recorded: the case is made and its reference read back",
            &[
                from,
                call_sid,
                ("RecordingUrl", "Where the recording is"),
                ("RecordingDuration", "Its length in seconds"),
            ],
            &["From", "CallSid"],
            true,
        ),
    );
    path(
        "/v1/inbound/phone/voice/status",
        callback(
            "A keyed case reference, read back with its status when the case is the caller's",
            &[from, call_sid, digits],
            &["From"],
            true,
        ),
    );
    path(
        "/v1/inbound/phone/transcription",
        callback(
            "The recording's transcription: it replaces the call's placeholder text",
            &[
                from,
                call_sid,
                ("RecordingUrl", "Where the recording is"),
                ("TranscriptionText", "The text"),
                ("TranscriptionStatus", "completed or failed"),
            ],
            &["From", "CallSid"],
            true,
        ),
    );
    let [id, timestamp, signature] = earshot_channel::openapi::webhook_headers();
    let receipt = json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Receipt" } } });
    path(
        "/v1/inbound/phone/events/{source}",
        json!({ "post": {
            "summary": "A call event from a PBX (Standard Webhooks signed with the pbx_sources secret)",
            "parameters": [
                { "name": "source", "in": "path", "required": true, "description": "A [[channels.phone.pbx_sources]] name", "schema": { "type": "string" } },
                id, timestamp, signature
            ],
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PhoneEvent" } } } },
            "responses": {
                "200": { "description": "A repeat of a stored call_id (duplicate: true)", "content": receipt.clone() },
                "202": { "description": "Stored", "content": receipt },
                "400": error_or_text("Not a PBX event, a field refused (field names it), or a body that could not be read"),
                "401": error("Bad or missing signature, stale timestamp"),
                "404": error("Unknown source"),
                "409": error("This call_id was received before with a different body"),
                // Over max_body_bytes: JSON; over axum's 2 MiB default (a larger max_body_bytes): text.
                "413": error_or_text("Body over channels.phone.max_body_bytes"),
                "503": error("Not stored (store unavailable, or shutting down); retry after Retry-After")
            }
        }}),
    );
    path(
        "/v1/schema/phone-event.json",
        json!({ "get": { "responses": { "200": { "description": "JSON Schema of a PBX event",
            "content": { "application/json": { "schema": { "type": "object" } } } } } } }),
    );
    // The served schema, without its `$schema`: in the document it is in OpenAPI's own dialect.
    let mut event = crate::pbx::schema();
    if let Some(o) = event.as_object_mut() {
        o.remove("$schema");
    }
    part.schemas.insert("PhoneEvent".into(), event);
    part
}
