#![allow(dead_code)] // each test module uses a different part of the harness
//! Test harness: the gateway in-process on an ephemeral port, per-test databases (a temporary SQLite
//! file or a fresh PostgreSQL database), a real downstream receiver, and signed requests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use earshot::config::{Config, Settings};
use earshot_channel::webhooks::SigningKey;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SOURCE_SECRET: &str = "whsec_dGVzdC1zb3VyY2Utc2VjcmV0LTEyMzQ1Njc4OTA=";
pub const DOWNSTREAM_SECRET: &str = "whsec_dGVzdC1kb3duc3RyZWFtLXNlY3JldC0xMjM0NTY=";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A database for one test; dropped (PostgreSQL) or deleted (SQLite) by [`TestDb::cleanup`].
pub struct TestDb {
    pub url: String,
    pg_admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("earshot.db").display());
        TestDb { url, pg_admin: None, _dir: Some(dir) }
    }

    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.url.strip_prefix("sqlite://").map(PathBuf::from)
    }

    /// A fresh database on the test PostgreSQL (`EARSHOT_TEST_POSTGRES_URL`, default the local server).
    /// `None` (the test skips, saying so) when it cannot be reached; under `CI=true` that is a failure.
    pub async fn postgres() -> Option<TestDb> {
        use sqlx::Connection;
        let admin = std::env::var("EARSHOT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true and PostgreSQL at {admin} is unreachable: {e}");
                }
                eprintln!("SKIPPED: PostgreSQL at {admin} is unreachable ({e}); set EARSHOT_TEST_POSTGRES_URL");
                return None;
            }
        };
        let run = std::env::var("EARSHOT_TEST_RUN_ID").unwrap_or_else(|_| "local".into());
        let name = format!("earshot_t_{}_{}", run, uuid::Uuid::new_v4().simple()).to_lowercase();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin.clone());
        Some(TestDb { url: format!("{base}/{name}"), pg_admin: Some((admin, name)), _dir: None })
    }

    pub async fn cleanup(self) {
        use sqlx::Connection;
        if let Some((admin, name)) = &self.pg_admin
            && let Ok(mut conn) = sqlx::PgConnection::connect(admin).await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
            let _ = conn.close().await;
        }
    }

    /// Runs one statement on the test database behind the gateway's back; returns the rows changed.
    pub async fn exec(&self, sql: &str) -> u64 {
        use sqlx::Connection;
        if self.pg_admin.is_some() {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("connect");
            let n = sqlx::query(sql).execute(&mut conn).await.expect(sql).rows_affected();
            let _ = conn.close().await;
            n
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.expect("connect");
            let n = sqlx::query(sql).execute(&mut conn).await.expect(sql).rows_affected();
            let _ = conn.close().await;
            n
        }
    }

    pub async fn store(&self) -> Arc<dyn earshot::store::Store> {
        earshot::store::open(&self.url, 2).await.expect("open store")
    }
}

/// The TOML of a test config; `extra` is appended (downstream sections, overrides).
pub fn config_toml(db_url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
admin_token = "{ADMIN_TOKEN}"
shutdown_grace = "5s"

[database]
url = "{db_url}"
max_connections = 4

[channels.web]
max_body_bytes = 4096
callback_timeout_secs = 2

[[channels.web.sources]]
name = "site"
secret = "{SOURCE_SECRET}"
rate_limit_per_sec = 1000
rate_limit_burst = 1000

[outbox]
retry_schedule = ["100ms", "200ms", "300ms"]
lease = "5s"
poll_interval = "50ms"
breaker_cooldown = "200ms"

{extra}
"#
    )
}

pub fn downstream_toml(url: &str, max_attempts: u32) -> String {
    format!(
        r#"
[[downstream]]
name = "tickets"
url = "{url}"
secret = "{DOWNSTREAM_SECRET}"
timeout_secs = 2
max_attempts = {max_attempts}
"#
    )
}

pub fn settings(toml: &str) -> Settings {
    let cfg = Config::parse(toml).unwrap_or_else(|e| panic!("test config parses: {e:?}"));
    earshot::config::resolve(&cfg, std::path::Path::new(".")).unwrap_or_else(|p| panic!("test config is valid: {p:?}"))
}

/// The gateway, started in-process on 127.0.0.1 with an ephemeral port.
pub struct Gateway {
    pub addr: SocketAddr,
    pub base: String,
    token: CancellationToken,
    handle: JoinHandle<Result<(), earshot::RunError>>,
}

impl Gateway {
    pub async fn start(toml: &str) -> Gateway {
        Self::start_with_channels(toml, Vec::new()).await
    }

    /// The gateway with channels built by the test beside the configured ones.
    pub async fn start_with_channels(toml: &str, extra: Vec<Arc<dyn earshot_channel::Channel>>) -> Gateway {
        init_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let handle = tokio::spawn(earshot::run_with_channels(settings(toml), listener, token.clone(), extra));
        let gw = Gateway { addr, base: format!("http://{addr}"), token, handle };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway not ready within 20 s");
    }

    pub fn web(&self) -> WebClient {
        WebClient::new(&self.base, "site", SOURCE_SECRET)
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin_post(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn stop(self) {
        self.token.cancel();
        let r = tokio::time::timeout(Duration::from_secs(15), self.handle).await.expect("gateway stops in time");
        r.expect("gateway task").expect("gateway ran cleanly");
    }
}

/// Signs and sends web complaints like a site's backend.
#[derive(Clone)]
pub struct WebClient {
    client: reqwest::Client,
    pub url: String,
    key: SigningKey,
}

pub fn complaint(text: &str) -> Value {
    serde_json::json!({ "customer": { "email": "li.wei@example.com", "name": "Li Wei" }, "text": text })
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl WebClient {
    pub fn new(base: &str, source: &str, secret: &str) -> WebClient {
        WebClient {
            client: reqwest::Client::new(),
            url: format!("{base}/v1/inbound/web/{source}"),
            key: SigningKey::from_whsec(secret).expect("secret"),
        }
    }

    /// A correctly signed POST with a fresh webhook-id.
    pub async fn send(&self, body: &Value) -> (u16, Value) {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        self.send_id(&id, body).await
    }

    pub async fn send_id(&self, id: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let ts = now();
        let sig = self.key.sign(id, ts, &bytes);
        self.raw(Some(id), Some(&ts.to_string()), Some(&sig), bytes).await
    }

    /// Raw bytes, correctly signed with the given id.
    pub async fn send_raw_signed(&self, id: &str, bytes: Vec<u8>) -> (u16, Value) {
        let ts = now();
        let sig = self.key.sign(id, ts, &bytes);
        self.raw(Some(id), Some(&ts.to_string()), Some(&sig), bytes).await
    }

    /// Any combination of headers and body, for refusals.
    pub async fn raw(&self, id: Option<&str>, ts: Option<&str>, sig: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self.client.post(&self.url).header("content-type", "application/json").body(body);
        if let Some(v) = id {
            req = req.header("webhook-id", v);
        }
        if let Some(v) = ts {
            req = req.header("webhook-timestamp", v);
        }
        if let Some(v) = sig {
            req = req.header("webhook-signature", v);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut body: Value = r.json().await.unwrap_or(Value::Null);
        if let (Some(ra), Some(obj)) = (retry_after, body.as_object_mut()) {
            obj.insert("_retry_after".into(), ra.into());
        }
        (status, body)
    }

    pub fn sign(&self, id: &str, ts: i64, body: &[u8]) -> String {
        self.key.sign(id, ts, body)
    }
}

/// Signs events as the ticket store (`tickets`, or any endpoint by its secret).
pub struct TicketStore {
    client: WebClient,
}

impl TicketStore {
    pub fn new(gw: &Gateway, secret: &str) -> TicketStore {
        TicketStore { client: WebClient::new(&gw.base, "unused", secret) }
    }

    pub async fn send_as(&self, case_id: &str, id: &str, body: &Value) -> (u16, Value) {
        let mut c = self.client.clone();
        c.url = c.url.replace("/v1/inbound/web/unused", &format!("/v1/cases/{case_id}/events"));
        c.send_raw_signed(id, serde_json::to_vec(body).expect("json")).await
    }

    pub async fn send(&self, case_id: &str, body: &Value) -> (u16, Value) {
        self.send_as(case_id, &format!("evt_{}", uuid::Uuid::new_v4().simple()), body).await
    }

    pub async fn status(&self, case_id: &str, status: &str) -> (u16, Value) {
        self.send(case_id, &serde_json::json!({ "type": "status_changed", "data": { "status": status } })).await
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: String,
    pub signature_ok: bool,
    /// The `webhook-signature` header as sent.
    pub signature: String,
    pub timestamp: String,
    pub body: Value,
    /// The body as sent, for checking signatures.
    pub raw: Vec<u8>,
    /// The status the receiver answered with.
    pub answered: u16,
    pub at: Instant,
}

struct RecvState {
    key: SigningKey,
    received: Mutex<Vec<Received>>,
    /// Answers to give next, in order; when empty, `default`.
    script: Mutex<VecDeque<u16>>,
    default: Mutex<u16>,
    /// Per webhook-id: the status to answer it with, and how many more times.
    fail_ids: Mutex<std::collections::HashMap<String, (u16, u32)>>,
    /// Answer every delivery with this 3xx status and `Location`.
    redirect: Mutex<Option<(u16, String)>>,
    /// Requests that followed a redirect to `/moved`.
    moved: Mutex<u32>,
    changed: Notify,
}

/// A downstream ticket store: a real axum server that checks signatures and answers as told.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<RecvState>,
    _server: Arc<ServerGuard>,
}

struct ServerGuard(JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn receive(State(st): State<Arc<RecvState>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let signature_ok =
        st.key.verify(h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), &body, now()).is_ok();
    let webhook_id = h("webhook-id").unwrap_or_default().to_owned();
    let scripted = st.script.lock().expect("lock").pop_front();
    let mut status = scripted.unwrap_or(*st.default.lock().expect("lock"));
    {
        let mut fails = st.fail_ids.lock().expect("lock");
        if let Some((code, n)) = fails.get_mut(&webhook_id)
            && *n > 0
        {
            *n -= 1;
            status = *code;
        }
    }
    let redirect = st.redirect.lock().expect("lock").clone();
    if let Some((code, _)) = &redirect {
        status = *code;
    }
    let raw_body = body.to_vec();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = {
        let mut r = st.received.lock().expect("lock");
        r.push(Received {
            webhook_id,
            signature_ok,
            signature: h("webhook-signature").unwrap_or_default().to_owned(),
            timestamp: h("webhook-timestamp").unwrap_or_default().to_owned(),
            body,
            raw: raw_body,
            answered: status,
            at: Instant::now(),
        });
        r.len()
    };
    st.changed.notify_waiters();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    if let Some((_, location)) = redirect {
        headers.insert(axum::http::header::LOCATION, location.parse().expect("location"));
    }
    (code, headers, axum::Json(serde_json::json!({ "ticket_id": format!("T-{n}") })))
}

/// Where redirected deliveries would land: answers 200 to anything, and counts.
async fn moved(State(st): State<Arc<RecvState>>) -> impl IntoResponse {
    *st.moved.lock().expect("lock") += 1;
    st.changed.notify_waiters();
    (StatusCode::OK, axum::Json(serde_json::json!({ "ticket_id": "T-moved" })))
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts on a given address (to bring a stopped receiver back on the same port).
    pub async fn start_on(addr: &str) -> Receiver {
        Self::start_with(addr, DOWNSTREAM_SECRET).await
    }

    /// A receiver that checks signatures made with `secret` (a web source's, for callbacks).
    pub async fn start_with(addr: &str, secret: &str) -> Receiver {
        let state = Arc::new(RecvState {
            key: SigningKey::from_whsec(secret).expect("secret"),
            received: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(200),
            fail_ids: Mutex::new(Default::default()),
            redirect: Mutex::new(None),
            moved: Mutex::new(0),
            changed: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind receiver");
        let url = format!("http://{}/events", listener.local_addr().expect("addr"));
        let app = axum::Router::new()
            .route("/events", axum::routing::post(receive))
            .route("/moved", axum::routing::any(moved))
            .with_state(state.clone());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, state, _server: Arc::new(ServerGuard(handle)) }
    }

    pub fn set_default(&self, status: u16) {
        *self.state.default.lock().expect("lock") = status;
    }

    /// Answers every delivery with `status` and `Location: location` (a path on this receiver, or
    /// any URL); `None` answers normally again.
    pub fn set_redirect(&self, redirect: Option<(u16, &str)>) {
        *self.state.redirect.lock().expect("lock") = redirect.map(|(s, l)| (s, l.to_owned()));
    }

    /// Requests that reached `/moved`, where redirects point.
    pub fn moved_hits(&self) -> u32 {
        *self.state.moved.lock().expect("lock")
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn base(&self) -> String {
        self.url.trim_end_matches("/events").to_owned()
    }

    pub fn script(&self, answers: &[u16]) {
        self.state.script.lock().expect("lock").extend(answers.iter().copied());
    }

    /// Fail every delivery of `webhook_id` with 503, `times` times.
    pub fn fail_id(&self, webhook_id: &str, times: u32) {
        self.answer_id(webhook_id, 503, times);
    }

    /// Answer every delivery of `webhook_id` with `status`, `times` times.
    pub fn answer_id(&self, webhook_id: &str, status: u16, times: u32) {
        self.state.fail_ids.lock().expect("lock").insert(webhook_id.to_owned(), (status, times));
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    /// Deliveries answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| (200..300).contains(&r.answered)).collect()
    }

    /// Waits until `pred` holds for what was received, or panics after `secs`.
    pub async fn wait_until(&self, secs: u64, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let notified = self.state.changed.notified();
            let got = self.received();
            if pred(&got) {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {secs} s waiting for {what}; received {} requests: {:?}",
                    got.len(),
                    got.iter().map(|r| (&r.webhook_id, r.answered)).collect::<Vec<_>>()
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

/// A peer that accepts TCP connections and never answers (not even an SMTP greeting): what a hung
/// server looks like from outside. It keeps what each connection sent; dropping it closes them all.
pub struct Blackhole {
    pub port: u16,
    state: Arc<Mutex<Vec<Vec<u8>>>>,
    task: Option<JoinHandle<()>>,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        Self::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> Blackhole {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the black hole");
        let port = listener.local_addr().expect("addr").port();
        let state: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut readers = tokio::task::JoinSet::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                let st = st.clone();
                let i = {
                    let mut all = st.lock().expect("lock");
                    all.push(Vec::new());
                    all.len() - 1
                };
                readers.spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Read whatever comes, answer nothing; the socket stays open until dropped.
                    while let Ok(n) = sock.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        st.lock().expect("lock")[i].extend_from_slice(&buf[..n]);
                    }
                    std::future::pending::<()>().await;
                });
            }
        });
        Blackhole { port, state, task: Some(task) }
    }

    /// Closes the listener and every connection; returns once the port is free.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().expect("lock").len()
    }

    /// The `webhook-id` headers of the HTTP requests it was sent.
    pub fn webhook_ids(&self) -> Vec<String> {
        let all = self.state.lock().expect("lock");
        all.iter()
            .flat_map(|raw| {
                String::from_utf8_lossy(raw)
                    .lines()
                    .filter_map(|l| l.strip_prefix("webhook-id: ").map(|v| v.trim().to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        // Aborting the accept task drops the listener and, with its JoinSet, every connection.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON Schema validator of the published case schema.
pub fn case_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../../schema/case.json")).expect("schema json");
    jsonschema::validator_for(&schema).expect("valid JSON Schema")
}

pub fn event_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../../schema/event.json")).expect("schema json");
    jsonschema::validator_for(&schema).expect("valid JSON Schema")
}

/// Rows that a refused request must not have created.
pub async fn row_counts(store: &dyn earshot::store::Store) -> (i64, Vec<(String, i64)>) {
    (store.count_cases().await.expect("count"), store.job_counts().await.expect("jobs"))
}
