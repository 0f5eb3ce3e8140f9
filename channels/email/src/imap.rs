//! IMAP intake: one loop per mailbox, holding the mailbox's lease.
//!
//! Progress is `(UIDVALIDITY, last UID)`, saved through the intake after the messages up to that UID
//! are committed, so a restart neither skips nor repeats a message (a crash between a commit and the
//! cursor save refetches messages that exact dedup by Message-ID then answers as duplicates). A changed
//! UIDVALIDITY rescans the folder from the start, which dedup keeps free of duplicates. A message is
//! flagged `\Seen` (or moved) only after it is committed; nothing is ever deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use earshot_channel::{Intake, IntakeError};
use futures_util::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::EmailContext;
use crate::handle;
use crate::settings::{ImapSettings, MailboxSettings, Security};

/// A connected stream of any security: plain TCP or TLS.
pub trait ImapStream: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> ImapStream for T {}

type Session = async_imap::Session<Box<dyn ImapStream>>;

/// Why a session ended; every kind is followed by a reconnect with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("IMAP: {0}")]
    Imap(#[from] async_imap::error::Error),
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("intake: {0}")]
    Intake(#[from] IntakeError),
    #[error("another instance holds the lease of this mailbox now")]
    LeaseLost,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Any single IMAP command (a FETCH of a whole batch included) that takes longer means a dead
/// connection: the session ends and reconnects instead of hanging until the kernel gives up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A message whose intake keeps failing (a row the store refuses, say) is quarantined with the
/// error after this many tries spread over at least [`POISON_SPAN`], so it never blocks the
/// messages behind it, while a short store outage (which fails every message alike) does not
/// quarantine good mail.
const POISON_AFTER: u32 = 5;
const POISON_SPAN: Duration = Duration::from_secs(120);
/// The lease is renewed well within its lifetime; another instance takes over a dead holder's
/// mailbox after it expires.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// RFC 2177: re-issue IDLE at least every 29 minutes; servers drop idle clients after 30.
const MAX_IDLE: Duration = Duration::from_secs(25 * 60);

async fn tls_stream(s: &ImapSettings, tcp: TcpStream) -> Result<Box<dyn ImapStream>, ImapError> {
    let stream =
        crate::tls::connect(&s.host, tcp, s.ca_pem.as_deref()).await.map_err(|e| ImapError::Tls(e.to_string()))?;
    Ok(Box::new(stream))
}

/// Connects, secures and logs in, all within twice [`CONNECT_TIMEOUT`]: a server that accepts the
/// connection and then says nothing must not hold the mailbox forever.
async fn connect(s: &ImapSettings) -> Result<Session, ImapError> {
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect_and_login(s)).await {
        Ok(r) => r,
        Err(_) => Err(ImapError::Timeout("connect and login")),
    }
}

async fn connect_and_login(s: &ImapSettings) -> Result<Session, ImapError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((s.host.as_str(), s.port)))
        .await
        .map_err(|_| ImapError::Timeout("connect"))??;
    let client = match s.security {
        Security::Plain => {
            let mut c = async_imap::Client::new(Box::new(tcp) as Box<dyn ImapStream>);
            greeting(&mut c).await?;
            c
        }
        Security::Tls => {
            let mut c = async_imap::Client::new(tls_stream(s, tcp).await?);
            greeting(&mut c).await?;
            c
        }
        Security::Starttls => {
            let mut c = async_imap::Client::new(tcp);
            let greeted = tokio::time::timeout(CONNECT_TIMEOUT, c.read_response()).await;
            if !matches!(greeted, Ok(Ok(Some(_)))) {
                return Err(ImapError::Timeout("greeting"));
            }
            c.run_command_and_check_ok("STARTTLS", None).await?;
            // No greeting follows STARTTLS.
            async_imap::Client::new(tls_stream(s, c.into_inner()).await?)
        }
    };
    let session =
        client.login(&s.username, secrecy::ExposeSecret::expose_secret(&s.password)).await.map_err(|(e, _)| e)?;
    Ok(session)
}

async fn greeting(c: &mut async_imap::Client<Box<dyn ImapStream>>) -> Result<(), ImapError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, c.read_response()).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err(ImapError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no greeting"))),
        Ok(Err(e)) => Err(ImapError::Io(e)),
        Err(_) => Err(ImapError::Timeout("greeting")),
    }
}

/// `uidvalidity:last_uid`.
fn parse_cursor(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Runs one mailbox until `shutdown`, reconnecting with backoff after every failure.
pub async fn run_mailbox(
    ctx: Arc<EmailContext>,
    mb: Arc<MailboxSettings>,
    intake: Arc<dyn Intake>,
    shutdown: CancellationToken,
) {
    let lease = format!("imap:{}", mb.name);
    let mut backoff = Duration::from_secs(1);
    let mut failures = Failures::default();
    while !shutdown.is_cancelled() {
        match intake.try_lease(&lease, &ctx.instance, LEASE_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(mailbox = %mb.name, "Another instance polls this mailbox; waiting for its lease.");
                tokio::select! { _ = tokio::time::sleep(LEASE_TTL / 3) => {}, _ = shutdown.cancelled() => {} }
                continue;
            }
            Err(e) => {
                tracing::warn!(mailbox = %mb.name, error = %e, "Cannot take the mailbox lease.");
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.cancelled() => {} }
                continue;
            }
        }
        let mut run = SessionRun { ctx: &ctx, mb: &mb, intake: &*intake, failures: &mut failures, healthy: false };
        // The lease is kept alive beside the session, however long one command takes; if it is
        // lost, the session is dropped at once (its connection closed), whatever it was doing.
        let outcome = tokio::select! {
            r = run.session(&shutdown) => r,
            () = keep_lease(&*intake, &lease, &ctx.instance) => Err(ImapError::LeaseLost),
        };
        if run.healthy {
            // Messages went through a moment ago: start the backoff over.
            backoff = Duration::from_secs(1);
        }
        match outcome {
            Ok(()) => break,
            Err(e) => {
                // Jitter, so instances that lost the same server do not all come back at once.
                let wait = backoff.mul_f64(rand::random_range(0.8..1.2));
                tracing::warn!(mailbox = %mb.name, error = %e, retry_in_ms = wait.as_millis() as u64, "IMAP session ended; reconnecting.");
                tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = shutdown.cancelled() => {} }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    let _ = intake.release_lease(&lease, &ctx.instance).await;
    tracing::info!(mailbox = %mb.name, "Mailbox loop stopped.");
}

/// Renews the lease every third of its lifetime; returns when it is lost: another instance holds
/// it, or it could not be renewed for so long that another may have taken it.
async fn keep_lease(intake: &dyn Intake, lease: &str, instance: &str) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        match intake.try_lease(lease, instance, LEASE_TTL).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(lease, "Another instance holds this mailbox's lease now; stopping the session.");
                return;
            }
            Err(e) if renewed.elapsed() < LEASE_TTL * 2 / 3 => {
                tracing::warn!(lease, error = %e, "Could not renew the mailbox lease; trying again.");
            }
            Err(e) => {
                tracing::warn!(lease, error = %e, "The mailbox lease could not be renewed in time; stopping the session.");
                return;
            }
        }
    }
}

/// Intake failures per message (`(UIDVALIDITY, UID)`): how many, since when. Kept across reconnects.
#[derive(Default)]
struct Failures(std::collections::HashMap<(u32, u32), (u32, std::time::Instant)>);

/// Runs `fut` under [`COMMAND_TIMEOUT`].
async fn timed<T, E: Into<ImapError>>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ImapError::Timeout(what)),
    }
}

/// One connection's worth of work on a mailbox.
struct SessionRun<'a> {
    ctx: &'a EmailContext,
    mb: &'a MailboxSettings,
    intake: &'a dyn Intake,
    failures: &'a mut Failures,
    /// Set once messages went through (a batch committed, or the folder fully scanned): what
    /// fails after that is new trouble, so the reconnect backoff starts over.
    healthy: bool,
}

impl SessionRun<'_> {
    async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), ImapError> {
        let (mb, intake) = (self.mb, self.intake);
        let mut session = connect(&mb.imap).await?;
        let selected = timed("SELECT", session.select(&mb.imap.folder)).await?;
        let uidvalidity = selected.uid_validity.unwrap_or(0);
        let cursor_key = format!("imap:{}:{}", mb.name, mb.imap.folder);
        let mut last_uid = match intake.load_cursor(&cursor_key).await?.as_deref().and_then(parse_cursor) {
            Some((v, uid)) if v == uidvalidity => uid,
            Some((v, _)) => {
                tracing::warn!(mailbox = %mb.name, old = v, new = uidvalidity, "UIDVALIDITY changed; rescanning the folder (dedup keeps it free of duplicates).");
                0
            }
            None => 0,
        };
        let capabilities = timed("CAPABILITY", session.capabilities()).await?;
        let idle = mb.imap.idle && capabilities.has_str("IDLE");
        let can_move = capabilities.has_str("MOVE");
        drop(capabilities);
        if let Some(folder) = &mb.imap.move_to
            && let Err(e) = ensure_folder(&mut session, folder).await
        {
            // Moving will fail and be logged too; the messages are still taken in and kept.
            tracing::warn!(mailbox = %mb.name, folder, error = %e, "The move_to folder is missing and could not be created.");
        }
        tracing::info!(mailbox = %mb.name, folder = %mb.imap.folder, uidvalidity, last_uid, idle, "IMAP connected.");

        loop {
            // Work through everything after the cursor, in batches, with progress in the logs.
            loop {
                let found: HashSet<u32> =
                    timed("UID SEARCH", session.uid_search(format!("UID {}:*", last_uid.saturating_add(1)))).await?;
                // "n:*" always matches the highest UID, even when it is below n.
                let mut uids: Vec<u32> = found.into_iter().filter(|u| *u > last_uid).collect();
                if uids.is_empty() {
                    self.healthy = true;
                    break;
                }
                uids.sort_unstable();
                let remaining = uids.len();
                uids.truncate(mb.imap.batch as usize);
                let set = uid_set(&uids);
                // Sizes first, so bodies are fetched a few megabytes at a time (not a batch of
                // large messages at once), and one over `max_message_bytes` not at all.
                let sized: Vec<_> = timed("UID FETCH", async {
                    session.uid_fetch(&set, "(UID RFC822.SIZE)").await?.try_collect::<Vec<_>>().await
                })
                .await?;
                let sizes: std::collections::HashMap<u32, u32> =
                    sized.iter().filter_map(|f| Some((f.uid?, f.size.unwrap_or(0)))).collect();
                let mut done = Vec::with_capacity(uids.len());
                // Every UID settled: taken in, quarantined, or given up on after a body never came.
                let mut settled: HashSet<u32> = HashSet::with_capacity(uids.len());
                let (too_big, fetchable): (Vec<u32>, Vec<u32>) = uids
                    .iter()
                    .copied()
                    .filter(|u| sizes.contains_key(u))
                    .partition(|u| sizes[u] > self.ctx.max_message_bytes);
                for uid in too_big {
                    self.quarantine_too_big(&mut session, uid, sizes[&uid]).await?;
                    done.push(uid);
                    settled.insert(uid);
                }
                for group in size_groups(&fetchable, &sizes, FETCH_BUDGET) {
                    let fetched: Vec<_> = timed("UID FETCH", async {
                        session.uid_fetch(&uid_set(&group), "(UID BODY.PEEK[])").await?.try_collect::<Vec<_>>().await
                    })
                    .await?;
                    for f in &fetched {
                        let Some(uid) = f.uid else { continue };
                        let Some(body) = f.body() else {
                            if self.no_body(uidvalidity, uid).await? {
                                settled.insert(uid);
                            }
                            continue;
                        };
                        self.take_in(uidvalidity, uid, body).await?;
                        done.push(uid);
                        settled.insert(uid);
                    }
                }
                // The cursor moves first: the messages are committed, and a failure to flag or move
                // them below must not make the next session take them in again and again. It moves
                // only over messages it got: a UID the reply left out, or sent without a body,
                // stops it, and is fetched again later.
                let advanced = advance_cursor(last_uid, &uids, &settled);
                let short = advanced < uids.last().copied().unwrap_or(last_uid);
                if advanced != last_uid {
                    last_uid = advanced;
                    intake.save_cursor(&cursor_key, &format!("{uidvalidity}:{last_uid}")).await?;
                }
                if !done.is_empty() {
                    self.mark_done(&mut session, &uid_set(&done), can_move).await?;
                }
                tracing::info!(mailbox = %mb.name, committed = done.len(), remaining = remaining - uids.len(), last_uid, "IMAP batch committed.");
                self.healthy = true;
                if short {
                    // Not at once: the server just left these out; ask again at the next check.
                    tracing::warn!(mailbox = %mb.name, last_uid, "The server did not send every message asked for; the cursor waits before them.");
                    break;
                }
            }
            if idle {
                // IDLE for news, re-checking the folder at least every third of the lease's
                // lifetime, in case the server missed telling us.
                let mut handle = session.idle();
                timed("IDLE", handle.init()).await?;
                let (until, interrupt) = handle.wait_with_timeout((LEASE_TTL / 3).min(mb.imap.poll).min(MAX_IDLE));
                let outcome = tokio::select! {
                    r = until => Some(r),
                    _ = shutdown.cancelled() => None,
                };
                drop(interrupt);
                session = timed("DONE", handle.done()).await?;
                match outcome {
                    None => break,
                    Some(Ok(IdleResponse::NewData(_))) => tracing::debug!(mailbox = %mb.name, "IDLE: new data."),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                }
            } else {
                // Poll every `poll_secs` (the lease is kept alive beside this).
                tokio::select! {
                    _ = tokio::time::sleep(mb.imap.poll) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        // A polite goodbye, but not worth waiting for.
        let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
        Ok(())
    }

    /// A message over `max_message_bytes`: its header and size go to the quarantine, and its body is
    /// never fetched. Flagged like a committed message, so it is not looked at again.
    async fn quarantine_too_big(&mut self, session: &mut Session, uid: u32, size: u32) -> Result<(), ImapError> {
        let fetched: Vec<_> = timed("UID FETCH", async {
            session.uid_fetch(uid.to_string(), "(UID BODY.PEEK[HEADER])").await?.try_collect::<Vec<_>>().await
        })
        .await?;
        let header = fetched.iter().find_map(|f| f.header()).unwrap_or_default();
        let reason = format!(
            "message of {size} bytes is over channels.email.max_message_bytes ({}); only its header was fetched",
            self.ctx.max_message_bytes
        );
        tracing::warn!(mailbox = %self.mb.name, uid, size, "Message too large; its header is quarantined.");
        handle::quarantine(self.mb, self.intake, header, &reason).await?;
        Ok(())
    }

    /// A message the server sent without its body: fetched again later, and after [`POISON_AFTER`]
    /// tries over at least [`POISON_SPAN`] recorded in the quarantine (with no content, which never
    /// came) so that it cannot hold the cursor for ever. True once it is given up on.
    async fn no_body(&mut self, uidvalidity: u32, uid: u32) -> Result<bool, ImapError> {
        let key = (uidvalidity, uid);
        let (tries, since) = self.failures.0.entry(key).or_insert((0, std::time::Instant::now()));
        *tries += 1;
        if *tries < POISON_AFTER || since.elapsed() < POISON_SPAN {
            tracing::warn!(mailbox = %self.mb.name, uid, tries = *tries, "The server sent no body for this message; it will be fetched again.");
            return Ok(false);
        }
        let reason =
            format!("UID {uid}: the server sent no body in {tries} fetches over {} s", since.elapsed().as_secs());
        let note = format!("(no content: {reason})");
        handle::quarantine(self.mb, self.intake, note.as_bytes(), &reason).await?;
        self.failures.0.remove(&key);
        Ok(true)
    }

    /// Takes one message in. A message that keeps failing is quarantined with the error after
    /// [`POISON_AFTER`] tries over at least [`POISON_SPAN`], so it cannot hold up the mailbox.
    async fn take_in(&mut self, uidvalidity: u32, uid: u32, body: &[u8]) -> Result<(), ImapError> {
        let key = (uidvalidity, uid);
        match handle::message(self.ctx, self.mb, self.intake, body).await {
            Ok(()) => {
                self.failures.0.remove(&key);
                Ok(())
            }
            Err(e @ IntakeError::ShuttingDown) => Err(e.into()),
            Err(e) => {
                let (tries, since) = self.failures.0.entry(key).or_insert((0, std::time::Instant::now()));
                *tries += 1;
                if *tries < POISON_AFTER || since.elapsed() < POISON_SPAN {
                    tracing::warn!(mailbox = %self.mb.name, uid, tries = *tries, error = %e, "Message not stored; it will be fetched again.");
                    return Err(e.into());
                }
                let reason = format!("not stored after {tries} tries over {} s: {e}", since.elapsed().as_secs());
                handle::quarantine(self.mb, self.intake, body, &reason).await?;
                self.failures.0.remove(&key);
                Ok(())
            }
        }
    }

    /// Flags committed messages `\Seen`, or moves them (MOVE, else COPY and flag: never EXPUNGE).
    /// They are committed already, so a failure here is logged and not retried.
    async fn mark_done(&self, session: &mut Session, set: &str, can_move: bool) -> Result<(), ImapError> {
        let result = match &self.mb.imap.move_to {
            Some(folder) if can_move => timed("UID MOVE", session.uid_mv(set, folder)).await,
            Some(folder) => match timed("UID COPY", session.uid_copy(set, folder)).await {
                Ok(()) => flag_seen(session, set).await,
                Err(e) => Err(e),
            },
            None => flag_seen(session, set).await,
        };
        match result {
            Ok(()) => Ok(()),
            // A broken connection is a session error like any other.
            Err(e @ (ImapError::Timeout(_) | ImapError::Io(_))) => Err(e),
            Err(e) => {
                tracing::warn!(mailbox = %self.mb.name, uids = set, error = %e, "Committed messages could not be flagged or moved; they stay where they are.");
                Ok(())
            }
        }
    }
}

async fn flag_seen(session: &mut Session, set: &str) -> Result<(), ImapError> {
    timed("UID STORE", async { session.uid_store(set, "+FLAGS.SILENT (\\Seen)").await?.try_collect::<Vec<_>>().await })
        .await
        .map(drop)
}

/// Creates the `move_to` folder when the server does not have it yet, so moves cannot fail on it.
async fn ensure_folder(session: &mut Session, folder: &str) -> Result<(), ImapError> {
    let exists = timed("LIST", async { session.list(Some(""), Some(folder)).await?.try_collect::<Vec<_>>().await })
        .await?
        .iter()
        .any(|n| n.name() == folder);
    if !exists {
        tracing::info!(folder, "The move_to folder does not exist; creating it.");
        timed("CREATE", session.create(folder)).await?;
    }
    Ok(())
}

/// Body bytes fetched at once, at most (a message larger than this is fetched alone).
const FETCH_BUDGET: u64 = 64 * 1024 * 1024;

/// `uids` in order, in groups whose sizes add up to at most `budget` (a larger one alone).
fn size_groups(uids: &[u32], sizes: &std::collections::HashMap<u32, u32>, budget: u64) -> Vec<Vec<u32>> {
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut total = 0u64;
    for &uid in uids {
        let size = u64::from(sizes.get(&uid).copied().unwrap_or(0));
        match groups.last_mut() {
            Some(g) if total + size <= budget => {
                g.push(uid);
                total += size;
            }
            _ => {
                groups.push(vec![uid]);
                total = size;
            }
        }
    }
    groups
}

/// The cursor after a batch: the highest of the `requested` UIDs (sorted) up to which every one was
/// `settled`; the first one missing stops it.
fn advance_cursor(last_uid: u32, requested: &[u32], settled: &HashSet<u32>) -> u32 {
    requested.iter().take_while(|u| settled.contains(u)).last().copied().unwrap_or(last_uid)
}

/// `1,3,5:9` for sorted UIDs.
fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_are_fetched_in_groups_bounded_by_size() {
        let sizes: std::collections::HashMap<u32, u32> =
            [(1, 10), (2, 20), (3, 80), (4, 5), (5, 200)].into_iter().collect();
        assert_eq!(super::size_groups(&[1, 2, 3, 4, 5], &sizes, 100), vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert!(super::size_groups(&[], &sizes, 100).is_empty());
    }

    #[test]
    fn the_cursor_stops_before_a_message_it_did_not_get() {
        let settled = |u: &[u32]| u.iter().copied().collect::<std::collections::HashSet<u32>>();
        assert_eq!(super::advance_cursor(10, &[11, 12, 13], &settled(&[11, 12, 13])), 13);
        assert_eq!(super::advance_cursor(10, &[11, 12, 13], &settled(&[11, 13])), 11, "12 came without a body");
        assert_eq!(super::advance_cursor(10, &[11, 12, 13], &settled(&[12, 13])), 10, "11 was left out");
        assert_eq!(super::advance_cursor(10, &[], &settled(&[])), 10);
    }

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(super::uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(super::uid_set(&[9]), "9");
        assert_eq!(super::parse_cursor("12:40"), Some((12, 40)));
        assert_eq!(super::parse_cursor("x"), None);
    }
}
