//! Downstream delivery through the outbox: retries, dead letters, replay and discard, per-case order,
//! deadlines, bulkheads, breakers, redirects and retention.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use earshot::config::Settings;
use earshot::store::{NewCase, NewJob};

use crate::support::*;

/// The intake's case builder for a test config, to write cases straight into a store.
fn builder(settings: &Settings) -> earshot::intake::Builder {
    earshot::intake::Builder {
        own_identities: Default::default(),
        ack_window: Duration::from_secs(600),
        loop_free: Default::default(),
        templates: std::sync::Arc::new(earshot::live::Live::new(
            earshot::notify::Templates::load(std::path::Path::new("config/templates")).expect("templates"),
        )),
        downstream: settings.downstream.clone().into(),
        channel_max_attempts: 5,
        sla_first_response: Duration::from_secs(3600),
        sla_resolution: Duration::from_secs(86400),
    }
}

fn inbound(ext: &str) -> earshot_channel::Inbound {
    earshot_channel::Inbound {
        channel: earshot_channel::ChannelKind::Web,
        source: "site".into(),
        external_id: earshot_channel::ExternalId(ext.into()),
        identities: vec![earshot_channel::Identity {
            kind: earshot_channel::IdentityKind::Email,
            value: format!("{}@b.cn", ext.replace(':', "-")),
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
        content_digest: None,
    }
}

/// A new case with two events to the one downstream endpoint: `case.created`, then a later
/// `case.updated` (the second returned), as intake and the lifecycle write them.
fn case_with_update(builder: &earshot::intake::Builder, ext: &str, seq: i64) -> (NewCase, NewJob) {
    let now = time::OffsetDateTime::now_utc();
    let (mut case, _) = builder.build(&inbound(ext), seq, None, now, true).expect("build");
    let mut second = case.jobs[0].clone();
    second.event_id = earshot::schema::EventId::generate().0;
    second.kind = "case.updated";
    second.payload = second.payload.replacen("\"case.created\"", "\"case.updated\"", 1);
    case.jobs.push(second.clone());
    (case, second)
}

/// A `[[downstream]]` section.
fn endpoint_toml(name: &str, url: &str, timeout_secs: u64, extra: &str) -> String {
    format!(
        "[[downstream]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{DOWNSTREAM_SECRET}\"\n\
         timeout_secs = {timeout_secs}\nmax_attempts = 50\n{extra}\n"
    )
}

/// The value of one sample in the gateway's `/metrics` text, if it is there.
async fn metric(gw: &Gateway, sample: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", gw.base)).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
}

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
    let builder = builder(&settings);
    let seqs = store.next_seqs(2).await.expect("seqs");
    let now = time::OffsetDateTime::now_utc();
    let (first_case, second) = case_with_update(&builder, "site:ordered-1", seqs[0]);
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

/// A dead `case.created` holds back the later events of its case: they are shown as held and not
/// sent. Replaying it sends both, in order; discarding it sends the later one.
#[tokio::test]
async fn a_dead_letter_holds_the_rest_of_its_case_until_replayed_or_discarded() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    // A name of its own: /metrics is one registry for every test in this process.
    let name = format!("held{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let toml = config_toml(&db.url, &endpoint_toml(&name, &rx.url, 2, ""));
    let store = db.store().await;
    let builder = builder(&settings(&toml));
    let seqs = store.next_seqs(2).await.expect("seqs");
    let (replayed, replayed_update) = case_with_update(&builder, "site:dead-1", seqs[0]);
    let (discarded, discarded_update) = case_with_update(&builder, "site:dead-2", seqs[1]);
    let (replayed_created, discarded_created) = (replayed.jobs[0].event_id.clone(), discarded.jobs[0].event_id.clone());
    rx.answer_id(&replayed_created, 410, 1);
    rx.answer_id(&discarded_created, 410, 1);
    store.commit_batch(Arc::new(vec![replayed, discarded])).await.expect("commit");

    let gw = Gateway::start(&toml).await;
    let dead = eventually(10, "both case.created dead after 410", || async {
        let (_, v) = gw.admin_get("/v1/outbox?state=dead").await;
        v["jobs"].as_array().filter(|a| a.len() == 2).cloned()
    })
    .await;
    let dead_id =
        |event: &str| dead.iter().find(|j| j["event_id"] == event).and_then(|j| j["id"].as_i64()).expect("dead job");
    let (replayed_job, discarded_job) = (dead_id(&replayed_created), dead_id(&discarded_created));
    // Several poll rounds later, the updates are still held, named as such, and were never sent.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, held) = gw.admin_get("/v1/outbox?state=held").await;
    assert_eq!(status, 200);
    let held = held["jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(held.len(), 2, "{held:#?}");
    for (update, by) in [(&replayed_update, replayed_job), (&discarded_update, discarded_job)] {
        let j = held.iter().find(|j| j["event_id"] == update.event_id.as_str()).expect("held update listed");
        assert_eq!(j["state"], "held");
        assert_eq!(j["held_by"], by, "names the job that holds it: {j}");
    }
    let sent: HashSet<String> = rx.received().into_iter().map(|r| r.webhook_id).collect();
    assert!(!sent.contains(&replayed_update.event_id) && !sent.contains(&discarded_update.event_id), "{sent:?}");
    // What an operator pages on: the destination's backlog by kind.
    for (state, n) in [("held", 2.0), ("dead", 2.0), ("pending", 0.0)] {
        let sample = format!("earshot_outbox_backlog{{destination=\"downstream:{name}\",state=\"{state}\"}}");
        assert_eq!(metric(&gw, &sample).await, Some(n), "{sample}");
    }

    // Replay: the dead event, then the one it held, in that order.
    assert_eq!(gw.admin_post(&format!("/v1/outbox/{replayed_job}/replay")).await.0, 200);
    let got = rx
        .wait_until(10, "the replayed case's two events", |r| {
            r.iter().any(|x| x.webhook_id == replayed_update.event_id && x.answered == 200)
        })
        .await;
    let ok: Vec<&str> = got
        .iter()
        .filter(|r| r.answered == 200 && (r.webhook_id == replayed_created || r.webhook_id == replayed_update.event_id))
        .map(|r| r.webhook_id.as_str())
        .collect();
    assert_eq!(ok, vec![replayed_created.as_str(), replayed_update.event_id.as_str()], "in creation order");

    // Discard: the dead event is never sent again; the held one goes.
    assert_eq!(gw.admin_post(&format!("/v1/outbox/{discarded_job}/discard")).await.0, 200);
    assert_eq!(gw.admin_post(&format!("/v1/outbox/{discarded_job}/discard")).await.0, 409, "not dead any more");
    assert_eq!(gw.admin_post(&format!("/v1/outbox/{discarded_job}/replay")).await.0, 409, "a discarded job stays so");
    rx.wait_until(10, "the update behind the discarded job", |r| {
        r.iter().any(|x| x.webhook_id == discarded_update.event_id && x.answered == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created_attempts = rx.received().iter().filter(|r| r.webhook_id == discarded_created).count();
    assert_eq!(created_attempts, 1, "the discarded job was sent once, before it died");
    let (_, v) = gw.admin_get("/v1/outbox?state=discarded").await;
    assert_eq!(v["jobs"][0]["id"], discarded_job);
    store.close().await;
    gw.stop().await;
}

/// An endpoint that accepts connections and never answers, beside one that works: the working one
/// gets every case at once; the hung one gets them all once it answers again, under the same ids.
#[tokio::test]
async fn a_hung_endpoint_holds_up_only_its_own_deliveries() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    let hole = Blackhole::start().await;
    let hung_url = format!("http://127.0.0.1:{}/events", hole.port);
    let extra = format!("{}{}", endpoint_toml("working", &rx.url, 2, ""), endpoint_toml("stalled", &hung_url, 1, ""));
    let gw = Gateway::start(&config_toml(&db.url, &extra)).await;

    let started = Instant::now();
    let mut cases = Vec::new();
    for i in 0..30 {
        let (status, receipt) = gw.web().send(&complaint(&format!("hung endpoint beside a working one {i}"))).await;
        assert_eq!(status, 202);
        cases.push(receipt["case_id"].as_str().expect("case id").to_owned());
    }
    let got = rx
        .wait_until(5, "every case at the working endpoint", |r| r.iter().filter(|x| x.answered == 200).count() >= 30)
        .await;
    let elapsed = started.elapsed();
    let delivered: HashSet<String> =
        got.iter().map(|r| r.body["data"]["case"]["id"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(delivered, cases.iter().cloned().collect::<HashSet<_>>(), "every case, once: {elapsed:?}");
    assert_eq!(got.len(), 30, "nothing delivered twice to the working endpoint");
    // Long enough for the stalled endpoint's sends to hit their 1 s deadline and its breaker to open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tried: HashSet<String> = hole.webhook_ids().into_iter().collect();
    assert_eq!(tried.len(), 30, "every case was sent to the stalled endpoint too (30 of 64 in flight)");
    assert_eq!(rx.received().len(), 30, "and nothing more to the working one");

    // The stalled endpoint comes back (the same port, now answering).
    let port = hole.port;
    hole.stop().await;
    let back = Receiver::start_on(&format!("127.0.0.1:{port}")).await;
    let got = back
        .wait_until(30, "every case at the recovered endpoint", |r| {
            r.iter().filter(|x| x.answered == 200).map(|x| &x.webhook_id).collect::<HashSet<_>>().len() >= 30
        })
        .await;
    let ids: HashSet<String> = got.iter().map(|r| r.webhook_id.clone()).collect();
    assert!(tried.is_subset(&ids), "each retry carries the webhook-id of the attempt that hung");
    let recovered: HashSet<String> =
        got.iter().map(|r| r.body["data"]["case"]["id"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(recovered, cases.iter().cloned().collect::<HashSet<_>>());
    gw.stop().await;
}

/// `earshot_outbox_taken_total` of one destination, by how the jobs were taken.
async fn taken(gw: &Gateway, destination: &str, via: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", gw.base)).await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|l| l.starts_with("earshot_outbox_taken_total{"))
        .filter(|l| l.contains(&format!("destination=\"{destination}\"")) && l.contains(&format!("via=\"{via}\"")))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// With its delivery loop idle, a new case's job is handed to it straight from the intake (no
/// lease), and every job is still taken once and delivered once.
#[tokio::test]
async fn new_cases_jobs_are_handed_to_an_idle_loop_without_a_lease() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    // A name of its own: /metrics is one registry for every test in this process.
    let gw = Gateway::start(&config_toml(&db.url, &endpoint_toml("handed", &rx.url, 2, ""))).await;
    let mut cases = HashSet::new();
    for i in 0..20 {
        let (status, receipt) = gw.web().send(&complaint(&format!("handed straight to the loop {i}"))).await;
        assert_eq!(status, 202);
        cases.insert(receipt["case_id"].as_str().expect("case id").to_owned());
        // One at a time, each delivered before the next: the loop is idle when each case commits.
        rx.wait_until(5, "the case delivered", |r| r.iter().filter(|x| x.answered == 200).count() > i).await;
    }
    let got = rx.received();
    let delivered: HashSet<String> =
        got.iter().map(|r| r.body["data"]["case"]["id"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!((got.len(), delivered), (20, cases), "every case delivered once");

    let (handed, leased) =
        (taken(&gw, "downstream:handed", "intake").await, taken(&gw, "downstream:handed", "lease").await);
    assert_eq!(handed + leased, 20.0, "each job taken once: {handed} handed, {leased} leased");
    // A case that commits right after a poll (every 50 ms here), before the loop's next lease, goes
    // by a lease.
    assert!(handed >= 10.0, "most jobs handed straight: {handed} handed, {leased} leased");
    let store = db.store().await;
    let done = store.list_jobs(Some("done"), 100).await.expect("jobs");
    assert!(done.iter().all(|j| j.attempts == 1), "one attempt each: {done:?}");
    store.close().await;
    gw.stop().await;
}

/// A 301 or 302 is a failed attempt, whatever the `Location` would answer: the job is retried and
/// delivered by POST to the configured URL once that answers 2xx.
#[tokio::test]
async fn redirects_are_failed_attempts_never_followed() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    rx.set_redirect(Some((301, "/moved")));
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 50))).await;
    let (status, receipt) = gw.web().send(&complaint("redirect me")).await;
    assert_eq!(status, 202);
    rx.wait_until(10, "two 301s", |r| r.iter().filter(|x| x.answered == 301).count() >= 2).await;
    let absolute = format!("{}/moved", rx.base());
    rx.set_redirect(Some((302, &absolute)));
    rx.wait_until(10, "two 302s", |r| r.iter().filter(|x| x.answered == 302).count() >= 2).await;
    let job = eventually(10, "the failed attempt recorded", || async {
        let (_, v) = gw.admin_get("/v1/outbox").await;
        let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
        jobs.into_iter().find(|j| j["last_error"].as_str().is_some_and(|e| e.contains("302") && e.contains("/moved")))
    })
    .await;
    assert_ne!(job["state"], "done", "{job}");
    assert_eq!(rx.moved_hits(), 0, "the redirect was not followed");

    rx.set_redirect(None);
    let got =
        rx.wait_until(10, "the delivery once the endpoint answers 200", |r| r.iter().any(|x| x.answered == 200)).await;
    let ok = got.iter().find(|x| x.answered == 200).expect("delivered");
    assert_eq!(ok.body["data"]["case"]["id"], receipt["case_id"], "the POSTed event itself");
    assert!(got.iter().all(|r| r.webhook_id == got[0].webhook_id), "one job, one webhook-id");
    assert_eq!(rx.moved_hits(), 0);
    eventually(5, "the job done", || async {
        let (_, v) = gw.admin_get("/v1/outbox?state=done").await;
        (v["jobs"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    gw.stop().await;
}

/// After `breaker_failures` failures in a row the endpoint is paused (the metric says so); a
/// successful probe closes the breaker and the backlog goes out.
#[tokio::test]
async fn the_breaker_opens_after_consecutive_failures_and_closes_after_a_good_probe() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    rx.set_default(503);
    let name = format!("flaky{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let toml = config_toml(&db.url, &endpoint_toml(&name, &rx.url, 2, "breaker_failures = 3"))
        .replace("breaker_cooldown = \"200ms\"", "breaker_cooldown = \"1s\"");
    let gw = Gateway::start(&toml).await;
    let gauge = format!("earshot_outbox_breaker_open{{destination=\"downstream:{name}\"}}");
    for i in 0..5 {
        assert_eq!(gw.web().send(&complaint(&format!("breaker {i}"))).await.0, 202);
    }
    eventually(10, "the breaker open", || async { (metric(&gw, &gauge).await == Some(1.0)).then_some(()) }).await;
    // Open: nothing is sent during the cool-down (1 s), beyond what was already under way.
    let before = rx.received().len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(rx.received().len() <= before + 1, "paused: {} then {}", before, rx.received().len());
    assert!(before >= 3, "it took three failures: {before}");

    rx.set_default(200);
    eventually(15, "the breaker closed after a good probe", || async {
        (metric(&gw, &gauge).await == Some(0.0)).then_some(())
    })
    .await;
    rx.wait_until(10, "every case delivered", |r| {
        r.iter().filter(|x| x.answered == 200).map(|x| &x.webhook_id).collect::<HashSet<_>>().len() == 5
    })
    .await;
    gw.stop().await;
}

/// Done jobs are deleted after `keep_done`; dead ones stay.
#[tokio::test]
async fn retention_deletes_old_done_jobs_and_keeps_dead_ones() {
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    let toml = config_toml(&db.url, &downstream_toml(&rx.url, 10))
        .replace("breaker_cooldown = \"200ms\"", "breaker_cooldown = \"200ms\"\nkeep_done = \"1s\"");
    let gw = Gateway::start(&toml).await;
    rx.script(&[410]);
    assert_eq!(gw.web().send(&complaint("dies")).await.0, 202);
    rx.wait_until(10, "the 410", |r| !r.is_empty()).await;
    assert_eq!(gw.web().send(&complaint("delivered")).await.0, 202);
    rx.wait_until(10, "the delivery", |r| r.iter().any(|x| x.answered == 200)).await;
    let store = db.store().await;
    let left = eventually(10, "the done job deleted", || async {
        let jobs = store.list_jobs(None, 100).await.expect("jobs");
        (jobs.len() == 1).then_some(jobs)
    })
    .await;
    assert_eq!(left[0].state, "dead", "the dead job stays");
    store.close().await;
    gw.stop().await;
}

/// A path parameter or query string that does not parse answers 400 in the API's JSON shape, not
/// axum's plain text; a job id that does not exist answers 409 as before.
#[tokio::test]
async fn bad_admin_paths_and_queries_answer_json() {
    let db = TestDb::sqlite();
    let gw = Gateway::start(&config_toml(&db.url, "")).await;
    for path in ["/v1/outbox/%F3%82/replay", "/v1/outbox/abc/discard", "/v1/outbox/99999999999999999999/replay"] {
        let (status, body) = gw.admin_post(path).await;
        assert_eq!(
            (status, body["code"].as_str(), body["field"].as_str()),
            (400, Some("invalid_path"), Some("path")),
            "{path}: {body}"
        );
    }
    let (status, body) = gw.admin_get("/v1/outbox?limit=many").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "{body}");
    let (status, body) = gw.admin_get("/v1/cases?limit=-").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "{body}");
    assert_eq!(gw.admin_post("/v1/outbox/12345/discard").await.0, 409);
    gw.stop().await;
}

/// `outbox.record_window`: outcomes that end within the window of the first are written together.
/// Five cases sent one at a time, each delivered before the next, are all marked done by one write:
/// never some of them done and not the others, and none sooner than the window after the first was
/// delivered. (Without a window each would be written as it ends, a few milliseconds after.)
#[tokio::test]
async fn outcomes_within_the_record_window_are_written_together() {
    const WINDOW: Duration = Duration::from_millis(800);
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    let config = config_toml(&db.url, &endpoint_toml("windowed", &rx.url, 2, "")).replacen(
        "[outbox]\n",
        &format!("[outbox]\nrecord_window = \"{}ms\"\n", WINDOW.as_millis()),
        1,
    );
    let gw = Gateway::start(&config).await;
    let store = db.store().await;
    for i in 0..5 {
        let (status, _) = gw.web().send(&complaint(&format!("recorded with the others {i}"))).await;
        assert_eq!(status, 202);
        rx.wait_until(5, "the case delivered", |r| r.iter().filter(|x| x.answered == 200).count() > i).await;
    }
    let got = rx.received();
    let first = got[0].at;
    assert!(
        got[4].at - first < WINDOW / 2,
        "the five deliveries took {:?}, too long for this test's window",
        got[4].at - first
    );
    let started = Instant::now();
    let all_done = loop {
        let done = store.list_jobs(Some("done"), 100).await.expect("jobs").len();
        assert!(done == 0 || done == 5, "{done} of the 5 jobs done: outcomes written apart");
        if done == 5 {
            break Instant::now();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the jobs not marked done within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(all_done - first >= WINDOW, "marked done {:?} after the first delivery", all_done - first);
    store.close().await;
    gw.stop().await;
}
