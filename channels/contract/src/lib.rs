//! The channel contract of Earshot.
//!
//! A channel turns what arrives on its wire into an [`Inbound`] and hands it to an [`Intake`]; the
//! intake answers only after the case, its message and their outbox jobs are durably committed. The
//! outbox later calls [`Channel::send`] with an [`Outbound`]. A channel crate depends on this crate
//! only: it knows nothing of the store, the outbox or the other channels.

mod api_error;
mod case_ref;
pub mod config;
mod lang;
pub mod openapi;
mod types;
pub mod webhooks;

pub use api_error::ApiError;
pub use case_ref::{CaseRef, CaseRefError};
pub use lang::Lang;
pub use openapi::OpenApiPart;
pub use types::*;

use std::sync::Arc;
use std::time::Duration;

/// The SHA-256 of `bytes` in lower-case hex: attachment digests, derived ids, dedup keys.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    // Not `write!("{b:02x}")` per byte: two of these run for every web complaint, and those 64
    // formatter calls showed in `perf` of the request workers under load.
    hex::encode(sha2::Sha256::digest(bytes))
}

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

/// What the gateway offers a channel: durable intake.
#[async_trait]
pub trait Intake: Send + Sync {
    /// Returns only after the case, the message and their outbox jobs are committed.
    ///
    /// An automatic message (`Inbound::automatic`) that belongs to no case is stored as a channel
    /// event instead; its receipt then has empty ids and status `event`.
    async fn submit(&self, msg: Inbound) -> Result<Receipt, IntakeError>;

    /// Records a customer's answer to a survey that reached them through this channel (a chat
    /// button, an SMS digit): `answer` is one of the survey's choice values (`rating=5`,
    /// `solved=no`) or several joined by `&`. Returns false when the survey is unknown or closed.
    async fn answer_survey(&self, token: &str, answer: &str) -> Result<bool, IntakeError>;

    /// The cases of the customer known by `identity` on `channel`, newest first, at most `limit`;
    /// only the one with reference `case_ref` when it is given. A case of another customer is never
    /// among them.
    async fn cases_of(
        &self,
        channel: ChannelKind,
        identity: &Identity,
        case_ref: Option<&CaseRef>,
        limit: usize,
    ) -> Result<Vec<CaseSummary>, IntakeError>;

    /// The recipient asked for no more messages on this channel (an SMS `STOP`): later messages to
    /// them are not sent (the contract's `Unreachable`). Durable on return.
    async fn opt_out(&self, recipient: &Recipient, reason: &str) -> Result<(), IntakeError>;

    /// The recipient asked for messages again (an SMS `START`), lifting their opt-out (a
    /// suppression for another cause, a bounce, is lifted too), and the cases of the customer with
    /// `identity` on this channel that were marked unreachable are reachable again. Durable on return.
    async fn opt_in(&self, recipient: &Recipient, identity: &Identity, reason: &str) -> Result<(), IntakeError>;

    /// Stores a bounce or report; returns once it is durable.
    async fn record_event(&self, event: ChannelEvent) -> Result<(), IntakeError>;

    /// Keeps a message that could not be parsed, with the reason; returns once it is durable.
    async fn quarantine(
        &self,
        channel: ChannelKind,
        source: &str,
        raw: bytes::Bytes,
        reason: &str,
    ) -> Result<(), IntakeError>;

    /// A pull channel's saved progress (IMAP UIDVALIDITY and UID, a Telegram offset).
    async fn load_cursor(&self, name: &str) -> Result<Option<String>, IntakeError>;

    async fn save_cursor(&self, name: &str, value: &str) -> Result<(), IntakeError>;

    /// Takes or renews the named lease for `ttl`; false while another holder's lease is alive. With
    /// several gateway instances on one database, this is how exactly one polls a mailbox.
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, IntakeError>;

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), IntakeError>;
}

/// One channel: push channels expose routes, pull channels run a loop; every channel can send.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    fn kind(&self) -> ChannelKind;

    /// Routes of a push channel, already bound to the intake.
    fn routes(&self, _intake: Arc<dyn Intake>) -> Option<axum::Router> {
        None
    }

    /// The OpenAPI 3.1 description of exactly the routes [`Channel::routes`] mounts (`None` when it
    /// mounts none): the gateway's `/openapi.json` is the core's routes plus this part of every
    /// enabled channel. Each operation lists every status its handler can answer, and nothing else
    /// (see [`crate::openapi`] for the shared `Error` and `Receipt` schemas).
    fn openapi(&self) -> Option<OpenApiPart> {
        None
    }

    /// The loop of a pull channel (IMAP, Telegram long polling); returns when `shutdown` fires.
    async fn run(&self, _intake: Arc<dyn Intake>, shutdown: CancellationToken) -> Result<(), ChannelError> {
        shutdown.cancelled().await;
        Ok(())
    }

    /// Delivers one outbound message; called by the outbox only. It must end within
    /// [`Channel::send_deadline`] of its sender (the outbox also cuts it off there).
    async fn send(&self, msg: &Outbound) -> Result<Sent, SendError>;

    /// The accounts this channel sends from (mailboxes, sources with a callback, a bot), as named
    /// by [`ReplyRoute::sender`]: each gets its own in-flight budget and breaker in the outbox.
    fn senders(&self) -> Vec<String> {
        Vec::new()
    }

    /// The channel's own identities (its mailboxes' addresses, its bot): the core never
    /// acknowledges a message from one of them, so that two gateways cannot answer each other.
    fn own_identities(&self) -> Vec<Recipient> {
        Vec::new()
    }

    /// True when no loop with another automatic responder can form on this channel (a chat bot:
    /// Telegram bots cannot write to each other in private chats). Then every new case is
    /// acknowledged, without the core's per-recipient acknowledgement window.
    fn loop_free(&self) -> bool {
        false
    }

    /// The longest one send from `sender` may take: connect, TLS, every command and the whole
    /// message. The outbox's lease must be longer.
    fn send_deadline(&self, _sender: &str) -> Duration {
        Duration::from_secs(30)
    }
}

/// Why intake refused or could not take a message.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The store could not commit; nothing was written. The sender should retry later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The gateway is shutting down and takes no new work.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The external id is already stored with other content: a sender reused an id it should not
    /// have. Nothing was written.
    #[error("{0}")]
    Conflict(String),
}

impl IntakeError {
    pub fn is_transient(&self) -> bool {
        !matches!(self, IntakeError::Conflict(_))
    }
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Unavailable(_) => ApiError::unavailable(
                "store_unavailable",
                "the complaint could not be stored; nothing was kept, retry later",
            ),
            IntakeError::ShuttingDown => {
                ApiError::unavailable("shutting_down", "the gateway is shutting down; retry later")
            }
            IntakeError::Conflict(detail) => ApiError::new(http::StatusCode::CONFLICT, "idempotency_conflict", detail),
        }
    }
}

/// The outcome of one delivery attempt by a channel.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: a 4xx from SMTP, a refused connection, a timeout, 429/503 from an API.
    #[error("transient: {reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// Retrying this message cannot help (a 5xx for it, a 400 from an API).
    #[error("permanent: {reason}")]
    Permanent { reason: String },
    /// The recipient cannot be reached on this channel at all: a blocked bot, an invalid number, a
    /// hard bounce, an unsubscribe. Not retried; the case records it and downstream hears
    /// `case.updated` with `reachable: false`.
    #[error("unreachable: {reason}")]
    Unreachable { reason: String },
}

impl SendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient { .. })
    }
}

/// A pull channel's loop failed for good (bad credentials, say).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChannelError(pub String);
