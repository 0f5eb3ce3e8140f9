//! The email channel's config section, `[channels.email]`: plain serde with documented defaults,
//! and (with the `io` feature) its check into [`crate::settings::EmailSettings`], every problem with
//! its key path.

use serde::Deserialize;
#[cfg(feature = "io")]
use std::time::Duration;

#[cfg(feature = "io")]
use crate::settings::{EmailSettings, ImapSettings, MailboxSettings, Security, SmtpSettings};
#[cfg(feature = "io")]
use earshot_channel::config::Checker;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// At most one acknowledgement per sender address within this window. Default `10m`.
    #[serde(default = "default_ack_window")]
    pub ack_window: String,
    /// How long an address that bounced one of our messages gets nothing more. Default `7d`.
    #[serde(default = "default_undeliverable_for")]
    pub undeliverable_for: String,
    /// Attachment content is kept up to this size; larger ones keep metadata only. Default 10 MiB.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: usize,
    /// A message larger than this is not fetched whole: its header and size are quarantined.
    /// Default 52428800 (50 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u32,
    /// Automatic acknowledgements to one recipient per hour, whatever else holds (a loop breaker;
    /// status updates, agents' replies and surveys are not counted). Default 5.
    #[serde(default = "default_acks_per_hour")]
    pub max_acks_per_recipient_per_hour: u32,
    #[serde(default)]
    pub mailboxes: Vec<MailboxConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    pub name: Option<String>,
    /// The mailbox's address: acknowledgements come from it, and it is never acknowledged.
    pub address: Option<String>,
    /// Display name on acknowledgements, e.g. "Example Support".
    pub display_name: Option<String>,
    pub imap: Option<ImapConfig>,
    pub smtp: Option<SmtpConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    pub host: Option<String>,
    /// Default 993 for `tls`, 143 otherwise.
    pub port: Option<u16>,
    /// `tls` (default), `starttls`, or `plain` (unencrypted; for local tests only).
    #[serde(default = "default_security")]
    pub security: String,
    pub username: Option<String>,
    /// `env:NAME` allowed.
    pub password: Option<String>,
    #[serde(default = "default_folder")]
    pub folder: String,
    /// Use IMAP IDLE when the server offers it. Default true.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// Seconds between checks without IDLE (and the longest IDLE wait). Default 60.
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// Move committed messages to this folder instead of flagging them `\Seen`.
    pub move_to: Option<String>,
    /// Messages fetched and committed per round. Default 200.
    #[serde(default = "default_imap_batch")]
    pub batch: u32,
    /// A PEM file of certificates to trust besides the public roots: a private CA (or a self-signed
    /// server certificate that is not marked CA:TRUE; rustls refuses a CA used as the server's
    /// own). Default none.
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: Option<String>,
    /// Default 465 for `tls`, 587 for `starttls`, 25 for `plain`.
    pub port: Option<u16>,
    #[serde(default = "default_security")]
    pub security: String,
    pub username: Option<String>,
    /// `env:NAME` allowed.
    pub password: Option<String>,
    /// Seconds per SMTP conversation. Default 30.
    #[serde(default = "default_smtp_timeout")]
    pub timeout_secs: u64,
    /// As `imap.ca_file`: extra trusted certificates (PEM). Default none.
    pub ca_file: Option<String>,
}

fn default_ack_window() -> String {
    "10m".into()
}
fn default_undeliverable_for() -> String {
    "7d".into()
}
fn default_max_attachment_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_max_message_bytes() -> u32 {
    50 * 1024 * 1024
}
fn default_acks_per_hour() -> u32 {
    5
}
fn default_security() -> String {
    "tls".into()
}
fn default_folder() -> String {
    "INBOX".into()
}
fn default_true() -> bool {
    true
}
fn default_poll_secs() -> u64 {
    60
}
fn default_imap_batch() -> u32 {
    200
}
fn default_smtp_timeout() -> u64 {
    30
}

#[cfg(feature = "io")]
fn security(c: &mut Checker, key: &str, v: &str) -> Option<crate::settings::Security> {
    use crate::settings::Security;
    match v {
        "tls" => Some(Security::Tls),
        "starttls" => Some(Security::Starttls),
        "plain" => Some(Security::Plain),
        _ => {
            c.problem(key, format!("{v:?} is not one of tls, starttls, plain"));
            None
        }
    }
}

/// Reads and checks a `ca_file`: `Some(None)` when unset, `Some(Some(pem))` when it holds
/// certificates, `None` (with the problem reported) when it cannot be used.
#[cfg(feature = "io")]
fn ca_file(c: &mut Checker, key: &str, path: Option<&str>) -> Option<Option<Vec<u8>>> {
    let Some(path) = path else { return Some(None) };
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => {
            c.problem(key, format!("cannot read {path}: {e}"));
            return None;
        }
    };
    match crate::tls::pem_certificates(&pem) {
        Ok(_) => Some(Some(pem)),
        Err(e) => {
            c.problem(key, format!("{path}: {e}"));
            None
        }
    }
}

#[cfg(feature = "io")]
impl EmailConfig {
    /// Checks the section (`channels.email`) into `c`; the settings when nothing is wrong with it.
    /// `instance` names this gateway process in mailbox leases.
    pub fn resolve(&self, c: &mut Checker, instance: String) -> Option<EmailSettings> {
        let e = self;
        let mut mailboxes = Vec::new();
        let mut names = std::collections::HashSet::new();
        if e.mailboxes.is_empty() {
            c.problem("channels.email.mailboxes", "configure at least one [[channels.email.mailboxes]]");
        }
        for (i, m) in e.mailboxes.iter().enumerate() {
            let p = format!("channels.email.mailboxes[{i}]");
            let name = c.required(&format!("{p}.name"), m.name.as_deref()).map(str::to_owned);
            if let Some(n) = &name
                && !names.insert(n.clone())
            {
                c.problem(format!("{p}.name"), format!("{n:?} is used by another mailbox"));
            }
            let address = c.required(&format!("{p}.address"), m.address.as_deref()).map(str::to_lowercase);
            if let Some(a) = &address
                && !a.contains('@')
            {
                c.problem(format!("{p}.address"), format!("{a:?} is not an email address"));
            }
            let imap = match &m.imap {
                None => {
                    c.problem(format!("{p}.imap"), "missing");
                    None
                }
                Some(im) => {
                    let k = format!("{p}.imap");
                    let host = c.required(&format!("{k}.host"), im.host.as_deref()).map(str::to_owned);
                    let sec = security(c, &format!("{k}.security"), &im.security);
                    let user = c.required(&format!("{k}.username"), im.username.as_deref()).map(str::to_owned);
                    let pass = c
                        .required(&format!("{k}.password"), im.password.as_deref())
                        .and_then(|v| c.secret(&format!("{k}.password"), v));
                    c.positive(&format!("{k}.poll_secs"), im.poll_secs);
                    c.positive(&format!("{k}.batch"), u64::from(im.batch));
                    let ca_pem = ca_file(c, &format!("{k}.ca_file"), im.ca_file.as_deref());
                    match (host, sec, user, pass, ca_pem) {
                        (Some(host), Some(security), Some(username), Some(password), Some(ca_pem)) => {
                            Some(ImapSettings {
                                port: im.port.unwrap_or(if security == Security::Tls { 993 } else { 143 }),
                                host,
                                security,
                                username,
                                password: password.into(),
                                folder: im.folder.clone(),
                                idle: im.idle,
                                poll: Duration::from_secs(im.poll_secs.max(1)),
                                move_to: im.move_to.clone(),
                                batch: im.batch.max(1),
                                ca_pem,
                            })
                        }
                        _ => None,
                    }
                }
            };
            let smtp = match &m.smtp {
                None => {
                    c.problem(format!("{p}.smtp"), "missing");
                    None
                }
                Some(sm) => {
                    let k = format!("{p}.smtp");
                    let host = c.required(&format!("{k}.host"), sm.host.as_deref()).map(str::to_owned);
                    let sec = security(c, &format!("{k}.security"), &sm.security);
                    let pass = sm.password.as_deref().and_then(|v| c.secret(&format!("{k}.password"), v));
                    if sm.username.is_some() != sm.password.is_some() {
                        c.problem(format!("{k}.password"), "username and password go together");
                    }
                    c.positive(&format!("{k}.timeout_secs"), sm.timeout_secs);
                    let ca_pem = ca_file(c, &format!("{k}.ca_file"), sm.ca_file.as_deref());
                    match (host, sec, ca_pem) {
                        (Some(host), Some(security), Some(ca_pem)) => Some(SmtpSettings {
                            port: sm.port.unwrap_or(match security {
                                Security::Tls => 465,
                                Security::Starttls => 587,
                                Security::Plain => 25,
                            }),
                            host,
                            security,
                            username: sm.username.clone(),
                            password: pass.map(Into::into),
                            timeout: Duration::from_secs(sm.timeout_secs.max(1)),
                            ca_pem,
                        }),
                        _ => None,
                    }
                }
            };
            if let (Some(name), Some(address), Some(imap), Some(smtp)) = (name, address, imap, smtp) {
                mailboxes.push(MailboxSettings { name, address, display_name: m.display_name.clone(), imap, smtp });
            }
        }
        c.positive("channels.email.max_acks_per_recipient_per_hour", u64::from(e.max_acks_per_recipient_per_hour));
        Some(EmailSettings {
            mailboxes,
            max_attachment_bytes: e.max_attachment_bytes,
            max_message_bytes: e.max_message_bytes.max(1024),
            max_acks_per_recipient_per_hour: e.max_acks_per_recipient_per_hour,
            instance,
        })
    }
}
