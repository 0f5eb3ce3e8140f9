//! The store: one [`Store`] interface, two backends (SQLite, the embedded default, written by one
//! rusqlite connection on its own thread and read through sqlx; PostgreSQL through sqlx, for several
//! instances sharing one database), migrations per backend under `migrations/`.
//!
//! Invariant: a case, its first message and all its outbox jobs are written in one transaction
//! ([`Store::commit_batch`]); `(channel, external_id)` is unique, so the same message never makes two cases.

mod common;
mod postgres;
mod sqlite;
mod sqlite_writer;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use earshot_channel::{CaseRef, Identity};
use serde::{Deserialize, Serialize};

pub use crate::outbox::Destination;
pub use crate::schema::CaseId;
/// Tests check that the queries by contact, in these words, read the partial index.
pub use common::CONTACT_CHANNELS;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// An outbox job's row id: what `earshot outbox replay|discard` and the admin API name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct JobId(pub i64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A prepared new case: every row is rendered before the transaction starts.
#[derive(Debug, Clone)]
pub struct NewCase {
    pub channel: &'static str,
    pub external_id: String,
    pub case_id: CaseId,
    pub seq: i64,
    pub case_ref: CaseRef,
    pub status: &'static str,
    pub source: String,
    pub customer_id: String,
    pub identities: Vec<Identity>,
    pub message_id: String,
    /// The `Message` as JSON.
    pub message_json: String,
    /// The `Case` as JSON, without its messages (they live in `messages`).
    pub case_json: String,
    pub now_ms: i64,
    pub jobs: Vec<NewJob>,
    /// The case already exists: only the message and jobs are added (a follow-up).
    pub follow_up: bool,
    /// The raw message, kept for `earshot reparse`.
    pub raw: Option<bytes::Bytes>,
    pub attachments: Vec<earshot_channel::AttachmentMeta>,
    /// An acknowledgement to this address is among the jobs: remember when (one per window).
    pub ack_address: Option<String>,
    /// Rendered for a new customer without looking: if one of its contacts already belongs to
    /// another customer, the store writes nothing of it and answers [`Committed::OtherCustomer`].
    pub check_customer: bool,
    /// The content digest of the message (`Inbound::content_digest`), kept with it.
    pub digest: Option<String>,
    /// The reply route as JSON, kept with a new case for every later message to the customer.
    pub reply_route: Option<String>,
    /// The first SLA due time of a new case (the breach scan's key).
    pub sla_due: Option<i64>,
    /// A follow-up that edits an earlier message of its case: that message's external id and new
    /// text, written over the stored one in the same transaction.
    pub edit: Option<(String, String)>,
    /// A follow-up from the customer on a case marked unreachable: the sender's recipient key. Once
    /// committed, the case is made reachable again if that is the case's own recipient and not
    /// suppressed (`Lifecycle::reachable`). Not stored.
    pub reachable_again: Option<String>,
}

/// A case that an incoming message's thread hint points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadHit {
    pub case_id: CaseId,
    pub case_ref: CaseRef,
    pub status: String,
    pub customer_id: String,
    /// The message id, event id or case reference that matched.
    pub matched: String,
}

/// A quarantined message in a listing.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QuarantineRow {
    pub id: i64,
    pub channel: String,
    pub source: String,
    pub reason: String,
    pub size: i64,
    pub created_at: i64,
}

/// A stored channel event (bounce, report, unthreaded automatic reply).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub channel: &'static str,
    pub source: String,
    pub kind: String,
    pub external_id: String,
    pub sender: Option<String>,
    pub subject: Option<String>,
    pub data: String,
    pub raw: Option<bytes::Bytes>,
    pub now_ms: i64,
}

/// One outbox job to create with a case.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub event_id: String,
    pub kind: &'static str,
    pub destination: Destination,
    pub payload: String,
    pub max_attempts: i64,
    /// Write it already leased, until this time (ms), for the intake to hand straight to its
    /// destination's delivery loop (`outbox::Dispatch`): no lease statement, no payload read back.
    /// Only for a job with no earlier job of its case to its destination (a new case's first), which
    /// the lease would otherwise have to wait for. A store may write it pending instead; it then
    /// leaves its id out of [`Committed::Created`].
    pub lease_until: Option<i64>,
}

/// What became of one [`NewCase`] in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    Created {
        /// The jobs written leased (those whose [`NewJob::lease_until`] the store honoured), as
        /// (event id, job id), in the order of the case's jobs. Whoever committed them sends them.
        leased: Vec<(String, JobId)>,
    },
    /// The message was already stored: these are the ids of its case.
    Duplicate {
        case_id: CaseId,
        case_ref: CaseRef,
        status: String,
        /// The digest stored with the first delivery, if any.
        digest: Option<String>,
    },
    /// Nothing written: a contact of this new case belongs to this customer (see
    /// [`NewCase::check_customer`]); render it again for them.
    OtherCustomer { customer_id: String },
}

/// An outbox job as leased or listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: JobId,
    pub event_id: String,
    pub case_id: CaseId,
    pub kind: String,
    #[sqlx(try_from = "String")]
    pub destination: Destination,
    #[serde(skip)]
    pub payload: String,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    /// In a listing: the first unfinished (pending, leased or dead) earlier job of the same case and
    /// destination, which this pending job waits for. Such a job is shown as `held`.
    #[sqlx(default)]
    pub held_by: Option<JobId>,
}

/// What became of one leased job; the outbox's recorder writes these in batches.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub id: JobId,
    /// The attempt number the job was leased with: it fences out a worker whose lease has expired.
    pub attempts: i64,
    pub kind: OutcomeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Delivered; a ticket id the receiver answered with is stored on the case, the channel's id of
    /// the message on the job. A delivered acknowledgement (`acknowledges`) moves a `new` case to
    /// `acknowledged`.
    Done {
        case_id: CaseId,
        ticket_id: Option<String>,
        provider_id: Option<String>,
        /// The billed parts of the message (SMS segments), stored with the job.
        segments: Option<i64>,
        acknowledges: bool,
    },
    /// Failed; tried again at `at_ms`.
    Retry { at_ms: i64, error: String },
    /// Failed for good (or out of attempts); waits for a replay or a discard.
    Dead { error: String },
    /// Never sent (its destination paused, or the gateway stopping): pending again at once, and the
    /// attempt the lease counted is given back.
    Released,
}

impl OutcomeKind {
    /// The row's new state, next attempt time, error and change of `attempts`.
    pub(crate) fn columns(&self, now_ms: i64) -> (&'static str, i64, Option<&str>, i64) {
        match self {
            OutcomeKind::Done { .. } => ("done", now_ms, None, 0),
            OutcomeKind::Retry { at_ms, error } => ("pending", *at_ms, Some(error), 0),
            OutcomeKind::Dead { error } => ("dead", now_ms, Some(error), 0),
            OutcomeKind::Released => ("pending", now_ms, None, -1),
        }
    }
}

/// Unfinished jobs of one destination, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    pub destination: String,
    /// Pending or leased, not held.
    pub pending: i64,
    /// Pending behind an earlier unfinished job of their case.
    pub held: i64,
    pub dead: i64,
    /// Creation time of the oldest pending (or leased) job.
    pub oldest_pending_ms: Option<i64>,
}

/// One step of the retention sweep ([`Store::purge_done`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub deleted: u64,
    /// Where the next step starts (the last id looked at).
    pub next_after: i64,
    /// No job older than the cut-off is left after `next_after`: the sweep is over.
    pub finished: bool,
}

/// Filters of a case listing; every one optional. `before_seq` is the cursor (the last row's `seq`).
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    pub status: Option<String>,
    pub channel: Option<String>,
    pub source: Option<String>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    pub breached: Option<bool>,
    pub text: Option<String>,
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// A case in a listing.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CaseRow {
    pub id: CaseId,
    #[sqlx(default)]
    pub seq: i64,
    #[sqlx(try_from = "String")]
    pub case_ref: CaseRef,
    pub status: String,
    pub channel: String,
    pub source: String,
    pub ticket_id: Option<String>,
    #[serde(skip)]
    pub data: String,
    pub created_at: i64,
    #[sqlx(default)]
    #[serde(skip)]
    pub lifecycle: Option<String>,
    #[sqlx(default)]
    pub breached: bool,
    /// The reply route as JSON (see `NewCase::reply_route`).
    #[sqlx(default)]
    #[serde(skip)]
    pub reply_route: Option<String>,
    /// What a lifecycle change is written over ([`CaseChange::version`]).
    #[sqlx(default)]
    #[serde(skip)]
    pub version: i64,
}

/// One entry of a case's timeline ([`CaseChange::log`]).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogEntry {
    #[serde(skip)]
    pub id: i64,
    pub kind: String,
    /// Who made it: `downstream:<endpoint>`, `customer`, `gateway`.
    pub actor: Option<String>,
    #[serde(skip)]
    pub data: String,
    pub created_at: i64,
}

/// An event from outside applied once: by the endpoint (or channel) that sent it and its id.
#[derive(Debug, Clone)]
pub struct InboxKey {
    pub endpoint: String,
    pub webhook_id: String,
    pub digest: String,
}

/// One lifecycle change of a case, written in one transaction over `version`.
#[derive(Debug, Clone)]
pub struct CaseChange {
    pub case_id: CaseId,
    /// The version the change was computed from; if the case has moved on, nothing is written.
    pub version: i64,
    pub status: String,
    pub ticket_id: Option<String>,
    /// The lifecycle JSON (SLA clocks, survey, reachability).
    pub lifecycle: String,
    pub sla_due: Option<i64>,
    pub breached: bool,
    pub log: Vec<(String, Option<String>, String)>,
    /// Recorded first: a key already stored means the change was applied before.
    pub inbox: Option<InboxKey>,
    /// A new survey's token and expiry.
    pub survey: Option<(String, i64)>,
    pub jobs: Vec<NewJob>,
    pub now_ms: i64,
}

/// What became of a [`CaseChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    Applied,
    /// Its inbox key was stored before, with this digest: nothing written.
    Duplicate {
        digest: String,
    },
    /// The case's version moved since it was read: nothing written; read again and recompute.
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Sqlite(String),
    #[error("the store is closed")]
    Closed,
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    /// Applies pending migrations.
    async fn migrate(&self) -> Result<()>;

    /// Ok when the database answers and every migration this binary knows is applied.
    async fn ready(&self) -> Result<()>;

    /// `n` fresh case sequence numbers (gaps are allowed; duplicates never).
    async fn next_seqs(&self, n: usize) -> Result<Vec<i64>>;

    /// The customers already known by any of these identities.
    async fn customers_for(&self, identities: &[Identity]) -> Result<HashMap<Identity, String>>;

    /// Commits all of `items` in one transaction, skipping (and reporting) those whose
    /// `(channel, external_id)` is already stored, and those with `check_customer` whose contact
    /// belongs to another customer ([`Committed::OtherCustomer`]: the first known contact decides). Either
    /// every row is written or none is. The items are shared, not copied, with the writer that
    /// commits them.
    async fn commit_batch(&self, items: Arc<Vec<NewCase>>) -> Result<Vec<Committed>>;

    /// Leases up to `limit` due jobs (of one destination, or of all) until `lease_until_ms`, oldest
    /// first, never two of one case and destination at once, nor a job while an earlier one of its
    /// case and destination is pending, leased or dead.
    async fn lease_jobs(
        &self,
        destination: Option<&Destination>,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<Job>>;

    /// Records what became of leased jobs, all in one transaction (and on PostgreSQL one
    /// statement), with the ticket ids of delivered ones. Each answer says whether that job's
    /// outcome counted: `false` means its lease had expired and another worker owns it now.
    async fn record_outcomes(&self, outcomes: Vec<JobOutcome>, now_ms: i64) -> Result<Vec<bool>>;

    /// Marks a leased job done (one outcome; see [`Store::record_outcomes`]).
    async fn complete_job(&self, id: JobId, attempts: i64, now_ms: i64) -> Result<bool> {
        let done = OutcomeKind::Done {
            case_id: CaseId(String::new()),
            ticket_id: None,
            provider_id: None,
            segments: None,
            acknowledges: false,
        };
        Ok(self.record_outcomes(vec![JobOutcome { id, attempts, kind: done }], now_ms).await?.first() == Some(&true))
    }

    /// Puts a leased job back for a later attempt, or to `dead` when `next_attempt_ms` is `None`.
    async fn fail_job(
        &self,
        id: JobId,
        attempts: i64,
        next_attempt_ms: Option<i64>,
        error: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let error = error.to_owned();
        let kind = match next_attempt_ms {
            Some(at_ms) => OutcomeKind::Retry { at_ms, error },
            None => OutcomeKind::Dead { error },
        };
        Ok(self.record_outcomes(vec![JobOutcome { id, attempts, kind }], now_ms).await?.first() == Some(&true))
    }

    /// Jobs, newest first, optionally of one state (`held`: pending behind an earlier unfinished job
    /// of their case; `pending` leaves those out).
    async fn list_jobs(&self, state: Option<&str>, limit: i64) -> Result<Vec<Job>>;

    /// Makes a dead job pending again with fresh attempts; false if it is not dead.
    async fn replay_job(&self, id: JobId, now_ms: i64) -> Result<bool>;

    /// Gives up on a dead job on purpose (`discarded`), releasing the later jobs of its case; false if
    /// it is not dead.
    async fn discard_job(&self, id: JobId, now_ms: i64) -> Result<bool>;

    /// One step of the retention sweep: looks at up to `limit` jobs after id `after`, in id order, and
    /// deletes those done or discarded before `cutoff_ms`.
    async fn purge_done(&self, after: i64, cutoff_ms: i64, limit: i64) -> Result<Purged>;

    /// Unfinished jobs per destination.
    async fn outbox_backlog(&self) -> Result<Vec<Backlog>>;

    /// The destinations that have pending or leased jobs.
    async fn job_destinations(&self) -> Result<Vec<Destination>>;

    /// Replays every dead job; returns how many.
    async fn replay_all_dead(&self, now_ms: i64) -> Result<u64>;

    /// Job counts by state.
    async fn job_counts(&self) -> Result<Vec<(String, i64)>>;

    async fn list_cases(&self, limit: i64) -> Result<Vec<CaseRow>>;

    /// A case row with the JSON of its messages, oldest first.
    async fn get_case(&self, id: &CaseId) -> Result<Option<(CaseRow, Vec<String>)>>;

    async fn count_cases(&self) -> Result<i64>;

    /// A customer's cases on one channel, newest first: up to `limit`, or only the one with
    /// sequence number `seq` (a chat's `/status`).
    async fn customer_cases(
        &self,
        customer_id: &str,
        channel: &str,
        seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CaseRow>>;

    /// The customer's newest case on `channel` that is still open (not resolved or closed) and was
    /// changed at or after `since_ms`: where a chat's next message goes.
    async fn open_case_of(&self, customer_id: &str, channel: &str, since_ms: i64) -> Result<Option<CaseId>>;

    /// Cases that messages with these ids (channel messages), outbox event ids (our own outbound
    /// messages) or case references belong to.
    async fn find_thread(
        &self,
        channel: &str,
        message_ids: &[String],
        event_ids: &[String],
        refs: &[String],
    ) -> Result<Vec<ThreadHit>>;

    /// The outbox job with this event id (to find what a bounce is about).
    async fn job_by_event_id(&self, event_id: &str) -> Result<Option<Job>>;

    async fn load_cursor(&self, name: &str) -> Result<Option<String>>;

    async fn save_cursor(&self, name: &str, value: &str, now_ms: i64) -> Result<()>;

    /// Takes the lease if it is free, expired or already ours; renews it to `now + ttl`.
    async fn try_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool>;

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;

    async fn quarantine(&self, channel: &str, source: &str, reason: &str, raw: &[u8], now_ms: i64) -> Result<i64>;

    async fn list_quarantine(&self, limit: i64) -> Result<Vec<QuarantineRow>>;

    /// Stores a channel event once per `(channel, external_id)`; `false` when it was stored before.
    async fn record_event(&self, event: &NewEvent) -> Result<bool>;
    /// Whether a channel event with this `(channel, external_id)` is stored.
    async fn has_event(&self, channel: &str, external_id: &str) -> Result<bool>;

    async fn count_events(&self, kind: Option<&str>) -> Result<i64>;

    /// Marks an address undeliverable until `until_ms`.
    async fn suppress(&self, address: &str, reason: &str, until_ms: i64) -> Result<()>;

    /// Of these addresses, those suppressed at `now_ms`.
    async fn suppressed(&self, addresses: &[String], now_ms: i64) -> Result<Vec<String>>;

    /// Of these addresses, those acknowledged at or after `since_ms`.
    async fn acked_since(&self, addresses: &[String], since_ms: i64) -> Result<Vec<String>>;

    /// Writes a lifecycle change, all or nothing (see [`ChangeOutcome`]).
    async fn apply_change(&self, change: CaseChange) -> Result<ChangeOutcome>;

    /// The digest of an inbound event already applied, by its key.
    async fn inbox_digest(&self, endpoint: &str, webhook_id: &str) -> Result<Option<String>>;

    /// Cases whose earliest running SLA target is due at or before `now_ms`, earliest first.
    async fn sla_due_cases(&self, now_ms: i64, limit: i64) -> Result<Vec<CaseId>>;

    /// The case and expiry of a survey token.
    async fn survey(&self, token: &str) -> Result<Option<(CaseId, i64)>>;

    /// A case's timeline entries, oldest first.
    async fn case_log(&self, case_id: &CaseId) -> Result<Vec<LogEntry>>;

    /// Every outbox job of a case with its payload, oldest first.
    async fn case_jobs(&self, case_id: &CaseId) -> Result<Vec<Job>>;

    /// Cases for a listing, newest first, after the filters.
    async fn search_cases(&self, filter: &CaseFilter) -> Result<Vec<CaseRow>>;

    /// Raw messages with ids after `after` (message id order) and their message JSON, for reparse.
    async fn raw_messages(&self, after: &str, limit: i64) -> Result<Vec<(String, String, Vec<u8>, String)>>;

    /// Replaces a message's JSON (after reparse).
    async fn update_message(&self, message_id: &str, data: &str) -> Result<()>;

    async fn close(&self);
}

/// Whether `url` names a PostgreSQL store (else SQLite): the one place that decides it.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store named by `url` (`sqlite://…` or `postgres://…`) and applies migrations.
pub async fn open(url: &str, max_connections: u32) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = if is_postgres_url(url) {
        Arc::new(PgStore::connect(url, max_connections).await?)
    } else {
        Arc::new(SqliteStore::open(url, max_connections).await?)
    };
    migrate_saying_when_slow(&*store).await?;
    Ok(store)
}

/// The options of a connection that runs migrations: its slow statements are reported at debug
/// level only. sqlx warns of any statement over a second by default, with its whole text; a
/// migration that rebuilds a table is slow by design, and [`migrate_saying_when_slow`] says so.
pub(crate) fn for_migrations<O: sqlx::ConnectOptions>(opts: O) -> O {
    opts.log_slow_statements(log::LevelFilter::Debug, SLOW_MIGRATION)
}

/// How long migrations may take before the log says they are running.
const SLOW_MIGRATION: std::time::Duration = std::time::Duration::from_secs(1);

/// Applies migrations, and says so in the log only when they take a while. They are instant on a
/// current store, but one that rebuilds a table (SQLite's 0012 rewrites the outbox) takes seconds
/// per million rows, once, at the first start after an upgrade: without a line, that start just
/// looks hung.
async fn migrate_saying_when_slow(store: &dyn Store) -> Result<()> {
    let started = std::time::Instant::now();
    let mut migrate = std::pin::pin!(store.migrate());
    if let Ok(done) = tokio::time::timeout(SLOW_MIGRATION, &mut migrate).await {
        return done;
    }
    tracing::info!(
        backend = store.backend(),
        "Applying store migrations; one that rebuilds a table takes a few seconds per million rows (run `earshot migrate` to do it ahead of a start)."
    );
    migrate.await?;
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "Store migrations applied.");
    Ok(())
}
