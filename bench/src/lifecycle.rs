//! The way back, measured: the ticket store's status events (`POST /v1/cases/{id}/events`) accepted
//! per second, and event accepted → the customer's update received.
//!
//! The bench plays the ticket store: it signs events with a `[[downstream]]` secret and runs that
//! endpoint's receiver (which answers `case.created` with 200). Each case alternates
//! `in_progress` ⇄ `awaiting_customer`, both told to the customer by default, so every event makes
//! one customer message. Web updates arrive as callbacks at a server here; email updates as files in
//! the SMTP sink's maildir (its `new/` folder is watched; the file's mtime is the arrival).
//!
//! A case has at most one event in flight, and its updates arrive in the order its events were
//! accepted, so each arrival is joined with the oldest unjoined acceptance of its case.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use earshot_channel::webhooks::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SigningKey};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct EventsArgs {
    /// The gateway's base URL.
    #[arg(long)]
    url: String,
    /// Secret of the `[[downstream]]` endpoint the bench signs events as.
    #[arg(long)]
    ticket_secret: String,
    /// Serve that endpoint's receiver here (`POST /events`, answers 200).
    #[arg(long)]
    receiver: String,
    /// The admin token, to list the cases of `--channel email`.
    #[arg(long)]
    admin_token: String,
    /// `web`: make `--cases` web cases first, updates arrive at `--callback`; `email`: use the
    /// email cases already stored, updates arrive in `--maildir`.
    #[arg(long, default_value = "web")]
    channel: String,
    /// Web: the source and its secret; its `callback_url` must point at `--callback`.
    #[arg(long, default_value = "bench")]
    source: String,
    #[arg(long)]
    source_secret: Option<String>,
    #[arg(long)]
    callback: Option<String>,
    #[arg(long)]
    maildir: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    cases: usize,
    /// Closed loop: workers, each with one event in flight, for `--closed-secs` (0 skips it).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 20.0)]
    closed_secs: f64,
    /// Open loop: events per second for `--open-secs` (0 skips it).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    #[arg(long, default_value_t = 20.0)]
    open_secs: f64,
    /// Line prefix.
    #[arg(long, default_value = "events")]
    label: String,
}

/// Acceptances and arrivals per case, joined in order.
#[derive(Default)]
struct Joiner {
    per_case: HashMap<String, (VecDeque<Instant>, VecDeque<Instant>)>,
    latencies_us: Vec<u32>,
    /// Only join while measuring; before, arrivals are counted only.
    measuring: bool,
}

#[derive(Default)]
struct Shared {
    joiner: Mutex<Joiner>,
    arrived: AtomicU64,
}

impl Shared {
    fn arrived(&self, case_id: &str, at: Instant) {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        let Ok(mut j) = self.joiner.lock() else { return };
        if !j.measuring {
            return;
        }
        let e = j.per_case.entry(case_id.to_owned()).or_default();
        e.1.push_back(at);
        Self::join(&mut j, case_id);
    }

    fn accepted(&self, case_id: &str, at: Instant) {
        let Ok(mut j) = self.joiner.lock() else { return };
        let e = j.per_case.entry(case_id.to_owned()).or_default();
        e.0.push_back(at);
        Self::join(&mut j, case_id);
    }

    fn join(j: &mut Joiner, case_id: &str) {
        let mut done = Vec::new();
        if let Some((acc, arr)) = j.per_case.get_mut(case_id) {
            while let (Some(a), Some(r)) = (acc.front().copied(), arr.front().copied()) {
                acc.pop_front();
                arr.pop_front();
                done.push(super::micros(r.saturating_duration_since(a)));
            }
        }
        j.latencies_us.extend(done);
    }
}

async fn receiver(body: Bytes) -> (StatusCode, axum::Json<Value>) {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = v.pointer("/data/case/id").and_then(Value::as_str).unwrap_or_default().to_owned();
    (StatusCode::OK, axum::Json(json!({ "ticket_id": format!("T-{id}") })))
}

async fn callback(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if v["type"] == "case.status_changed"
        && let Some(id) = v["case_id"].as_str()
    {
        shared.arrived(id, at);
    }
    StatusCode::OK
}

async fn serve(addr: &str, app: axum::Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// Watches the sink's maildir: every new file about a case (its subject names `[Case REF]`) is an
/// arrival at the file's mtime. Files already there (the acknowledgements of the ingest) are not.
fn watch_maildir(dir: PathBuf, refs: HashMap<String, String>, shared: Arc<Shared>) {
    let new = dir.join("new");
    let mut seen: HashSet<std::ffi::OsString> = HashSet::new();
    if let Ok(entries) = std::fs::read_dir(&new) {
        seen.extend(entries.flatten().map(|e| e.file_name()));
    }
    eprintln!("note: {} messages in the sink before the events", seen.len());
    tokio::spawn(async move {
        loop {
            if let Ok(entries) = std::fs::read_dir(&new) {
                let mut fresh: Vec<(SystemTime, PathBuf)> = Vec::new();
                for e in entries.flatten() {
                    if seen.insert(e.file_name()) {
                        let mtime = e.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::now());
                        fresh.push((mtime, e.path()));
                    }
                }
                fresh.sort();
                for (mtime, path) in fresh {
                    let Ok(raw) = std::fs::read(&path) else { continue };
                    let head = String::from_utf8_lossy(&raw[..raw.len().min(4096)]).into_owned();
                    let Some(r) = head.split("[Case ").nth(1).and_then(|s| s.get(..11)) else { continue };
                    let Some(case_id) = refs.get(r) else { continue };
                    let age = SystemTime::now().duration_since(mtime).unwrap_or_default();
                    shared.arrived(case_id, Instant::now() - age);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

struct Sender {
    client: reqwest::Client,
    base: String,
    key: SigningKey,
    n: AtomicU64,
}

impl Sender {
    /// Sends one signed status event; true on 200.
    async fn status(&self, case_id: &str, status: &str) -> bool {
        let body =
            serde_json::to_vec(&json!({ "type": "status_changed", "data": { "status": status } })).unwrap_or_default();
        let id = format!("evt_bench_{}", self.n.fetch_add(1, Ordering::Relaxed));
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let sig = self.key.sign(&id, ts, &body);
        let r = self
            .client
            .post(format!("{}/v1/cases/{case_id}/events", self.base))
            .header(HEADER_ID, &id)
            .header(HEADER_TIMESTAMP, ts.to_string())
            .header(HEADER_SIGNATURE, sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {
                let _ = r.bytes().await;
                true
            }
            Ok(r) => {
                let s = r.status();
                let t = r.text().await.unwrap_or_default();
                eprintln!("note: event answered {s}: {t}");
                false
            }
            Err(e) => {
                eprintln!("note: event failed: {e}");
                false
            }
        }
    }
}

/// Each case's next status: `in_progress`, then back and forth.
struct CaseState {
    id: String,
    next_in_progress: bool,
}

pub async fn run(a: EventsArgs) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::default());
    serve(&a.receiver, axum::Router::new().route("/events", post(receiver))).await?;
    let client = reqwest::Client::builder().http1_only().no_proxy().tcp_nodelay(true).build()?;
    let base = a.url.trim_end_matches('/').to_owned();

    // The cases.
    let mut ids: Vec<String> = Vec::new();
    match a.channel.as_str() {
        "web" => {
            let cb = a.callback.as_deref().context("--callback is needed for web")?;
            serve(cb, axum::Router::new().route("/callback", post(callback)).with_state(shared.clone())).await?;
            let key = SigningKey::from_whsec(a.source_secret.as_deref().context("--source-secret")?)?;
            let url = format!("{base}/v1/inbound/web/{}", a.source);
            let made = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..32 {
                let (client, key, url, made) = (client.clone(), key.clone(), url.clone(), made.clone());
                let n = a.cases;
                tasks.spawn(async move {
                    for i in (w..n).step_by(32) {
                        let body = serde_json::to_vec(&json!({
                            "customer": { "email": format!("customer{i}@example.net") },
                            "text": format!("Order {i} arrived broken; I would like a replacement."),
                        }))
                        .unwrap_or_default();
                        let id = format!("bench_case_{i}_{}", std::process::id());
                        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
                        let r = client
                            .post(&url)
                            .header(HEADER_ID, &id)
                            .header(HEADER_TIMESTAMP, ts.to_string())
                            .header(HEADER_SIGNATURE, key.sign(&id, ts, &body))
                            .header("content-type", "application/json")
                            .body(body)
                            .send()
                            .await;
                        if let Ok(r) = r
                            && let Ok(v) = r.json::<Value>().await
                            && let Some(c) = v["case_id"].as_str()
                            && let Ok(mut m) = made.lock()
                        {
                            m.push(c.to_owned());
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            ids = made.lock().map(|m| m.clone()).unwrap_or_default();
        }
        "email" => {
            let dir = a.maildir.clone().context("--maildir is needed for email")?;
            let mut refs = HashMap::new();
            let mut cursor: Option<i64> = None;
            loop {
                let mut url = format!("{base}/v1/cases?channel=email&limit=1000");
                if let Some(c) = cursor {
                    url.push_str(&format!("&cursor={c}"));
                }
                let v: Value = client.get(url).bearer_auth(&a.admin_token).send().await?.json().await?;
                for c in v["cases"].as_array().into_iter().flatten() {
                    if let (Some(id), Some(r)) = (c["id"].as_str(), c["case_ref"].as_str()) {
                        ids.push(id.to_owned());
                        refs.insert(r.to_owned(), id.to_owned());
                    }
                }
                match v["next_cursor"].as_i64() {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            watch_maildir(dir, refs, shared.clone());
        }
        other => bail!("--channel must be web or email, not {other}"),
    }
    if ids.is_empty() {
        bail!("no cases to send events about");
    }
    eprintln!("note: {} {} cases", ids.len(), a.channel);
    // Start from a quiet outbox: the cases' own jobs (case.created, acknowledgements; with email, a
    // backlog that waited for this receiver) are delivered before anything is measured.
    let settle = Instant::now();
    loop {
        let mut busy = false;
        for state in ["pending", "leased"] {
            let v: Value = client
                .get(format!("{base}/v1/outbox?state={state}&limit=1"))
                .bearer_auth(&a.admin_token)
                .send()
                .await?
                .json()
                .await?;
            busy |= v["jobs"].as_array().is_some_and(|j| !j.is_empty());
        }
        if !busy {
            break;
        }
        if settle.elapsed() > Duration::from_secs(180) {
            bail!("the outbox did not empty within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("note: outbox empty after {} ms", settle.elapsed().as_millis());
    let sender = Arc::new(Sender {
        client: client.clone(),
        base: base.clone(),
        key: SigningKey::from_whsec(&a.ticket_secret).context("--ticket-secret")?,
        n: AtomicU64::new(0),
    });
    let cases: Vec<Arc<tokio::sync::Mutex<CaseState>>> = ids
        .iter()
        .map(|id| Arc::new(tokio::sync::Mutex::new(CaseState { id: id.clone(), next_in_progress: true })))
        .collect();

    // Closed loop: events accepted per second, whole path (each one's customer update arrives).
    if a.closed_secs > 0.0 {
        let before = shared.arrived.load(Ordering::Relaxed);
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Instant::now() + Duration::from_secs_f64(a.closed_secs);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..a.concurrency.max(1) {
            let mine: Vec<_> = cases.iter().skip(w).step_by(a.concurrency.max(1)).cloned().collect();
            let (sender, ok, failed) = (sender.clone(), ok.clone(), failed.clone());
            tasks.spawn(async move {
                let mut i = 0;
                while Instant::now() < stop && !mine.is_empty() {
                    let mut c = mine[i % mine.len()].lock().await;
                    let status = if c.next_in_progress { "in_progress" } else { "awaiting_customer" };
                    if sender.status(&c.id, status).await {
                        c.next_in_progress = !c.next_in_progress;
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let secs = started.elapsed().as_secs_f64();
        let accepted = ok.load(Ordering::Relaxed);
        let in_load = shared.arrived.load(Ordering::Relaxed) - before;
        let drain_start = Instant::now();
        while shared.arrived.load(Ordering::Relaxed) - before < accepted
            && drain_start.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = shared.arrived.load(Ordering::Relaxed) - before;
        println!(
            "{}-closed: concurrency={} secs={secs:.1} accepted={accepted} failed={} accepted_rate={:.1}/s \
             updates_delivered_in_load={in_load} updates_delivered={delivered} delivered_share={:.4} all_delivered_after_ms={}",
            a.label,
            a.concurrency,
            failed.load(Ordering::Relaxed),
            accepted as f64 / secs,
            if accepted == 0 { 0.0 } else { delivered as f64 / accepted as f64 },
            if delivered >= accepted { drain_start.elapsed().as_millis().to_string() } else { "never".into() },
        );
    }

    // Open loop: event accepted → the customer's update received.
    if a.open_secs > 0.0 && a.rate > 0.0 {
        if let Ok(mut j) = shared.joiner.lock() {
            j.measuring = true;
        }
        let total = (a.rate * a.open_secs).round() as usize;
        let start = Instant::now();
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / a.rate);
            tokio::time::sleep_until(due.into()).await;
            // The next case without an event in flight.
            let mut pick = None;
            for k in 0..cases.len() {
                if let Ok(g) = cases[(i + k) % cases.len()].clone().try_lock_owned() {
                    pick = Some(g);
                    break;
                }
            }
            let Some(mut c) = pick else {
                failed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (sender, shared, ok, failed) = (sender.clone(), shared.clone(), ok.clone(), failed.clone());
            tasks.spawn(async move {
                let status = if c.next_in_progress { "in_progress" } else { "awaiting_customer" };
                if sender.status(&c.id, status).await {
                    shared.accepted(&c.id, Instant::now());
                    c.next_in_progress = !c.next_in_progress;
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let accepted = ok.load(Ordering::Relaxed);
        let drain_start = Instant::now();
        loop {
            let joined = shared.joiner.lock().map(|j| j.latencies_us.len()).unwrap_or(0) as u64;
            if joined >= accepted || drain_start.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut lat = shared.joiner.lock().map(|j| j.latencies_us.clone()).unwrap_or_default();
        lat.sort_unstable();
        let pct = |p| super::percentile_ms(&lat, p);
        println!(
            "{}-open: rate={}/s secs={} accepted={accepted} failed={} updates_received={} p50_ms={} p90_ms={} p99_ms={} max_ms={}",
            a.label,
            a.rate,
            a.open_secs,
            failed.load(Ordering::Relaxed),
            lat.len(),
            pct(50.0),
            pct(90.0),
            pct(99.0),
            pct(100.0),
        );
    }
    Ok(())
}
