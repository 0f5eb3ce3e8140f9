//! SMS through the provider's Messages API: a form POST of `To`, `From` and `Body` to
//! `{api_url}/2010-04-01/Accounts/{sid}/Messages.json` with HTTP basic auth (account SID, auth token).
//! 429 and 5xx are retried (honouring `Retry-After`); an invalid or unsubscribed number is
//! unreachable; any other refusal is permanent.

use earshot_channel::{Outbound, ReplyRoute, SendError, Sent};
use secrecy::ExposeSecret;

use crate::config::PhoneSettings;

/// Provider error codes that mean the number cannot get SMS: not a valid number (21211), not a
/// mobile number (21614), unsubscribed (21610), unreachable (30003, 30005, 30006).
const UNREACHABLE_CODES: [i64; 6] = [21211, 21610, 21614, 30003, 30005, 30006];

/// SMS segments of `text`: 160 GSM-7 characters (153 each when split), or 70 UCS-2 characters (67
/// each when split) as soon as one character is outside GSM-7, as Chinese always is.
pub fn segments(text: &str) -> usize {
    let gsm = text.chars().all(|c| c.is_ascii() && (c == '\n' || c == '\r' || !c.is_ascii_control()));
    let n = if gsm { text.chars().count() } else { text.encode_utf16().count() };
    let (single, part) = if gsm { (160, 153) } else { (70, 67) };
    if n <= single { 1 } else { n.div_ceil(part) }
}

/// Most segments one answer may take: a longer agent reply is shortened (with `…`) to fit, since
/// every segment is billed and a phone shows a long concatenated message poorly.
pub const MAX_SEGMENTS: usize = 5;

/// The SMS body: the rendered text, shortened to [`MAX_SEGMENTS`] segments.
fn body(msg: &Outbound) -> String {
    shorten(msg.text.trim(), MAX_SEGMENTS)
}

/// `text` cut (at a character) so that it fits in `max` segments, ending with `…` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if segments(text) <= max {
        return text.to_owned();
    }
    let mut out: String = text.to_owned();
    while !out.is_empty() && segments(&format!("{out}…")) > max {
        // Cut a tenth at a time, then one character: a few steps for any length.
        let chars = out.chars().count();
        let keep = if segments(&format!("{out}…")) > max + 1 { chars - chars.div_ceil(10) } else { chars - 1 };
        out = out.chars().take(keep).collect();
    }
    format!("{}…", out.trim_end())
}

pub(crate) async fn send(client: &reqwest::Client, s: &PhoneSettings, msg: &Outbound) -> Result<Sent, SendError> {
    let ReplyRoute::Direct { recipient, .. } = &msg.reply_route else {
        return Err(SendError::Permanent { reason: "not a phone reply route".into() });
    };
    let text = body(msg);
    let url = format!("{}/2010-04-01/Accounts/{}/Messages.json", s.api_url, s.account_sid);
    let response = client
        .post(&url)
        .basic_auth(&s.account_sid, Some(s.auth_token.expose_secret()))
        .form(&[("To", recipient.as_str()), ("From", s.from_number.as_str()), ("Body", text.as_str())])
        .timeout(s.send_timeout)
        .send()
        .await
        .map_err(|e| SendError::Transient {
            reason: format!("SMS API unreachable: {}", e.without_url()),
            retry_after: None,
        })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(earshot_channel::webhooks::parse_retry_after);
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        tracing::debug!(segments = segments(&text), to = %recipient, "SMS sent.");
        return Ok(Sent {
            provider_id: answer["sid"].as_str().map(str::to_owned),
            segments: u32::try_from(segments(&text)).ok(),
        });
    }
    let code = answer["code"].as_i64().unwrap_or_default();
    let message = answer["message"].as_str().unwrap_or_default();
    let reason = format!("SMS API {}: {code} {message}", status.as_u16());
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(SendError::Transient { reason, retry_after });
    }
    if UNREACHABLE_CODES.contains(&code) {
        return Err(SendError::Unreachable { reason });
    }
    if status.as_u16() == 401 {
        // The operator fixes the credentials and reloads; the message should still go out then.
        return Err(SendError::Transient {
            reason: format!("{reason} (check channels.phone.account_sid and auth_token)"),
            retry_after: None,
        });
    }
    Err(SendError::Permanent { reason })
}

#[cfg(test)]
mod tests {
    use super::segments;

    #[test]
    fn segment_counts() {
        assert_eq!(segments("Your case 4827-1936-5 is resolved."), 1);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"投".repeat(70)), 1);
        assert_eq!(segments(&"投".repeat(71)), 2);
        assert_eq!(segments(&"投".repeat(134)), 2);
        assert_eq!(segments(&"投".repeat(135)), 3);
    }

    #[test]
    fn long_answers_are_shortened_to_five_segments() {
        let long = "您的投诉我们已经转交给仓库，".repeat(100);
        let short = super::shorten(&long, super::MAX_SEGMENTS);
        assert!(segments(&short) <= super::MAX_SEGMENTS, "{}", segments(&short));
        assert!(short.ends_with('…') && short.chars().count() > 300, "{}", short.chars().count());
        assert_eq!(super::shorten("short", 5), "short");
    }
}
