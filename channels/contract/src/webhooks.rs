//! Standard Webhooks (<https://www.standardwebhooks.com/>) signing and verification.
//!
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the bytes of a
//! `whsec_<base64>` secret. Written here rather than taken from the `standardwebhooks` crate because
//! that crate pins older `hmac`/`base64` versions and adds nothing beyond these few lines.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// How far a timestamp may be from our clock, either way.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was not accepted. The messages name no secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a Unix time in seconds")]
    InvalidTimestamp,
    #[error("webhook-timestamp is {0} s away from the server clock (tolerance 300 s)")]
    StaleTimestamp(i64),
    #[error("no signature in webhook-signature matches")]
    NoMatch,
}

/// A `whsec_` secret that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret must be whsec_ followed by base64 (at least 16 bytes)")]
pub struct InvalidSecret;

/// A decoded signing key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Decodes `whsec_<base64>`; the prefix is required so that a password pasted by mistake is caught.
    pub fn from_whsec(secret: &str) -> Result<SigningKey, InvalidSecret> {
        let b64 = secret.strip_prefix("whsec_").ok_or(InvalidSecret)?;
        let key = STANDARD.decode(b64.trim()).map_err(|_| InvalidSecret)?;
        if key.len() < 16 {
            return Err(InvalidSecret);
        }
        Ok(SigningKey(key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // `new_from_slice` accepts keys of any length for HMAC.
        let mut mac = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes()))
    }

    /// Checks the three headers against `body`, with `now` as the server clock (Unix seconds).
    /// Returns the message id on success. The comparison is constant-time.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let id = id.filter(|s| !s.is_empty()).ok_or(VerifyError::MissingHeader(HEADER_ID))?;
        let ts = timestamp.ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
        let signature = signature.ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;
        let ts: i64 = ts.trim().parse().map_err(|_| VerifyError::InvalidTimestamp)?;
        // Saturating: a timestamp near i64::MIN or i64::MAX must not overflow the difference (a
        // panic in debug builds, a wrapped-around "fresh" timestamp in release builds).
        let skew = now.saturating_sub(ts);
        if skew.unsigned_abs() > DEFAULT_TOLERANCE_SECS.unsigned_abs() {
            return Err(VerifyError::StaleTimestamp(skew));
        }
        let mac = self.mac(id, ts, body);
        for candidate in signature.split_whitespace() {
            let Some(b64) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(sig) = STANDARD.decode(b64) else {
                continue;
            };
            if mac.clone().verify_slice(&sig).is_ok() {
                return Ok(());
            }
        }
        Err(VerifyError::NoMatch)
    }
}

/// The secrets of one sender or receiver, several during a rotation: a message is signed with each
/// (Standard Webhooks allows a space-separated list of `v1,` signatures) and a signature made with
/// any of them is accepted. The first is the current one.
#[derive(Clone, Debug)]
pub struct SigningKeys(Vec<SigningKey>);

impl SigningKeys {
    /// `None` for an empty list.
    pub fn new(keys: Vec<SigningKey>) -> Option<SigningKeys> {
        (!keys.is_empty()).then_some(SigningKeys(keys))
    }

    /// The `webhook-signature` value: one `v1,` signature per secret, space-separated.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        self.0.iter().map(|k| k.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ")
    }

    /// Accepts a signature made with any of the secrets.
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let mut last = Err(VerifyError::NoMatch);
        for key in &self.0 {
            last = key.verify(id, timestamp, signature, body, now);
            if !matches!(last, Err(VerifyError::NoMatch)) {
                // Success, or a problem no other secret can fix (a header, the timestamp).
                return last;
            }
        }
        last
    }
}

impl From<SigningKey> for SigningKeys {
    fn from(key: SigningKey) -> Self {
        SigningKeys(vec![key])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_become_uris_the_way_a_browser_reads_them() {
        let uri = webhook_uri("https://tickets.example.com/hooks?x=1").expect("https");
        assert_eq!(
            (uri.scheme_str(), uri.host(), uri.path(), uri.query()),
            (Some("https"), Some("tickets.example.com"), "/hooks", Some("x=1"))
        );
        // A bare host gets its root path; a host in Unicode its punycode; a space is encoded.
        assert_eq!(webhook_uri("http://127.0.0.1:8080").expect("bare").to_string(), "http://127.0.0.1:8080/");
        assert_eq!(
            webhook_uri("http://bücher.example/a b").expect("idn").to_string(),
            "http://xn--bcher-kva.example/a%20b"
        );
        assert!(webhook_uri("ftp://example.com/x").expect_err("ftp").contains("not an http(s) URL"));
        assert!(webhook_uri("not a url").expect_err("junk").contains("not a URL"));
    }

    #[test]
    fn several_secrets_sign_with_each_and_accept_any() {
        let new = SigningKey::from_whsec("whsec_bmV3LXNlY3JldC1mb3Itcm90YXRpb24=").expect("new");
        let old = SigningKey::from_whsec(SECRET).expect("old");
        let other = SigningKey::from_whsec("whsec_b3RoZXItc2VjcmV0LW5vdC1saXN0ZWQ=").expect("other");
        let keys = SigningKeys::new(vec![new.clone(), old.clone()]).expect("two keys");
        let header = keys.sign(ID, TS, BODY);
        assert_eq!(header.split(' ').count(), 2);
        assert_eq!(header.split(' ').nth(1), Some(SIG), "the old secret's signature is the spec vector's");
        let ts = TS.to_string();
        // A receiver that knows either secret accepts the pair.
        for key in [&new, &old] {
            assert_eq!(key.verify(Some(ID), Some(&ts), Some(&header), BODY, TS), Ok(()));
        }
        // Signed with either secret alone, the pair of secrets accepts it; with another, not.
        for key in [&new, &old] {
            let sig = key.sign(ID, TS, BODY);
            assert_eq!(keys.verify(Some(ID), Some(&ts), Some(&sig), BODY, TS), Ok(()));
        }
        let sig = other.sign(ID, TS, BODY);
        assert_eq!(keys.verify(Some(ID), Some(&ts), Some(&sig), BODY, TS), Err(VerifyError::NoMatch));
        assert!(SigningKeys::new(Vec::new()).is_none());
    }

    // The example from the Standard Webhooks specification's reference test vectors.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_spec_vector() {
        let key = SigningKey::from_whsec(SECRET).expect("valid secret");
        assert_eq!(key.sign(ID, TS, BODY), SIG);
        assert_eq!(key.verify(Some(ID), Some(&TS.to_string()), Some(SIG), BODY, TS + 10), Ok(()));
    }

    /// id, timestamp, signature, body, server clock, expected error.
    type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a [u8], i64, VerifyError);

    #[test]
    fn refuses_what_it_should() {
        let key = SigningKey::from_whsec(SECRET).expect("valid secret");
        let ts = TS.to_string();
        let cases: [Case<'_>; 6] = [
            (None, Some(&ts), Some(SIG), BODY, TS, VerifyError::MissingHeader(HEADER_ID)),
            (Some(ID), None, Some(SIG), BODY, TS, VerifyError::MissingHeader(HEADER_TIMESTAMP)),
            (Some(ID), Some(&ts), None, BODY, TS, VerifyError::MissingHeader(HEADER_SIGNATURE)),
            (Some(ID), Some("soon"), Some(SIG), BODY, TS, VerifyError::InvalidTimestamp),
            (Some(ID), Some(&ts), Some(SIG), BODY, TS + 301, VerifyError::StaleTimestamp(301)),
            (Some(ID), Some(&ts), Some(SIG), br#"{"test": 2432232315}"#, TS, VerifyError::NoMatch),
        ];
        for (id, ts, sig, body, now, want) in cases {
            assert_eq!(key.verify(id, ts, sig, body, now), Err(want));
        }
        // Timestamps at the ends of i64: stale, never an overflow.
        for extreme in [i64::MIN, i64::MAX, i64::MIN + 1] {
            let t = extreme.to_string();
            let sig = key.sign(ID, extreme, BODY);
            let got = key.verify(Some(ID), Some(&t), Some(&sig), BODY, TS);
            assert!(matches!(got, Err(VerifyError::StaleTimestamp(_))), "{extreme}: {got:?}");
        }
        // A signature list with one good entry among others passes; v2 entries are ignored.
        let list = format!("v2,abc v1,AAAA {SIG}");
        assert_eq!(key.verify(Some(ID), Some(&ts), Some(&list), BODY, TS), Ok(()));
    }

    #[test]
    fn rejects_bad_secrets() {
        assert!(SigningKey::from_whsec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::from_whsec("whsec_!!!").is_err());
        assert!(SigningKey::from_whsec("whsec_c2hvcnQ=").is_err());
    }
}

/// The answer of a receiver that took the message (2xx).
#[derive(Debug, Clone)]
pub struct Delivered {
    pub status: u16,
    /// The first 64 KiB of the answer, for fields such as `ticket_id`.
    pub body: bytes::Bytes,
}

/// Longest answer body kept from a receiver.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The client signed webhooks go out on: hyper's pooled HTTP/1.1 client, over TCP or rustls with
/// the webpki roots (as reqwest's `rustls-tls`, which the rest of the gateway uses).
///
/// Not reqwest here, because this is the forwarding path: one delivery per complaint. For each
/// request reqwest adds a redirect layer, a retry layer, a copy of its default headers and a parse
/// of the URL again from the answer; swapping it for hyper's own connection in the load generator
/// took a third off that program's CPU per request. hyper's client keeps the same per-host pool,
/// and it never follows a redirect, which a webhook must not do (see [`post_signed`]).
#[derive(Clone)]
pub struct WebhookClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
    user_agent: http::HeaderValue,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").field("user_agent", &self.user_agent).finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// `user_agent` goes on every request; a connection not made within `connect_timeout` fails
    /// the attempt (which then counts against the request's own deadline anyway).
    pub fn new(user_agent: &'static str, connect_timeout: std::time::Duration) -> WebhookClient {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(https);
        WebhookClient { client, user_agent: http::HeaderValue::from_static(user_agent) }
    }
}

/// A webhook's URL as the client takes it, from an http(s) URL: parsed with the WHATWG rules
/// (punycode hosts, percent-encoded paths), then as a URI.
pub fn webhook_uri(url: &str) -> Result<http::Uri, String> {
    let parsed = crate::config::parse_http_url(url)?;
    http::Uri::try_from(parsed.as_str()).map_err(|e| format!("{url:?} is not a URI ({e})"))
}

/// An answer read within the deadline: its status, the two headers the outcome depends on, and a
/// bounded prefix of its body.
struct Answer {
    status: http::StatusCode,
    location: Option<String>,
    retry_after: Option<std::time::Duration>,
    body: Result<bytes::Bytes, String>,
}

/// POSTs one signed message and classifies the answer the way Standard Webhooks senders do:
/// 2xx is success; 410 Gone is permanent; 429/502/503/504 back off (honouring `Retry-After`);
/// every other answer, 3xx included, is a failure worth retrying; no answer within `timeout`
/// (connecting, sending and reading the whole answer) is transient too.
pub async fn post_signed(
    client: &WebhookClient,
    url: &http::Uri,
    key: &SigningKeys,
    id: &str,
    body: bytes::Bytes,
    timeout: std::time::Duration,
) -> Result<Delivered, crate::SendError> {
    use crate::SendError;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = key.sign(id, now, &body);
    let request = http::Request::post(url.clone())
        .header(http::header::USER_AGENT, client.user_agent.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(HEADER_ID, id)
        .header(HEADER_TIMESTAMP, now)
        .header(HEADER_SIGNATURE, signature)
        .body(http_body_util::Full::new(body))
        .map_err(|e| SendError::Permanent { reason: format!("cannot build the request: {e}") })?;
    // One deadline over connecting, sending and reading: a receiver that accepts and never
    // answers, or answers a byte at a time, fails the attempt all the same. Dropping the exchange
    // at the deadline drops its connection, which is never given back to the pool half-read.
    let answer = match tokio::time::timeout(timeout, exchange(client, request)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(SendError::Transient { reason: error_chain(&e), retry_after: None }),
        Err(_) => {
            return Err(SendError::Transient {
                retry_after: None,
                reason: format!("no answer within {} s", timeout.as_secs_f32()),
            });
        }
    };
    let Answer { status, location, retry_after, body } = answer;
    let answer = match body {
        Ok(body) => body,
        Err(e) if status.is_success() => {
            return Err(SendError::Transient { reason: format!("answer cut off: {e}"), retry_after: None });
        }
        Err(_) => bytes::Bytes::new(),
    };
    if status.is_success() {
        return Ok(Delivered { status: status.as_u16(), body: answer });
    }
    let snippet: String = String::from_utf8_lossy(&answer).chars().take(200).collect();
    // A redirect is never followed (hyper's client does not): a POST followed as a GET would reach
    // something else, and a 2xx there would mark the event delivered.
    let reason = match location.filter(|_| status.is_redirection()) {
        Some(to) => format!("HTTP {status} to {to} (redirects are not followed): {}", snippet.trim()),
        None => format!("HTTP {status}: {}", snippet.trim()),
    };
    match status.as_u16() {
        410 => Err(SendError::Permanent { reason }),
        429 | 502 | 503 | 504 => Err(SendError::Transient { reason, retry_after }),
        _ => Err(SendError::Transient { reason, retry_after: None }),
    }
}

/// Sends the request and reads the answer, keeping at most [`MAX_ANSWER_BYTES`] of its body: a
/// receiver cannot make us buffer without limit. A body cut off by the connection is an `Err`
/// in [`Answer::body`], which only a 2xx answer cares about.
async fn exchange(
    client: &WebhookClient,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    use http_body_util::BodyExt;
    let resp = client.client.request(request).await?;
    let status = resp.status();
    let header = |name| resp.headers().get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
    let location = header(http::header::LOCATION).map(str::to_owned);
    let retry_after = header(http::header::RETRY_AFTER).and_then(parse_retry_after);
    let mut incoming = resp.into_body();
    let mut answer = bytes::BytesMut::new();
    let body = loop {
        if answer.len() >= MAX_ANSWER_BYTES {
            break Ok(answer.freeze());
        }
        match incoming.frame().await {
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    answer.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER_BYTES - answer.len())]);
                }
            }
            Some(Err(e)) => break Err(error_chain(&e)),
            None => break Ok(answer.freeze()),
        }
    };
    Ok(Answer { status, location, retry_after, body })
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<std::time::Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
