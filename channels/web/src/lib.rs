//! The web channel: signed JSON complaints POSTed by a web site's backend.
//!
//! `POST /v1/inbound/web/{source}` carries Standard Webhooks headers; the body is checked for size,
//! signature, rate and shape — in that order, and before anything reaches intake, so a refused request
//! changes nothing. Acknowledgements go back to the source's `callback_url`, signed with its secret.

pub mod config;
mod openapi;
mod payload;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use earshot_channel::webhooks::{self, SigningKeys, VerifyError};
use earshot_channel::{
    ApiError, Channel, ChannelKind, Intake, OpenApiPart, Outbound, OutboundKind, ReplyRoute, SendError, Sent,
};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;

pub use config::{WebConfig, WebSourceConfig};
pub use payload::{Complaint, parse_complaint};

/// One configured source, with its secret already resolved and decoded.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub name: String,
    /// Every secret in force (several while one is rotated): requests signed with any are accepted,
    /// callbacks are signed with all.
    pub keys: SigningKeys,
    pub callback_url: Option<String>,
    pub rate_per_sec: NonZeroU32,
    pub burst: NonZeroU32,
}

/// Everything the web channel needs, resolved by the gateway's config module.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub max_body_bytes: usize,
    /// How long a client has to send the body (`server.body_read_timeout`); then 408.
    pub body_read_timeout: Duration,
    pub callback_timeout: Duration,
    pub sources: Vec<SourceSettings>,
}

struct Source {
    settings: SourceSettings,
    /// The secrets in force: `settings.keys` until a reload rotates them ([`WebChannel::rotate`]).
    keys: std::sync::RwLock<SigningKeys>,
    limiter: DefaultDirectRateLimiter,
}

impl Source {
    fn keys(&self) -> SigningKeys {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The web channel. Cheap to share: everything is behind one `Arc`.
#[derive(Clone)]
pub struct WebChannel {
    inner: Arc<Inner>,
}

struct Inner {
    max_body_bytes: usize,
    callback_timeout: Duration,
    body_read_timeout: Duration,
    sources: HashMap<String, Source>,
    client: webhooks::WebhookClient,
}

impl WebChannel {
    pub fn new(settings: WebSettings, client: webhooks::WebhookClient) -> WebChannel {
        let sources = settings
            .sources
            .into_iter()
            .map(|s| {
                let quota = Quota::per_second(s.rate_per_sec).allow_burst(s.burst);
                (
                    s.name.clone(),
                    Source {
                        limiter: RateLimiter::direct(quota),
                        keys: std::sync::RwLock::new(s.keys.clone()),
                        settings: s,
                    },
                )
            })
            .collect();
        WebChannel {
            inner: Arc::new(Inner {
                max_body_bytes: settings.max_body_bytes,
                callback_timeout: settings.callback_timeout,
                body_read_timeout: settings.body_read_timeout,
                sources,
                client,
            }),
        }
    }

    /// Puts new secrets in force for the configured sources (a reload); a request already being
    /// checked finishes with the old ones. Returns the names of sources added or removed, which
    /// take a restart.
    pub fn rotate(&self, sources: &[SourceSettings]) -> Vec<String> {
        let mut restart = Vec::new();
        for s in sources {
            match self.inner.sources.get(&s.name) {
                Some(src) => match src.keys.write() {
                    Ok(mut k) => *k = s.keys.clone(),
                    Err(poisoned) => *poisoned.into_inner() = s.keys.clone(),
                },
                None => restart.push(s.name.clone()),
            }
        }
        for name in self.inner.sources.keys() {
            if !sources.iter().any(|s| &s.name == name) {
                restart.push(name.clone());
            }
        }
        restart.sort();
        restart
    }

    pub fn source_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.sources.keys().cloned().collect();
        names.sort();
        names
    }
}

#[derive(Clone)]
struct RouteState {
    channel: WebChannel,
    intake: Arc<dyn Intake>,
}

#[async_trait]
impl Channel for WebChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Web
    }

    fn routes(&self, intake: Arc<dyn Intake>) -> Option<axum::Router> {
        let state = RouteState { channel: self.clone(), intake };
        Some(axum::Router::new().route("/v1/inbound/web/{source}", post(inbound)).with_state(state))
    }

    fn openapi(&self) -> Option<OpenApiPart> {
        Some(openapi::part())
    }

    async fn send(&self, msg: &Outbound) -> Result<Sent, SendError> {
        let ReplyRoute::Web { source, callback_url } = &msg.reply_route else {
            return Err(SendError::Permanent { reason: "not a web reply route".into() });
        };
        let Some(url) = callback_url else {
            return Err(SendError::Permanent { reason: format!("source {source} has no callback_url") });
        };
        let Some(src) = self.inner.sources.get(source) else {
            return Err(SendError::Permanent { reason: format!("source {source} is no longer configured") });
        };
        let (kind, author, survey) = match &msg.kind {
            OutboundKind::Ack => ("case.acknowledged", None, None),
            OutboundKind::StatusUpdate { .. } => ("case.status_changed", None, None),
            OutboundKind::AgentReply { author } => ("case.public_reply", author.as_deref(), None),
            OutboundKind::Survey(s) => ("case.survey", None, Some(s)),
        };
        let body = serde_json::to_vec(&CallbackBody {
            kind,
            case_id: &msg.case_id,
            case_ref: msg.case_ref.as_str(),
            status: msg.status.as_deref(),
            lang: msg.lang.as_str(),
            text: &msg.text,
            author,
            survey,
        })
        .map_err(|e| SendError::Permanent { reason: e.to_string() })?;
        let url = webhooks::webhook_uri(url).map_err(|reason| SendError::Permanent { reason })?;
        webhooks::post_signed(&self.inner.client, &url, &src.keys(), &msg.id, body.into(), self.inner.callback_timeout)
            .await?;
        Ok(Sent::default())
    }

    fn senders(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .sources
            .values()
            .filter(|s| s.settings.callback_url.is_some())
            .map(|s| s.settings.name.clone())
            .collect();
        names.sort();
        names
    }

    fn send_deadline(&self, _sender: &str) -> Duration {
        self.inner.callback_timeout
    }
}

#[derive(Serialize)]
/// A callback: `{type, case_id, case_ref, status, lang, text}`, plus `author` of a public reply and
/// `survey` (question, choices with their one-click links, the feedback link) of a survey.
struct CallbackBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    case_id: &'a str,
    case_ref: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    lang: &'static str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    author: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    survey: Option<&'a earshot_channel::Survey>,
}

async fn inbound(
    State(st): State<RouteState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let inner = &st.channel.inner;
    let src = inner
        .sources
        .get(&source)
        .ok_or_else(|| ApiError::not_found(format!("no web source named {source:?} is configured")))?;

    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than max_body_bytes ({} bytes)", inner.max_body_bytes),
        )
    };
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > inner.max_body_bytes) {
        return Err(too_large());
    }
    // A body that does not arrive in time is refused (408); one past the limit, 413.
    let body =
        match tokio::time::timeout(inner.body_read_timeout, axum::body::to_bytes(body, inner.max_body_bytes)).await {
            Ok(Ok(body)) => body,
            Ok(Err(e)) if is_length_limit(&e) => return Err(too_large()),
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "body_unreadable",
                    "the request body could not be read",
                ));
            }
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {} s", inner.body_read_timeout.as_secs_f32()),
                ));
            }
        };

    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc();
    src.keys()
        .verify(
            header(webhooks::HEADER_ID),
            header(webhooks::HEADER_TIMESTAMP),
            header(webhooks::HEADER_SIGNATURE),
            &body,
            now.unix_timestamp(),
        )
        .map_err(signature_error)?;
    let webhook_id = header(webhooks::HEADER_ID).unwrap_or_default().to_owned();

    if let Err(not_until) = src.limiter.check() {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Err(ApiError::rate_limited(wait.max(Duration::from_secs(1))));
    }

    let complaint = parse_complaint(&body)?;
    let mut inbound = complaint.into_inbound(&src.settings, &webhook_id, now);
    inbound.content_digest = Some(earshot_channel::sha256_hex(&body));
    let receipt = st.intake.submit(inbound).await?;
    Ok((StatusCode::ACCEPTED, Json(receipt)).into_response())
}

/// Whether reading a body failed on the size limit (rather than on the connection).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn signature_error(e: VerifyError) -> ApiError {
    let code = match e {
        VerifyError::MissingHeader(_) => "missing_signature",
        VerifyError::InvalidTimestamp | VerifyError::StaleTimestamp(_) => "stale_timestamp",
        VerifyError::NoMatch => "invalid_signature",
    };
    ApiError::unauthorized(code, e.to_string())
}
