//! Process-level tests: the real `earshot` binary as child processes, configured through a TOML file,
//! killed, terminated and restarted the way an operator's supervisor would.
//!
//! What only a process boundary can show: a 202 survives SIGKILL, SIGTERM drains in-flight work and
//! exits 0, two instances share one PostgreSQL without delivering anything twice, and the CLI
//! (`check-config`, `outbox list|replay`) says what operators rely on.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::support::{
    ADMIN_TOKEN, DOWNSTREAM_SECRET, Received, Receiver, SOURCE_SECRET, TestDb, WebClient, complaint, config_toml,
    downstream_toml, eventually,
};

const BIN: &str = env!("CARGO_BIN_EXE_earshot");

/// A port that was free a moment ago. The listener is dropped so the child can bind it; another
/// process could take it in between, which is rare enough on 127.0.0.1 for tests.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Writes the harness config with `listen` set, so the child binds a port the test knows.
fn write_config(dir: &Path, file: &str, port: u16, db_url: &str, extra: &str) -> PathBuf {
    let toml =
        config_toml(db_url, extra).replacen("[server]\n", &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"), 1);
    assert!(toml.contains("listen = "), "config_toml has a [server] table");
    let path = dir.join(file);
    std::fs::write(&path, toml).expect("write config file");
    path
}

/// Fails with `what` when `fut` does not finish in `secs`: every wait in this module is bounded.
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s: {what}"))
}

/// A running `earshot serve`. Dropping it kills the process (also when a test panics), and a
/// panicking test prints the child's log, which is otherwise only in a temporary file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    base: String,
}

impl Proc {
    async fn start(config: &Path, port: u16, name: &str) -> Proc {
        Self::start_logging(config, port, name, "info,sqlx=warn").await
    }

    /// As `start`, with `RUST_LOG` set to `rust_log`.
    async fn start_logging(config: &Path, port: u16, name: &str, rust_log: &str) -> Proc {
        let log = config.with_file_name(format!("{name}.log"));
        // A file, not a pipe: a pipe nobody reads fills up and blocks the child's logging.
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open child log");
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn earshot serve");
        let mut p = Proc { name: name.to_owned(), child, log, base: format!("http://127.0.0.1:{port}") };
        p.wait_ready().await;
        p
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("child is running")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The log line proves the 200 came from this child: the port was only free a moment ago,
            // and another process on the machine could have taken it in between.
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
                && self.log_text().contains(&format!("listening on {}.", self.base))
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited before it was ready ({status}); log:\n{}", self.name, self.log_text());
            }
            if Instant::now() > deadline {
                panic!("{} not ready within 30 s; log:\n{}", self.name, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL (what `Child::kill` sends), then reaps the process so its port is free again.
    async fn sigkill(&mut self) -> ExitStatus {
        within(10, "SIGKILLed child is reaped", self.child.kill()).await.expect("kill the child");
        within(10, "SIGKILLed child is reaped", self.child.wait()).await.expect("wait for the child")
    }

    /// Sends SIGTERM through kill(1), keeping this crate free of `libc` and `unsafe`.
    async fn sigterm(&self) {
        let status = within(10, "kill -TERM", Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status())
            .await
            .expect("run kill(1)");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit after a signal.
    async fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        match tokio::time::timeout(Duration::from_secs(secs), self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!("{} did not exit within {secs} s; log:\n{}", self.name, self.log_text()),
        }
    }

    /// SIGTERM, and the clean exit (0) that graceful shutdown promises.
    async fn stop(&mut self) {
        self.sigterm().await;
        let status = self.wait_exit(20).await;
        assert_eq!(status.code(), Some(0), "{} exits 0 after SIGTERM; log:\n{}", self.name, self.log_text());
    }

    fn web(&self) -> WebClient {
        WebClient::new(&self.base, "site", SOURCE_SECRET)
    }

    async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = within(
            10,
            "admin request",
            reqwest::Client::new().get(format!("{}{path}", self.base)).bearer_auth(ADMIN_TOKEN).send(),
        )
        .await
        .expect("admin request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Kills a process a test left running; an already-exited child makes this a no-op error.
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: String =
                log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            eprintln!("---- last lines of {} ----\n{tail}", self.name);
        }
    }
}

/// Runs a one-shot CLI command: (exit code, stdout, stderr).
async fn cli(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = within(
        30,
        &format!("earshot {}", args.join(" ")),
        Command::new(BIN).args(args).arg("--config").arg(config).stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("run earshot");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn case_id_of(r: &Received) -> Option<&str> {
    r.body.pointer("/data/case/id").and_then(Value::as_str)
}

/// A complaint the intake answers 202, with the case id it created.
fn accepted_case(status: u16, body: &Value) -> String {
    assert_eq!(status, 202, "complaint accepted: {body}");
    body["case_id"].as_str().expect("202 answer has case_id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_202_keeps_the_case() {
    let db = TestDb::sqlite();
    let receiver = Receiver::start().await;
    // 503 keeps the job pending, so the crash happens with work still owed downstream.
    receiver.set_default(503);
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = write_config(dir.path(), "earshot.toml", port, &db.url, &downstream_toml(&receiver.url, 1000));

    let mut first = Proc::start(&cfg, port, "before-crash").await;
    let (status, body) = within(10, "complaint", first.web().send(&complaint("My parcel arrived crushed."))).await;
    let case_id = accepted_case(status, &body);
    let killed = first.sigkill().await;
    assert_eq!(killed.signal(), Some(9), "the gateway died of SIGKILL, not a clean exit");
    let before_crash: Vec<Received> = receiver.received();
    eprintln!("{} delivery attempt(s) before SIGKILL", before_crash.len());

    receiver.set_default(200);
    let second = Proc::start(&cfg, port, "after-crash").await;
    let (status, listed) = second.admin_get("/v1/cases").await;
    assert_eq!(status, 200, "admin case list: {listed}");
    let ids: Vec<&str> =
        listed["cases"].as_array().expect("cases array").iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, [case_id.as_str()], "the case acknowledged with 202 survived SIGKILL");

    let got = receiver
        .wait_until(30, "case.created accepted after restart", |r| {
            r.iter().any(|x| x.answered == 200 && case_id_of(x) == Some(case_id.as_str()))
        })
        .await;
    let delivered = got.iter().find(|x| x.answered == 200).expect("an accepted delivery");
    assert!(delivered.signature_ok, "delivery is correctly signed");
    assert_eq!(delivered.body["type"], "case.created");
    // Every attempt, before and after the crash, is one event: one webhook-id for the receiver to dedup on.
    let webhook_ids: HashSet<&str> = got.iter().map(|x| x.webhook_id.as_str()).collect();
    assert_eq!(webhook_ids.len(), 1, "one webhook-id across the crash: {webhook_ids:?}");
    if let Some(early) = before_crash.first() {
        assert_eq!(early.webhook_id, delivered.webhook_id, "the retry after restart reuses the event's id");
    }
    let store = db.store().await;
    assert_eq!(store.count_cases().await.expect("count cases"), 1);
    // The crash usually lands before any attempt reaches the receiver; the stored job's id still
    // shows that the delivery after restart is the event committed before the crash, not a new one.
    let jobs = eventually(10, "the job recorded done", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(None, 10).await.expect("list jobs");
            jobs.iter().all(|j| j.state == "done").then_some(jobs)
        }
    })
    .await;
    assert_eq!(jobs.len(), 1, "one downstream job: {jobs:?}");
    assert_eq!(jobs[0].event_id, delivered.webhook_id);
    store.close().await;

    let mut second = second;
    second.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_postgres_make_200_cases() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let receiver = Receiver::start().await;
    // A generous per-attempt timeout: a slow, shared test machine must not turn into a legitimate
    // at-least-once retry, since this test allows no repeated delivery at all.
    let downstream = downstream_toml(&receiver.url, 12).replace("timeout_secs = 2", "timeout_secs = 15");
    let dir = tempfile::tempdir().expect("temp dir");
    let (port_a, port_b) = (free_port(), free_port());
    let cfg_a = write_config(dir.path(), "a.toml", port_a, &db.url, &downstream);
    let cfg_b = write_config(dir.path(), "b.toml", port_b, &db.url, &downstream);
    // The lease must outlast that timeout: check-config refuses a lease that does not.
    for cfg in [&cfg_a, &cfg_b] {
        let text = std::fs::read_to_string(cfg).expect("read config");
        std::fs::write(cfg, text.replace("lease = \"5s\"", "lease = \"20s\"")).expect("write config");
    }
    // Started together: both migrate the same fresh database at once, as a rolling deploy would.
    let (mut a, mut b) =
        tokio::join!(Proc::start(&cfg_a, port_a, "instance-a"), Proc::start(&cfg_b, port_b, "instance-b"),);
    let clients = Arc::new([a.web(), b.web()]);

    const TOTAL: usize = 200;
    const CONCURRENCY: usize = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..CONCURRENCY {
        let clients = clients.clone();
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for i in (lane..TOTAL).step_by(CONCURRENCY) {
                let body = complaint(&format!("Complaint number {i}: the invoice is wrong."));
                let answer = within(20, "complaint", clients[i % 2].send(&body)).await;
                answers.push(answer);
            }
            answers
        });
    }
    let mut case_ids = HashSet::new();
    while let Some(done) = within(120, "all complaints answered", tasks.join_next()).await {
        for (status, body) in done.expect("sender task") {
            let id = accepted_case(status, &body);
            assert_eq!(body["duplicate"], false, "fresh webhook-id: {body}");
            case_ids.insert(id);
        }
    }
    assert_eq!(case_ids.len(), TOTAL, "one new case per complaint");

    receiver
        .wait_until(90, "200 accepted deliveries", |r| r.iter().filter(|x| x.answered == 200).count() >= TOTAL)
        .await;
    let store = db.store().await;
    // Every job recorded done with one attempt: no lease was taken twice, by either instance.
    let jobs = eventually(30, "all 200 jobs recorded done", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(None, 1000).await.expect("list jobs");
            (jobs.len() == TOTAL && jobs.iter().all(|j| j.state == "done")).then_some(jobs)
        }
    })
    .await;
    let retried: Vec<_> = jobs.iter().filter(|j| j.attempts != 1).map(|j| (j.id, j.attempts)).collect();
    assert!(retried.is_empty(), "jobs leased more than once: {retried:?}");

    let received = receiver.received();
    assert_eq!(received.len(), TOTAL, "exactly one request per event, none failed, none repeated");
    assert!(received.iter().all(|r| r.signature_ok), "every delivery is correctly signed");
    let webhook_ids: HashSet<&str> = received.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(webhook_ids.len(), TOTAL, "200 distinct webhook-ids");
    let delivered_cases: HashSet<String> = received.iter().filter_map(|r| case_id_of(r).map(str::to_owned)).collect();
    assert_eq!(delivered_cases, case_ids, "each answered case delivered exactly once");
    assert_eq!(store.count_cases().await.expect("count cases"), TOTAL as i64);

    // The same message sent to both instances at once: the database's unique key decides, so one
    // case, and every other answer says duplicate.
    const ROUNDS: usize = 5;
    for round in 0..ROUNDS {
        let id = format!("msg_same_{round}_{}", uuid::Uuid::new_v4().simple());
        let body = complaint(&format!("Sent twice, round {round}."));
        let mut set = tokio::task::JoinSet::new();
        for k in 0..4 {
            let (client, id, body) = (clients[k % 2].clone(), id.clone(), body.clone());
            set.spawn(async move { client.send_id(&id, &body).await });
        }
        let mut answers = Vec::new();
        while let Some(r) = within(30, "duplicate answers", set.join_next()).await {
            answers.push(r.expect("sender task"));
        }
        let ids: HashSet<String> = answers.iter().map(|(status, body)| accepted_case(*status, body)).collect();
        assert_eq!(ids.len(), 1, "one case for one message: {answers:?}");
        let fresh = answers.iter().filter(|(_, b)| b["duplicate"] == false).count();
        assert_eq!(fresh, 1, "all but one answer say duplicate: {answers:?}");
    }
    assert_eq!(store.count_cases().await.expect("count cases"), (TOTAL + ROUNDS) as i64);
    store.close().await;

    a.stop().await;
    b.stop().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_example_passes_and_three_mistakes_are_all_reported() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/earshot.example.toml");
    let (code, out, err) = cli(&example, &["check-config"]).await;
    assert_eq!(code, Some(0), "the example config is valid:\n{out}\n{err}");
    assert!(out.contains("OK"), "says OK: {out}");

    let dir = tempfile::tempdir().expect("temp dir");
    // Secrets that look real: none of them may appear in what check-config prints.
    let downstream_secret = "whsec_c2VjcmV0LW5ldmVyLXByaW50LXRoaXMtMTIzNDU2";
    let admin_token = "admin-token-never-print-this-0123456789";
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            r#"
[server]
listen = "nonsense"
admin_token = "{admin_token}"

[database]
url = "sqlite://data/earshot.db"

[[downstream]]
name = "tickets"
url = "ftp://x"
secret = "{downstream_secret}"

[channels.web]

[[channels.web.sources]]
name = "site"
"#
        ),
    )
    .expect("write config");
    let (code, out, err) = cli(&bad, &["check-config"]).await;
    let all = format!("{out}{err}");
    assert_eq!(code, Some(1), "check-config fails on mistakes:\n{all}");
    for expected in ["channels.web.sources[0].secret: missing", "downstream[0].url: ", "server.listen: "] {
        assert!(all.lines().any(|l| l.starts_with(expected)), "reports {expected:?}; got:\n{all}");
    }
    assert!(all.contains("ftp://x"), "says which URL is wrong:\n{all}");
    assert!(all.contains("nonsense"), "says which address is wrong:\n{all}");
    for secret in [downstream_secret, admin_token] {
        assert!(!all.contains(secret), "a secret value was printed:\n{all}");
    }

    // `env:NAME` whose variable is unset: reported with the key path and the variable's name.
    let var = format!("EARSHOT_TEST_UNSET_{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    let unset = dir.path().join("unset.toml");
    std::fs::write(
        &unset,
        format!(
            r#"
[[channels.web.sources]]
name = "site"
secret = "env:{var}"
"#
        ),
    )
    .expect("write config");
    let (code, out, err) = cli(&unset, &["check-config"]).await;
    let all = format!("{out}{err}");
    assert_eq!(code, Some(1), "an unset env secret fails the check:\n{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with("channels.web.sources[0].secret: ") && l.contains(&var) && l.contains("not set")),
        "reports the unset variable with its key path:\n{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_a_lease_not_longer_than_a_send_deadline_naming_both_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, lease: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[outbox]\nlease = \"{lease}\"\n\n[[downstream]]\nname = \"tickets\"\nurl = \"http://127.0.0.1:9/e\"\n\
                 secret = \"{DOWNSTREAM_SECRET}\"\ntimeout_secs = 30\n\n[channels.email]\n\n\
                 [[channels.email.mailboxes]]\nname = \"support\"\naddress = \"support@example.com\"\n\
                 imap = {{ host = \"127.0.0.1\", username = \"u\", password = \"p\" }}\n\
                 smtp = {{ host = \"127.0.0.1\", timeout_secs = 45 }}\n"
            ),
        )
        .expect("write config");
        path
    };
    let (code, out, err) = cli(&write("short.toml", "40s"), &["check-config"]).await;
    let all = format!("{out}{err}");
    assert_eq!(code, Some(1), "refused:\n{all}");
    let line = all.lines().find(|l| l.contains("outbox.lease: ")).unwrap_or_else(|| panic!("names the lease:\n{all}"));
    assert!(
        line.contains("channels.email.mailboxes[0].smtp.timeout_secs (45 s)"),
        "names the longest deadline: {line}"
    );
    let (code, out, err) = cli(&write("long.toml", "46s"), &["check-config"]).await;
    assert_eq!(code, Some(0), "a lease longer than every deadline passes:\n{out}{err}");
}

/// With `RUST_LOG=trace` the gateway logs everything it may, and still never the IMAP password
/// (async-imap traces every command it sends, `LOGIN` included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_show_the_imap_password() {
    let Some(imap) = crate::mailsrv::Dovecot::start().await else { return };
    let Some(smtp) = crate::mailsrv::SmtpSink::start().await else { return };
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let email = format!(
        "[channels.email]\n[[channels.email.mailboxes]]\nname = \"support\"\naddress = \"support@example.com\"\n\
         imap = {{ host = \"127.0.0.1\", port = {}, security = \"plain\", username = \"{}\", password = \"{}\", poll_secs = 1 }}\n\
         smtp = {{ host = \"127.0.0.1\", port = {}, security = \"plain\", timeout_secs = 3 }}\n",
        imap.port, imap.user, imap.password, smtp.port
    );
    let cfg = write_config(dir.path(), "trace.toml", port, &db.url, &email);
    let mut p = Proc::start_logging(&cfg, port, "trace", "trace").await;
    imap.append(b"From: li@example.com\r\nTo: support@example.com\r\nSubject: broken\r\nMessage-ID: <trace-1@example.com>\r\n\r\nThe cup is broken.\r\n").await;
    within(20, "the complaint stored", async {
        while !p.log_text().contains("Case created.") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    p.stop().await;
    let log = p.log_text();
    assert!(log.contains("TRACE"), "trace logging was on");
    assert!(!log.contains(&imap.password), "the IMAP password is in the log");
    db.cleanup().await;
}

/// A log written to a file is plain text an operator can grep: no terminal colour codes, one whole
/// line per case, each written while the gateway runs (the log thread's buffer is flushed whenever
/// its queue is empty, not only when it fills or the process exits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_a_file_are_plain_lines_written_at_once() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = write_config(dir.path(), "plain.toml", port, &db.url, "");
    let mut p = Proc::start(&cfg, port, "plain-log").await;
    let mut refs = Vec::new();
    for i in 0..20 {
        let (status, body) =
            within(10, "complaint", p.web().send(&complaint(&format!("Parcel {i} arrived crushed.")))).await;
        assert_eq!(status, 202, "complaint accepted: {body}");
        refs.push(body["case_ref"].as_str().expect("case_ref").to_owned());
    }
    // Still running: every line must be in the file already.
    let log = within(10, "20 case lines in the log", async {
        loop {
            let log = p.log_text();
            if log.matches("Case created.").count() >= 20 {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!log.contains('\u{1b}'), "no escape codes in a log file:\n{log}");
    for case_ref in &refs {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&format!("case_ref={case_ref} "))).collect();
        assert_eq!(lines.len(), 1, "one line for case {case_ref}:\n{log}");
        assert!(
            lines[0].contains(" INFO ") && lines[0].contains("Case created.") && lines[0].ends_with("source=site"),
            "a whole line: {}",
            lines[0]
        );
    }
    p.stop().await;
    db.cleanup().await;
}

/// A database URL's password is never printed: not by `check-config`, not when `serve` cannot open
/// the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_password_is_never_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("pw.toml");
    let password = "never-print-this-db-password";
    // A port that does not parse: `serve` fails at once, with the URL's error in hand.
    std::fs::write(&cfg, format!("[database]\nurl = \"postgres://earshot:{password}@127.0.0.1:notaport/db\"\n"))
        .expect("write config");
    for args in [&["check-config"][..], &["serve"][..], &["migrate"][..]] {
        let (_, out, err) = cli(&cfg, args).await;
        assert!(!format!("{out}{err}").contains(password), "earshot {args:?} printed the password:\n{out}{err}");
    }
}

/// How one request of the SIGTERM test ended.
#[derive(Debug)]
enum Outcome {
    Answered(u16, Value),
    /// Refused or cut before an answer: the client knows it was not acknowledged.
    NoAnswer(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work() {
    let db = TestDb::sqlite();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = write_config(dir.path(), "earshot.toml", port, &db.url, &downstream_toml(&receiver.url, 12));
    let mut gw = Proc::start(&cfg, port, "sigterm").await;
    let signer = gw.web();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");

    const N: usize = 100;
    // SIGTERM goes out as soon as the first 202 is back, while most of the burst is still open.
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(N);
    let go = Arc::new(tokio::sync::Barrier::new(N + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (signer, http, go, first_tx) = (signer.clone(), http.clone(), go.clone(), first_tx.clone());
        tasks.spawn(async move {
            let body = serde_json::to_vec(&complaint(&format!("In flight {i}."))).expect("json");
            let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
            let ts = time::OffsetDateTime::now_utc().unix_timestamp();
            let sig = signer.sign(&id, ts, &body);
            go.wait().await;
            let sent = http
                .post(&signer.url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .body(body)
                .send()
                .await;
            let outcome = match sent {
                Ok(r) => {
                    let status = r.status().as_u16();
                    match r.bytes().await {
                        Ok(b) => Outcome::Answered(status, serde_json::from_slice(&b).unwrap_or(Value::Null)),
                        Err(e) => Outcome::NoAnswer(format!("body cut after {status}: {e}")),
                    }
                }
                Err(e) => Outcome::NoAnswer(e.to_string()),
            };
            if matches!(outcome, Outcome::Answered(202, _)) {
                let _ = first_tx.try_send(());
            }
            (outcome, Instant::now())
        });
    }
    drop(first_tx);
    go.wait().await;
    within(20, "the first 202 of the burst", first_rx.recv())
        .await
        .expect("at least one complaint is accepted before SIGTERM");
    gw.sigterm().await;
    let signalled = Instant::now();
    let status = gw.wait_exit(15).await;
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM; log:\n{}", gw.log_text());
    assert!(signalled.elapsed() < Duration::from_secs(10), "exit within the 5 s grace, give or take");

    let mut outcomes = Vec::new();
    while let Some(r) = within(30, "all requests ended", tasks.join_next()).await {
        outcomes.push(r.expect("request task"));
    }
    // Answers read after kill(1) returned: mostly requests that were open when the signal came and
    // that the shutdown drained rather than cut (a count for the log; timing makes it no assertion).
    let drained = outcomes.iter().filter(|(o, at)| matches!(o, Outcome::Answered(202, _)) && *at > signalled).count();
    let mut accepted = HashSet::new();
    let mut no_answer = Vec::new();
    for (o, _) in &outcomes {
        match o {
            Outcome::Answered(202, body) => {
                accepted.insert(accepted_case(202, body));
            }
            // A refusal the client can act on; anything else (a 500, a 4xx) is a bug at shutdown.
            Outcome::Answered(503, body) if body.get("code").is_some() => no_answer.push(format!("503 {body}")),
            Outcome::Answered(status, body) => {
                panic!("unclean answer during shutdown: {status} {body}")
            }
            Outcome::NoAnswer(e) => no_answer.push(e.clone()),
        }
    }
    eprintln!(
        "SIGTERM: {} accepted ({drained} answered after the signal), {} not acknowledged (e.g. {:?})",
        accepted.len(),
        no_answer.len(),
        no_answer.first()
    );
    assert!(!accepted.is_empty(), "some requests were accepted before or during shutdown");

    let store = db.store().await;
    let stored: HashSet<String> =
        store.list_cases(1000).await.expect("list cases").into_iter().map(|c| c.id.0).collect();
    let lost: Vec<_> = accepted.difference(&stored).collect();
    assert!(lost.is_empty(), "202 answered but no case stored: {lost:?}");
    let unanswered: Vec<_> = stored.difference(&accepted).collect();
    assert!(unanswered.is_empty(), "cases committed whose 202 never reached the client: {unanswered:?}");

    // Workers finish and record what they started: nothing is left leased, and every job recorded
    // done was accepted by the receiver.
    let jobs = store.list_jobs(None, 1000).await.expect("list jobs");
    let leased: Vec<_> = jobs.iter().filter(|j| j.state == "leased").collect();
    assert!(leased.is_empty(), "jobs left leased after SIGTERM: {leased:?}");
    let accepted_events: HashSet<String> = receiver.accepted().into_iter().map(|r| r.webhook_id).collect();
    let done_events: HashSet<String> = jobs.iter().filter(|j| j.state == "done").map(|j| j.event_id.clone()).collect();
    assert_eq!(done_events, accepted_events, "done jobs are exactly the accepted deliveries");
    store.close().await;
    db.cleanup().await;
}

/// The rows of `outbox list` whose STATE is `state`: (id, event id, case id).
fn outbox_rows(listing: &str, state: &str) -> Vec<(i64, String, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            match cols.as_slice() {
                [id, st, _attempts, _dest, event, case, ..] if *st == state => {
                    Some((id.parse().ok()?, (*event).to_owned(), (*case).to_owned()))
                }
                _ => None,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_cli_lists_and_replays_dead_jobs() {
    let db = TestDb::sqlite();
    let receiver = Receiver::start().await;
    // 410 Gone is permanent: the job is dead after one attempt.
    receiver.set_default(410);
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = write_config(dir.path(), "earshot.toml", port, &db.url, &downstream_toml(&receiver.url, 12));
    let mut gw = Proc::start(&cfg, port, "outbox-cli").await;
    let (status, body) = within(10, "complaint", gw.web().send(&complaint("Nobody answers the hotline."))).await;
    let case_id = accepted_case(status, &body);

    // Polled by hand rather than with `eventually`, so a timeout shows what the CLI last printed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (job_id, event_id) = loop {
        let (code, out, err) = cli(&cfg, &["outbox", "list", "--dead"]).await;
        assert_eq!(code, Some(0), "outbox list:\n{out}\n{err}");
        if let Some((id, event, _)) = outbox_rows(&out, "dead").into_iter().find(|(_, _, case)| *case == case_id) {
            break (id, event);
        }
        if Instant::now() > deadline {
            let (_, all, _) = cli(&cfg, &["outbox", "list"]).await;
            panic!(
                "no dead job for {case_id} in `outbox list --dead` within 30 s; last output:\n{out}\n{err}\nall jobs:\n{all}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let gone = receiver.received();
    assert_eq!(gone.len(), 1, "dead after one 410, not retried: {gone:?}");
    assert_eq!(gone[0].answered, 410);
    assert_eq!(gone[0].webhook_id, event_id, "the EVENT ID column is the webhook-id");

    receiver.set_default(200);
    let id = job_id.to_string();
    let (code, out, err) = cli(&cfg, &["outbox", "replay", &id]).await;
    assert_eq!(code, Some(0), "replay succeeds:\n{out}\n{err}");
    let got = receiver.wait_until(30, "the replayed event accepted", |r| r.iter().any(|x| x.answered == 200)).await;
    let delivered = got.iter().find(|x| x.answered == 200).expect("accepted delivery");
    assert!(delivered.signature_ok, "replay is correctly signed");
    assert_eq!(delivered.webhook_id, event_id, "a replay keeps the event's id");
    assert_eq!(case_id_of(delivered), Some(case_id.as_str()));
    assert_eq!(delivered.body["type"], "case.created");

    // The job is done now, and replaying it again is refused: only dead jobs are replayed.
    eventually(10, "the job recorded done", || async {
        let (_, out, _) = cli(&cfg, &["outbox", "list", "--state", "done"]).await;
        outbox_rows(&out, "done").iter().any(|(id, _, _)| *id == job_id).then_some(())
    })
    .await;
    let (code, out, _) = cli(&cfg, &["outbox", "replay", &id]).await;
    assert_eq!(code, Some(1), "a done job is not replayed: {out}");

    gw.stop().await;
    let counts: HashMap<String, i64> = {
        let store = db.store().await;
        let c = store.job_counts().await.expect("job counts");
        store.close().await;
        c.into_iter().collect()
    };
    assert_eq!(counts.get("dead").copied().unwrap_or(0), 0, "{counts:?}");
    db.cleanup().await;
}

/// `earshot cases list` filters like `GET /v1/cases` and pages with a printed cursor; `cases show`
/// prints the case with its timeline; a bad filter is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_cli_lists_with_filters_and_shows_a_timeline() {
    let db = TestDb::sqlite();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = write_config(dir.path(), "earshot.toml", port, &db.url, &downstream_toml(&receiver.url, 12));
    let mut gw = Proc::start(&cfg, port, "cases-cli").await;
    let mut ids = Vec::new();
    for text in ["The fridge is loud.", "The oven door is cracked.", "Wrong fridge colour."] {
        let (status, body) = within(10, "complaint", gw.web().send(&complaint(text))).await;
        ids.push(accepted_case(status, &body));
    }
    let (code, out, err) = cli(&cfg, &["cases", "list", "--text", "fridge"]).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    let listed: Vec<&str> =
        out.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|id| id.starts_with("case_")).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[0].as_str()], "newest first, only those that say fridge:\n{out}");
    let (code, out, _) = cli(&cfg, &["cases", "list", "--limit", "2"]).await;
    assert_eq!(code, Some(0));
    let cursor =
        out.lines().find_map(|l| l.strip_prefix("more: --cursor ")).expect("a cursor for the next page").to_owned();
    let (_, next, _) = cli(&cfg, &["cases", "list", "--limit", "2", "--cursor", &cursor]).await;
    assert!(next.contains(&ids[0]) && !next.contains(&ids[1]) && !next.contains("more:"), "{next}");
    let (code, out, err) = cli(&cfg, &["cases", "show", &ids[1]]).await;
    assert_eq!(code, Some(0), "{err}");
    let shown: Value = serde_json::from_str(&out).expect("cases show prints JSON");
    assert_eq!(shown["id"], ids[1].as_str());
    assert!(shown["timeline"].as_array().is_some_and(|t| t.iter().any(|e| e["kind"] == "message_in")), "{shown}");
    let (code, _, err) = cli(&cfg, &["cases", "list", "--status", "done"]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("status"), "{err}");
    gw.stop().await;
    db.cleanup().await;
}

/// SIGHUP rotates secrets end to end: the new secret is added beside the old one (both accepted),
/// then the old one is removed (refused); a file with a problem changes nothing and the problem is
/// logged with its key path; a key that takes a restart is named. In-flight work is untouched: the
/// process keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_secrets_and_keeps_the_running_config_on_a_bad_file() {
    const NEW_SECRET: &str = "whsec_bmV3LXNvdXJjZS1zZWNyZXQtMDEyMzQ1Njc4OTAx";
    const NEW_TOKEN: &str = "new-admin-token-0123456789";
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = write_config(dir.path(), "earshot.toml", port, &db.url, "");
    let original = std::fs::read_to_string(&cfg).expect("read config");
    let mut gw = Proc::start(&cfg, port, "sighup").await;
    let old = gw.web();
    let new = WebClient::new(&gw.base, "site", NEW_SECRET);
    let send =
        |c: WebClient, text: &'static str| async move { within(10, "complaint", c.send(&complaint(text))).await.0 };
    assert_eq!(send(old.clone(), "Before the rotation.").await, 202);
    assert_eq!(send(new.clone(), "Too early.").await, 401);

    let hup = |n: usize| {
        let pid = gw.pid();
        let name = gw.name.clone();
        let log = gw.log.clone();
        async move {
            let status = within(10, "kill -HUP", Command::new("kill").arg("-HUP").arg(pid.to_string()).status())
                .await
                .expect("run kill(1)");
            assert!(status.success());
            eventually(10, &format!("{name}: reload {n} logged"), || {
                let log = log.clone();
                async move {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let done = text.matches("Config reloaded").count() + text.matches("Config reload refused").count();
                    (done >= n).then_some(())
                }
            })
            .await;
        }
    };

    // Both secrets, the new one first, and a new admin token.
    let rotating = original
        .replacen(
            &format!("secret = \"{SOURCE_SECRET}\""),
            &format!("secrets = [\"{NEW_SECRET}\", \"{SOURCE_SECRET}\"]"),
            1,
        )
        .replace(ADMIN_TOKEN, NEW_TOKEN);
    assert_ne!(rotating, original);
    std::fs::write(&cfg, &rotating).expect("write");
    hup(1).await;
    assert_eq!(send(old.clone(), "Old secret during the rotation.").await, 202);
    assert_eq!(send(new.clone(), "New secret during the rotation.").await, 202);
    let token_ok =
        reqwest::Client::new().get(format!("{}/v1/cases", gw.base)).bearer_auth(NEW_TOKEN).send().await.expect("admin");
    assert_eq!(token_ok.status(), 200, "the new admin token is in force");
    assert_eq!(gw.admin_get("/v1/cases").await.0, 401, "the old admin token no longer is");

    // A file with a problem: nothing changes, and the problem is logged with its key path.
    std::fs::write(&cfg, rotating.replace("rate_limit_per_sec = 1000", "rate_limit_per_sec = \"fast\""))
        .expect("write");
    hup(2).await;
    assert!(gw.log_text().contains("channels.web.sources[0].rate_limit_per_sec"), "{}", gw.log_text());
    assert_eq!(send(old.clone(), "Still accepted after a refused reload.").await, 202);

    // The old secret removed, and the listen address changed (named, not applied).
    let done = rotating
        .replacen(
            &format!("secrets = [\"{NEW_SECRET}\", \"{SOURCE_SECRET}\"]"),
            &format!("secret = \"{NEW_SECRET}\""),
            1,
        )
        .replacen(&format!("127.0.0.1:{port}"), "127.0.0.1:1", 1);
    std::fs::write(&cfg, done).expect("write");
    hup(3).await;
    assert_eq!(send(old.clone(), "Old secret after the rotation.").await, 401);
    assert_eq!(send(new.clone(), "New secret after the rotation.").await, 202);
    assert!(gw.log_text().contains("server.listen"), "the listen change is named: {}", gw.log_text());
    gw.stop().await;
    db.cleanup().await;
}

// --- Telegram ----------------------------------------------------------------------------------------

fn telegram_section(api_url: &str, extra: &str) -> String {
    format!(
        "[channels.telegram]\ntoken = \"{}\"\napi_url = \"{api_url}\"\npoll_timeout_secs = 1\nsend_timeout_secs = 3\n{extra}\n",
        crate::botapi::TOKEN
    )
}

/// The gateway dies (SIGKILL) after `getUpdates` handed it two complaints and before it could commit
/// them: the commit is held back by a lock on `messages` the test holds. After the restart, Telegram
/// (the local Bot API) hands the same updates out again, because the offset never moved: each makes
/// one case and one acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_crash_between_get_updates_and_commit_loses_and_repeats_nothing() {
    use crate::botapi::{self, BotApi};
    use sqlx::Connection;
    let Some(db) = TestDb::postgres().await else { return };
    let bot = BotApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let cfg = write_config(dir.path(), "tg.toml", port, &db.url, &telegram_section(&bot.base, ""));
    let mut p = Proc::start(&cfg, port, "tg-1").await;

    let mut lock = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut lock).await.expect("begin");
    sqlx::query("LOCK TABLE messages IN EXCLUSIVE MODE").execute(&mut lock).await.expect("lock");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    bot.on_batch(move || {
        let _ = tx.send(());
    });
    let first = bot.push(botapi::text(1301, 1, "en", "First complaint."));
    bot.push(botapi::text(1302, 1, "en", "Second complaint."));
    within(20, "the updates handed out", rx.recv()).await.expect("a batch");
    // The gateway now waits on the lock inside its commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(bot.sent().is_empty(), "nothing is acknowledged before it is committed");
    p.sigkill().await;
    drop(lock);
    bot.on_batch(|| {});

    // The dead instance's polling lease runs out first (poll_timeout_secs + 15 s).
    let mut p = Proc::start(&cfg, port, "tg-2").await;
    bot.wait_sent(45, "both acknowledged after the restart", |s| s.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(bot.sent().len(), 2, "one acknowledgement each, none repeated: {:#?}", bot.sent());
    let (_, listing) = p.admin_get("/v1/cases?channel=telegram").await;
    assert_eq!(listing["cases"].as_array().map(Vec::len), Some(2), "one case each: {listing}");
    let offsets = bot.offsets();
    assert!(offsets.iter().filter(|o| **o <= first).count() >= 2, "handed out again after the crash: {offsets:?}");
    assert!(offsets.iter().any(|o| *o > first + 1), "then confirmed: {offsets:?}");
    p.stop().await;
    db.cleanup().await;
}

/// The bot token is in every Bot API URL: it must not reach the logs at debug level, whatever
/// happens (a refused send, a blocked chat, an unreachable Bot API), nor the CLI's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_token_never_appears_in_logs_or_cli_output() {
    use crate::botapi::{self, BotApi, TOKEN};
    let db = TestDb::sqlite();
    let bot = BotApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let secret = "hook-Secret_7";
    let cfg = write_config(
        dir.path(),
        "tg.toml",
        port,
        &db.url,
        &telegram_section(&bot.base, &format!("webhook_secret = \"{secret}\"")),
    );
    let mut outputs = Vec::new();

    // The CLI: getMe, setWebhook (with the secret and the updates used), deleteWebhook.
    let (code, out, err) = cli(&cfg, &["telegram", "me"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("@earshot_test_bot"), "{out}");
    outputs.push(out + &err);
    let (code, out, err) =
        cli(&cfg, &["telegram", "set-webhook", "--url", "https://gw.example.com/v1/inbound/telegram"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let call = bot.calls("setWebhook").pop().expect("setWebhook was called");
    assert!(call.contains("https://gw.example.com/v1/inbound/telegram") && call.contains(secret), "{call}");
    assert!(call.contains("callback_query") && call.contains("edited_message"), "allowed_updates: {call}");
    outputs.push(out + &err);
    let (code, out, err) = cli(&cfg, &["telegram", "delete-webhook"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(bot.calls("deleteWebhook").len(), 1);
    outputs.push(out + &err);
    let (code, out, err) = cli(&cfg, &["check-config"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    outputs.push(out + &err);

    // Serving at debug: a 429, a blocked chat.
    let mut p = Proc::start_logging(&cfg, port, "tg-log", "debug").await;
    bot.script_send(vec![BotApi::too_many_requests(1)]);
    bot.block(1402);
    bot.push(botapi::text(1401, 1, "en", "Refund please."));
    bot.push(botapi::text(1402, 1, "en", "Blocked you."));
    bot.wait_sent(20, "the acknowledgement after the 429", |s| s.len() == 1).await;
    eventually(20, "the blocked chat's job is dead", || async {
        let (_, dead) = p.admin_get("/v1/outbox?state=dead").await;
        dead.to_string().contains("blocked").then_some(())
    })
    .await;
    p.stop().await;
    let log = p.log_text();
    assert!(log.contains("DEBUG"), "debug logging was on");
    outputs.push(log);

    // The Bot API unreachable (nothing listens on its port): network errors, logged at debug.
    let gone = format!("http://127.0.0.1:{}", free_port());
    let cfg_gone = write_config(dir.path(), "gone.toml", port, &db.url, &telegram_section(&gone, ""));
    let mut p = Proc::start_logging(&cfg_gone, port, "tg-gone", "debug").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.stop().await;
    let log = p.log_text();
    assert!(log.contains("Telegram polling failed"), "the outage is logged: {log}");
    outputs.push(log);

    // A token that Telegram refuses, for the CLI's error path.
    let wrong = cfg.with_file_name("wrong.toml");
    let text = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace(TOKEN, "7000000001:AAH-wrong_Secret-Part0123456789abcdefgh");
    std::fs::write(&wrong, text).expect("write");
    let (code, out, err) = cli(&wrong, &["telegram", "me"]).await;
    assert_ne!(code, Some(0));
    outputs.push(out + &err);

    let secret_part = TOKEN.split_once(':').map(|(_, s)| s).expect("token");
    for (i, text) in outputs.iter().enumerate() {
        assert!(!text.contains(secret_part), "output {i} shows the bot token:\n{text}");
        assert!(!text.contains("AAH-wrong_Secret"), "output {i} shows the refused token:\n{text}");
    }
    db.cleanup().await;
}
