//! The phone channel: the provider's SMS callbacks (Twilio-compatible, form-encoded and signed with
//! `X-Twilio-Signature`) become complaints, and answers go back by SMS through its Messages API.
//!
//! Every callback is checked before anything is read from it: the signature is computed over the
//! public URL the provider called (configurable, since a proxy changes what the gateway sees) and
//! the form's parameters. Calls are answered with TwiML (`voice.rs`). A call-centre system that is
//! not the provider posts signed JSON events (`pbx.rs`).

pub mod config;
pub mod number;
mod openapi;
pub mod pbx;
mod send;
pub mod signature;
mod texts;
pub mod voice;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use earshot_channel::{
    ApiError, AttachmentMeta, Channel, ChannelKind, CustomerInfo, ExternalId, Identity, IdentityKind, Inbound, Intake,
    Lang, OpenApiPart, Outbound, Recipient, ReplyRoute, SendError, Sent, ThreadHint,
};
use http_body_util::BodyExt as _;
use secrecy::ExposeSecret;

pub use config::{PhoneConfig, PhoneSettings};

/// The SMS route, as the provider is configured to call it (under the public URL).
pub const SMS_ROUTE: &str = "/v1/inbound/phone/sms";

#[derive(Clone)]
pub struct PhoneChannel {
    inner: Arc<Inner>,
}

struct Inner {
    settings: PhoneSettings,
    client: reqwest::Client,
}

impl PhoneChannel {
    pub fn new(settings: PhoneSettings, client: reqwest::Client) -> PhoneChannel {
        PhoneChannel { inner: Arc::new(Inner { settings, client }) }
    }
}

/// A callback's form, checked: its parameters in order, with the signature verified.
struct Form {
    params: Vec<(String, String)>,
}

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

/// Reads and checks a callback: form-encoded (415 otherwise), within the size limit (413), signed
/// (400 without the header, 403 with a wrong one). Nothing is stored before this passes.
async fn checked_form(
    settings: &PhoneSettings,
    uri: &Uri,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Form, ApiError> {
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form_encoded {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_form_encoded",
            "the provider's callbacks are application/x-www-form-urlencoded",
        ));
    }
    let limited = http_body_util::Limited::new(body, settings.max_body_bytes);
    let bytes = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is over {} bytes (channels.phone.max_body_bytes)", settings.max_body_bytes),
            ));
        }
        Err(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "body_unreadable", "the body could not be read")),
    };
    let Some(given) = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::bad_request("missing_signature", "X-Twilio-Signature is missing", "X-Twilio-Signature"));
    };
    let params: Vec<(String, String)> =
        form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    // The URL the provider requested: the public base, this route, and the query string if any.
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{}{}{query}", settings.public_url, uri.path());
    if !signature::verify(settings.auth_token.expose_secret(), &url, &params, given) {
        metrics::counter!("earshot_phone_signature_refused_total").increment(1);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_signature",
            format!("X-Twilio-Signature does not match the request to {url}"),
        ));
    }
    Ok(Form { params })
}

/// An SMS callback's answer: a reply message, or nothing.
fn twiml(message: Option<&str>) -> Response {
    let inner = message.map(|m| format!("<Message>{}</Message>", xml_escape(m))).unwrap_or_default();
    twiml_doc(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{inner}</Response>"))
}

fn twiml_doc(doc: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], doc).into_response()
}

/// The caller's number, E.164: 400 when `From` is missing or is not a phone number.
fn caller(s: &PhoneSettings, form: &Form) -> Result<(String, Identity), ApiError> {
    let from = form.get("From").ok_or_else(|| ApiError::bad_request("missing_from", "From is missing", "From"))?;
    let number = number::e164(from, s.region).ok_or_else(|| {
        ApiError::bad_request("invalid_number", format!("From {from:?} is not a phone number"), "From")
    })?;
    let identity = Identity { kind: IdentityKind::Phone, value: number.clone() };
    Ok((number, identity))
}

fn call_sid(form: &Form) -> Result<String, ApiError> {
    form.get("CallSid")
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("missing_sid", "CallSid is missing", "CallSid"))
}

/// A complaint by phone from `number`, answered by SMS (the route), joined to the number's open case.
fn phone_inbound(s: &PhoneSettings, external_id: String, number: &str, identity: Identity, text: String) -> Inbound {
    Inbound {
        channel: ChannelKind::Phone,
        source: s.name.clone(),
        external_id: ExternalId(external_id),
        identities: vec![identity],
        customer: CustomerInfo::default(),
        reply_route: ReplyRoute::Direct {
            via: ChannelKind::Phone,
            sender: s.name.clone(),
            recipient: number.to_owned(),
            reply_to: None,
        },
        thread: Some(ThreadHint {
            in_reply_to: Vec::new(),
            case_refs: Vec::new(),
            open_case_within_secs: Some(s.follow_up_window.as_secs()),
            edits: None,
        }),
        subject: None,
        text,
        full_text: None,
        lang: None,
        category: None,
        order_id: None,
        metadata: BTreeMap::new(),
        attachments: Vec::new(),
        raw: None,
        received_at: time::OffsetDateTime::now_utc(),
        automatic: None,
        content_digest: None,
    }
}

/// Runs a voice handler: its TwiML, or the error as JSON with its status.
async fn answer<F>(f: F) -> Response
where
    F: std::future::Future<Output = Result<String, ApiError>>,
{
    match f.await {
        Ok(doc) => twiml_doc(doc),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/inbound/phone/voice`: a call comes in.
async fn voice_in(State(st): State<RouteState>, uri: Uri, headers: HeaderMap, body: axum::body::Body) -> Response {
    answer(async {
        let s = &st.channel.inner.settings;
        let form = checked_form(s, &uri, &headers, body).await?;
        caller(s, &form)?;
        metrics::counter!("earshot_phone_calls_total").increment(1);
        Ok(voice::greeting(s.language, &s.public_url))
    })
    .await
}

/// `POST /v1/inbound/phone/voice/menu`: the key pressed at the menu.
async fn voice_menu(State(st): State<RouteState>, uri: Uri, headers: HeaderMap, body: axum::body::Body) -> Response {
    answer(async {
        let s = &st.channel.inner.settings;
        let form = checked_form(s, &uri, &headers, body).await?;
        caller(s, &form)?;
        Ok(voice::menu(s.language, &s.public_url, form.get("Digits"), s.record_max_secs))
    })
    .await
}

/// `POST /v1/inbound/phone/voice/recorded`: the complaint is recorded; the caller is still on the
/// line and hears the reference of the case made now.
async fn voice_recorded(
    State(st): State<RouteState>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    answer(async {
        let s = &st.channel.inner.settings;
        let form = checked_form(s, &uri, &headers, body).await?;
        let (number, identity) = caller(s, &form)?;
        let sid = call_sid(&form)?;
        let text = match s.language {
            Lang::Zh => "[电话投诉录音，文字转写稍后补上]",
            Lang::En => "[recorded call; the transcription follows]",
        };
        let mut inbound = phone_inbound(s, sid.clone(), &number, identity, text.to_owned());
        inbound.lang = Some(s.language);
        inbound.metadata.insert("call_sid".into(), serde_json::json!(sid));
        if let Some(url) = form.get("RecordingUrl") {
            inbound.metadata.insert("recording_url".into(), serde_json::json!(url));
            inbound.attachments.push(AttachmentMeta::by_reference(
                "recording".into(),
                "audio/wav".into(),
                0,
                Some(url.to_owned()),
            ));
        }
        if let Some(d) = form.get("RecordingDuration") {
            inbound.metadata.insert("recording_duration_secs".into(), serde_json::json!(d));
        }
        // A call is its own case: it never joins an earlier one.
        if let Some(t) = inbound.thread.as_mut() {
            t.open_case_within_secs = None;
        }
        let receipt = st.intake.submit(inbound).await.map_err(ApiError::from)?;
        Ok(voice::recorded(s.language, &receipt.case_ref))
    })
    .await
}

/// `POST /v1/inbound/phone/transcription`: the recording's text, later. It replaces the call's
/// placeholder (an edit of the call's message); empty or failed, it says so and keeps the recording.
async fn transcription(State(st): State<RouteState>, uri: Uri, headers: HeaderMap, body: axum::body::Body) -> Response {
    answer(async {
        let s = &st.channel.inner.settings;
        let form = checked_form(s, &uri, &headers, body).await?;
        let (number, identity) = caller(s, &form)?;
        let sid = call_sid(&form)?;
        let recording = form.get("RecordingUrl").unwrap_or_default().to_owned();
        let text = match (form.get("TranscriptionText"), form.get("TranscriptionStatus")) {
            (Some(t), status) if status != Some("failed") && !t.trim().is_empty() => t.trim().to_owned(),
            _ => match s.language {
                Lang::Zh => format!("[录音无法转写为文字，请听录音：{recording}]"),
                Lang::En => format!("[the recording could not be transcribed; listen to it: {recording}]"),
            },
        };
        let mut inbound = phone_inbound(s, format!("{sid}:transcription"), &number, identity, text.clone());
        inbound.lang = Some(Lang::detect(&text));
        inbound.metadata.insert("call_sid".into(), serde_json::json!(sid));
        inbound.metadata.insert("transcription".into(), serde_json::json!(true));
        if !recording.is_empty() {
            inbound.metadata.insert("recording_url".into(), serde_json::json!(recording));
        }
        if let Some(t) = inbound.thread.as_mut() {
            t.in_reply_to = vec![ExternalId(sid.clone())];
            t.edits = Some(ExternalId(sid));
            t.open_case_within_secs = None;
        }
        st.intake.submit(inbound).await.map_err(ApiError::from)?;
        Ok("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>".to_owned())
    })
    .await
}

/// `POST /v1/inbound/phone/voice/status`: a keyed case reference, read back with its status when
/// the case is the caller's.
async fn voice_status(State(st): State<RouteState>, uri: Uri, headers: HeaderMap, body: axum::body::Body) -> Response {
    answer(async {
        let s = &st.channel.inner.settings;
        let form = checked_form(s, &uri, &headers, body).await?;
        let (_, identity) = caller(s, &form)?;
        let keyed = match voice::parse_keyed(form.get("Digits").unwrap_or_default()) {
            Err(e) => voice::Keyed::Invalid(e),
            Ok(r) => {
                let found =
                    st.intake.cases_of(ChannelKind::Phone, &identity, Some(&r), 1).await.map_err(ApiError::from)?;
                match found.into_iter().next() {
                    Some(c) => voice::Keyed::Found(c),
                    None => voice::Keyed::NotFound(r),
                }
            }
        };
        Ok(voice::status(s.language, &keyed))
    })
    .await
}

/// `POST /v1/inbound/phone/events/{source}`: a PBX's call event, signed with Standard Webhooks.
async fn pbx_event(
    State(st): State<RouteState>,
    axum::extract::Path(source): axum::extract::Path<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    match pbx_inner(&st, &source, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn pbx_inner(st: &RouteState, source: &str, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    use earshot_channel::webhooks::{self, VerifyError};
    let s = &st.channel.inner.settings;
    let keys = s.pbx_sources.get(source).ok_or_else(|| ApiError::not_found(format!("no PBX source {source:?}")))?;
    if body.len() > s.max_body_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over {} bytes (channels.phone.max_body_bytes)", s.max_body_bytes),
        ));
    }
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc();
    keys.verify(
        header(webhooks::HEADER_ID),
        header(webhooks::HEADER_TIMESTAMP),
        header(webhooks::HEADER_SIGNATURE),
        body,
        now.unix_timestamp(),
    )
    .map_err(|e| {
        let code = match e {
            VerifyError::MissingHeader(_) => "missing_signature",
            VerifyError::InvalidTimestamp | VerifyError::StaleTimestamp(_) => "stale_timestamp",
            VerifyError::NoMatch => "invalid_signature",
        };
        ApiError::unauthorized(code, e.to_string())
    })?;
    let event: pbx::PbxEvent = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_event", format!("not a PBX event: {e}"), "body"))?;
    if event.call_id.trim().is_empty() || event.call_id.len() > 200 {
        return Err(ApiError::bad_request("invalid_field", "call_id must have 1 to 200 characters", "call_id"));
    }
    let number = number::e164(&event.caller, s.region).ok_or_else(|| {
        ApiError::bad_request("invalid_number", format!("caller {:?} is not a phone number", event.caller), "caller")
    })?;
    let parse_time = |v: &str, field: &str| {
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).map_err(|_| {
            ApiError::bad_request("invalid_field", format!("{field} is not an RFC 3339 time"), field.to_owned())
        })
    };
    let started = parse_time(&event.started_at, "started_at")?;
    if let Some(end) = &event.ended_at {
        parse_time(end, "ended_at")?;
    }
    let identity = Identity { kind: IdentityKind::Phone, value: number.clone() };
    let mut inbound = phone_inbound(s, event.call_id.clone(), &number, identity, event.text());
    inbound.source = source.to_owned();
    inbound.received_at = started;
    inbound.lang = event.language.as_deref().and_then(Lang::from_tag).or_else(|| Some(Lang::detect(&inbound.text)));
    // A call is its own case.
    if let Some(t) = inbound.thread.as_mut() {
        t.open_case_within_secs = None;
    }
    for (k, v) in [
        ("pbx_source", Some(source.to_owned())),
        ("called", event.called.clone()),
        ("ivr_selection", event.ivr_selection.clone()),
        ("recording_url", event.recording_url.clone()),
        ("started_at", Some(event.started_at.clone())),
        ("ended_at", event.ended_at.clone()),
        ("agent_notes", event.agent_notes.clone()),
    ] {
        if let Some(v) = v {
            inbound.metadata.insert(k.to_owned(), serde_json::json!(v));
        }
    }
    inbound.content_digest = Some(earshot_channel::sha256_hex(body));
    let receipt = st.intake.submit(inbound).await.map_err(ApiError::from)?;
    let status = if receipt.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, axum::Json(serde_json::json!(receipt))).into_response())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[derive(Clone)]
struct RouteState {
    channel: PhoneChannel,
    intake: Arc<dyn Intake>,
}

/// `POST /v1/inbound/phone/sms`: a text message to the hotline's number.
async fn sms(State(st): State<RouteState>, uri: Uri, headers: HeaderMap, body: axum::body::Body) -> Response {
    match sms_inner(&st, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn sms_inner(
    st: &RouteState,
    uri: &Uri,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let s = &st.channel.inner.settings;
    let form = checked_form(s, uri, headers, body).await?;
    let (number, identity) = caller(s, &form)?;
    let sid = form
        .get("MessageSid")
        .or_else(|| form.get("SmsSid"))
        .ok_or_else(|| ApiError::bad_request("missing_sid", "MessageSid is missing", "MessageSid"))?;
    let text = form.get("Body").unwrap_or_default().trim().to_owned();
    let lang = Lang::detect(&text);
    let recipient = Recipient::new(ChannelKind::Phone, &number);

    // Keywords, answered at once in the callback's answer.
    match text.to_uppercase().as_str() {
        "STATUS" | "状态" => {
            let cases = st.intake.cases_of(ChannelKind::Phone, &identity, None, 5).await.map_err(ApiError::from)?;
            return Ok(twiml(Some(&texts::status_list(lang, &cases))));
        }
        "STOP" | "退订" | "UNSUBSCRIBE" => {
            st.intake.opt_out(&recipient, "the customer replied STOP").await.map_err(ApiError::from)?;
            metrics::counter!("earshot_phone_opt_outs_total").increment(1);
            return Ok(twiml(Some(texts::stopped(lang))));
        }
        // The carriers' opt-in words (Twilio's too, which also unblocks the number on its side).
        "START" | "UNSTOP" | "订阅" => {
            st.intake.opt_in(&recipient, &identity, "the customer replied START").await.map_err(ApiError::from)?;
            metrics::counter!("earshot_phone_opt_ins_total").increment(1);
            return Ok(twiml(Some(texts::started(lang))));
        }
        _ => {}
    }

    let media: usize = form.get("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut attachments = Vec::new();
    let mut urls = Vec::new();
    for i in 0..media.min(10) {
        if let Some(url) = form.get(&format!("MediaUrl{i}")) {
            let media_type = form.get(&format!("MediaContentType{i}")).unwrap_or("application/octet-stream");
            urls.push(url.to_owned());
            attachments.push(AttachmentMeta::by_reference(
                format!("media{i}"),
                media_type.to_owned(),
                0,
                Some(url.to_owned()),
            ));
        }
    }
    let shown = if text.is_empty() { format!("[{} media]", attachments.len()) } else { text.clone() };
    let mut inbound = phone_inbound(s, sid.to_owned(), &number, identity, shown);
    inbound.metadata.insert("sms".to_owned(), serde_json::json!(true));
    if !urls.is_empty() {
        inbound.metadata.insert("media_urls".to_owned(), serde_json::json!(urls));
    }
    inbound.attachments = attachments;
    inbound.lang = (!text.is_empty()).then_some(lang);
    let receipt = st.intake.submit(inbound).await.map_err(ApiError::from)?;
    tracing::debug!(case_ref = %receipt.case_ref, duplicate = receipt.duplicate, follow_up = receipt.follow_up, "SMS committed.");
    // The acknowledgement goes through the outbox (retried, ordered); the callback's answer is empty.
    Ok(twiml(None))
}

#[async_trait]
impl Channel for PhoneChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Phone
    }

    fn routes(&self, intake: Arc<dyn Intake>) -> Option<axum::Router> {
        let state = RouteState { channel: self.clone(), intake };
        Some(
            axum::Router::new()
                .route(SMS_ROUTE, post(sms))
                .route("/v1/inbound/phone/voice", post(voice_in))
                .route("/v1/inbound/phone/voice/menu", post(voice_menu))
                .route("/v1/inbound/phone/voice/recorded", post(voice_recorded))
                .route("/v1/inbound/phone/voice/status", post(voice_status))
                .route("/v1/inbound/phone/transcription", post(transcription))
                .route("/v1/inbound/phone/events/{source}", post(pbx_event))
                .route("/v1/schema/phone-event.json", axum::routing::get(|| async { axum::Json(pbx::schema()) }))
                .with_state(state),
        )
    }

    fn openapi(&self) -> Option<OpenApiPart> {
        Some(openapi::part())
    }

    async fn send(&self, msg: &Outbound) -> Result<Sent, SendError> {
        send::send(&self.inner.client, &self.inner.settings, msg).await
    }

    fn senders(&self) -> Vec<String> {
        vec![self.inner.settings.name.clone()]
    }

    fn own_identities(&self) -> Vec<Recipient> {
        vec![Recipient::new(ChannelKind::Phone, &self.inner.settings.from_number)]
    }

    fn send_deadline(&self, _sender: &str) -> Duration {
        self.inner.settings.send_timeout
    }
}
