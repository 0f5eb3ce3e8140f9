//! Two-way cases over real HTTP: the ticket store's events (`POST /v1/cases/{id}/events`), what the
//! customer receives back through the web channel's callback, the survey and its links, the SLA
//! clocks, on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const CRM_SECRET: &str = "whsec_Y3JtLWRvd25zdHJlYW0tc2VjcmV0LTAxMjM0NTY3OA==";

/// A config with two downstream endpoints (`tickets`, `crm`) and a web source `shop` whose callbacks
/// go to `callback`; `extra` is appended.
fn two_way_toml(db: &str, tickets: &Receiver, crm: &Receiver, callback: &Receiver, extra: &str) -> String {
    let mut t = config_toml(db, extra);
    t.push_str(&downstream_toml(&tickets.url, 50));
    t.push_str(&format!(
        r#"
[[downstream]]
name = "crm"
url = "{}"
secret = "{CRM_SECRET}"
timeout_secs = 2
max_attempts = 50

[[channels.web.sources]]
name = "shop"
secret = "{SOURCE_SECRET}"
callback_url = "{}"
rate_limit_per_sec = 1000
rate_limit_burst = 1000
"#,
        crm.url, callback.url
    ));
    t
}

async fn new_shop_case(gw: &Gateway, text: &str) -> (String, String) {
    let shop = WebClient::new(&gw.base, "shop", SOURCE_SECRET);
    let (status, receipt) = shop.send(&complaint(text)).await;
    assert_eq!(status, 202, "{receipt}");
    (receipt["case_id"].as_str().expect("case_id").to_owned(), receipt["case_ref"].as_str().expect("ref").to_owned())
}

fn of_type<'a>(got: &'a [Received], kind: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.answered == 200 && r.body["type"] == kind).collect()
}

fn for_case<'a>(got: &'a [Received], case_id: &str) -> Vec<&'a Received> {
    got.iter()
        .filter(|r| r.answered == 200 && (r.body["case_id"] == case_id || r.body["data"]["case"]["id"] == case_id))
        .collect()
}

async fn the_web_lifecycle(db: TestDb) {
    let (tickets, crm) = (Receiver::start().await, Receiver::start_with("127.0.0.1:0", CRM_SECRET).await);
    let callback = Receiver::start_with("127.0.0.1:0", SOURCE_SECRET).await;
    let gw = Gateway::start(&two_way_toml(&db.url, &tickets, &crm, &callback, "")).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let (case_id, case_ref) = new_shop_case(&gw, "我买的杯子到货时已经碎了，请尽快处理。").await;
    callback.wait_until(10, "the acknowledgement", |r| !of_type(r, "case.acknowledged").is_empty()).await;
    // A delivered acknowledgement moves the case from new to acknowledged.
    let path = format!("/v1/cases/{case_id}");
    eventually(10, "status acknowledged", || async {
        let (_, c) = gw.admin_get(&path).await;
        (c["status"] == "acknowledged").then_some(())
    })
    .await;

    assert_eq!(ts.status(&case_id, "in_progress").await.0, 200);
    let reply = json!({ "type": "public_reply", "data": { "text": "我们会为您补发一个新杯子。", "author_display_name": "王芳" } });
    assert_eq!(ts.send(&case_id, &reply).await.0, 200);
    let (s, body) = ts.status(&case_id, "resolved").await;
    assert_eq!((s, body["status"].as_str()), (200, Some("resolved")), "{body}");

    // The customer hears all of it, in order, in Chinese, each signed with the source's secret.
    let got = callback.wait_until(10, "update, reply, update, survey", |r| for_case(r, &case_id).len() >= 5).await;
    let got = for_case(&got, &case_id);
    let kinds: Vec<&str> = got.iter().map(|r| r.body["type"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        kinds,
        ["case.acknowledged", "case.status_changed", "case.public_reply", "case.status_changed", "case.survey"],
        "{got:#?}"
    );
    assert!(got.iter().all(|r| r.signature_ok && r.body["lang"] == "zh" && r.body["case_ref"] == case_ref.as_str()));
    assert_eq!(got[1].body["status"], "in_progress");
    assert!(
        got[1].body["text"].as_str().is_some_and(|t| t.contains("正在处理中") && t.contains(&case_ref)),
        "{}",
        got[1].body
    );
    assert!(got[2].body["text"].as_str().is_some_and(|t| t.contains("补发一个新杯子")), "{}", got[2].body);
    assert_eq!(got[2].body["author"], "王芳");
    assert_eq!(got[3].body["status"], "resolved");
    let survey = &got[4].body["survey"];
    let link = survey["link"].as_str().expect("survey link");
    assert!(link.starts_with(&format!("{}/v1/feedback/sv_", gw.base)), "{survey}");
    assert_eq!(survey["choices"].as_array().map(Vec::len), Some(7), "{survey}");

    // The sender of the events hears no echo; the other endpoint hears every status change.
    let crm_got = crm.wait_until(10, "two case.updated", |r| of_type(r, "case.updated").len() >= 2).await;
    let updated: Vec<&Value> = of_type(&crm_got, "case.updated").iter().map(|r| &r.body["data"]).collect();
    assert_eq!(updated[0]["case"]["status"], "in_progress");
    assert_eq!(updated[0]["previous_status"], "acknowledged");
    assert_eq!(updated[1]["case"]["status"], "resolved");
    assert!(updated[1]["case"]["sla"]["resolved_at"].is_string(), "{}", updated[1]);
    assert!(of_type(&tickets.received(), "case.updated").is_empty(), "the ticket store got its own change back");

    // One click on a link: the answer is recorded, shown back in Chinese, and sent downstream;
    // "not solved" reopens the case, which every endpoint hears.
    let page = reqwest::get(format!("{link}?rating=2&solved=no")).await.expect("feedback link");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("page");
    assert!(html.contains("谢谢您") && html.contains(&case_ref) && html.contains("重新打开"), "{html}");
    for r in [&tickets, &crm] {
        let got = r
            .wait_until(10, "feedback and reopened", |g| {
                !of_type(g, "case.feedback").is_empty()
                    && of_type(g, "case.updated").iter().any(|u| u.body["data"]["case"]["status"] == "reopened")
            })
            .await;
        let fb = &of_type(&got, "case.feedback")[0].body["data"];
        assert_eq!((fb["rating"].as_u64(), fb["solved"].as_bool()), (Some(2), Some(false)), "{fb}");
    }
    let (_, case) = gw.admin_get(&format!("/v1/cases/{case_id}")).await;
    assert_eq!(case["status"], "reopened");
    assert_eq!(case["feedback"]["rating"], 2);
    let timeline = case["timeline"].as_array().expect("timeline");
    let kinds: Vec<&str> = timeline.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in ["message_in", "message_out", "event_out", "status_changed", "public_reply", "survey_sent", "feedback"] {
        assert!(kinds.contains(&k), "timeline lacks {k}: {kinds:?}");
    }
    let by_tickets = timeline.iter().filter(|e| e["actor"] == "downstream:tickets").count();
    assert_eq!(by_tickets, 3, "status changes and the reply name who made them");

    // The same answer again changes nothing; a later, different one is forwarded again.
    let before = of_type(&tickets.received(), "case.feedback").len();
    assert_eq!(reqwest::get(format!("{link}?rating=2&solved=no")).await.expect("again").status(), 200);
    assert_eq!(reqwest::get(format!("{link}?rating=4")).await.expect("later").status(), 200);
    let got = tickets.wait_until(10, "the replaced answer", |g| of_type(g, "case.feedback").len() > before).await;
    assert_eq!(of_type(&got, "case.feedback").len(), before + 1);
    assert_eq!(of_type(&got, "case.feedback").last().map(|r| r.body["data"]["rating"].clone()), Some(json!(4)));
    // Bad links: a clear answer, and nothing changes.
    assert_eq!(reqwest::get(format!("{link}?rating=9")).await.expect("bad").status(), 400);
    assert_eq!(reqwest::get(format!("{}/v1/feedback/sv_0000", gw.base)).await.expect("unknown").status(), 404);
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn web_lifecycle_sqlite() {
    the_web_lifecycle(TestDb::sqlite()).await;
}

#[tokio::test]
async fn web_lifecycle_postgres() {
    let Some(db) = TestDb::postgres().await else { return };
    the_web_lifecycle(db).await;
}

/// Job and case-log counts: what a refused event must not change.
async fn footprint(gw: &Gateway, case_id: &str) -> (usize, String, usize) {
    let (_, case) = gw.admin_get(&format!("/v1/cases/{case_id}")).await;
    let timeline = case["timeline"].as_array().map_or(0, Vec::len);
    let (_, jobs) = gw.admin_get("/v1/outbox?limit=1000").await;
    (jobs["jobs"].as_array().map_or(0, Vec::len), case["status"].as_str().unwrap_or_default().to_owned(), timeline)
}

#[tokio::test]
async fn refused_events_change_nothing_and_a_repeat_is_answered_once() {
    let db = TestDb::sqlite();
    let (tickets, crm) = (Receiver::start().await, Receiver::start_with("127.0.0.1:0", CRM_SECRET).await);
    let callback = Receiver::start_with("127.0.0.1:0", SOURCE_SECRET).await;
    let gw = Gateway::start(&two_way_toml(&db.url, &tickets, &crm, &callback, "")).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let (case_id, _) = new_shop_case(&gw, "The blender stopped working after two days.").await;
    for s in ["in_progress", "resolved", "closed"] {
        assert_eq!(ts.status(&case_id, s).await.0, 200, "{s}");
    }
    let before = footprint(&gw, &case_id).await;
    assert_eq!(before.1, "closed");

    // closed → in_progress: 409 with the statuses allowed next (none).
    let (s, body) = ts.status(&case_id, "in_progress").await;
    assert_eq!((s, body["code"].as_str()), (409, Some("invalid_transition")), "{body}");
    assert_eq!(body["allowed"], json!([]));
    // Unknown case: 404.
    let (s, body) = ts.status("case_0000000000000000000000000000000", "in_progress").await;
    assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "{body}");
    // Signed with a secret no endpoint has, or not at all: 401.
    let stranger = TicketStore::new(&gw, "whsec_c29tZW9uZS1lbHNlLXNlY3JldC0wMTIzNDU2Nzg5");
    let (s, body) = stranger.status(&case_id, "in_progress").await;
    assert_eq!((s, body["code"].as_str()), (401, Some("invalid_signature")), "{body}");
    let unsigned = reqwest::Client::new()
        .post(format!("{}/v1/cases/{case_id}/events", gw.base))
        .json(&json!({ "type": "status_changed", "data": { "status": "reopened" } }))
        .send()
        .await
        .expect("unsigned");
    assert_eq!(unsigned.status(), 401);
    // A body that is not an event: 400.
    let (s, body) = ts.send(&case_id, &json!({ "type": "status_changed", "data": { "status": "done" } })).await;
    assert_eq!((s, body["field"].as_str()), (400, Some("data.status")), "{body}");
    assert_eq!(footprint(&gw, &case_id).await, before, "a refused event changed something");

    // A repeated webhook-id: 200, duplicate, nothing sent; with another body, 409.
    let (case2, _) = new_shop_case(&gw, "The kettle leaks.").await;
    let event = json!({ "type": "status_changed", "data": { "status": "in_progress" } });
    assert_eq!(ts.send_as(&case2, "evt_once", &event).await.0, 200);
    let once = footprint(&gw, &case2).await;
    let (s, body) = ts.send_as(&case2, "evt_once", &event).await;
    assert_eq!((s, body["duplicate"].as_bool()), (200, Some(true)), "{body}");
    let other = json!({ "type": "status_changed", "data": { "status": "awaiting_customer" } });
    let (s, body) = ts.send_as(&case2, "evt_once", &other).await;
    assert_eq!((s, body["code"].as_str()), (409, Some("idempotency_conflict")), "{body}");
    assert_eq!(footprint(&gw, &case2).await, once, "a repeated event changed something");
    // The same status again is no change either.
    let (s, body) = ts.status(&case2, "in_progress").await;
    assert_eq!((s, body["changed"].as_bool()), (200, Some(false)), "{body}");
    assert_eq!(footprint(&gw, &case2).await, once);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let updates =
        for_case(&callback.received(), &case2).iter().filter(|r| r.body["type"] == "case.status_changed").count();
    assert_eq!(updates, 1, "the customer heard about one change once");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn updates_keep_their_order_across_a_restart_and_an_outage() {
    let db = TestDb::sqlite();
    let (tickets, crm) = (Receiver::start().await, Receiver::start_with("127.0.0.1:0", CRM_SECRET).await);
    let callback = Receiver::start_with("127.0.0.1:0", SOURCE_SECRET).await;
    // Attempts enough to outlast the outage and the restart.
    let toml = two_way_toml(&db.url, &tickets, &crm, &callback, "max_attempts = 1000\n");
    let gw = Gateway::start(&toml).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let (case_id, _) = new_shop_case(&gw, "My order SO-77 never arrived.").await;
    callback.wait_until(10, "the acknowledgement", |r| !for_case(r, &case_id).is_empty()).await;
    // The customer's side is down: updates queue up.
    callback.set_default(503);
    assert_eq!(ts.status(&case_id, "in_progress").await.0, 200);
    let reply = json!({ "type": "public_reply", "data": { "text": "First reply." } });
    assert_eq!(ts.send(&case_id, &reply).await.0, 200);
    gw.stop().await;

    let gw = Gateway::start(&toml).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    assert_eq!(ts.status(&case_id, "awaiting_customer").await.0, 200);
    let reply = json!({ "type": "public_reply", "data": { "text": "Second reply." } });
    assert_eq!(ts.send(&case_id, &reply).await.0, 200);
    callback.set_default(200);
    let got = callback.wait_until(20, "four updates", |r| for_case(r, &case_id).len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = for_case(&got, &case_id);
    let seq: Vec<String> = got
        .iter()
        .skip(1)
        .map(|r| {
            format!(
                "{}:{}",
                r.body["type"].as_str().unwrap_or(""),
                r.body["text"].as_str().unwrap_or("").lines().next().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(got.len(), 5, "nothing lost or repeated: {seq:#?}");
    assert!(seq[0].starts_with("case.status_changed") && seq[0].contains("being worked on"), "{seq:#?}");
    assert_eq!(seq[1], "case.public_reply:First reply.");
    assert!(seq[2].starts_with("case.status_changed") && seq[2].contains("waiting for information"), "{seq:#?}");
    assert_eq!(seq[3], "case.public_reply:Second reply.");
    gw.stop().await;
    db.cleanup().await;
}

fn breaches(r: &Receiver, case_id: &str) -> Vec<(String, String)> {
    for_case(&r.received(), case_id)
        .iter()
        .filter(|r| r.body["type"] == "case.sla_breached")
        .map(|r| {
            (
                r.body["data"]["target"].as_str().unwrap_or("").to_owned(),
                r.body["data"]["due_at"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

const FAST_SLA: &str = "[sla]\nfirst_response = \"2s\"\nresolution = \"4s\"\ncheck_every = \"100ms\"\n";

#[tokio::test]
async fn sla_targets_breach_once_unless_met_and_pause_while_awaiting_the_customer() {
    let db = TestDb::sqlite();
    let (tickets, crm) = (Receiver::start().await, Receiver::start_with("127.0.0.1:0", CRM_SECRET).await);
    let callback = Receiver::start_with("127.0.0.1:0", SOURCE_SECRET).await;
    let gw = Gateway::start(&two_way_toml(&db.url, &tickets, &crm, &callback, FAST_SLA)).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let start = Instant::now();
    let (idle, _) = new_shop_case(&gw, "Nobody answers me.").await;
    let (met, _) = new_shop_case(&gw, "The lid is missing.").await;
    let (paused, _) = new_shop_case(&gw, "Wrong colour delivered.").await;
    assert_eq!(ts.status(&met, "in_progress").await.0, 200);
    assert_eq!(ts.status(&paused, "in_progress").await.0, 200);
    assert_eq!(ts.status(&paused, "awaiting_customer").await.0, 200);
    let paused_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(ts.status(&met, "resolved").await.0, 200);

    // The idle case breaches both targets, once each, and nothing else does while paused.
    tickets.wait_until(10, "two breaches", |_| breaches(&tickets, &idle).len() >= 2).await;
    assert!(start.elapsed() >= Duration::from_secs(4), "resolution breached before it was due");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got: Vec<String> = breaches(&tickets, &idle).into_iter().map(|b| b.0).collect();
    assert_eq!(got, ["first_response", "resolution"]);
    assert_eq!(breaches(&crm, &idle).len(), 2, "every endpoint hears a breach");
    assert!(breaches(&tickets, &met).is_empty(), "a target met in time never breaches");
    assert!(breaches(&tickets, &paused).is_empty(), "no breach while awaiting the customer");

    // Back to work: the resolution clock runs again, moved on by the time waited.
    let waited = paused_at.elapsed();
    assert_eq!(ts.status(&paused, "in_progress").await.0, 200);
    let (_, case) = gw.admin_get(&format!("/v1/cases/{paused}")).await;
    let due = time::OffsetDateTime::parse(
        case["sla"]["resolution_due"].as_str().expect("due"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let created = time::OffsetDateTime::parse(
        case["created_at"].as_str().expect("created"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let moved = (due - created).as_seconds_f64();
    assert!(moved >= 4.0 + waited.as_secs_f64() - 0.5, "resolution due {moved} s after creation, waited {waited:?}");
    tickets.wait_until(15, "the paused case's resolution breach", |_| !breaches(&tickets, &paused).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<String> = breaches(&tickets, &paused).into_iter().map(|b| b.0).collect();
    assert_eq!(got, ["resolution"], "first response was met by in_progress");

    let (_, listed) = gw.admin_get("/v1/cases?breached=true").await;
    let ids: Vec<&str> = listed["cases"].as_array().expect("cases").iter().filter_map(|c| c["id"].as_str()).collect();
    assert!(ids.contains(&idle.as_str()) && ids.contains(&paused.as_str()) && !ids.contains(&met.as_str()), "{listed}");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn two_instances_on_postgres_announce_a_breach_once() {
    let Some(db) = TestDb::postgres().await else { return };
    let (tickets, crm) = (Receiver::start().await, Receiver::start_with("127.0.0.1:0", CRM_SECRET).await);
    let callback = Receiver::start_with("127.0.0.1:0", SOURCE_SECRET).await;
    let sla = "[sla]\nfirst_response = \"1s\"\nresolution = \"2s\"\ncheck_every = \"20ms\"\n";
    let toml = two_way_toml(&db.url, &tickets, &crm, &callback, sla);
    let (a, b) = (Gateway::start(&toml).await, Gateway::start(&toml).await);
    let mut cases = Vec::new();
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        cases.push(new_shop_case(gw, &format!("Complaint number {i}.")).await.0);
    }
    tickets.wait_until(20, "every breach", |_| cases.iter().all(|c| breaches(&tickets, c).len() >= 2)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for c in &cases {
        let got: Vec<String> = breaches(&tickets, c).into_iter().map(|b| b.0).collect();
        assert_eq!(got, ["first_response", "resolution"], "case {c}");
    }
    a.stop().await;
    b.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn cases_are_listed_with_filters_and_pages() {
    let db = TestDb::sqlite();
    let (tickets, crm) = (Receiver::start().await, Receiver::start_with("127.0.0.1:0", CRM_SECRET).await);
    let callback = Receiver::start_with("127.0.0.1:0", SOURCE_SECRET).await;
    let gw = Gateway::start(&two_way_toml(&db.url, &tickets, &crm, &callback, "")).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(new_shop_case(&gw, &format!("Parcel {i} is 100% late_ly.")).await.0);
    }
    let (_, other) = gw.web().send(&complaint("耳机没有声音")).await;
    assert_eq!(ts.status(&ids[1], "in_progress").await.0, 200);

    let list = |q: &str| {
        let q = q.to_owned();
        let gw = &gw;
        async move {
            let (s, v) = gw.admin_get(&format!("/v1/cases?{q}")).await;
            assert_eq!(s, 200, "{q}: {v}");
            v
        }
    };
    let ids_of = |v: &Value| -> Vec<String> {
        v["cases"].as_array().expect("cases").iter().filter_map(|c| c["id"].as_str().map(str::to_owned)).collect()
    };
    assert_eq!(ids_of(&list("status=in_progress").await), [ids[1].clone()]);
    assert_eq!(ids_of(&list("source=site").await), [other["case_id"].as_str().expect("id").to_owned()]);
    assert_eq!(ids_of(&list("q=%E8%80%B3%E6%9C%BA").await).len(), 1, "text search finds Chinese text");
    assert_eq!(ids_of(&list("q=100%25%20late_ly").await).len(), 5, "wildcards are taken literally");
    assert_eq!(ids_of(&list("q=100%25x").await).len(), 0);
    assert_eq!(ids_of(&list("channel=web&breached=false").await).len(), 6);
    // Pages of two, newest first, until no cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let q = match cursor {
            Some(c) => format!("source=shop&limit=2&cursor={c}"),
            None => "source=shop&limit=2".into(),
        };
        let page = list(&q).await;
        seen.extend(ids_of(&page));
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let future = "created_from=2999-01-01T00:00:00Z";
    assert!(ids_of(&list(future).await).is_empty());
    for bad in ["status=done", "channel=fax", "created_from=yesterday", "breached=perhaps"] {
        let (s, v) = gw.admin_get(&format!("/v1/cases?{bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn after_the_survey_window_a_link_answers_gone_and_changes_nothing() {
    let db = TestDb::sqlite();
    let (tickets, crm) = (Receiver::start().await, Receiver::start_with("127.0.0.1:0", CRM_SECRET).await);
    let callback = Receiver::start_with("127.0.0.1:0", SOURCE_SECRET).await;
    let gw = Gateway::start(&two_way_toml(&db.url, &tickets, &crm, &callback, "[survey]\nwindow = \"1s\"\n")).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let (case_id, _) = new_shop_case(&gw, "The strap broke on the first day.").await;
    assert_eq!(ts.status(&case_id, "in_progress").await.0, 200);
    assert_eq!(ts.status(&case_id, "resolved").await.0, 200);
    let got = callback.wait_until(10, "the survey", |r| !of_type(r, "case.survey").is_empty()).await;
    let link = of_type(&got, "case.survey")[0].body["survey"]["link"].as_str().expect("link").to_owned();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let page = reqwest::get(format!("{link}?rating=1&solved=no")).await.expect("late answer");
    assert_eq!(page.status(), 410);
    let (_, case) = gw.admin_get(&format!("/v1/cases/{case_id}")).await;
    assert_eq!(case["status"], "resolved", "a late 'not solved' reopens nothing");
    assert!(case["feedback"].is_null());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(of_type(&tickets.received(), "case.feedback").is_empty());
    gw.stop().await;
    db.cleanup().await;
}
