//! Downstream delivery through the outbox: retries, dead letters, replay, per-case order.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn downstream_down_then_up_is_delivered_with_one_webhook_id() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    rx.set_default(503);
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 20))).await;
    let (status, receipt) = gw.web().send(&complaint("nobody answers my calls")).await;
    assert_eq!(status, 202);

    rx.wait_until(10, "three failed attempts", |r| r.len() >= 3).await;
    rx.set_default(200);
    let got = rx.wait_until(10, "a successful attempt", |r| r.iter().any(|x| x.answered == 200)).await;
    assert!(got.iter().all(|r| r.webhook_id == got[0].webhook_id), "the same webhook-id on every retry");
    assert!(got.iter().all(|r| r.signature_ok));
    assert!(got.iter().all(|r| r.body == got[0].body), "the same body on every retry");
    assert_eq!(got.last().expect("one").body["data"]["case"]["id"], receipt["case_id"]);
    // Retries are spaced by the schedule (100ms, 200ms, 300ms ± 20%), not hammered.
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps.iter().all(|g| *g >= Duration::from_millis(75)), "{gaps:?}");

    let store = db.store().await;
    let done = eventually(5, "the job marked done", || async {
        let jobs = store.list_jobs(Some("done"), 10).await.expect("jobs");
        (!jobs.is_empty()).then_some(jobs)
    })
    .await;
    assert_eq!(done[0].attempts as usize, got.len(), "every attempt counted");
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn after_max_attempts_the_job_is_dead_and_replay_delivers_it() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    rx.set_default(500);
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 3))).await;
    assert_eq!(gw.web().send(&complaint("dead letter me")).await.0, 202);

    let dead = eventually(10, "a dead job", || async {
        let (s, v) = gw.admin_get("/v1/outbox?state=dead").await;
        (s == 200 && v["jobs"].as_array().is_some_and(|a| a.len() == 1)).then_some(v)
    })
    .await;
    let job = &dead["jobs"][0];
    assert_eq!(job["attempts"], 3);
    assert!(job["last_error"].as_str().is_some_and(|e| e.contains("500")), "{job}");
    assert_eq!(rx.received().len(), 3, "exactly max_attempts attempts");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 3, "a dead job is not retried");

    rx.set_default(200);
    let id = job["id"].as_i64().expect("id");
    assert_eq!(gw.admin_post(&format!("/v1/outbox/{id}/replay")).await.0, 200);
    let got = rx.wait_until(10, "the replayed delivery", |r| r.iter().any(|x| x.answered == 200)).await;
    assert_eq!(got.last().expect("one").webhook_id, got[0].webhook_id, "replay keeps the webhook-id");
    assert_eq!(gw.admin_post(&format!("/v1/outbox/{id}/replay")).await.0, 409, "a delivered job is not dead");
    gw.stop().await;
}

#[tokio::test]
async fn gone_dead_letters_at_once_and_redirects_are_failures() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    rx.set_default(410);
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 10))).await;
    assert_eq!(gw.web().send(&complaint("gone")).await.0, 202);
    let dead = eventually(10, "the job dead after 410", || async {
        let (_, v) = gw.admin_get("/v1/outbox?state=dead").await;
        v["jobs"].as_array().filter(|a| a.len() == 1).cloned()
    })
    .await;
    assert_eq!(dead[0]["attempts"], 1, "410 Gone is not retried");
    assert!(dead[0]["last_error"].as_str().is_some_and(|e| e.contains("410")));

    rx.set_default(302);
    assert_eq!(gw.web().send(&complaint("redirected")).await.0, 202);
    rx.wait_until(10, "the 302 retried", |r| r.iter().filter(|x| x.answered == 302).count() >= 2).await;
    let (_, done) = gw.admin_get("/v1/outbox?state=done").await;
    assert_eq!(done["jobs"].as_array().map(Vec::len), Some(0), "a 3xx answer is not a success");
    gw.stop().await;
}

/// Two events of one case to one endpoint: the second waits while the first is retried.
#[tokio::test]
async fn two_events_of_one_case_arrive_in_order_even_when_the_first_needs_retries() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    let toml = config_toml(&db.url, &downstream_toml(&rx.url, 10));
    let settings = settings(&toml);

    // Write a case with two downstream events (created, then updated) the way intake does, plus an
    // unrelated case, straight into the store; then start the gateway, whose workers deliver them.
    let store = db.store().await;
    let builder = earshot::intake::Builder {
        own_addresses: Default::default(),
        ack_window: Duration::from_secs(600),
        templates: std::sync::Arc::new(
            earshot::notify::Templates::load(std::path::Path::new("config/templates")).expect("templates"),
        ),
        downstream: settings.downstream.clone().into(),
        channel_max_attempts: 5,
        sla_first_response: Duration::from_secs(3600),
        sla_resolution: Duration::from_secs(86400),
    };
    let inbound = |ext: &str| earshot_channel::Inbound {
        channel: earshot_channel::ChannelKind::Web,
        source: "site".into(),
        external_id: earshot_channel::ExternalId(ext.into()),
        identities: vec![earshot_channel::Identity {
            kind: earshot_channel::IdentityKind::Email,
            value: "a@b.cn".into(),
        }],
        customer: Default::default(),
        reply_route: earshot_channel::ReplyRoute::Web { source: "site".into(), callback_url: None },
        thread: None,
        subject: None,
        text: "ordered".into(),
        full_text: None,
        lang: None,
        category: None,
        order_id: None,
        metadata: Default::default(),
        attachments: vec![],
        raw: None,
        received_at: time::OffsetDateTime::now_utc(),
        automatic: None,
    };
    let seqs = store.next_seqs(2).await.expect("seqs");
    let now = time::OffsetDateTime::now_utc();
    let (mut first_case, _) = builder.build(&inbound("site:ordered-1"), seqs[0], None, now, true).expect("build");
    let mut second = first_case.jobs[0].clone();
    second.event_id = earshot::schema::EventId::generate().0;
    second.kind = "case.updated";
    second.payload = second.payload.replacen("\"case.created\"", "\"case.updated\"", 1);
    first_case.jobs.push(second.clone());
    let (other_case, _) = builder.build(&inbound("site:ordered-2"), seqs[1], None, now, true).expect("build");
    let first_id = first_case.jobs[0].event_id.clone();
    rx.fail_id(&first_id, 3);
    store.commit_batch(Arc::new(vec![first_case, other_case.clone()])).await.expect("commit");

    let gw = Gateway::start(&toml).await;
    let got = rx
        .wait_until(15, "both events of the case", |r| {
            r.iter().any(|x| x.webhook_id == second.event_id && x.answered == 200)
        })
        .await;
    let of_case: Vec<_> = got.iter().filter(|r| r.webhook_id == first_id || r.webhook_id == second.event_id).collect();
    let first_ok = of_case.iter().position(|r| r.webhook_id == first_id && r.answered == 200).expect("first delivered");
    let second_seen = of_case.iter().position(|r| r.webhook_id == second.event_id).expect("second seen");
    assert_eq!(of_case.iter().filter(|r| r.webhook_id == first_id).count(), 4, "three 503s, then success");
    assert!(first_ok < second_seen, "the second event was not even tried before the first succeeded: {of_case:?}");
    assert_eq!(of_case[second_seen].body["type"], "case.updated");
    // The unrelated case was not held up by the first case's retries.
    let other_at = got.iter().position(|r| r.webhook_id == other_case.jobs[0].event_id).expect("other delivered");
    assert!(other_at < got.iter().position(|r| r.webhook_id == first_id && r.answered == 200).expect("first ok"));
    store.close().await;
    gw.stop().await;
}
