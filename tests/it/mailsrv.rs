#![allow(dead_code)] // each email test uses a different part of the harness
//! Real mail servers for the email tests: Dovecot (IMAP) and an aiosmtpd sink (SMTP), each in its own
//! temporary folder on a free 127.0.0.1 port (settings from RECIPES.md).
//!
//! Both can be stopped and started again on the same folder and port, which is how the tests make a
//! server outage; both are killed when dropped. Which binaries to run comes from the environment
//! (`EARSHOT_TEST_DOVECOT`, `EARSHOT_TEST_SMTPD_PYTHON`, exported by scripts/test.sh): when one is
//! missing the test skips, saying SKIPPED, except under `CI=true`, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mail_parser::{HeaderValue, MessageParser, MimeHeaders};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const START_DEADLINE: Duration = Duration::from_secs(15);
const STOP_DEADLINE: Duration = Duration::from_secs(10);
const IO_DEADLINE: Duration = Duration::from_secs(10);

/// The program named by `var`, or `None` (SKIPPED) when it is not set or not there; under `CI=true`
/// a missing server fails the test instead.
fn program(var: &str, what: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_file());
    if found.is_none() {
        let why = match std::env::var_os(var) {
            Some(p) => format!("{var}={} is not a file", p.to_string_lossy()),
            None => format!("{var} is not set"),
        };
        skip(&format!("no {what} ({why}; scripts/test.sh provides it)"));
    }
    found
}

/// Says why a test is skipped; under `CI=true` a server that cannot be provided is a failure.
fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and the test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A free port on 127.0.0.1 (the listener is closed again; the server binds it right after).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Sends SIGTERM (a clean stop: Dovecot ends its children, aiosmtpd closes its listener) and waits,
/// killing the process if it does not end in time.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + STOP_DEADLINE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until the server on `port` greets with a line starting `expect`; panics with `log` when the
/// process exits first or the deadline passes.
async fn wait_for_greeting(child: &mut Child, port: u16, expect: &str, log: &Path) {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server on port {port} exited with {status}; log:\n{}", read_log(log));
        }
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(("127.0.0.1", port))).await
        {
            let mut line = String::new();
            let mut reader = BufReader::new(stream);
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await
                && n > 0
                && line.starts_with(expect)
            {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!("no greeting on 127.0.0.1:{port} within {START_DEADLINE:?}; log:\n{}", read_log(log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_port(child: &mut Child, port: u16, log: &Path) {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server on port {port} exited with {status}; log:\n{}", read_log(log));
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if Instant::now() > deadline {
            panic!("nothing listens on 127.0.0.1:{port} after {START_DEADLINE:?}; log:\n{}", read_log(log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A throwaway CA and a server certificate it signed for 127.0.0.1, made with the openssl tool:
/// what an operator with a private CA has, and what `ca_file` is for.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCerts {
    /// `None` (the test skips, saying so; a failure under CI=true) without the openssl tool.
    pub fn make() -> Option<TestCerts> {
        if Command::new("openssl").arg("version").output().is_err() {
            skip("the openssl tool is missing (it makes the test certificates)");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("earshot-certs.").tempdir().expect("temp dir");
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", "/CN=Earshot Test CA", "-keyout"])
            .arg(d.join("ca.key"))
            .arg("-out")
            .arg(d.join("ca.pem")));
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(d.join("server.key"))
            .arg("-out")
            .arg(d.join("server.csr")));
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1\n",
        )
        .expect("server.ext");
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-set_serial", "2", "-in"])
            .arg(d.join("server.csr"))
            .arg("-CA")
            .arg(d.join("ca.pem"))
            .arg("-CAkey")
            .arg(d.join("ca.key"))
            .arg("-extfile")
            .arg(d.join("server.ext"))
            .arg("-out")
            .arg(d.join("server.pem")));
        // Dovecot reads them as root, aiosmtpd as this user: both fine with the defaults.
        Some(TestCerts {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            _dir: dir,
        })
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Lone LF line ends as CRLF, as IMAP wants a message.
pub fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

// -----------------------------------------------------------------------------------------------
// Dovecot
// -----------------------------------------------------------------------------------------------

/// Dovecot serving one user's INBOX (maildir) on 127.0.0.1, plain IMAP.
pub struct Dovecot {
    pub port: u16,
    /// Implicit-TLS (IMAPS) port when started with [`Dovecot::start_tls`]; the plain port then
    /// offers STARTTLS.
    pub tls_port: Option<u16>,
    pub user: String,
    pub password: String,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
}

impl Dovecot {
    /// Writes a complete config (no include of /etc/dovecot) into a fresh folder and starts Dovecot
    /// in the foreground on a free port; returns once it greets. `None` when Dovecot is unavailable.
    pub async fn start() -> Option<Dovecot> {
        Dovecot::start_with(None).await
    }

    /// As [`Dovecot::start`], with TLS from `certs`: IMAPS on `tls_port`, STARTTLS on `port`.
    pub async fn start_tls(certs: &TestCerts) -> Option<Dovecot> {
        Dovecot::start_with(Some(certs)).await
    }

    async fn start_with(certs: Option<&TestCerts>) -> Option<Dovecot> {
        let bin = program("EARSHOT_TEST_DOVECOT", "Dovecot")?;
        // Mail processes switch to uid 65534 (they refuse uid 0), which only root can do.
        let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if uid.as_deref().ok() != Some("0") {
            skip("Dovecot needs root here (its mail processes run as uid 65534)");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("earshot-dovecot.").tempdir().expect("temp dir");
        let d = dir.path();
        let port = free_port();
        let tls_port = certs.map(|_| free_port());
        let ssl = match certs {
            None => "ssl = no".to_owned(),
            Some(c) => {
                format!("ssl = yes\nssl_cert = <{}\nssl_key = <{}", c.server_cert.display(), c.server_key.display())
            }
        };
        let (user, password) = ("tester".to_owned(), "secret123".to_owned());
        // Mail processes run as uid 65534 and must reach the home below this folder.
        run(Command::new("chmod").arg("755").arg(d));
        let home = d.join("home").join(&user);
        std::fs::create_dir_all(&home).expect("home dir");
        run(Command::new("chown").arg("-R").arg("65534:65534").arg(d.join("home")));
        std::fs::write(d.join("passwd"), format!("{user}:{{PLAIN}}{password}\n")).expect("passwd");
        let conf = format!(
            r#"protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
"#,
            d = d.display(),
            imaps_port = tls_port.unwrap_or(0),
        );
        std::fs::write(d.join("dovecot.conf"), conf).expect("dovecot.conf");
        let mut dovecot = Dovecot { port, tls_port, user, password, dir, bin, child: None };
        dovecot.start_again().await;
        Some(dovecot)
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("dovecot.log"))
    }

    /// Stops Dovecot (SIGTERM, then waits): connections drop and the port refuses new ones.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            tokio::task::spawn_blocking(move || terminate(&mut child)).await.expect("stop Dovecot");
        }
    }

    /// Starts Dovecot again on the same folder and port: the mailbox and its UIDVALIDITY are kept.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "Dovecot is already running");
        let d = self.dir.path();
        let mut child = Command::new(&self.bin)
            .arg("-F")
            .arg("-c")
            .arg(d.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dovecot.stderr")).map(Stdio::from).unwrap_or(Stdio::null()))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        let log = d.join("dovecot.log");
        wait_for_greeting(&mut child, self.port, "* OK", &log).await;
        self.child = Some(child);
    }

    /// A logged-in IMAP connection of the test user.
    pub async fn client(&self) -> ImapClient {
        let mut c = ImapClient::connect(self.port).await;
        c.ok(&format!("LOGIN {} {}", self.user, self.password)).await;
        c
    }

    /// APPENDs one message to INBOX (line ends made CRLF), as a mail server delivering it would.
    pub async fn append(&self, raw: &[u8]) {
        let mut c = self.client().await;
        c.append("INBOX", &crlf(raw)).await;
        c.logout().await;
    }

    /// How many messages INBOX holds, and how many of them are flagged `\Seen`.
    pub async fn counts(&self) -> (usize, usize) {
        let mut c = self.client().await;
        c.ok("EXAMINE INBOX").await;
        let all = c.search("ALL").await.len();
        let seen = c.search("SEEN").await.len();
        c.logout().await;
        (all, seen)
    }

    /// How many messages `folder` holds (0 when it does not exist).
    pub async fn folder_count(&self, folder: &str) -> usize {
        let mut c = self.client().await;
        let n = if c.try_ok(&format!("EXAMINE {folder}")).await { c.search("ALL").await.len() } else { 0 };
        c.logout().await;
        n
    }

    pub async fn seen_count(&self) -> usize {
        self.counts().await.1
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// A minimal IMAP4rev1 client over plain TCP: enough to deliver and inspect test mail.
pub struct ImapClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    tag: u32,
}

impl ImapClient {
    pub async fn connect(port: u16) -> ImapClient {
        let stream = tokio::time::timeout(IO_DEADLINE, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("IMAP connect in time")
            .expect("IMAP connect");
        let (r, w) = stream.into_split();
        let mut c = ImapClient { reader: BufReader::new(r), writer: w, tag: 0 };
        let greeting = c.line().await;
        assert!(greeting.starts_with("* OK"), "IMAP greeting: {greeting}");
        c
    }

    async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(IO_DEADLINE, self.reader.read_until(b'\n', &mut buf))
            .await
            .expect("IMAP answer in time")
            .expect("IMAP read");
        assert!(n > 0, "IMAP server closed the connection");
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        // An untagged answer may carry a literal `{n}`: read it so the next line is a line.
        if let Some(len) = line.strip_suffix('}').and_then(|l| l.rsplit_once('{')).and_then(|(_, n)| n.parse().ok()) {
            let mut literal = vec![0u8; len];
            tokio::time::timeout(IO_DEADLINE, self.reader.read_exact(&mut literal))
                .await
                .expect("IMAP literal in time")
                .expect("IMAP literal");
            return format!("{line}{}{}", String::from_utf8_lossy(&literal), Box::pin(self.line()).await);
        }
        line
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(IO_DEADLINE, self.writer.write_all(bytes))
            .await
            .expect("IMAP write in time")
            .expect("IMAP write");
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("t{}", self.tag)
    }

    /// Reads until the tagged completion; returns the untagged lines. Panics unless it is `OK`.
    async fn complete(&mut self, tag: &str, command: &str) -> Vec<String> {
        let mut untagged = Vec::new();
        loop {
            let line = self.line().await;
            if let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                assert!(rest.starts_with("OK"), "IMAP {command}: {line}");
                return untagged;
            }
            untagged.push(line);
        }
    }

    /// Runs one command that must answer OK; returns its untagged lines.
    pub async fn ok(&mut self, command: &str) -> Vec<String> {
        let tag = self.next_tag();
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        let shown = if command.starts_with("LOGIN") { "LOGIN" } else { command };
        self.complete(&tag, shown).await
    }

    /// Runs one command; `true` when it answers OK, `false` for NO or BAD.
    pub async fn try_ok(&mut self, command: &str) -> bool {
        let tag = self.next_tag();
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        loop {
            let line = self.line().await;
            if let Some(rest) = line.strip_prefix(tag.as_str()).and_then(|r| r.strip_prefix(' ')) {
                return rest.starts_with("OK");
            }
        }
    }

    pub async fn append(&mut self, folder: &str, message: &[u8]) {
        let tag = self.next_tag();
        self.send(format!("{tag} APPEND {folder} {{{}}}\r\n", message.len()).as_bytes()).await;
        let go = self.line().await;
        assert!(go.starts_with('+'), "IMAP APPEND: no continuation but {go}");
        self.send(message).await;
        self.send(b"\r\n").await;
        self.complete(&tag, "APPEND").await;
    }

    /// Sequence numbers of the messages matching `criteria` in the selected folder.
    pub async fn search(&mut self, criteria: &str) -> Vec<u32> {
        let lines = self.ok(&format!("SEARCH {criteria}")).await;
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("* SEARCH"))
            .flat_map(|l| l.split_whitespace().filter_map(|n| n.parse().ok()).collect::<Vec<u32>>())
            .collect()
    }

    pub async fn logout(mut self) {
        let tag = self.next_tag();
        self.send(format!("{tag} LOGOUT\r\n").as_bytes()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let mut buf = Vec::new();
                match self.reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if buf.starts_with(tag.as_bytes()) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

// -----------------------------------------------------------------------------------------------
// SMTP sink
// -----------------------------------------------------------------------------------------------

/// aiosmtpd keeping every message it is given as a file in a maildir.
pub struct SmtpSink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    python: PathBuf,
    child: Option<Child>,
    /// Certificate, key, implicit TLS?
    tls: Option<(PathBuf, PathBuf, bool)>,
    /// User and password AUTH must give.
    auth: Option<(String, String)>,
}

/// One message the sink captured, parsed.
#[derive(Debug, Clone)]
pub struct Mail {
    pub file: String,
    pub raw: Vec<u8>,
    /// Envelope recipients (aiosmtpd's `X-RcptTo`).
    pub rcpt_to: Vec<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub subject: Option<String>,
    /// Without `<>`.
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub auto_submitted: Option<String>,
    /// `type/subtype` of the top-level part, lower case.
    pub content_type: String,
    /// The text/plain and text/html parts' content.
    pub text: Vec<String>,
    pub html: Vec<String>,
}

fn header_ids(v: &HeaderValue<'_>) -> Vec<String> {
    let list: Vec<&str> = match v {
        HeaderValue::Text(t) => vec![t.as_ref()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.as_ref()).collect(),
        _ => vec![],
    };
    list.into_iter().flat_map(|s| s.split_whitespace()).map(|s| s.trim_matches(['<', '>']).to_owned()).collect()
}

impl Mail {
    pub fn parse(file: String, raw: Vec<u8>) -> Mail {
        let msg = MessageParser::default().parse(&raw).unwrap_or_else(|| panic!("captured mail {file} parses"));
        let addresses = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
            a.map(|a| a.iter().filter_map(|x| x.address()).map(str::to_lowercase).collect()).unwrap_or_default()
        };
        let text_header = |name: &str| msg.header(name).and_then(|v| v.as_text()).map(|s| s.trim().to_owned());
        let content_type = msg
            .root_part()
            .content_type()
            .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")).to_lowercase())
            .unwrap_or_default();
        let part_texts = |want: &str| -> Vec<String> {
            msg.parts
                .iter()
                .filter(|p| {
                    p.content_type()
                        .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("text") && ct.subtype() == Some(want))
                })
                .filter_map(|p| p.text_contents().map(str::to_owned))
                .collect()
        };
        Mail {
            rcpt_to: text_header("X-RcptTo")
                .map(|v| v.split(',').map(|s| s.trim().to_lowercase()).collect())
                .unwrap_or_default(),
            from: addresses(msg.from()).into_iter().next(),
            to: addresses(msg.to()),
            subject: msg.subject().map(str::to_owned),
            message_id: msg.message_id().map(|s| s.trim_matches(['<', '>']).to_owned()),
            in_reply_to: header_ids(msg.in_reply_to()),
            references: header_ids(msg.references()),
            auto_submitted: text_header("Auto-Submitted"),
            content_type,
            text: part_texts("plain"),
            html: part_texts("html"),
            file,
            raw: raw.clone(),
        }
    }
}

/// The sink: aiosmtpd's SMTP server and maildir handler, run the way its own command line runs them
/// (that command line has no authentication options). It answers RCPT for local parts starting
/// with `reject` as a real server answers an unknown user (`550 5.1.1`), and for `tempfail…` as a
/// server that is overloaded (`451 4.3.0`). `--auth USER:PASSWORD` makes AUTH mandatory.
const SINK_SCRIPT: &str = r#"
import argparse, asyncio, signal, ssl
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

class TestMailbox(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.lower()
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown in local recipient table" % address
        if local.startswith("tempfail"):
            return "451 4.3.0 <%s>: Temporary lookup failure, try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--maildir", required=True)
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--implicit", action="store_true")
p.add_argument("--auth")
a = p.parse_args()

kw = {"hostname": "sink.test"}
ctx = None
if a.cert:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    if not a.implicit:
        kw.update(tls_context=ctx, require_starttls=True)
if a.auth:
    user, password = a.auth.split(":", 1)
    def authenticator(server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and data.login == user.encode() and data.password == password.encode()
        return AuthResult(success=ok, handled=False)
    kw.update(authenticator=authenticator, auth_required=True, auth_require_tls=False)
handler = TestMailbox(a.maildir)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, **kw), "127.0.0.1", a.port, ssl=ctx if a.implicit else None)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("listening on", a.port, flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()

asyncio.run(main())
"#;

impl SmtpSink {
    /// Starts aiosmtpd on a free port, writing to a maildir that does not exist yet (aiosmtpd
    /// creates it; an empty pre-made folder would fail every DATA). `None` when Python or aiosmtpd
    /// is unavailable.
    pub async fn start() -> Option<SmtpSink> {
        let python = program("EARSHOT_TEST_SMTPD_PYTHON", "Python with aiosmtpd")?;
        let dir = tempfile::Builder::new().prefix("earshot-smtp.").tempdir().expect("temp dir");
        let mut sink = SmtpSink { port: free_port(), dir, python, child: None, tls: None, auth: None };
        sink.start_again().await;
        Some(sink)
    }

    /// As [`SmtpSink::start`], speaking TLS with the test certificate: implicit TLS (SMTPS) when
    /// `implicit`, else STARTTLS, which it then requires before MAIL.
    pub async fn start_tls(certs: &TestCerts, implicit: bool) -> Option<SmtpSink> {
        let python = program("EARSHOT_TEST_SMTPD_PYTHON", "Python with aiosmtpd")?;
        let dir = tempfile::Builder::new().prefix("earshot-smtp.").tempdir().expect("temp dir");
        let tls = Some((certs.server_cert.clone(), certs.server_key.clone(), implicit));
        let mut sink = SmtpSink { port: free_port(), dir, python, child: None, tls, auth: None };
        sink.start_again().await;
        Some(sink)
    }

    /// As [`SmtpSink::start`], refusing to take mail until the client authenticates (AUTH PLAIN or
    /// LOGIN) as `user` with `password`.
    pub async fn start_auth(user: &str, password: &str) -> Option<SmtpSink> {
        let python = program("EARSHOT_TEST_SMTPD_PYTHON", "Python with aiosmtpd")?;
        let dir = tempfile::Builder::new().prefix("earshot-smtp.").tempdir().expect("temp dir");
        let auth = Some((user.to_owned(), password.to_owned()));
        let mut sink = SmtpSink { port: free_port(), dir, python, child: None, tls: None, auth };
        sink.start_again().await;
        Some(sink)
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }

    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("smtpd.log"))
    }

    /// Starts the sink again on the same port and maildir.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the SMTP sink is already running");
        let log_path = self.dir.path().join("smtpd.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("sink log");
        let script = self.dir.path().join("earshot_sink.py");
        std::fs::write(&script, SINK_SCRIPT).expect("write the sink script");
        let mut args: Vec<std::ffi::OsString> =
            vec!["--port".into(), self.port.to_string().into(), "--maildir".into(), self.maildir().into()];
        if let Some((cert, key, implicit)) = &self.tls {
            args.extend(["--cert".into(), cert.into(), "--key".into(), key.into()]);
            if *implicit {
                args.push("--implicit".into());
            }
        }
        if let Some((user, password)) = &self.auth {
            args.extend(["--auth".into(), format!("{user}:{password}").into()]);
        }
        let mut child = Command::new(&self.python)
            .arg(&script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map(Stdio::from).unwrap_or(Stdio::null()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.python.display()));
        if matches!(self.tls, Some((_, _, true))) {
            // SMTPS greets only inside TLS: an accepted connection is the sign of life.
            wait_for_port(&mut child, self.port, &log_path).await;
        } else {
            wait_for_greeting(&mut child, self.port, "220", &log_path).await;
        }
        self.child = Some(child);
    }

    /// Stops the sink: connections are refused until [`SmtpSink::start_again`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            tokio::task::spawn_blocking(move || terminate(&mut child)).await.expect("stop the SMTP sink");
        }
    }

    /// Every message captured so far, oldest file first.
    pub fn messages(&self) -> Vec<Mail> {
        let Ok(entries) = std::fs::read_dir(self.maildir().join("new")) else { return Vec::new() };
        let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = entries
            .filter_map(Result::ok)
            .map(|e| {
                let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                (modified, e.file_name().to_string_lossy().into_owned(), e.path())
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, name, path)| {
                let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                Mail::parse(name, raw)
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}
