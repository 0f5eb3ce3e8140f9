//! The webhook route in the gateway's `/openapi.json` (webhook mode only, as the route itself):
//! every status `webhook` (lib.rs) can answer.

use earshot_channel::OpenApiPart;
use earshot_channel::openapi::{error, error_or_text};
use serde_json::json;

pub fn part() -> OpenApiPart {
    let mut part = OpenApiPart::default();
    part.paths.insert(
        "/v1/inbound/telegram".into(),
        json!({ "post": {
            "summary": "One Telegram update (webhook mode), answered 200 once its effect is committed",
            "parameters": [
                { "name": "X-Telegram-Bot-Api-Secret-Token", "in": "header", "required": true,
                    "description": "channels.telegram.webhook_secret, as given to setWebhook", "schema": { "type": "string" } }
            ],
            "requestBody": { "required": true, "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/TelegramUpdate" } } } },
            "responses": {
                "200": { "description": "Committed (or ignored: not a kind of update the bot handles); Telegram does not redeliver it",
                    "content": { "application/json": { "schema": { "type": "object" } } } },
                // serde_json refuses the body (JSON), or axum's `Bytes` could not read it (text).
                "400": error_or_text("Not a Telegram update, or a body that could not be read"),
                "401": error("X-Telegram-Bot-Api-Secret-Token is missing or wrong"),
                // Only axum's default body limit (2 MiB) applies to this route: its plain-text answer.
                "413": { "description": "Body over 2 MiB", "content": { "text/plain": { "schema": { "type": "string" } } } },
                "503": error("Not committed (store unavailable, or shutting down); Telegram redelivers it")
            }
        }}),
    );
    // Only what the handler relies on: Telegram's Update object, with the kinds the bot asks for.
    part.schemas.insert(
        "TelegramUpdate".into(),
        json!({ "type": "object", "required": ["update_id"],
            "description": "A Telegram Bot API Update (https://core.telegram.org/bots/api#update)",
            "properties": {
                "update_id": { "type": "integer" },
                "message": { "type": "object" },
                "edited_message": { "type": "object" },
                "callback_query": { "type": "object" } } }),
    );
    part
}
