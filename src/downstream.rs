//! Forwarding case events to the ticket store per the Standard Webhooks spec.
//!
//! The job's id is the `webhook-id`, the same on every retry, so the receiver can drop repeats. A 2xx
//! answer may carry `{"ticket_id": "…"}`, which is stored on the case.

use earshot_channel::SendError;
use earshot_channel::webhooks::post_signed;

use crate::config::Endpoint;

/// Delivers one event body; returns the ticket id the store answered with, if any.
pub async fn deliver(
    client: &earshot_channel::webhooks::WebhookClient,
    ep: &Endpoint,
    event_id: &str,
    body: String,
) -> Result<Option<String>, SendError> {
    let answer = post_signed(client, &ep.url, &ep.keys, event_id, body.into(), ep.timeout).await?;
    Ok(ticket_id(&answer.body))
}

/// `ticket_id` of a JSON answer, as a string or a number; anything else is ignored.
fn ticket_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.get("ticket_id")? {
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 200 => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_ticket_ids() {
        assert_eq!(super::ticket_id(br#"{"ticket_id":"T-1"}"#), Some("T-1".into()));
        assert_eq!(super::ticket_id(br#"{"ticket_id":42}"#), Some("42".into()));
        assert_eq!(super::ticket_id(br#"{"ticket_id":""}"#), None);
        assert_eq!(super::ticket_id(b"ok"), None);
        assert_eq!(super::ticket_id(b""), None);
    }
}
