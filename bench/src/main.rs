//! Load generator for Earshot's benchmarks (see README.md next to this crate).
//!
//! - `echo`: a bare axum JSON echo, the baseline the gateway is compared with in the same run;
//! - `closed`: closed-loop maximum throughput, C workers sending back to back;
//! - `open`: open-loop fixed rate, latency measured from each request's scheduled send time so that
//!   a slow server cannot hide its queueing by slowing the generator down (coordinated omission);
//! - `seed`: fills a store with N realistic cases through the store API (no HTTP), for the figures
//!   that need a large database;
//! - `startup`: time from spawning `earshot serve` to its first `GET /readyz` 200;
//! - `telegram`: the Telegram channel's intake and acknowledgement figures (`telegram.rs`);
//! - `phone`: the phone channel's TwiML answer time and SMS intake (`phone.rs`).
//!
//! Every summary is printed on stdout as `key=value` pairs after a fixed prefix, so that scripts can
//! grep one line and split it; notes for humans (first error seen and so on) go to stderr.

mod conn;
mod delivery;
mod lifecycle;
mod phone;
mod telegram;

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use earshot::store::{Committed, NewCase};
use earshot_channel::webhooks::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SigningKey};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

// The load shares the machine with the gateway: the less CPU it spends per request, the less the
// figures measure the generator. Its buffers are freed on other threads than those that made them,
// which glibc's malloc pays for in arena locks (16% of its profile); mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The route both the gateway and the echo baseline answer.
const INBOUND_ROUTE: &str = "/v1/inbound/web/{source}";

#[derive(Parser)]
#[command(name = "earshot-bench", version, about = "Load generator for Earshot's benchmarks")]
struct Cli {
    /// Worker threads of the Tokio runtime (default: one per core).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bare axum server echoing the JSON body of POST /v1/inbound/web/{source} with 202: the baseline.
    Echo {
        /// Address to listen on; port 0 picks a free one (the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:18099")]
        listen: String,
    },
    /// Closed loop: C workers send signed requests back to back for the given time.
    Closed {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        downstream: Downstream,
        /// Number of workers, each with at most one request in flight.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: u32,
        /// Seconds to run (fractions allowed).
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Stop early after this many requests in total.
        #[arg(long)]
        max_requests: Option<u64>,
    },
    /// Open loop: requests start at fixed instants start + i/R, whether or not earlier ones finished.
    Open {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        downstream: Downstream,
        /// Requests per second (fractions allowed).
        #[arg(long)]
        rate: f64,
        /// Seconds to run; rate x duration requests are scheduled.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Requests allowed in flight at once; a request due while the cap is reached is not sent
        /// and counts as an error (`overflow`).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        max_in_flight: u32,
    },
    /// Fill a store with N realistic web cases through the store API (one transaction per batch).
    Seed {
        /// The store: sqlite://PATH (created if missing) or postgres://user@host/db.
        #[arg(long)]
        db: String,
        /// Number of cases to add.
        #[arg(long)]
        cases: u64,
        /// Cases per transaction.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// Web source name the cases are filed under.
        #[arg(long, default_value = "bench")]
        source: String,
        /// Templates folder, as `server.templates` (missing files fall back to the built-in ones).
        #[arg(long, default_value = "config/templates")]
        templates: PathBuf,
    },
    /// The ticket store's status events: accepted/s (closed loop) and event → customer update
    /// received (open loop), for web callbacks or email through an SMTP sink.
    Events(lifecycle::EventsArgs),
    /// The Telegram channel: a local Bot API server with queued updates (polling) or a webhook
    /// client; updates/s committed and commit → sendMessage latency.
    Telegram(telegram::TelegramArgs),
    /// The phone channel: TwiML answer time of the voice callback (open loop), and signed SMS
    /// callbacks committed per second (closed loop).
    Phone(phone::PhoneArgs),
    /// Spawn `BIN serve --config FILE`, poll BASE/readyz every 2 ms, print the time to the first 200,
    /// then kill the child.
    Startup {
        /// The `earshot` binary.
        #[arg(long)]
        bin: PathBuf,
        /// The config file passed to `earshot serve`.
        #[arg(long)]
        config: PathBuf,
        /// Base URL the gateway listens on, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// Seconds to wait for readiness before giving up.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

#[derive(Args)]
struct Target {
    /// Base URL of the server, e.g. http://127.0.0.1:8080 (the route is appended).
    #[arg(long)]
    url: String,
    /// The {source} path segment.
    #[arg(long, default_value = "bench")]
    source: String,
    /// Webhook secret of the source, whsec_<base64>.
    #[arg(long, env = "EARSHOT_BENCH_SECRET", hide_env_values = true)]
    secret: String,
    /// Seconds a request may take before it counts as an error (`timeout`).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// The ticket store's side of a whole-path run (see `delivery.rs`).
#[derive(Args)]
struct Downstream {
    /// Run a downstream receiver on this address (`POST /events`, answers 200 with a ticket id) and
    /// report delivery: how many accepted complaints arrived, and 202 → received latency.
    #[arg(long)]
    receiver: Option<String>,
    /// After the load, wait this long for the deliveries still owed.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Also run an endpoint on this address that accepts connections and never answers.
    #[arg(long)]
    hung: Option<String>,
}

impl Downstream {
    async fn start(&self) -> anyhow::Result<Option<Arc<delivery::Tracker>>> {
        if let Some(addr) = &self.hung {
            delivery::serve_hung(addr).await?;
        }
        let Some(addr) = &self.receiver else { return Ok(None) };
        let tracker = Arc::new(delivery::Tracker::default());
        delivery::serve_receiver(addr, tracker.clone()).await?;
        Ok(Some(tracker))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = runtime.build().context("starting the Tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Echo { listen } => echo(&listen).await,
            Command::Closed { target, downstream, concurrency, duration, max_requests } => {
                closed(&target, &downstream, concurrency, duration, max_requests).await
            }
            Command::Open { target, downstream, rate, duration, max_in_flight } => {
                open(&target, &downstream, rate, duration, max_in_flight).await
            }
            Command::Seed { db, cases, batch, source, templates } => seed(&db, cases, batch, &source, &templates).await,
            Command::Startup { bin, config, url, timeout } => startup(&bin, &config, &url, timeout).await,
            Command::Events(args) => lifecycle::run(args).await,
            Command::Telegram(args) => telegram::run(args).await,
            Command::Phone(args) => phone::run(args).await,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// echo

async fn echo(listen: &str) -> anyhow::Result<()> {
    let app = Router::new().route(INBOUND_ROUTE, post(echo_handler));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!("listening on {addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            if tokio::signal::ctrl_c().await.is_err() {
                // No signal handling here: serve until killed.
                std::future::pending::<()>().await;
            }
        })
        .await
        .context("serving")
}

async fn echo_handler(Path(_source): Path<String>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(body))
}

// ---------------------------------------------------------------------------------------------
// the load

/// What every request needs: one shared client, the target URL and the signing key.
struct Load {
    client: reqwest::Client,
    /// Parsed once: parsing it for every request was a few per cent of the generator's CPU.
    url: reqwest::Url,
    /// `host:port` of the URL: the Host header, and where a worker's own connection goes.
    authority: String,
    /// A closed-loop worker's timeout, for its own connection.
    timeout: Duration,
    key: SigningKey,
    /// The N of the next complaint body.
    seq: AtomicU64,
    noted_answer: AtomicBool,
    noted_error: AtomicBool,
    /// Where 202s are reported, in a whole-path run.
    tracker: Option<Arc<delivery::Tracker>>,
}

impl Load {
    fn new(target: &Target, tracker: Option<Arc<delivery::Tracker>>) -> anyhow::Result<Arc<Load>> {
        let key = SigningKey::from_whsec(&target.secret).context("--secret")?;
        let timeout = positive_secs(target.timeout, "--timeout")?;
        let client = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()
            .context("building the HTTP client")?;
        let base = target.url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must start with http:// or https://, got {base:?}");
        }
        let url = format!("{base}{}", INBOUND_ROUTE.replace("{source}", &target.source));
        let url = reqwest::Url::parse(&url).with_context(|| format!("target URL {url:?}"))?;
        let authority = match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            _ => bail!("--url {base:?} names no host"),
        };
        Ok(Arc::new(Load {
            client,
            url,
            authority,
            timeout,
            key,
            seq: AtomicU64::new(0),
            noted_answer: AtomicBool::new(false),
            noted_error: AtomicBool::new(false),
            tracker,
        }))
    }

    /// The next fresh complaint: its body and the three signature headers' values.
    fn next_complaint(&self) -> (Bytes, String, String, String) {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let body = Bytes::from(complaint_body(n));
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let ts = unix_now();
        let signature = self.key.sign(&id, ts, &body);
        (body, id, ts.to_string(), signature)
    }

    /// Sends one fresh, signed complaint through the shared reqwest client and reads the whole
    /// answer. `since` is the instant latency is measured from: the send itself in the closed loop,
    /// the scheduled instant in the open loop.
    async fn send(&self, since: Instant) -> Sample {
        let started = Instant::now();
        let (body, id, ts, signature) = self.next_complaint();
        let result = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, id)
            .header(HEADER_TIMESTAMP, ts)
            .header(HEADER_SIGNATURE, signature)
            .body(body)
            .send()
            .await;
        let outcome = match result {
            Ok(resp) => {
                let status = resp.status();
                // Read the answer to the end so the connection goes back to the pool.
                match resp.bytes().await {
                    Ok(answer) => self.answered(status, &answer),
                    Err(e) => self.error(&e),
                }
            }
            Err(e) => self.error(&e),
        };
        Self::sample(outcome, since, started)
    }

    /// The same as [`Load::send`], on a worker's own connection (`conn.rs`), for plain HTTP.
    async fn send_on(&self, conn: &mut conn::Conn, since: Instant) -> Sample {
        let started = Instant::now();
        let (body, id, ts, signature) = self.next_complaint();
        let req = http::Request::post(self.url.path())
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, id)
            .header(HEADER_TIMESTAMP, ts)
            .header(HEADER_SIGNATURE, signature)
            .body(http_body_util::Full::new(body));
        let outcome = match req {
            Ok(req) => match conn.send(req).await {
                Ok((status, answer)) => self.answered(status, &answer),
                Err(kind) => self.failed(kind, || kind.to_owned()),
            },
            Err(e) => self.failed("other", || e.to_string()),
        };
        Self::sample(outcome, since, started)
    }

    fn sample(outcome: Outcome, since: Instant, started: Instant) -> Sample {
        let done = Instant::now();
        Sample {
            outcome,
            latency_us: micros(done.saturating_duration_since(since)),
            lag_us: micros(started.saturating_duration_since(since)),
        }
    }

    /// A whole answer: noted if it is the first other than 202, and its case id handed to the
    /// tracker if it is a 202.
    fn answered(&self, status: StatusCode, answer: &[u8]) -> Outcome {
        if status != StatusCode::ACCEPTED && !self.noted_answer.swap(true, Ordering::Relaxed) {
            let snippet: String = String::from_utf8_lossy(answer).chars().take(200).collect();
            eprintln!("note: first answer other than 202: HTTP {status}: {}", snippet.trim());
        }
        if let Some(tracker) = self.tracker.as_ref().filter(|_| status == StatusCode::ACCEPTED)
            && let Ok(receipt) = serde_json::from_slice::<CaseIdOnly>(answer)
        {
            tracker.accepted(&receipt.case_id, Instant::now());
        }
        Outcome::Answer(status.as_u16())
    }

    fn failed(&self, kind: &'static str, detail: impl FnOnce() -> String) -> Outcome {
        if !self.noted_error.swap(true, Ordering::Relaxed) {
            eprintln!("note: first transport error: {}", detail());
        }
        Outcome::Error(kind)
    }

    fn error(&self, e: &reqwest::Error) -> Outcome {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else if e.is_body() || e.is_decode() {
            "body"
        } else {
            "other"
        };
        self.failed(kind, || error_chain(e))
    }
}

/// The one field of the gateway's 202 the load reads (the rest is skipped, not built).
#[derive(serde::Deserialize)]
struct CaseIdOnly {
    case_id: String,
}

/// A complaint body; about 30 % of them in Chinese. Written with `format!`, not built as a
/// `serde_json::Value`: nothing in it needs escaping, and the map was a few per cent of the
/// generator's CPU (a test checks it is the JSON it means).
fn complaint_body(n: u64) -> Vec<u8> {
    if n % 10 < 3 {
        format!(
            r#"{{"customer":{{"email":"user{n}@example.com","language":"zh"}},"subject":"订单延误","text":"我的订单{n}还没有到"}}"#
        )
    } else {
        format!(
            r#"{{"customer":{{"email":"user{n}@example.com","language":"en"}},"subject":"Order late","text":"My order {n} has not arrived, please help"}}"#
        )
    }
    .into_bytes()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn positive_secs(secs: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        bail!("{flag} must be a positive number of seconds, got {secs}");
    }
    Duration::try_from_secs_f64(secs).with_context(|| format!("{flag} {secs}"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

// ---------------------------------------------------------------------------------------------
// results

enum Outcome {
    /// An HTTP answer with this status.
    Answer(u16),
    /// No (complete) answer, by kind.
    Error(&'static str),
}

struct Sample {
    outcome: Outcome,
    /// From the instant given to `Load::send` to the end of the answer.
    latency_us: u32,
    /// From that instant to the moment the request was actually started.
    lag_us: u32,
}

#[derive(Default)]
struct Stats {
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    /// Latencies of the 202 answers only.
    accepted_us: Vec<u32>,
    /// Start lags of every request started.
    lag_us: Vec<u32>,
}

impl Stats {
    fn record(&mut self, sample: Sample) {
        match sample.outcome {
            Outcome::Answer(status) => {
                *self.statuses.entry(status).or_default() += 1;
                if status == StatusCode::ACCEPTED.as_u16() {
                    self.accepted_us.push(sample.latency_us);
                }
            }
            Outcome::Error(kind) => self.error(kind),
        }
        self.lag_us.push(sample.lag_us);
    }

    fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Stats) {
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.accepted_us.extend(other.accepted_us);
        self.lag_us.extend(other.lag_us);
    }

    fn accepted(&self) -> u64 {
        self.statuses.get(&StatusCode::ACCEPTED.as_u16()).copied().unwrap_or(0)
    }

    fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    fn errored(&self) -> u64 {
        self.errors.values().sum()
    }

    fn sent(&self) -> u64 {
        self.answered() + self.errored()
    }

    /// `sent=.. accepted=.. other=.. errors=..`
    fn counts(&self) -> String {
        format!(
            "sent={} accepted={} other={} errors={}",
            self.sent(),
            self.accepted(),
            self.answered() - self.accepted(),
            self.errored()
        )
    }

    /// `p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..` over the 202 answers (sorts them).
    fn latencies(&mut self) -> String {
        self.accepted_us.sort_unstable();
        let l = &self.accepted_us;
        format!(
            "p50_ms={} p90_ms={} p99_ms={} p999_ms={} max_ms={}",
            percentile_ms(l, 50.0),
            percentile_ms(l, 90.0),
            percentile_ms(l, 99.0),
            percentile_ms(l, 99.9),
            percentile_ms(l, 100.0)
        )
    }

    /// The two breakdown lines, `PREFIX-status: 202=.. 401=..` and `PREFIX-errors: timeout=..`.
    fn breakdown(&self, prefix: &str) -> String {
        let statuses: String = self.statuses.iter().map(|(s, n)| format!(" {s}={n}")).collect();
        let errors: String = self.errors.iter().map(|(k, n)| format!(" {k}={n}")).collect();
        format!("{prefix}-status:{statuses}\n{prefix}-errors:{errors}")
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds; `nan` when there are none.
fn percentile_ms(sorted_us: &[u32], p: f64) -> String {
    if sorted_us.is_empty() {
        return "nan".to_owned();
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_us.len()) - 1;
    format!("{:.3}", f64::from(sorted_us[idx]) / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// closed loop

async fn closed(
    target: &Target,
    downstream: &Downstream,
    concurrency: u32,
    duration: f64,
    max_requests: Option<u64>,
) -> anyhow::Result<()> {
    let duration = positive_secs(duration, "--duration")?;
    let drain = positive_secs(downstream.drain, "--drain")?;
    let tracker = downstream.start().await?;
    let load = Load::new(target, tracker.clone())?;
    let budget = Arc::new(AtomicU64::new(max_requests.unwrap_or(u64::MAX)));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let load = Arc::clone(&load);
        let budget = Arc::clone(&budget);
        workers.spawn(async move {
            let mut stats = Stats::default();
            // Plain HTTP goes over the worker's own connection (see conn.rs); HTTPS through reqwest.
            let mut conn = (load.url.scheme() == "http").then(|| conn::Conn::new(load.authority.clone(), load.timeout));
            while Instant::now() < deadline && take_one(&budget) {
                let now = Instant::now();
                let sample = match conn.as_mut() {
                    Some(conn) => load.send_on(conn, now).await,
                    None => load.send(now).await,
                };
                stats.record(sample);
            }
            stats
        });
    }
    let mut stats = Stats::default();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(worker) => stats.merge(worker),
            Err(e) => {
                eprintln!("note: a worker failed: {e}");
                stats.error("panic");
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let in_load = tracker.as_ref().map_or(0, |t| t.matched());
    println!(
        "closed: concurrency={concurrency} {} secs={secs:.2} rate={:.1}/s accepted_rate={:.1}/s {}",
        stats.counts(),
        stats.sent() as f64 / secs,
        stats.accepted() as f64 / secs,
        stats.latencies()
    );
    println!("{}", stats.breakdown("closed"));
    if let Some(t) = tracker {
        t.report("closed", in_load, secs, drain).await;
    }
    Ok(())
}

/// Takes one request from the budget; false once it is spent.
fn take_one(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// open loop

async fn open(
    target: &Target,
    downstream: &Downstream,
    rate: f64,
    duration: f64,
    max_in_flight: u32,
) -> anyhow::Result<()> {
    let duration = positive_secs(duration, "--duration")?;
    let drain = positive_secs(downstream.drain, "--drain")?;
    let tracker = downstream.start().await?;
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number of requests per second, got {rate}");
    }
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let load = Load::new(target, tracker.clone())?;
    let slots = Arc::new(Semaphore::new(max_in_flight as usize));
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let runtime = tokio::runtime::Handle::current();

    // The schedule is kept by a plain thread: std::thread::sleep wakes within tens of microseconds,
    // where the Tokio timer rounds up to whole milliseconds, which would add up to 1 ms of the
    // generator's own lag to every latency measured from the schedule.
    let start = Instant::now();
    let scheduler = tokio::task::spawn_blocking(move || {
        let mut overflow = 0u64;
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                overflow += 1;
                continue;
            };
            let load = Arc::clone(&load);
            let tx = tx.clone();
            runtime.spawn(async move {
                let sample = load.send(at).await;
                drop(slot);
                // The receiver lives until every sender is gone.
                let _ = tx.send(sample);
            });
        }
        overflow
    });

    let mut stats = Stats::default();
    while let Some(sample) = rx.recv().await {
        stats.record(sample);
    }
    let overflow = scheduler.await.context("the scheduler failed")?;
    for _ in 0..overflow {
        stats.error("overflow");
    }
    let secs = start.elapsed().as_secs_f64();
    stats.lag_us.sort_unstable();
    println!(
        "open: rate={rate} {} {} secs={secs:.2} achieved={:.1}/s lag_p99_ms={} lag_max_ms={}",
        stats.counts(),
        stats.latencies(),
        (stats.sent() - overflow) as f64 / secs,
        percentile_ms(&stats.lag_us, 99.0),
        percentile_ms(&stats.lag_us, 100.0)
    );
    println!("{}", stats.breakdown("open"));
    if let Some(t) = tracker {
        t.report("open", t.matched(), secs, drain).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// seed

/// Cases between two progress lines.
const SEED_REPORT_EVERY: u64 = 100_000;

/// Adds `cases` cases to the store at `db`, `batch` per transaction. Batches are rendered by one
/// task while the previous one commits, so the store is the only thing the rate depends on.
async fn seed(db: &str, cases: u64, batch: u32, source: &str, templates: &FsPath) -> anyhow::Result<()> {
    let store = earshot::store::open(db, 2).await.with_context(|| format!("opening the store {}", redact_url(db)))?;
    let before = store.count_cases().await.context("counting cases")?;
    let builder = seed_builder(templates)?;
    let (tx, mut rx) = mpsc::channel::<Vec<NewCase>>(2);

    let producer = {
        let store = Arc::clone(&store);
        let source = source.to_owned();
        tokio::spawn(async move {
            let mut made = 0u64;
            while made < cases {
                let n = (cases - made).min(u64::from(batch));
                let seqs = store
                    .next_seqs(usize::try_from(n).context("batch size")?)
                    .await
                    .context("taking sequence numbers")?;
                let now = time::OffsetDateTime::now_utc();
                let mut items = Vec::with_capacity(seqs.len());
                for (i, seq) in seqs.into_iter().enumerate() {
                    let inbound = seed_inbound(&source, before as u64 + made + i as u64, now);
                    let (item, _ack) = builder.build(&inbound, seq, None, now, true).context("rendering a case")?;
                    items.push(item);
                }
                if tx.send(items).await.is_err() {
                    // The committer stopped (and reports why).
                    break;
                }
                made += n;
            }
            Ok::<_, anyhow::Error>(())
        })
    };

    let start = Instant::now();
    let (mut done, mut created) = (0u64, 0u64);
    let mut next_report = SEED_REPORT_EVERY;
    while let Some(items) = rx.recv().await {
        let n = items.len() as u64;
        let results = store.commit_batch(Arc::new(items)).await.context("committing a batch")?;
        created += results.iter().filter(|r| matches!(r, Committed::Created { .. })).count() as u64;
        done += n;
        if done >= next_report {
            let secs = start.elapsed().as_secs_f64();
            println!("seed-progress: cases={done} secs={secs:.1} rate={:.0}/s", done as f64 / secs);
            next_report += SEED_REPORT_EVERY;
        }
    }
    producer.await.context("the batch builder failed")??;
    let secs = start.elapsed().as_secs_f64();
    let after = store.count_cases().await.context("counting cases")?;
    println!(
        "seed: cases={done} created={created} batch={batch} secs={secs:.1} rate={:.0}/s rows_before={before} rows_after={after}",
        done as f64 / secs.max(1e-9)
    );
    store.close().await;
    if after - before != i64::try_from(created).unwrap_or(i64::MAX) {
        bail!("the store gained {} cases, expected {created}", after - before);
    }
    Ok(())
}

/// A builder like the gateway's with its defaults: the given templates, no downstream.
fn seed_builder(templates: &FsPath) -> anyhow::Result<earshot::intake::Builder> {
    let templates = earshot::notify::Templates::load(templates)
        .with_context(|| format!("loading the templates from {}", templates.display()))?;
    Ok(earshot::intake::Builder {
        templates: Arc::new(earshot::live::Live::new(templates)),
        own_identities: Default::default(),
        ack_window: Duration::from_secs(600),
        loop_free: Default::default(),
        downstream: Vec::new().into(),
        channel_max_attempts: 12,
        sla_first_response: Duration::from_secs(3600),
        sla_resolution: Duration::from_secs(86_400),
    })
}

/// Complaint `n` as the web channel would hand it to intake: the same customers, subjects and texts
/// as the load generator's bodies (three in ten in Chinese), plus an order id on half of them.
fn seed_inbound(source: &str, n: u64, now: time::OffsetDateTime) -> earshot_channel::Inbound {
    use earshot_channel::{ChannelKind, CustomerInfo, ExternalId, Identity, IdentityKind, Inbound, Lang, ReplyRoute};
    let chinese = n % 10 < 3;
    let (lang, subject, text) = if chinese {
        (Lang::Zh, "订单延误", format!("我的订单{n}还没有到"))
    } else {
        (Lang::En, "Order late", format!("My order {n} has not arrived, please help"))
    };
    Inbound {
        channel: ChannelKind::Web,
        source: source.to_owned(),
        external_id: ExternalId(format!("{source}:msg_{}", uuid::Uuid::new_v4().simple())),
        identities: vec![Identity { kind: IdentityKind::Email, value: format!("user{n}@example.com") }],
        customer: CustomerInfo {
            name: n.is_multiple_of(4).then(|| format!("Customer {n}")),
            tier: None,
            language: Some(lang),
        },
        reply_route: ReplyRoute::Web { source: source.to_owned(), callback_url: None },
        thread: None,
        subject: Some(subject.to_owned()),
        text,
        full_text: None,
        lang: Some(lang),
        category: None,
        order_id: n.is_multiple_of(2).then(|| format!("ORD-{n:08}")),
        metadata: Default::default(),
        attachments: vec![],
        raw: None,
        received_at: now,
        automatic: None,
        content_digest: None,
    }
}

/// The URL without a password, for messages.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// startup

/// Spawns `bin serve --config config` and reports how long it took until `GET base/readyz` answered
/// 200, polling every 2 ms; the child is killed afterwards whatever happened.
async fn startup(bin: &FsPath, config: &FsPath, base: &str, timeout: f64) -> anyhow::Result<()> {
    let timeout = positive_secs(timeout, "--timeout")?;
    let base = base.trim_end_matches('/');
    let url = format!("{base}/readyz");
    reqwest::Url::parse(&url).with_context(|| format!("readiness URL {url:?}"))?;
    let client = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(500))
        .build()
        .context("building the HTTP client")?;
    // Something already answering there would make the figure meaningless.
    if client.get(&url).send().await.is_ok() {
        bail!("something already answers at {url}; stop it or use another port");
    }

    let start = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let deadline = start + timeout;
    let mut polls = 0u64;
    let ready = loop {
        polls += 1;
        if let Ok(resp) = client.get(&url).send().await {
            let status = resp.status();
            let _ = resp.bytes().await;
            if status == StatusCode::OK {
                break Ok(start.elapsed());
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                break Err(anyhow::anyhow!("the gateway exited ({status}) before it was ready"));
            }
            Ok(None) => {}
            Err(e) => break Err(anyhow::Error::new(e).context("checking the child")),
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(anyhow::anyhow!("not ready after {:.1} s", timeout.as_secs_f64()));
        }
        // A plain sleep: this runs on the thread that drives the runtime, not on a worker, and the
        // Tokio timer would round 2 ms up to 3.
        std::thread::sleep(Duration::from_millis(2).min(deadline - now));
    };
    if let Err(e) = child.kill().await {
        eprintln!("note: killing the gateway: {e}");
    }
    let ready = ready?;
    println!("startup: ready_ms={} ready_us={} polls={polls}", ready.as_millis(), ready.as_micros());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 50.0), "50.000");
        assert_eq!(percentile_ms(&us, 99.0), "99.000");
        assert_eq!(percentile_ms(&us, 100.0), "100.000");
        assert_eq!(percentile_ms(&us[..1], 99.9), "1.000");
        assert_eq!(percentile_ms(&[], 50.0), "nan");
    }

    #[test]
    fn bodies_are_json_and_three_in_ten_chinese() {
        let mut chinese = 0;
        for n in 0..100 {
            let body: Value = serde_json::from_slice(&complaint_body(n)).expect("the body is JSON");
            assert_eq!(body["customer"]["email"], format!("user{n}@example.com"));
            let text = body["text"].as_str().expect("text is a string");
            assert!(text.contains(&n.to_string()));
            if body["customer"]["language"] == "zh" {
                assert!(text.starts_with("我的订单"));
                chinese += 1;
            }
        }
        assert_eq!(chinese, 30);
    }

    #[test]
    fn seeded_cases_render_like_web_complaints() {
        let dir = FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../config/templates");
        let builder = seed_builder(&dir).expect("the templates load");
        let now = time::OffsetDateTime::now_utc();
        let (en, ack) = builder.build(&seed_inbound("bench", 4, now), 41, None, now, true).expect("renders");
        assert_eq!((en.channel, en.seq, en.source.as_str()), ("web", 41, "bench"));
        assert!(en.external_id.starts_with("bench:msg_"));
        assert!(en.message_json.contains("My order 4 has not arrived"));
        assert!(en.jobs.is_empty(), "no callback_url and no downstream: no outbox job");
        assert!(ack.is_some());
        let (zh, _) = builder.build(&seed_inbound("bench", 12, now), 42, None, now, true).expect("renders");
        assert!(zh.message_json.contains("我的订单12还没有到"));
        assert_ne!(en.external_id, zh.external_id);
    }

    #[test]
    fn the_budget_runs_out() {
        let budget = AtomicU64::new(2);
        assert!(take_one(&budget));
        assert!(take_one(&budget));
        assert!(!take_one(&budget));
    }
}
