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
/// The lease is renewed well within its lifetime; another instance takes over a dead holder's
/// mailbox after it expires.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// RFC 2177: re-issue IDLE at least every 29 minutes; servers drop idle clients after 30.
const MAX_IDLE: Duration = Duration::from_secs(25 * 60);

async fn tls_stream(host: &str, tcp: TcpStream) -> Result<Box<dyn ImapStream>, ImapError> {
    let stream = crate::tls::connect(host, tcp).await.map_err(|e| ImapError::Tls(e.to_string()))?;
    Ok(Box::new(stream))
}

async fn connect(s: &ImapSettings) -> Result<Session, ImapError> {
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
            let mut c = async_imap::Client::new(tls_stream(&s.host, tcp).await?);
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
            async_imap::Client::new(tls_stream(&s.host, c.into_inner()).await?)
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
        match session(&ctx, &mb, &*intake, &lease, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(mailbox = %mb.name, error = %e, retry_in_secs = backoff.as_secs(), "IMAP session ended; reconnecting.");
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.cancelled() => {} }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
    let _ = intake.release_lease(&lease, &ctx.instance).await;
    tracing::info!(mailbox = %mb.name, "Mailbox loop stopped.");
}

async fn session(
    ctx: &EmailContext,
    mb: &MailboxSettings,
    intake: &dyn Intake,
    lease: &str,
    shutdown: &CancellationToken,
) -> Result<(), ImapError> {
    let mut session = connect(&mb.imap).await?;
    let selected = session.select(&mb.imap.folder).await?;
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
    let idle = mb.imap.idle && session.capabilities().await?.has_str("IDLE");
    tracing::info!(mailbox = %mb.name, folder = %mb.imap.folder, uidvalidity, last_uid, idle, "IMAP connected.");

    loop {
        // Work through everything after the cursor, in batches, with progress in the logs.
        loop {
            let found: HashSet<u32> = session.uid_search(format!("UID {}:*", last_uid.saturating_add(1))).await?;
            // "n:*" always matches the highest UID, even when it is below n.
            let mut uids: Vec<u32> = found.into_iter().filter(|u| *u > last_uid).collect();
            if uids.is_empty() {
                break;
            }
            uids.sort_unstable();
            let remaining = uids.len();
            uids.truncate(mb.imap.batch as usize);
            let set = uid_set(&uids);
            let fetched: Vec<_> = session.uid_fetch(&set, "(UID BODY.PEEK[])").await?.try_collect().await?;
            let mut done = Vec::with_capacity(fetched.len());
            for f in &fetched {
                let (Some(uid), Some(body)) = (f.uid, f.body()) else { continue };
                handle::message(ctx, mb, intake, body).await?;
                done.push(uid);
            }
            if !done.is_empty() {
                let set = uid_set(&done);
                match &mb.imap.move_to {
                    Some(folder) => session.uid_mv(&set, folder).await?,
                    None => {
                        let _: Vec<_> = session.uid_store(&set, "+FLAGS.SILENT (\\Seen)").await?.try_collect().await?;
                    }
                }
            }
            last_uid = uids.iter().copied().max().unwrap_or(last_uid);
            intake.save_cursor(&cursor_key, &format!("{uidvalidity}:{last_uid}")).await?;
            tracing::info!(mailbox = %mb.name, committed = done.len(), remaining = remaining - uids.len(), last_uid, "IMAP batch committed.");
            if !intake.try_lease(lease, &ctx.instance, LEASE_TTL).await? {
                return Err(ImapError::LeaseLost);
            }
        }
        if !intake.try_lease(lease, &ctx.instance, LEASE_TTL).await? {
            return Err(ImapError::LeaseLost);
        }
        // Wait for news: IDLE when the server has it, else poll; never longer than the lease allows.
        let wait = mb.imap.poll.min(LEASE_TTL / 3);
        if idle {
            let mut handle = session.idle();
            handle.init().await?;
            let (until, interrupt) = handle.wait_with_timeout(wait.min(MAX_IDLE));
            let outcome = tokio::select! {
                r = until => Some(r),
                _ = shutdown.cancelled() => None,
            };
            drop(interrupt);
            session = handle.done().await?;
            match outcome {
                None => break,
                Some(Ok(IdleResponse::NewData(_))) => tracing::debug!(mailbox = %mb.name, "IDLE: new data."),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    let _ = session.logout().await;
    Ok(())
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
    fn uid_sets_are_compact() {
        assert_eq!(super::uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(super::uid_set(&[9]), "9");
        assert_eq!(super::parse_cursor("12:40"), Some((12, 40)));
        assert_eq!(super::parse_cursor("x"), None);
    }
}
