//! The email channel's settings, resolved and checked by the gateway's config module.

use std::time::Duration;

use secrecy::SecretString;

/// How a connection is secured. `Plain` only when the config says so (local tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Tls,
    Starttls,
    Plain,
}

#[derive(Debug, Clone)]
pub struct ImapSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: String,
    pub password: SecretString,
    pub folder: String,
    pub idle: bool,
    pub poll: Duration,
    /// Move committed messages here instead of flagging them `\Seen`.
    pub move_to: Option<String>,
    /// Messages fetched and committed per round.
    pub batch: u32,
    /// PEM certificates trusted besides the public roots (`ca_file`).
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub timeout: Duration,
    /// PEM certificates trusted besides the public roots (`ca_file`).
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct MailboxSettings {
    pub name: String,
    /// The address acknowledgements come from, lower-cased.
    pub address: String,
    pub display_name: Option<String>,
    pub imap: ImapSettings,
    pub smtp: SmtpSettings,
}

#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub mailboxes: Vec<MailboxSettings>,
    /// Attachment content is kept up to this size; larger ones keep only their metadata.
    pub max_attachment_bytes: usize,
    /// A message larger than this is not fetched whole: its header and size go to the quarantine.
    pub max_message_bytes: u32,
    /// Acknowledgements per recipient per hour, whatever the window says (a loop breaker).
    pub max_acks_per_recipient_per_hour: u32,
    /// This process's name in mailbox leases.
    pub instance: String,
}
