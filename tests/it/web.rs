//! The web channel end to end: signed complaint → 202 → signed `case.created` downstream, and every
//! refusal leaving the store as it was.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn signed_complaint_is_stored_acknowledged_and_forwarded() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 5))).await;

    let body = json!({
        "customer": { "name": "王芳", "email": "Wang.Fang@Example.cn", "phone": "+86 138 0013 8000", "tier": "gold" },
        "subject": "快递破损",
        "text": "我的快递到了以后箱子是破的，里面的杯子碎了。",
        "category": "logistics",
        "order_id": "SO-1001",
        "attachments": [{ "name": "photo.jpg", "media_type": "image/jpeg", "size": 1234, "url": "https://example.cn/p.jpg" }],
        "metadata": { "shop": "tmall" }
    });
    let (status, receipt) = gw.web().send(&body).await;
    assert_eq!(status, 202, "{receipt}");
    let case_id = receipt["case_id"].as_str().expect("case_id").to_owned();
    let case_ref = receipt["case_ref"].as_str().expect("case_ref").to_owned();
    assert!(earshot::schema::CaseRef::parse(&case_ref).is_ok(), "case_ref {case_ref} has a valid check digit");
    assert_eq!(receipt["status"], "new");
    assert_eq!(receipt["duplicate"], false);
    assert_eq!(receipt["ack"]["lang"], "zh");
    let ack = receipt["ack"]["text"].as_str().expect("ack text");
    assert!(ack.contains(&case_ref) && ack.contains("王芳"), "{ack}");

    let got = rx.wait_until(10, "case.created", |r| r.iter().any(|x| x.answered == 200)).await;
    let event = &got[0];
    assert!(event.signature_ok, "downstream signature verifies with the endpoint secret");
    assert!(event.webhook_id.starts_with("msg_"), "{}", event.webhook_id);
    assert_eq!(event.body["type"], "case.created");
    let errors: Vec<String> =
        event_validator().iter_errors(&event.body).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "event validates against schema/event.json: {errors:?}");
    let case = &event.body["data"]["case"];
    let errors: Vec<String> =
        case_validator().iter_errors(case).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "case validates against schema/case.json: {errors:?}");
    assert_eq!(case["id"], case_id.as_str());
    assert_eq!(case["case_ref"], case_ref.as_str());
    assert_eq!(case["schema_version"], 2);
    assert_eq!(case["lang"], "zh");
    assert_eq!(case["category"], "logistics");
    assert_eq!(
        case["customer"]["identities"],
        json!([
            { "kind": "email", "value": "wang.fang@example.cn" },
            { "kind": "phone", "value": "+8613800138000" }
        ])
    );
    assert_eq!(case["messages"][0]["text"], "我的快递到了以后箱子是破的，里面的杯子碎了。");
    assert_eq!(case["messages"][0]["attachments"][0]["name"], "photo.jpg");

    // The ticket store answered {"ticket_id": "T-1"}: it is stored on the case.
    let shown = eventually(10, "ticket_id on the case", || async {
        let (s, c) = gw.admin_get(&format!("/v1/cases/{case_id}")).await;
        (s == 200 && c["ticket_id"] == "T-1").then_some(c)
    })
    .await;
    assert!(case_validator().is_valid(&shown), "GET /v1/cases/{{id}} is a valid case too");

    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn language_follows_the_customer_then_the_text() {
    let db = TestDb::sqlite();
    let gw = Gateway::start(&config_toml(&db.url, "")).await;
    let web = gw.web();
    let (_, r) = web.send(&complaint("The blender stopped working after two days")).await;
    assert_eq!(r["ack"]["lang"], "en");
    assert!(r["ack"]["text"].as_str().expect("text").contains("within 1 hour"), "{r}");
    let mut asked = complaint("The blender stopped working after two days");
    asked["customer"]["language"] = "zh-CN".into();
    let (_, r) = web.send(&asked).await;
    assert_eq!(r["ack"]["lang"], "zh", "customer.language wins over the text");
    gw.stop().await;
}

#[tokio::test]
async fn refused_requests_get_precise_errors_and_change_nothing() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 5))).await;
    let web = gw.web();
    let good = serde_json::to_vec(&complaint("broken")).expect("json");
    let ts = now();
    let sig = web.sign("msg_1", ts, &good);
    let ts_s = ts.to_string();

    // Signature and timestamp problems: 401.
    let wrong = WebClient::new(&gw.base, "site", DOWNSTREAM_SECRET).sign("msg_1", ts, &good);
    for (what, id, t, s, want_code) in [
        ("wrong signature", Some("msg_1"), Some(ts_s.as_str()), Some(wrong.as_str()), "invalid_signature"),
        ("no signature", Some("msg_1"), Some(ts_s.as_str()), None, "missing_signature"),
        ("no webhook-id", None, Some(ts_s.as_str()), Some(sig.as_str()), "missing_signature"),
        ("signature of another id", Some("msg_2"), Some(ts_s.as_str()), Some(sig.as_str()), "invalid_signature"),
    ] {
        let (status, body) = web.raw(id, t, s, good.clone()).await;
        assert_eq!((status, body["code"].as_str()), (401, Some(want_code)), "{what}: {body}");
    }
    // A few seconds past the limit, from a fresh "now": the test itself may take seconds to get here.
    for skew in [-305, 305] {
        let t = now() + skew;
        let s = web.sign("msg_1", t, &good);
        let (status, body) = web.raw(Some("msg_1"), Some(&t.to_string()), Some(&s), good.clone()).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("stale_timestamp")), "timestamp {skew} s off: {body}");
    }
    // Timestamps at the ends of i64 (and the one that would wrap around `now - ts`): 401, no panic.
    for t in [i64::MIN, i64::MAX, now().wrapping_add(i64::MIN)] {
        let s = web.sign("msg_1", t, &good);
        let (status, body) = web.raw(Some("msg_1"), Some(&t.to_string()), Some(&s), good.clone()).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("stale_timestamp")), "timestamp {t}: {body}");
    }
    // A body signed correctly but then altered.
    let mut altered = good.clone();
    altered[2] ^= 1;
    assert_eq!(web.raw(Some("msg_1"), Some(&ts_s), Some(&sig), altered).await.0, 401);

    // Oversize: 413 (max_body_bytes = 4096 in the test config), signed correctly.
    let big = serde_json::to_vec(&complaint(&"x".repeat(5000))).expect("json");
    let (status, body) = web.send_raw_signed("msg_big", big).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("body_too_large")), "{body}");

    // Shape problems: 400 with the field named.
    for (what, raw, field) in [
        ("malformed JSON", r#"{"customer": {"email": "a@b.cn"}, "text": "x""#.to_owned(), None),
        ("missing text", r#"{"customer": {"email": "a@b.cn"}}"#.to_owned(), Some("text")),
        ("empty text", r#"{"customer": {"email": "a@b.cn"}, "text": " "}"#.to_owned(), Some("text")),
        ("no contact", r#"{"customer": {"name": "A"}, "text": "x"}"#.to_owned(), Some("customer")),
        ("no customer", r#"{"text": "x"}"#.to_owned(), Some("customer")),
        ("bad email", r#"{"customer": {"email": "nope"}, "text": "x"}"#.to_owned(), Some("customer.email")),
        ("bad phone", r#"{"customer": {"phone": "12"}, "text": "x"}"#.to_owned(), Some("customer.phone")),
        ("text not a string", r#"{"customer": {"email": "a@b.cn"}, "text": 5}"#.to_owned(), Some("text")),
    ] {
        let (status, body) = web.send_raw_signed(&format!("msg_{}", what.replace(' ', "_")), raw.into_bytes()).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: detail present: {body}");
        assert_eq!(body["field"].as_str(), field, "{what}: {body}");
    }

    // Unknown source: 404.
    let other = WebClient::new(&gw.base, "nosuch", SOURCE_SECRET);
    assert_eq!(other.send(&complaint("x")).await.0, 404);

    let store = db.store().await;
    assert_eq!(row_counts(&*store).await, (0, vec![]), "no refused request created a case or a job");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(rx.received().is_empty(), "nothing was forwarded");

    // After all that, a good request still works (the refusals did not poison the source).
    assert_eq!(web.send(&complaint("still broken")).await.0, 202);
    assert_eq!(store.count_cases().await.expect("count"), 1);
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_copies_of_one_delivery_make_one_case() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 5))).await;
    let web = gw.web();
    let body = complaint("the same delivery, retried by an impatient backend");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (web, body) = (web.clone(), body.clone());
            tokio::spawn(async move { web.send_id("msg_same_delivery", &body).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert!(answers.iter().all(|(s, _)| *s == 202), "{answers:?}");
    let ids: std::collections::HashSet<&str> =
        answers.iter().map(|(_, b)| b["case_id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 1, "one case id in every answer");
    let originals = answers.iter().filter(|(_, b)| b["duplicate"] == false).count();
    assert_eq!(originals, 1, "exactly one answer is the original, the rest say duplicate: true");

    let store = db.store().await;
    assert_eq!(store.count_cases().await.expect("count"), 1);
    rx.wait_until(10, "one delivery", |r| r.iter().any(|x| x.answered == 200)).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 1, "one case.created downstream");

    // A later repeat answers with the original case too.
    let (status, again) = web.send_id("msg_same_delivery", &body).await;
    assert_eq!(
        (status, again["duplicate"].clone(), again["case_id"].as_str()),
        (202, Value::Bool(true), ids.iter().next().copied())
    );
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_and_stores_nothing_for_it() {
    let db = TestDb::sqlite();
    let toml = config_toml(&db.url, "")
        .replace("rate_limit_per_sec = 1000\nrate_limit_burst = 1000", "rate_limit_per_sec = 1\nrate_limit_burst = 3");
    let gw = Gateway::start(&toml).await;
    let web = gw.web();
    let mut accepted = 0;
    let mut limited = Vec::new();
    for i in 0..8 {
        let (status, body) = web.send(&complaint(&format!("complaint {i}"))).await;
        match status {
            202 => accepted += 1,
            429 => limited.push(body),
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert!(accepted >= 3 && !limited.is_empty(), "burst of 3 passes, then 429 ({accepted} accepted)");
    assert_eq!(limited[0]["code"], "rate_limited");
    let ra: u64 = limited[0]["_retry_after"].as_str().expect("Retry-After header").parse().expect("seconds");
    assert!((1..=2).contains(&ra), "Retry-After {ra}");
    let store = db.store().await;
    assert_eq!(store.count_cases().await.expect("count"), accepted, "a 429 stores nothing");
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn callback_url_gets_the_same_acknowledgement_signed_with_the_source_secret() {
    let db = TestDb::sqlite();
    let site = Receiver::start_with("127.0.0.1:0", SOURCE_SECRET).await;
    let toml = config_toml(&db.url, "")
        .replace("name = \"site\"\n", &format!("name = \"site\"\ncallback_url = \"{}\"\n", site.url));
    let gw = Gateway::start(&toml).await;
    site.set_default(500);
    site.script(&[503]);
    let (status, receipt) = gw.web().send(&complaint("My refund never arrived")).await;
    assert_eq!(status, 202);
    site.set_default(200);
    let got = site.wait_until(10, "the callback", |r| r.iter().any(|x| x.answered == 200)).await;
    assert!(got.len() >= 2, "the first callback failed (503) and was retried");
    assert!(got.iter().all(|r| r.signature_ok), "signed with the source's secret");
    assert!(got.iter().all(|r| r.webhook_id == got[0].webhook_id), "same webhook-id on every retry");
    let last = got.last().expect("one");
    assert_eq!(last.body["type"], "case.acknowledged");
    assert_eq!(last.body["case_id"], receipt["case_id"]);
    assert_eq!(last.body["text"], receipt["ack"]["text"], "the same acknowledgement as in the 202");
    gw.stop().await;
}

#[tokio::test]
async fn operations_routes() {
    let db = TestDb::sqlite();
    let gw = Gateway::start(&config_toml(&db.url, "")).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", gw.base)).send();

    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
    let served: Value = get("/v1/schema/case.json").await.expect("schema").json().await.expect("json");
    let committed: Value = serde_json::from_str(include_str!("../../schema/case.json")).expect("json");
    assert_eq!(served, committed, "the served schema is the committed file");
    let openapi: Value = get("/openapi.json").await.expect("openapi").json().await.expect("json");
    assert!(openapi["paths"]["/v1/inbound/web/{source}"].is_object());

    assert_eq!(gw.web().send(&complaint("metrics please")).await.0, 202);
    let metrics = get("/metrics").await.expect("metrics").text().await.expect("text");
    for name in [
        "earshot_complaints_ingested_total{channel=\"web\"}",
        "earshot_outbox_jobs{state=\"pending\"}",
        "earshot_ingest_latency_seconds_bucket",
        "earshot_batch_size_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics has {name}:\n{metrics}");
    }

    // Admin routes need the bearer token.
    let no = client.get(format!("{}/v1/cases", gw.base)).send().await.expect("req");
    assert_eq!(no.status(), 401);
    let wrong =
        client.get(format!("{}/v1/cases", gw.base)).bearer_auth("not-the-token-at-all").send().await.expect("req");
    assert_eq!(wrong.status(), 401);
    let (status, cases) = gw.admin_get("/v1/cases").await;
    assert_eq!(status, 200);
    assert_eq!(cases["cases"].as_array().map(Vec::len), Some(1));
    assert_eq!(gw.admin_get("/v1/cases/case_nope").await.0, 404);
    assert_eq!(gw.admin_get("/v1/outbox?state=weird").await.0, 400);
    assert_eq!(gw.admin_get("/v1/quarantine").await.0, 200);
    gw.stop().await;
}

/// A case is rendered ahead as if its sender were new; a contact already known must still give
/// the known customer, whichever contact comes first and on either store.
#[tokio::test]
async fn a_returning_customer_keeps_one_customer_id() {
    let mut dbs = vec![TestDb::sqlite()];
    dbs.extend(TestDb::postgres().await);
    for db in dbs {
        let gw = Gateway::start(&config_toml(&db.url, "")).await;
        let web = gw.web();
        let customer_of = |receipt: Value| {
            let gw = &gw;
            async move {
                let id = receipt["case_id"].as_str().expect("case_id").to_owned();
                let (status, case) = gw.admin_get(&format!("/v1/cases/{id}")).await;
                assert_eq!(status, 200, "{case}");
                case["customer"]["id"].as_str().expect("customer id").to_owned()
            }
        };
        let first =
            json!({ "customer": { "email": "li.lei@example.cn", "phone": "+86 139 0000 1111" }, "text": "第一次投诉" });
        let (s, r) = web.send(&first).await;
        assert_eq!(s, 202, "{r}");
        let known = customer_of(r).await;

        // Only the phone, which was the second contact the first time.
        let (s, r) = web.send(&json!({ "customer": { "phone": "+86 139 0000 1111" }, "text": "第二次" })).await;
        assert_eq!(s, 202, "{r}");
        assert_eq!(customer_of(r).await, known, "{}: the phone's customer", db.url);

        // A new email first, the known phone second.
        let both =
            json!({ "customer": { "email": "new.box@example.cn", "phone": "+86 139 0000 1111" }, "text": "第三次" });
        let (s, r) = web.send(&both).await;
        assert_eq!(s, 202, "{r}");
        assert_eq!(customer_of(r).await, known, "{}: the known contact decides", db.url);

        // A stranger is somebody else.
        let (s, r) = web.send(&json!({ "customer": { "email": "someone.else@example.cn" }, "text": "别人" })).await;
        assert_eq!(s, 202, "{r}");
        assert_ne!(customer_of(r).await, known);

        gw.stop().await;
        db.cleanup().await;
    }
}

/// Two new complaints committed in one batch, `{phone P}` and `{email E, phone P}`, belong to one
/// customer, as when they are sent one after the other. The batch is made by holding the SQLite
/// write lock from outside while they queue behind a first complaint.
#[tokio::test]
async fn two_new_complaints_sharing_a_contact_in_one_batch_are_one_customer() {
    use sqlx::Connection;
    let db = TestDb::sqlite();
    let gw = Gateway::start(&config_toml(&db.url, "")).await;
    let web = gw.web();
    // Case numbers are reserved in blocks through the writer connection: reserve the block first, so
    // that nothing but the commits waits for the lock below.
    assert_eq!(web.send(&json!({ "customer": { "email": "warm@example.cn" }, "text": "预热" })).await.0, 202);
    let mut lock = sqlx::SqliteConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await.expect("take the write lock");

    // The first one waits in the writer for the lock; the two others queue behind it, together.
    let w = web.clone();
    let first =
        tokio::spawn(
            async move { w.send(&json!({ "customer": { "email": "first@example.cn" }, "text": "先" })).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (w1, w2) = (web.clone(), web.clone());
    let phone_only = tokio::spawn(async move {
        w1.send(&json!({ "customer": { "phone": "+86 139 0000 2222" }, "text": "只有电话" })).await
    });
    let both = tokio::spawn(async move {
        w2.send(&json!({ "customer": { "email": "shared@example.cn", "phone": "+86 139 0000 2222" }, "text": "两个" }))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("ROLLBACK").execute(&mut lock).await.expect("release the lock");
    let _ = lock.close().await;

    let mut customers = Vec::new();
    for task in [first, phone_only, both] {
        let (status, receipt) = task.await.expect("request task");
        assert_eq!(status, 202, "{receipt}");
        let id = receipt["case_id"].as_str().expect("case_id").to_owned();
        let (_, case) = gw.admin_get(&format!("/v1/cases/{id}")).await;
        customers.push(case["customer"]["id"].as_str().expect("customer id").to_owned());
    }
    assert_eq!(customers[1], customers[2], "one customer for the shared phone");
    assert_ne!(customers[0], customers[1]);
    gw.stop().await;
}

/// One webhook-id, two bodies: the second answers 409 `idempotency_conflict` and changes nothing; the
/// same id with the same body is still a 202 duplicate.
#[tokio::test]
async fn one_webhook_id_with_another_body_is_a_conflict() {
    let db = TestDb::sqlite();
    let gw = Gateway::start(&config_toml(&db.url, "")).await;
    let web = gw.web();
    let first = complaint("the cup arrived broken");
    let (status, receipt) = web.send_id("msg_reused", &first).await;
    assert_eq!(status, 202, "{receipt}");
    let store = db.store().await;
    let before = row_counts(&*store).await;

    let (status, body) = web.send_id("msg_reused", &complaint("something else entirely")).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("idempotency_conflict")), "{body}");
    assert_eq!(row_counts(&*store).await, before, "nothing changed");

    let (status, again) = web.send_id("msg_reused", &first).await;
    assert_eq!((status, again["duplicate"].as_bool()), (202, Some(true)), "{again}");
    assert_eq!(again["case_id"], receipt["case_id"]);

    // Two bodies under one id arriving at once: one is stored, the other refused.
    let (one, two) = (complaint("first body"), complaint("second body"));
    let (a, b) = tokio::join!(web.send_id("msg_race", &one), web.send_id("msg_race", &two));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 409], "{a:?} {b:?}");
    store.close().await;
    gw.stop().await;
}

/// Rotating secrets without a window of failures: a source with `secrets = [new, old]` accepts
/// requests signed with either (and refuses a third), and a downstream endpoint with two secrets
/// gets one signature per secret, each valid on its own.
#[tokio::test]
async fn secrets_rotate_without_a_gap() {
    const NEW: &str = "whsec_bmV3LXNvdXJjZS1zZWNyZXQtMDEyMzQ1Njc4OQ==";
    const NEW_DOWN: &str = "whsec_bmV3LWRvd25zdHJlYW0tc2VjcmV0LTAxMjM0NQ==";
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    let toml = config_toml(&db.url, "")
        .replace(&format!("secret = \"{SOURCE_SECRET}\""), &format!("secrets = [\"{NEW}\", \"{SOURCE_SECRET}\"]"))
        + &format!(
            "[[downstream]]\nname = \"tickets\"\nurl = \"{}\"\nsecrets = [\"{NEW_DOWN}\", \"{DOWNSTREAM_SECRET}\"]\ntimeout_secs = 2\n",
            rx.url
        );
    let gw = Gateway::start(&toml).await;
    let old_client = gw.web();
    let new_client = WebClient::new(&gw.base, "site", NEW);
    let stranger = WebClient::new(&gw.base, "site", "whsec_c29tZS1vdGhlci1zZWNyZXQtYWx0b2dldGhlcg==");
    assert_eq!(old_client.send(&complaint("signed with the old secret")).await.0, 202);
    assert_eq!(new_client.send(&complaint("signed with the new secret")).await.0, 202);
    let (status, body) = stranger.send(&complaint("signed with neither")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("invalid_signature")), "{body}");

    let got = rx.wait_until(10, "two deliveries", |r| r.len() >= 2).await;
    for r in &got {
        assert_eq!(r.signature.split(' ').count(), 2, "one signature per secret: {}", r.signature);
        let ts: i64 = r.timestamp.parse().expect("timestamp");
        for secret in [NEW_DOWN, DOWNSTREAM_SECRET] {
            let key = earshot_channel::webhooks::SigningKey::from_whsec(secret).expect("key");
            // Each secret alone verifies one of the two.
            assert_eq!(
                key.verify(Some(&r.webhook_id), Some(&r.timestamp), Some(&r.signature), &r.raw, ts),
                Ok(()),
                "{secret}"
            );
        }
    }
    gw.stop().await;
}

/// The config with tight client limits: 1 s for headers and for a body, two connections at most.
fn tight_limits(db_url: &str) -> String {
    let toml = config_toml(db_url, "").replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\nmax_connections = 2",
    );
    assert!(toml.contains("max_connections = 2"), "the [server] table was found");
    toml
}

/// Reads until the peer closes the connection (or `secs` pass); returns what came and when.
async fn read_until_closed(sock: &mut tokio::net::TcpStream, secs: u64) -> (Vec<u8>, Option<Duration>) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(secs).saturating_sub(started.elapsed()), sock.read(&mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(started.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, None),
        }
    }
}

/// A client sending its headers a byte at a time is cut off after `header_read_timeout`, and holds
/// nothing meanwhile: a normal complaint sent at the same time is answered.
#[tokio::test]
async fn a_client_sending_headers_slowly_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::sqlite();
    let gw = Gateway::start(&tight_limits(&db.url)).await;
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    slow.write_all(b"POST /v1/inbound/web/site HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let (mut reader, mut writer) = slow.into_split();
    let dribble = tokio::spawn(async move {
        for _ in 0..50 {
            if writer.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert_eq!(gw.web().send(&complaint("sent while another client dribbles")).await.0, 202);
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the dribbling client was not cut off within 5 s");
    assert!(started.elapsed() < Duration::from_secs(3), "cut off after {:?}", started.elapsed());
    dribble.abort();
    gw.stop().await;
}

/// A body that stops arriving gets 408 after `body_read_timeout`; nothing is stored.
#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::sqlite();
    let gw = Gateway::start(&tight_limits(&db.url)).await;
    let mut sock = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    sock.write_all(
        b"POST /v1/inbound/web/site HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\
          webhook-id: msg_slow\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,AAAA\r\n\r\n{\"customer\":",
    )
    .await
    .expect("write");
    let (answer, closed_after) = read_until_closed(&mut sock, 5).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(closed_after.is_some_and(|d| d < Duration::from_secs(4)), "{closed_after:?}");
    let store = db.store().await;
    assert_eq!(store.count_cases().await.expect("count"), 0);
    store.close().await;
    gw.stop().await;
}

/// With `max_connections = 2`, two connections that say nothing hold the server's slots until their
/// header deadline; then a third client is served.
#[tokio::test]
async fn the_connection_cap_holds_and_silent_connections_free_their_slots() {
    let db = TestDb::sqlite();
    let gw = Gateway::start(&tight_limits(&db.url)).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(gw.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), gw.web().send(&complaint("waits for a slot")))
        .await
        .expect("answered once a slot is free");
    assert_eq!(status, 202, "{body}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500), "the cap held the third client back: {waited:?}");
    for mut s in silent {
        let (_, closed) = read_until_closed(&mut s, 3).await;
        assert!(closed.is_some(), "a silent connection is closed at its header deadline");
    }
    gw.stop().await;
}

/// What every `/openapi.json` must hold, whatever the channels: OpenAPI 3.1, every path parameter of
/// every templated route declared, every operation with a security requirement answering 401, and
/// every `$ref` naming a schema the document defines.
fn check_openapi(doc: &Value) {
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let names: Vec<&str> = path.split('{').skip(1).filter_map(|p| p.split('}').next()).collect();
        for (method, op) in item.as_object().expect("path item") {
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["in"] == "path").filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            for n in &names {
                assert!(declared.contains(n), "{method} {path} does not declare path parameter {n}");
            }
            if op.get("security").is_some() {
                assert!(op["responses"]["401"].is_object(), "{method} {path}: the admin 401 is documented");
            }
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has responses");
        }
    }
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(o) => {
                out.extend(o.get("$ref").and_then(Value::as_str));
                o.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(doc, &mut found);
    for r in found {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(doc["components"]["schemas"][name].is_object(), "$ref {r} names no schema of the document");
    }
}

async fn openapi_of(gw: &Gateway) -> Value {
    reqwest::get(format!("{}/openapi.json", gw.base)).await.expect("get").json().await.expect("json")
}

/// `/openapi.json` declares every path parameter of every templated route, and every admin route
/// its bearer token and its 401.
#[tokio::test]
async fn the_openapi_document_declares_path_parameters_and_admin_answers() {
    let db = TestDb::sqlite();
    let gw = Gateway::start(&config_toml(&db.url, "")).await;
    let doc = openapi_of(&gw).await;
    check_openapi(&doc);
    for admin in [
        "/v1/cases",
        "/v1/cases/{id}",
        "/v1/outbox",
        "/v1/outbox/{id}/replay",
        "/v1/outbox/{id}/discard",
        "/v1/quarantine",
    ] {
        let item = &doc["paths"][admin];
        let op = item.as_object().and_then(|o| o.values().next()).expect(admin);
        assert!(op["security"].is_array(), "{admin} needs the bearer token");
    }
    gw.stop().await;
}

/// The routes the Telegram (webhook mode) and phone channels mount, with their methods.
const CHANNEL_ROUTES: [(&str, &str); 9] = [
    ("post", "/v1/inbound/telegram"),
    ("post", "/v1/inbound/phone/sms"),
    ("post", "/v1/inbound/phone/voice"),
    ("post", "/v1/inbound/phone/voice/menu"),
    ("post", "/v1/inbound/phone/voice/recorded"),
    ("post", "/v1/inbound/phone/voice/status"),
    ("post", "/v1/inbound/phone/transcription"),
    ("post", "/v1/inbound/phone/events/{source}"),
    ("get", "/v1/schema/phone-event.json"),
];

/// `/openapi.json` describes the routes of exactly the channels that serve them: with Telegram in
/// webhook mode and phone enabled, each of their routes with its method (and the router serves
/// each of them, answering a status the document declares); without them, or with Telegram polling
/// (no webhook route), none of theirs.
#[tokio::test]
async fn the_openapi_document_describes_the_routes_of_the_enabled_channels() {
    let db = TestDb::sqlite();
    let enabled = format!(
        r#"
[channels.telegram]
token = "{}"
api_url = "http://127.0.0.1:9"
mode = "webhook"
webhook_secret = "openapi-doc-secret"
send_timeout_secs = 3

[channels.phone]
auth_token = "phone-auth-token-0123456789"
account_sid = "AC0123456789abcdef0123456789abcdef"
from_number = "+8610085000000"
api_url = "http://127.0.0.1:9"
send_timeout_secs = 3

[[channels.phone.pbx_sources]]
name = "callcentre"
secret = "whsec_cGJ4LXNvdXJjZS1zZWNyZXQtMDEyMzQ1Njc4OWFi"
"#,
        crate::botapi::TOKEN
    );
    let gw = Gateway::start(&config_toml(&db.url, &enabled)).await;
    let doc = openapi_of(&gw).await;
    check_openapi(&doc);
    assert!(doc["paths"]["/v1/inbound/web/{source}"]["post"].is_object(), "the web route is still there");
    let client = reqwest::Client::new();
    for (method, path) in CHANNEL_ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is in /openapi.json: {}", doc["paths"]);
        // Served as documented: an unsigned request reaches the handler (no 404 or 405 from the
        // router), and its answer is one the document declares.
        let url = format!("{}{}", gw.base, path.replace("{source}", "callcentre"));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = client.request(m, &url).send().await.expect("request");
        let status = r.status().as_u16();
        assert!(status != 404 && status != 405, "{method} {path} is served: {status}");
        assert!(op["responses"][status.to_string()].is_object(), "{method} {path} answered {status}, undeclared");
    }
    gw.stop().await;

    // Without them (the web channel only), and with Telegram polling (no webhook route): none of theirs.
    let bot = crate::botapi::BotApi::start().await;
    let polling = format!(
        "\n[channels.telegram]\ntoken = \"{}\"\napi_url = \"{}\"\npoll_timeout_secs = 1\nsend_timeout_secs = 3\n",
        crate::botapi::TOKEN,
        bot.base
    );
    for (what, extra) in [("web only", ""), ("telegram polling", polling.as_str())] {
        let gw = Gateway::start(&config_toml(&db.url, extra)).await;
        let doc = openapi_of(&gw).await;
        check_openapi(&doc);
        for (_, path) in CHANNEL_ROUTES {
            assert!(doc["paths"].get(path).is_none(), "{what}: {path} is not served, so not documented");
        }
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        assert!(!schemas.keys().any(|k| k.starts_with("Phone") || k.starts_with("Telegram")), "{what}: {schemas:?}");
        let r = client.post(format!("{}/v1/inbound/telegram", gw.base)).send().await.expect("request");
        assert_eq!(r.status(), 404, "{what}: and indeed not served");
        gw.stop().await;
    }
    db.cleanup().await;
}
