//! The phone channel's SMS side over real HTTP: the provider's signed, form-encoded callbacks, and a
//! local server speaking its Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`, basic
//! auth, `201` with the message's `sid`; errors as `{"code", "message", "status"}`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::*;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "phone-auth-token-0123456789";
const FROM: &str = "+8610085000000";
/// What the provider is configured to call: a proxy's address, not the gateway's own.
const PUBLIC: &str = "https://hotline.example.com";

#[derive(Default)]
struct Sms {
    sent: Mutex<Vec<(String, String)>>,
    unsubscribed: Mutex<Vec<String>>,
    /// Statuses to answer the next sends with (429 comes with `Retry-After: 1`).
    fail_next: Mutex<Vec<u16>>,
    attempts: Mutex<u32>,
}

async fn messages(
    State(st): State<Arc<Sms>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}")));
    if sid != SID || auth != expected {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "code": 20003, "message": "Authenticate", "status": 401 })),
        )
            .into_response();
    }
    let form: Vec<(String, String)> =
        form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let get = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(get("From"), FROM, "answers come from the configured number");
    let to = get("To");
    *st.attempts.lock().expect("lock") += 1;
    let scripted = {
        let mut f = st.fail_next.lock().expect("lock");
        if f.is_empty() { None } else { Some(f.remove(0)) }
    };
    if let Some(code) = scripted {
        let status = StatusCode::from_u16(code).expect("status");
        let body = axum::Json(json!({ "code": 20429, "message": "Too Many Requests", "status": code }));
        return (status, [("retry-after", "1")], body).into_response();
    }
    if st.unsubscribed.lock().expect("lock").contains(&to) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400 })),
        )
            .into_response();
    }
    let n = {
        let mut sent = st.sent.lock().expect("lock");
        sent.push((to, get("Body")));
        sent.len()
    };
    (StatusCode::CREATED, axum::Json(json!({ "sid": format!("SM{n:032}"), "status": "queued" }))).into_response()
}

struct Provider {
    base: String,
    state: Arc<Sms>,
    _task: tokio::task::JoinHandle<()>,
}

impl Provider {
    async fn start() -> Provider {
        let state = Arc::new(Sms::default());
        let app = axum::Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Provider { base, state, _task: task }
    }

    fn sent(&self) -> Vec<(String, String)> {
        self.state.sent.lock().expect("lock").clone()
    }

    async fn wait_sent(&self, n: usize) -> Vec<(String, String)> {
        for _ in 0..400 {
            if self.sent().len() >= n {
                return self.sent();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} SMS not sent within 20 s: {:?}", self.sent());
    }
}

fn phone_toml(db: &str, provider: &Provider, tickets: &Receiver) -> String {
    let mut t = config_toml(db, "");
    t.push_str(&downstream_toml(&tickets.url, 50));
    t.push_str(&format!(
        "\n[channels.phone]\nauth_token = \"{TOKEN}\"\naccount_sid = \"{SID}\"\nfrom_number = \"{FROM}\"\n\
         api_url = \"{}\"\ndefault_region = \"CN\"\npublic_url = \"{PUBLIC}\"\nsend_timeout_secs = 3\n",
        provider.base
    ));
    t
}

/// Posts a form to the SMS route, signed for `signed_url` (None: no signature header).
async fn post_sms(gw: &Gateway, params: &[(&str, &str)], signed_url: Option<&str>) -> (u16, String) {
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(&owned).finish();
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/inbound/phone/sms", gw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(url) = signed_url {
        req = req.header("X-Twilio-Signature", earshot_channel_phone::signature::sign(TOKEN, url, &owned));
    }
    let r = req.send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

const SMS_URL: &str = "https://hotline.example.com/v1/inbound/phone/sms";

fn sms(sid: &str, from: &str, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MessageSid", sid.to_owned()),
        ("AccountSid", SID.to_owned()),
        ("From", from.to_owned()),
        ("To", FROM.to_owned()),
        ("Body", body.to_owned()),
        ("NumMedia", "0".to_owned()),
        ("SmsStatus", "received".to_owned()),
        ("FromCountry", "CN".to_owned()),
    ]
}

fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, s)| (*k, s.as_str())).collect()
}

fn of_type<'a>(got: &'a [Received], kind: &str) -> Vec<&'a Value> {
    got.iter().filter(|r| r.answered == 200 && r.body["type"] == kind).map(|r| &r.body["data"]).collect()
}

#[tokio::test]
async fn a_signed_sms_becomes_a_case_acknowledged_by_sms_and_follow_ups_join_it() {
    let db = TestDb::sqlite();
    let (provider, tickets) = (Provider::start().await, Receiver::start().await);
    let gw = Gateway::start(&phone_toml(&db.url, &provider, &tickets)).await;

    let (status, twiml) =
        post_sms(&gw, &pairs(&sms("SM001", "+86 138-0013-8000", "快递三天没到，请帮忙查一下")), Some(SMS_URL)).await;
    assert_eq!(status, 200, "{twiml}");
    assert!(twiml.contains("<Response>"), "{twiml}");
    let got = tickets.wait_until(20, "case.created", |g| !of_type(g, "case.created").is_empty()).await;
    let case = of_type(&got, "case.created")[0]["case"].clone();
    assert_eq!(case["channel"], "phone");
    assert_eq!(case["customer"]["identities"][0]["value"], "+8613800138000", "E.164");
    let sent = provider.wait_sent(1).await;
    assert_eq!(sent[0].0, "+8613800138000");
    assert!(sent[0].1.contains(case["case_ref"].as_str().expect("ref")) && sent[0].1.contains("已收到"), "{sent:?}");

    // The same callback again (a provider retry): one case. The default port written out also
    // validates. The same number written another way joins the open case.
    let (status, _) =
        post_sms(&gw, &pairs(&sms("SM001", "+86 138-0013-8000", "快递三天没到，请帮忙查一下")), Some(SMS_URL)).await;
    assert_eq!(status, 200);
    let (status, body) = post_sms(
        &gw,
        &pairs(&sms("SM002", "008613800138000", "订单号 5531")),
        Some("https://hotline.example.com:443/v1/inbound/phone/sms"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = tickets.wait_until(20, "the follow-up", |g| !of_type(g, "case.message_added").is_empty()).await;
    assert_eq!(of_type(&got, "case.message_added")[0]["case"]["id"], case["id"]);
    assert_eq!(of_type(&got, "case.created").len(), 1, "one case");

    // STATUS is answered in the callback's TwiML.
    let (status, twiml) = post_sms(&gw, &pairs(&sms("SM003", "13800138000", "STATUS")), Some(SMS_URL)).await;
    assert_eq!(status, 200);
    assert!(twiml.contains(case["case_ref"].as_str().expect("ref")), "{twiml}");

    // The ticket store's update reaches the phone; a survey digit answers the survey.
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let id = case["id"].as_str().expect("id");
    assert_eq!(ts.status(id, "in_progress").await.0, 200);
    assert_eq!(ts.status(id, "resolved").await.0, 200);
    let sent = provider.wait_sent(4).await;
    assert!(sent[1].1.contains("正在处理中"), "{sent:?}");
    assert!(sent[3].1.contains("1") && sent[3].1.contains("5"), "the survey asks for a digit: {sent:?}");
    let (status, _) = post_sms(&gw, &pairs(&sms("SM004", "+8613800138000", "4")), Some(SMS_URL)).await;
    assert_eq!(status, 200);
    let got = tickets.wait_until(20, "case.feedback", |g| !of_type(g, "case.feedback").is_empty()).await;
    assert_eq!(of_type(&got, "case.feedback")[0]["rating"], 4);

    // Each SMS job keeps its segment count (one each here: short Chinese texts).
    let counted = db
        .exec("UPDATE outbox SET segments = segments WHERE destination LIKE 'channel:phone:%' AND segments = 1")
        .await;
    assert_eq!(counted, 4, "every sent SMS job has its segment count");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_throttled_or_failing_sms_api_is_retried() {
    let db = TestDb::sqlite();
    let (provider, tickets) = (Provider::start().await, Receiver::start().await);
    let gw = Gateway::start(&phone_toml(&db.url, &provider, &tickets)).await;
    provider.state.fail_next.lock().expect("lock").extend([429, 503]);
    let t0 = std::time::Instant::now();
    assert_eq!(
        post_sms(&gw, &pairs(&sms("SM300", "+8613800138005", "Refund not received.")), Some(SMS_URL)).await.0,
        200
    );
    let sent = provider.wait_sent(1).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(*provider.state.attempts.lock().expect("lock"), 3, "429, then 503, then sent");
    assert!(t0.elapsed() >= Duration::from_millis(900), "the Retry-After of the 429 was honoured");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn bad_callbacks_are_refused_and_store_nothing() {
    let db = TestDb::sqlite();
    let (provider, tickets) = (Provider::start().await, Receiver::start().await);
    let gw = Gateway::start(&phone_toml(&db.url, &provider, &tickets)).await;
    let good = sms("SM100", "+8613800138001", "The charger is broken.");

    assert_eq!(post_sms(&gw, &pairs(&good), None).await.0, 400, "no signature");
    assert_eq!(
        post_sms(&gw, &pairs(&good), Some("http://127.0.0.1/v1/inbound/phone/sms")).await.0,
        403,
        "signed for another URL"
    );
    let mut tampered = pairs(&good);
    let signed = post_sms(&gw, &tampered, Some(SMS_URL)).await;
    assert_eq!(signed.0, 200);
    tampered[4] = ("Body", "changed");
    let owned: Vec<(String, String)> = pairs(&good).iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let sig = earshot_channel_phone::signature::sign(TOKEN, SMS_URL, &owned);
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(tampered.iter()).finish();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/inbound/phone/sms", gw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", sig)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403, "a changed parameter breaks the signature");

    let no_from: Vec<(&str, String)> = good.iter().filter(|(k, _)| *k != "From").cloned().collect();
    assert_eq!(post_sms(&gw, &pairs(&no_from), Some(SMS_URL)).await.0, 400, "missing From");
    assert_eq!(post_sms(&gw, &pairs(&sms("SM101", "not-a-number", "x")), Some(SMS_URL)).await.0, 400, "bad number");
    let big = "x".repeat(20_000);
    assert_eq!(post_sms(&gw, &pairs(&sms("SM102", "+8613800138001", &big)), Some(SMS_URL)).await.0, 413);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/inbound/phone/sms", gw.base))
        .json(&json!({ "From": "+8613800138001" }))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 415, "not form-encoded");
    // Unknown extra parameters are fine (providers add fields over time).
    let mut extra = sms("SM103", "+8613800138002", "Lid cracked.");
    extra.push(("SomeNewField", "whatever".to_owned()));
    assert_eq!(post_sms(&gw, &pairs(&extra), Some(SMS_URL)).await.0, 200);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, listing) = gw.admin_get("/v1/cases?channel=phone").await;
    assert_eq!(listing["cases"].as_array().map(Vec::len), Some(2), "only the two good messages made cases: {listing}");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn stop_opts_the_number_out_and_start_opts_it_back_in() {
    let db = TestDb::sqlite();
    let (provider, tickets) = (Provider::start().await, Receiver::start().await);
    let gw = Gateway::start(&phone_toml(&db.url, &provider, &tickets)).await;
    assert_eq!(
        post_sms(&gw, &pairs(&sms("SM200", "+8613800138003", "Wrong size delivered.")), Some(SMS_URL)).await.0,
        200
    );
    let got = tickets.wait_until(20, "the case", |g| !of_type(g, "case.created").is_empty()).await;
    let id = of_type(&got, "case.created")[0]["case"]["id"].as_str().expect("id").to_owned();
    provider.wait_sent(1).await;

    let (status, twiml) = post_sms(&gw, &pairs(&sms("SM201", "+8613800138003", "STOP")), Some(SMS_URL)).await;
    assert_eq!(status, 200);
    assert!(twiml.contains("no more"), "{twiml}");
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    assert_eq!(ts.status(&id, "in_progress").await.0, 200);
    let got = tickets
        .wait_until(20, "reachable: false", |g| of_type(g, "case.updated").iter().any(|d| d["reachable"] == false))
        .await;
    assert!(of_type(&got, "case.updated").iter().any(|d| d["reachable"] == false));
    assert_eq!(provider.sent().len(), 1, "nothing is sent after STOP");

    // START lifts the opt-out: the case is reachable again and the next update is sent.
    let (status, twiml) = post_sms(&gw, &pairs(&sms("SM203", "+8613800138003", "start")), Some(SMS_URL)).await;
    assert_eq!(status, 200);
    assert!(twiml.contains("again"), "{twiml}");
    let got = tickets
        .wait_until(20, "reachable: true", |g| of_type(g, "case.updated").iter().any(|d| d["reachable"] == true))
        .await;
    let back = of_type(&got, "case.updated").into_iter().find(|d| d["reachable"] == true).expect("reachable again");
    assert_eq!(back["case"]["id"], id.as_str(), "{back}");
    assert_eq!(ts.status(&id, "awaiting_customer").await.0, 200);
    // What was not sent while opted out goes first, then the new update: in order, each once.
    provider.wait_sent(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = provider.sent();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent[1].1.contains("being worked on"), "{sent:?}");
    assert!(sent[2].1.to_lowercase().contains("waiting") || sent[2].1.contains("等待"), "{sent:?}");
    let (_, listing) = gw.admin_get("/v1/cases?channel=phone").await;
    assert_eq!(listing["cases"].as_array().map(Vec::len), Some(1), "STOP and START made no case: {listing}");

    // The provider's own refusal (an unsubscribed number, 21610) is unreachable too.
    provider.state.unsubscribed.lock().expect("lock").push("+8613800138004".into());
    assert_eq!(post_sms(&gw, &pairs(&sms("SM202", "+8613800138004", "Missing parts.")), Some(SMS_URL)).await.0, 200);
    tickets
        .wait_until(20, "the second case unreachable", |g| {
            of_type(g, "case.updated").iter().filter(|d| d["reachable"] == false).count() >= 2
        })
        .await;
    gw.stop().await;
    db.cleanup().await;
}

async fn post_form(gw: &Gateway, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(&owned).finish();
    let signature = earshot_channel_phone::signature::sign(TOKEN, &format!("{PUBLIC}{path}"), &owned);
    let r = reqwest::Client::new()
        .post(format!("{}{path}", gw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

const CALLER: &str = "+8613900139000";

#[tokio::test]
async fn a_call_is_recorded_transcribed_read_back_and_acknowledged_by_sms() {
    let db = TestDb::sqlite();
    let (provider, tickets) = (Provider::start().await, Receiver::start().await);
    let gw = Gateway::start(&phone_toml(&db.url, &provider, &tickets)).await;
    let call = [("CallSid", "CA0001"), ("AccountSid", SID), ("From", CALLER), ("To", FROM), ("CallStatus", "ringing")];

    let (status, twiml) = post_form(&gw, "/v1/inbound/phone/voice", &call).await;
    assert_eq!(status, 200, "{twiml}");
    assert!(twiml.contains("<Say language=\"zh-CN\">") && twiml.contains("按 1") && twiml.contains("按 2"), "{twiml}");
    assert!(
        twiml.contains(&format!("action=\"{PUBLIC}/v1/inbound/phone/voice/menu\"")),
        "callbacks point at the public URL: {twiml}"
    );
    let mut menu = call.to_vec();
    menu.push(("Digits", "1"));
    let (_, twiml) = post_form(&gw, "/v1/inbound/phone/voice/menu", &menu).await;
    assert!(
        twiml.contains("<Record ")
            && twiml.contains(&format!("transcribeCallback=\"{PUBLIC}/v1/inbound/phone/transcription\"")),
        "{twiml}"
    );

    let mut recorded = call.to_vec();
    recorded.extend([("RecordingUrl", "https://api.example.com/Recordings/RE1"), ("RecordingDuration", "14")]);
    let (status, twiml) = post_form(&gw, "/v1/inbound/phone/voice/recorded", &recorded).await;
    assert_eq!(status, 200, "{twiml}");
    let got = tickets.wait_until(20, "case.created", |g| !of_type(g, "case.created").is_empty()).await;
    let case = of_type(&got, "case.created")[0]["case"].clone();
    let case_ref = case["case_ref"].as_str().expect("ref").to_owned();
    let spoken = earshot_channel_phone::voice::spoken_ref(earshot_channel::Lang::Zh, &case_ref);
    assert!(twiml.contains(&spoken), "the reference is read digit by digit ({spoken}): {twiml}");
    let sent = provider.wait_sent(1).await;
    assert_eq!(sent[0].0, CALLER);
    assert!(sent[0].1.contains(&case_ref), "the SMS acknowledgement carries the reference: {sent:?}");

    // The transcription arrives later: it replaces the placeholder; a retry changes nothing.
    let mut tr = call.to_vec();
    tr.extend([
        ("TranscriptionText", "洗衣机漏水，已经报修两次了"),
        ("TranscriptionStatus", "completed"),
        ("RecordingUrl", "https://api.example.com/Recordings/RE1"),
    ]);
    assert_eq!(post_form(&gw, "/v1/inbound/phone/transcription", &tr).await.0, 200);
    assert_eq!(post_form(&gw, "/v1/inbound/phone/transcription", &tr).await.0, 200);
    tickets.wait_until(20, "the transcription", |g| !of_type(g, "case.message_added").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = tickets.received();
    assert_eq!(of_type(&got, "case.created").len(), 1, "one case");
    assert_eq!(of_type(&got, "case.message_added").len(), 1, "a retried transcription adds nothing");
    let (_, stored) = gw.admin_get(&format!("/v1/cases/{}", case["id"].as_str().expect("id"))).await;
    assert_eq!(stored["messages"][0]["text"], "洗衣机漏水，已经报修两次了", "{stored}");
    assert_eq!(stored["messages"][0]["metadata"]["recording_url"], "https://api.example.com/Recordings/RE1");

    // Keypad status: one's own case is read back; another number hears nothing of it; a typo is told.
    let digits: String = case_ref.chars().filter(char::is_ascii_digit).collect();
    let mut keyed = call.to_vec();
    keyed.push(("Digits", &digits));
    let (_, twiml) = post_form(&gw, "/v1/inbound/phone/voice/status", &keyed).await;
    assert!(twiml.contains(&spoken) && twiml.contains("已受理"), "{twiml}");
    let other = [("CallSid", "CA0002"), ("From", "+8613700137000"), ("To", FROM), ("Digits", digits.as_str())];
    let (_, twiml) = post_form(&gw, "/v1/inbound/phone/voice/status", &other).await;
    assert!(twiml.contains("没有这个案件") && !twiml.contains(&spoken), "{twiml}");
    let last = digits.chars().last().and_then(|c| c.to_digit(10)).expect("digit");
    let typo = format!("{}{}", &digits[..8], (last + 1) % 10);
    let mut wrong = call.to_vec();
    wrong.push(("Digits", &typo));
    let (_, twiml) = post_form(&gw, "/v1/inbound/phone/voice/status", &wrong).await;
    assert!(twiml.contains("校验位"), "{twiml}");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_failed_transcription_still_makes_a_case_with_the_recording() {
    let db = TestDb::sqlite();
    let (provider, tickets) = (Provider::start().await, Receiver::start().await);
    let gw = Gateway::start(&phone_toml(&db.url, &provider, &tickets)).await;
    let tr = [
        ("CallSid", "CA0100"),
        ("From", CALLER),
        ("To", FROM),
        ("TranscriptionStatus", "failed"),
        ("RecordingUrl", "https://api.example.com/Recordings/RE9"),
    ];
    assert_eq!(post_form(&gw, "/v1/inbound/phone/transcription", &tr).await.0, 200);
    let got = tickets.wait_until(20, "case.created", |g| !of_type(g, "case.created").is_empty()).await;
    let text = of_type(&got, "case.created")[0]["case"]["messages"][0]["text"].as_str().unwrap_or_default().to_owned();
    assert!(text.contains("https://api.example.com/Recordings/RE9") && text.contains("无法转写"), "{text}");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn one_caller_by_sms_and_by_web_form_is_one_customer() {
    let db = TestDb::sqlite();
    let (provider, tickets) = (Provider::start().await, Receiver::start().await);
    let gw = Gateway::start(&phone_toml(&db.url, &provider, &tickets)).await;
    let body = json!({ "customer": { "email": "wang@example.com", "phone": "+86 138-0013-8099" }, "text": "网页投诉：配件缺失" });
    let (status, receipt) = gw.web().send(&body).await;
    assert_eq!(status, 202, "{receipt}");
    assert_eq!(
        post_sms(&gw, &pairs(&sms("SM900", "138 0013 8099", "短信投诉：还是没有配件")), Some(SMS_URL)).await.0,
        200
    );
    let got = tickets.wait_until(20, "two cases", |g| of_type(g, "case.created").len() >= 2).await;
    let customers: std::collections::HashSet<String> = of_type(&got, "case.created")
        .iter()
        .map(|d| d["case"]["customer"]["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(customers.len(), 1, "one customer across the web form and SMS: {customers:?}");
    gw.stop().await;
    db.cleanup().await;
}

const PBX_SECRET: &str = "whsec_cGJ4LXNvdXJjZS1zZWNyZXQtMDEyMzQ1Njc4OWFi";

#[tokio::test]
async fn generic_pbx_events_are_signed_complaints() {
    use earshot_channel::webhooks::SigningKey;
    let db = TestDb::sqlite();
    let (provider, tickets) = (Provider::start().await, Receiver::start().await);
    let mut toml = phone_toml(&db.url, &provider, &tickets);
    toml.push_str(&format!("\n[[channels.phone.pbx_sources]]\nname = \"callcentre\"\nsecret = \"{PBX_SECRET}\"\n"));
    let gw = Gateway::start(&toml).await;
    let event = json!({
        "call_id": "pbx-77001", "caller": "021 6888 1234", "called": "+8610085000000", "ivr_selection": "1",
        "transcript": "空调安装师傅没有按约定时间上门", "recording_url": "https://pbx.example.com/rec/77001.wav",
        "started_at": "2026-12-04T08:00:00Z", "ended_at": "2026-12-04T08:03:10Z", "agent_notes": "客户要求今天回电"
    });
    let body = serde_json::to_vec(&event).expect("json");
    let post = |id: &'static str, secret: &'static str, body: Vec<u8>| {
        let url = format!("{}/v1/inbound/phone/events/callcentre", gw.base);
        async move {
            let key = SigningKey::from_whsec(secret).expect("secret");
            let ts = now();
            let r = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", key.sign(id, ts, &body))
                .body(body)
                .send()
                .await
                .expect("post");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    let wrong = "whsec_d3JvbmctcGJ4LXNlY3JldC0wMTIzNDU2Nzg5YWJj";
    assert_eq!(post("evt_1", wrong, body.clone()).await.0, 401, "a wrong signature is refused");
    let (_, listing) = gw.admin_get("/v1/cases?channel=phone").await;
    assert_eq!(listing["cases"].as_array().map(Vec::len), Some(0), "and nothing is stored");

    let (status, receipt) = post("evt_2", PBX_SECRET, body.clone()).await;
    assert_eq!(status, 202, "{receipt}");
    let (status, again) = post("evt_3", PBX_SECRET, body.clone()).await;
    assert_eq!((status, &again["case_id"]), (200, &receipt["case_id"]), "the call id makes one case");
    let got = tickets.wait_until(20, "case.created", |g| !of_type(g, "case.created").is_empty()).await;
    let case = &of_type(&got, "case.created")[0]["case"];
    assert_eq!(case["customer"]["identities"][0]["value"], "+862168881234", "E.164");
    assert_eq!(case["source"], "callcentre");
    assert_eq!(case["messages"][0]["text"], "空调安装师傅没有按约定时间上门");
    assert_eq!(case["messages"][0]["metadata"]["agent_notes"], "客户要求今天回电");
    assert_eq!(case["messages"][0]["external_id"], "pbx-77001");

    let schema: Value =
        reqwest::get(format!("{}/v1/schema/phone-event.json", gw.base)).await.expect("get").json().await.expect("json");
    assert!(schema["properties"]["call_id"].is_object(), "{schema}");
    assert_eq!(post("evt_4", PBX_SECRET, br#"{"caller":"+8613800138000"}"#.to_vec()).await.0, 400, "not an event");
    gw.stop().await;
    db.cleanup().await;
}
