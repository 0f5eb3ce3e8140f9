//! The SQLite intake writer: one connection owned by one thread, which runs a whole batch —
//! `BEGIN`, every insert, `COMMIT` — in one call.
//!
//! Why not sqlx here: sqlx-sqlite runs each statement on its connection's worker thread and hands
//! the answer back to the async task, two thread wake-ups per statement. A batch is about ten
//! statements, and under load each hand-off waits for a free core (measured: 0.07 ms per statement
//! idle, 0.15–0.4 ms under load), so the hand-offs took about a third of every batch on the
//! one serial step of intake. Here the batch crosses threads once each way. Everything else in the
//! SQLite store (reads, the outbox, email state) stays on sqlx.
//!
//! This is the only writer connection of the store (the sqlx pool that runs the migrations is
//! closed before this one opens), so SQLite still sees one writer per file.
//!
//! Group commit at the connection: the thread takes every call already queued (an intake batch, an
//! outbox lease, a batch of delivery outcomes, …), runs them in one transaction, and answers them
//! after the one `COMMIT`: one fsync for all of them. A call that fails (an error or a panic) rolls
//! the whole transaction back, and then every call of the group runs again in a transaction of its
//! own, so that it fails alone; a commit that fails fails every call of the group, none of whose
//! writes then exist. Calls are therefore written to run again after a rollback (`FnMut`).
//!
//! Why not a savepoint per call, which would let a failing call roll back only its own writes:
//! while a savepoint is open, SQLite copies every page a call first changes into a sub-journal,
//! to restore it on a rollback to the savepoint. Under the whole-path load `perf` put those copies
//! and their allocations at about 3% of the gateway's CPU (most of it on this thread, the one
//! serial step of intake), for failures that almost never happen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use earshot_channel::Identity;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::common::{lease_sql, numbered, sql};
use super::{
    CaseId, Committed, Destination, Job, JobId, JobOutcome, NewCase, NewEvent, OutcomeKind, Result, StoreError,
};

// The typed ids as rusqlite values: stored as the text and integers they wrap.
impl rusqlite::ToSql for CaseId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for CaseId {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(v).map(CaseId)
    }
}

impl rusqlite::ToSql for JobId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for JobId {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(v).map(JobId)
    }
}

impl rusqlite::ToSql for Destination {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::from(self.to_string()))
    }
}

impl rusqlite::types::FromSql for Destination {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Destination::try_from(String::column_result(v)?).map_err(|e| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

/// One call on the writer connection, as the writer thread sees it: it may run a second time after
/// a rollback (see `run_group`), and is answered once the transaction that holds the writes of its
/// last run has committed or failed.
type Call = Box<dyn Run + Send>;

trait Run {
    /// Writes, keeps the result for `answer`, and says whether it succeeded.
    fn run(&mut self, conn: &mut Connection) -> bool;
    /// Sends the kept result, or the error of a `COMMIT` that failed (`commit_failed`).
    fn answer(self: Box<Self>, commit_failed: Option<&str>);
}

/// A call of `f`: its result, kept until its transaction ends, and where the caller waits for it.
struct Pending<R, F> {
    f: F,
    result: Option<Result<R>>,
    tx: oneshot::Sender<Result<R>>,
}

impl<R, F> Run for Pending<R, F>
where
    R: Send,
    F: FnMut(&mut Connection) -> Result<R> + Send,
{
    fn run(&mut self, conn: &mut Connection) -> bool {
        // A run that panics leaves no result behind, not that of a run rolled back.
        self.result = None;
        let r = (self.f)(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn answer(self: Box<Self>, commit_failed: Option<&str>) {
        // No result: the call panicked; dropping `tx` tells the caller it was abandoned.
        let Some(result) = self.result else { return };
        let result = match (result, commit_failed) {
            (Ok(_), Some(e)) => Err(StoreError::Sqlite(format!("the transaction did not commit: {e}"))),
            (r, _) => r,
        };
        let _ = self.tx.send(result);
    }
}

/// Most calls committed in one transaction.
const MAX_GROUP: usize = 64;

/// A handle to the writer thread; the thread ends when the last handle is dropped.
pub(super) struct WriterThread {
    tx: std::sync::Mutex<Option<mpsc::Sender<Call>>>,
    done: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

impl WriterThread {
    /// Opens `file` on a new thread with the writer's pragmas (see `SqliteStore::open` for why each).
    pub(super) async fn open(file: &Path, pragmas: &[(&'static str, String)]) -> Result<WriterThread> {
        let (tx, rx) = mpsc::channel::<Call>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let (file, pragmas): (PathBuf, Vec<(&'static str, String)>) = (file.to_owned(), pragmas.to_vec());
        let handle = std::thread::Builder::new()
            .name("earshot-sqlite-writer".into())
            .spawn(move || {
                let opened = Connection::open(&file).and_then(|conn| {
                    for (name, value) in &pragmas {
                        // Our own constants, not input: written as SQL as they are.
                        conn.execute_batch(&format!("PRAGMA {name} = {value};"))?;
                    }
                    conn.set_prepared_statement_cache_capacity(64);
                    Ok(conn)
                });
                let mut conn = match opened {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(call) => group.push(call),
                            Err(_) => break,
                        }
                    }
                    run_group(&mut conn, group);
                }
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "SQLite writer connection did not close cleanly.");
                }
            })
            .map_err(|e| StoreError::Sqlite(format!("cannot start the writer thread: {e}")))?;
        ready_rx.await.map_err(|_| StoreError::Sqlite("the writer thread stopped while opening".into()))??;
        Ok(WriterThread { tx: std::sync::Mutex::new(Some(tx)), done: std::sync::Mutex::new(Some(handle)) })
    }

    /// Runs `f` on the writer connection and returns its result. `f` may run twice: its first run's
    /// writes are rolled back when another call of its group fails (see `run_group`).
    pub(super) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&mut Connection) -> Result<R> + Send + 'static,
    {
        let (call, rx) = new_call(f);
        let sender = self.tx.lock().ok().and_then(|s| s.clone()).ok_or(StoreError::Closed)?;
        sender.send(call).map_err(|_| StoreError::Closed)?;
        // Not held while waiting, so that `close` does not wait for callers.
        drop(sender);
        rx.await.map_err(|_| StoreError::Sqlite("the write was abandoned (it panicked; see the log)".into()))?
    }

    /// Lets the thread finish the calls already queued, then closes the connection.
    pub(super) async fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.done.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// A lifecycle change (see `Store::apply_change`), all or nothing (a savepoint).
pub(super) fn apply_change(conn: &mut Connection, ch: &super::CaseChange) -> Result<super::ChangeOutcome> {
    use super::ChangeOutcome;
    let tx = conn.savepoint()?;
    if let Some(k) = &ch.inbox {
        let n =
            prepared(&tx, sql::INBOX)?.execute(params![k.endpoint, k.webhook_id, ch.case_id, k.digest, ch.now_ms])?;
        if n == 0 {
            let digest: String =
                prepared(&tx, sql::INBOX_DIGEST)?.query_row(params![k.endpoint, k.webhook_id], |r| r.get(0))?;
            return Ok(ChangeOutcome::Duplicate { digest });
        }
    }
    let n = prepared(&tx, sql::CHANGE_CASE)?.execute(params![
        ch.case_id,
        ch.version,
        ch.status,
        ch.ticket_id,
        ch.lifecycle,
        ch.sla_due,
        i64::from(ch.breached),
        ch.now_ms
    ])?;
    if n == 0 {
        // Dropping the savepoint rolls back the inbox row.
        return Ok(ChangeOutcome::Stale);
    }
    {
        let mut log = prepared(&tx, sql::LOG)?;
        for (kind, actor, data) in &ch.log {
            log.execute(params![ch.case_id, kind, actor, data, ch.now_ms])?;
        }
        if let Some((token, expires)) = &ch.survey {
            prepared(&tx, sql::SURVEY)?.execute(params![token, ch.case_id, ch.now_ms, expires])?;
        }
        let mut job = prepared(&tx, sql::JOB)?;
        let mut payload = prepared(&tx, sql::PAYLOAD)?;
        for j in &ch.jobs {
            let id: i64 = job
                .query_row(params![j.event_id, ch.case_id, j.kind, j.destination, j.max_attempts, ch.now_ms], |r| {
                    r.get(0)
                })?;
            payload.execute(params![id, j.payload])?;
        }
    }
    tx.commit()?;
    Ok(ChangeOutcome::Applied)
}

/// A call of `f`, and where its answer will arrive.
fn new_call<R, F>(f: F) -> (Call, oneshot::Receiver<Result<R>>)
where
    R: Send + 'static,
    F: FnMut(&mut Connection) -> Result<R> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    (Box::new(Pending { f, result: None, tx }), rx)
}

/// Runs `group` in one transaction and answers every call after its `COMMIT`; if a call fails,
/// runs each call again in a transaction of its own.
fn run_group(conn: &mut Connection, mut group: Vec<Call>) {
    // A transaction left open (a ROLLBACK that failed while a call unwound) would swallow every
    // later write without making it durable: end it first.
    if !conn.is_autocommit() {
        tracing::error!("The SQLite writer found a transaction left open; rolling it back.");
        let _ = conn.execute_batch("ROLLBACK");
    }
    if group.len() > 1 {
        match run_together(conn, &mut group) {
            Together::Committed(failed) => {
                for call in group {
                    call.answer(failed.as_deref());
                }
                return;
            }
            Together::NotBegun => {
                // Not run: nothing of theirs was written; the callers see their calls abandoned.
                return;
            }
            Together::CallFailed => {
                tracing::debug!(calls = group.len(), "A write of a group failed; running each call alone.");
            }
        }
    }
    for mut call in group {
        if let Some(failed) = run_alone(conn, &mut call) {
            call.answer(failed.as_deref());
        }
    }
}

enum Together {
    /// Every call ran; the `COMMIT` succeeded (`None`) or failed with this error.
    Committed(Option<String>),
    /// `BEGIN` failed; nothing ran.
    NotBegun,
    /// A call failed or panicked; the transaction was rolled back.
    CallFailed,
}

fn begin(conn: &Connection, calls: usize) -> bool {
    match conn.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, calls, "The SQLite writer could not begin a transaction.");
            false
        }
    }
}

/// How one run of a call ended.
enum Ran {
    Ok,
    /// It returned an error; the transaction is still open.
    Failed,
    /// An error (disk full, I/O) made SQLite roll the whole transaction back.
    Ended,
    Panicked,
}

fn run_one(conn: &mut Connection, call: &mut Call) -> Ran {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.run(conn))) {
        Ok(_) if conn.is_autocommit() => Ran::Ended,
        Ok(true) => Ran::Ok,
        Ok(false) => Ran::Failed,
        Err(_) => {
            tracing::error!("A store write panicked; it was rolled back.");
            Ran::Panicked
        }
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

fn commit(conn: &Connection, calls: usize) -> Option<String> {
    let failed = conn.execute_batch("COMMIT").err().map(|e| e.to_string());
    if let Some(e) = &failed {
        tracing::error!(error = %e, calls, "An SQLite write transaction did not commit.");
        rollback(conn);
    }
    failed
}

fn run_together(conn: &mut Connection, group: &mut [Call]) -> Together {
    if !begin(conn, group.len()) {
        return Together::NotBegun;
    }
    for call in group.iter_mut() {
        if !matches!(run_one(conn, call), Ran::Ok) {
            rollback(conn);
            return Together::CallFailed;
        }
    }
    Together::Committed(commit(conn, group.len()))
}

/// Runs `call` in a transaction of its own: what to answer it with, or `None` if it must not be
/// answered (it panicked, or `BEGIN` failed: abandoned).
fn run_alone(conn: &mut Connection, call: &mut Call) -> Option<Option<String>> {
    if !begin(conn, 1) {
        return None;
    }
    match run_one(conn, call) {
        Ran::Ok => Some(commit(conn, 1)),
        Ran::Ended => Some(Some("the transaction was rolled back by an error".to_owned())),
        // Its writes are rolled back. The caller gets the error it returned; a panic left no result,
        // so the answer drops its channel, and the caller sees the call abandoned.
        Ran::Failed | Ran::Panicked => {
            rollback(conn);
            Some(None)
        }
    }
}

/// The customers that own any of `identities`.
pub(super) fn customers_for(conn: &Connection, identities: &[Identity]) -> Result<HashMap<Identity, String>> {
    let mut stmt = conn.prepare_cached("SELECT customer_id FROM identities WHERE kind = ?1 AND value = ?2")?;
    let mut out = HashMap::new();
    for id in identities {
        if out.contains_key(id) {
            continue;
        }
        let found: Option<String> = stmt.query_row(params![id.kind.as_str(), id.value], |r| r.get(0)).optional()?;
        if let Some(customer) = found {
            out.insert(id.clone(), customer);
        }
    }
    Ok(out)
}

/// Of `addresses`, those whose suppression lasts beyond `now_ms`.
pub(super) fn suppressed(conn: &Connection, addresses: &[String], now_ms: i64) -> Result<Vec<String>> {
    matching(conn, "SELECT 1 FROM suppressions WHERE address = ?1 AND until > ?2", addresses, now_ms)
}

/// Of `addresses`, those acknowledged at or after `since_ms`.
pub(super) fn acked_since(conn: &Connection, addresses: &[String], since_ms: i64) -> Result<Vec<String>> {
    matching(conn, "SELECT 1 FROM ack_log WHERE address = ?1 AND last_at >= ?2", addresses, since_ms)
}

/// The addresses for which `sql` (address, time) finds a row.
fn matching(conn: &Connection, sql: &str, addresses: &[String], at: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut out = Vec::new();
    for a in addresses {
        if stmt.exists(params![a, at])? {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// Commits a batch in one transaction: the same rows, in the same order and with the same
/// conflict rules, as the PostgreSQL backend's batch statement (`postgres.rs`), written here
/// one prepared row at a time, which costs nothing without a network between.
/// Its writes are undone by the writer's rollback if it fails (see `run_group`).
pub(super) fn commit_batch(conn: &Connection, items: &[NewCase]) -> Result<Vec<Committed>> {
    let known = customers_for(conn, &checked_identities(items))?;
    let (kept, others) = split_checked(items, &known);
    let out = if kept.is_empty() { Vec::new() } else { commit_items(conn, &kept)? };
    merge_checked(others, out)
}

fn commit_items(conn: &Connection, items: &[NewCase]) -> Result<Vec<Committed>> {
    let mut by_key: Vec<&NewCase> = items.iter().collect();
    by_key.sort_unstable_by(|a, b| (a.channel, &a.external_id).cmp(&(b.channel, &b.external_id)));

    // The message row decides, through UNIQUE (channel, external_id), which items are new.
    let mut inserted: HashSet<&str> = HashSet::new();
    {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO messages (id, case_id, channel, external_id, direction, data, received_at, digest) \
             VALUES (?1, ?2, ?3, ?4, 'inbound', ?5, ?6, ?7) ON CONFLICT (channel, external_id) DO NOTHING",
        )?;
        for it in &by_key {
            let n = stmt.execute(params![
                it.message_id,
                it.case_id,
                it.channel,
                it.external_id,
                it.message_json,
                it.now_ms,
                it.digest
            ])?;
            if n == 1 {
                inserted.insert(&it.message_id);
            }
        }
    }
    let new: Vec<&NewCase> = items.iter().filter(|it| inserted.contains(it.message_id.as_str())).collect();

    let mut existing: HashMap<(&str, &str), Committed> = HashMap::new();
    if new.len() < items.len() {
        let mut stmt = conn.prepare_cached(
            "SELECT c.id, c.case_ref, c.status, m.digest FROM messages m JOIN cases c ON c.id = m.case_id \
             WHERE m.channel = ?1 AND m.external_id = ?2",
        )?;
        for it in items.iter().filter(|it| !inserted.contains(it.message_id.as_str())) {
            let found = stmt
                .query_row(params![it.channel, it.external_id], |r| {
                    Ok((r.get::<_, CaseId>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            if let Some((case_id, case_ref, status, digest)) = found {
                let case_ref = super::common::stored_ref(case_ref)?;
                existing
                    .insert((it.channel, &it.external_id), Committed::Duplicate { case_id, case_ref, status, digest });
            }
        }
    }

    let fresh: Vec<&NewCase> = new.iter().copied().filter(|it| !it.follow_up).collect();
    if !fresh.is_empty() {
        // A new customer is its contacts: the identities rows that name it (and its record is in
        // each of its cases). See migrations/sqlite/0004_no_customers_table.sql.
        let mut identities: BTreeMap<(&str, &str), (&str, i64)> = BTreeMap::new();
        for it in &fresh {
            for id in &it.identities {
                identities.entry((id.kind.as_str(), &id.value)).or_insert((&it.customer_id, it.now_ms));
            }
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO identities (kind, value, customer_id, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (kind, value) DO NOTHING",
        )?;
        for ((kind, value), (customer, now)) in &identities {
            stmt.execute(params![kind, value, customer, now])?;
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO cases (id, seq, case_ref, status, channel, source, customer_id, data, created_at, updated_at, \
             reply_route, sla_due) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11)",
        )?;
        for it in &fresh {
            stmt.execute(params![
                it.case_id,
                it.seq,
                it.case_ref.as_str(),
                it.status,
                it.channel,
                it.source,
                it.customer_id,
                it.case_json,
                it.now_ms,
                it.reply_route,
                it.sla_due
            ])?;
        }
    }
    let mut follow_ups: Vec<&NewCase> = new.iter().copied().filter(|it| it.follow_up).collect();
    follow_ups.sort_unstable_by(|a, b| a.case_id.cmp(&b.case_id));
    if !follow_ups.is_empty() {
        let mut stmt = conn.prepare_cached("UPDATE cases SET updated_at = ?2 WHERE id = ?1")?;
        let mut edit = conn.prepare_cached(
            "UPDATE messages SET data = json_set(data, '$.text', ?4) WHERE channel = ?1 AND external_id = ?2 AND case_id = ?3",
        )?;
        for it in follow_ups {
            stmt.execute(params![it.case_id, it.now_ms])?;
            if let Some((external_id, text)) = &it.edit {
                edit.execute(params![it.channel, external_id, it.case_id, text])?;
            }
        }
    }

    let mut leased: HashMap<&str, Vec<(String, JobId)>> = HashMap::new();
    if new.iter().any(|it| !it.jobs.is_empty()) {
        // A job with `lease_until` goes in leased (its first attempt counted, as a lease would).
        let mut stmt = conn.prepare_cached(
            "INSERT INTO outbox (event_id, case_id, kind, destination, state, attempts, \
             max_attempts, next_attempt_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, CASE WHEN ?7 IS NULL THEN 'pending' ELSE 'leased' END, \
                     CASE WHEN ?7 IS NULL THEN 0 ELSE 1 END, ?5, COALESCE(?7, ?6), ?6, ?6)",
        )?;
        let mut payload = conn.prepare_cached("INSERT INTO outbox_payloads (job_id, payload) VALUES (?1, ?2)")?;
        // In this order, so ids follow creation order within a case.
        for it in &new {
            for j in &it.jobs {
                stmt.execute(params![
                    j.event_id,
                    it.case_id,
                    j.kind,
                    j.destination,
                    j.max_attempts,
                    it.now_ms,
                    j.lease_until
                ])?;
                let id = conn.last_insert_rowid();
                payload.execute(params![id, j.payload])?;
                if j.lease_until.is_some() {
                    leased.entry(it.message_id.as_str()).or_default().push((j.event_id.clone(), JobId(id)));
                }
            }
        }
    }

    let raws: Vec<&NewCase> = new.iter().copied().filter(|it| it.raw.is_some()).collect();
    if !raws.is_empty() {
        let mut stmt =
            conn.prepare_cached("INSERT INTO raw_messages (message_id, channel, raw) VALUES (?1, ?2, ?3)")?;
        for it in raws {
            stmt.execute(params![it.message_id, it.channel, it.raw.as_deref().unwrap_or_default()])?;
        }
    }
    if new.iter().any(|it| !it.attachments.is_empty()) {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO attachments (message_id, name, media_type, size, sha256, truncated, content) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for it in &new {
            for a in &it.attachments {
                stmt.execute(params![
                    it.message_id,
                    a.name,
                    a.media_type,
                    i64::try_from(a.size).unwrap_or(i64::MAX),
                    a.sha256,
                    i64::from(a.truncated),
                    a.content.as_deref()
                ])?;
            }
        }
    }
    let mut acked: BTreeMap<&str, i64> = BTreeMap::new();
    for it in &new {
        if let Some(addr) = &it.ack_address {
            acked.insert(addr, it.now_ms);
        }
    }
    if !acked.is_empty() {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO ack_log (address, last_at) VALUES (?1, ?2) \
             ON CONFLICT (address) DO UPDATE SET last_at = excluded.last_at",
        )?;
        for (addr, at) in acked {
            stmt.execute(params![addr, at])?;
        }
    }

    items
        .iter()
        .map(|it| {
            if inserted.contains(it.message_id.as_str()) {
                Ok(Committed::Created { leased: leased.remove(it.message_id.as_str()).unwrap_or_default() })
            } else {
                existing.get(&(it.channel, it.external_id.as_str())).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("message {}:{} exists without its case", it.channel, it.external_id))
                })
            }
        })
        .collect()
}

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        event_id: r.get(1)?,
        case_id: r.get(2)?,
        kind: r.get(3)?,
        destination: r.get(4)?,
        payload: String::new(),
        state: r.get(5)?,
        attempts: r.get(6)?,
        max_attempts: r.get(7)?,
        next_attempt_at: r.get(8)?,
        last_error: r.get(9)?,
        created_at: r.get(10)?,
        held_by: None,
    })
}

// The other writes of the SQLite store: the same statements as `common.rs` runs on PostgreSQL.

pub(super) fn lease(
    conn: &Connection,
    destination: Option<&str>,
    now_ms: i64,
    until_ms: i64,
    limit: i64,
) -> Result<Vec<Job>> {
    let mut stmt = prepared(conn, &lease_sql(destination.is_some()))?;
    let jobs: rusqlite::Result<Vec<Job>> = match destination {
        Some(d) => stmt.query_map(params![until_ms, now_ms, limit, d], job_from_row)?.collect(),
        None => stmt.query_map(params![until_ms, now_ms, limit], job_from_row)?.collect(),
    };
    let mut jobs = jobs?;
    let mut payload = conn.prepare_cached("SELECT payload FROM outbox_payloads WHERE job_id = ?1")?;
    for job in &mut jobs {
        job.payload = payload.query_row(params![job.id], |r| r.get(0)).optional()?.unwrap_or_default();
    }
    Ok(jobs)
}

/// The outcomes of a batch of deliveries, all or none (the writer rolls back a call that fails).
pub(super) fn record_outcomes(conn: &Connection, outcomes: &[JobOutcome], now_ms: i64) -> Result<Vec<bool>> {
    let mut counted = Vec::with_capacity(outcomes.len());
    {
        let mut stmt = prepared(conn, sql::RECORD_OUTCOME)?;
        let mut ticket = conn.prepare_cached("UPDATE cases SET ticket_id = ?2, updated_at = ?3 WHERE id = ?1")?;
        let mut acked = conn.prepare_cached(
            "UPDATE cases SET status = 'acknowledged', version = version + 1, updated_at = ?2 \
             WHERE id = ?1 AND status = 'new'",
        )?;
        for o in outcomes {
            let (state, next, error, delta) = o.kind.columns(now_ms);
            let (provider, segments) = match &o.kind {
                OutcomeKind::Done { provider_id, segments, .. } => (provider_id.as_deref(), *segments),
                _ => (None, None),
            };
            let n = stmt.execute(params![o.id, o.attempts, state, next, error, delta, now_ms, provider, segments])?;
            counted.push(n == 1);
            let OutcomeKind::Done { case_id, ticket_id, acknowledges, .. } = &o.kind else { continue };
            if n != 1 || case_id.as_str().is_empty() {
                continue;
            }
            if let Some(t) = ticket_id {
                ticket.execute(params![case_id, t, now_ms])?;
            }
            if *acknowledges {
                acked.execute(params![case_id, now_ms])?;
            }
        }
    }
    Ok(counted)
}

pub(super) fn discard(conn: &Connection, id: JobId, now_ms: i64) -> Result<bool> {
    Ok(prepared(conn, sql::DISCARD_DEAD)?.execute(params![now_ms, id])? == 1)
}

/// Deletes the jobs of `ids` that are still done or discarded before `cutoff_ms`, all or none.
pub(super) fn delete_done(conn: &mut Connection, ids: &[i64], cutoff_ms: i64) -> Result<u64> {
    let tx = conn.savepoint()?;
    let mut n = 0;
    {
        let mut stmt = tx.prepare_cached(
            "DELETE FROM outbox WHERE id = ?1 AND state IN ('done', 'discarded') AND updated_at < ?2",
        )?;
        let mut payload = tx.prepare_cached("DELETE FROM outbox_payloads WHERE job_id = ?1")?;
        for id in ids {
            if stmt.execute(params![id, cutoff_ms])? == 1 {
                payload.execute(params![id])?;
                n += 1;
            }
        }
    }
    tx.commit()?;
    Ok(n)
}

pub(super) fn replay(conn: &Connection, id: Option<JobId>, now_ms: i64) -> Result<u64> {
    let n = match id {
        Some(id) => prepared(conn, sql::REPLAY_DEAD)?.execute(params![now_ms, id])?,
        None => prepared(conn, sql::REPLAY_ALL_DEAD)?.execute(params![now_ms])?,
    };
    Ok(n as u64)
}

pub(super) fn save_cursor(conn: &Connection, name: &str, value: &str, now_ms: i64) -> Result<()> {
    prepared(conn, sql::SAVE_CURSOR)?.execute(params![name, value, now_ms])?;
    Ok(())
}

pub(super) fn try_lease(conn: &Connection, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
    Ok(prepared(conn, sql::TRY_LEASE)?.execute(params![name, holder, now_ms + ttl_ms, now_ms])? == 1)
}

pub(super) fn release_lease(conn: &Connection, name: &str, holder: &str) -> Result<()> {
    prepared(conn, sql::RELEASE_LEASE)?.execute(params![name, holder])?;
    Ok(())
}

pub(super) fn quarantine(
    conn: &Connection,
    channel: &str,
    source: &str,
    reason: &str,
    raw: &[u8],
    now_ms: i64,
) -> Result<i64> {
    let digest = earshot_channel::sha256_hex(raw);
    let inserted: Option<i64> = prepared(conn, sql::QUARANTINE)?
        .query_row(params![channel, source, reason, raw, now_ms, digest], |r| r.get(0))
        .optional()?;
    match inserted {
        Some(id) => Ok(id),
        None => Ok(prepared(conn, sql::QUARANTINED)?.query_row(params![channel, source, digest], |r| r.get(0))?),
    }
}

pub(super) fn record_event(conn: &Connection, e: &NewEvent) -> Result<bool> {
    let n = prepared(conn, sql::RECORD_EVENT)?.execute(params![
        e.channel,
        e.source,
        e.kind,
        e.external_id,
        e.sender,
        e.subject,
        e.data,
        e.raw.as_deref(),
        e.now_ms
    ])?;
    Ok(n == 1)
}

pub(super) fn suppress(conn: &Connection, address: &str, reason: &str, until_ms: i64) -> Result<()> {
    prepared(conn, sql::SUPPRESS)?.execute(params![address, reason, until_ms])?;
    Ok(())
}

pub(super) fn update_message(conn: &Connection, message_id: &str, data: &str) -> Result<()> {
    prepared(conn, sql::UPDATE_MESSAGE)?.execute(params![message_id, data])?;
    Ok(())
}

/// One of the shared statements of `common::sql`, prepared once per connection.
fn prepared<'c>(conn: &'c Connection, sql: &str) -> Result<rusqlite::CachedStatement<'c>> {
    Ok(conn.prepare_cached(&numbered(sql))?)
}

/// The highest case sequence number stored.
pub(super) fn max_seq(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM cases", [], |r| r.get(0))?)
}

// The customer check of cases rendered ahead (`NewCase::check_customer`); PostgreSQL does the same
// in its batch statement (`known` and `other` in `postgres::commit_in_one_statement`).

/// The customer a new case must have instead of its own, if one of its contacts is known: the
/// first known contact in the case's order decides, as when the writer looks up customers itself.
fn other_customer(item: &NewCase, known: &HashMap<Identity, String>) -> Option<String> {
    if !item.check_customer || item.follow_up {
        return None;
    }
    item.identities.iter().find_map(|i| known.get(i)).filter(|c| **c != item.customer_id).cloned()
}

/// The items to write (those `other_customer` does not send back) and, in the order of
/// `items`, the customer each one sent back must have.
fn split_checked<'a>(
    items: &'a [NewCase],
    known: &HashMap<Identity, String>,
) -> (std::borrow::Cow<'a, [NewCase]>, Vec<Option<String>>) {
    let others: Vec<Option<String>> = items.iter().map(|it| other_customer(it, known)).collect();
    if others.iter().all(Option::is_none) {
        return (std::borrow::Cow::Borrowed(items), others);
    }
    let kept = items.iter().zip(&others).filter(|(_, o)| o.is_none()).map(|(it, _)| it.clone()).collect();
    (std::borrow::Cow::Owned(kept), others)
}

/// The answers for every item: those sent back, and those written (`done`, in order).
fn merge_checked(others: Vec<Option<String>>, done: Vec<Committed>) -> Result<Vec<Committed>> {
    let mut done = done.into_iter();
    others
        .into_iter()
        .map(|o| match o {
            Some(customer_id) => Ok(Committed::OtherCustomer { customer_id }),
            None => done.next().ok_or_else(|| StoreError::Corrupt("a batch answer is missing".into())),
        })
        .collect()
}

/// The contacts of the items whose customer the store has to check.
fn checked_identities(items: &[NewCase]) -> Vec<Identity> {
    items.iter().filter(|it| it.check_customer && !it.follow_up).flat_map(|it| it.identities.iter().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (v INTEGER)").expect("create");
        conn
    }

    fn values(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").expect("prepare");
        stmt.query_map([], |r| r.get(0)).expect("query").collect::<rusqlite::Result<_>>().expect("rows")
    }

    /// Inserts `v`; counts its runs.
    fn insert(
        v: i64,
        runs: &std::sync::Arc<std::sync::atomic::AtomicU32>,
    ) -> impl FnMut(&mut Connection) -> Result<i64> + Send + use<> {
        let runs = runs.clone();
        move |c| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            c.execute("INSERT INTO t VALUES (?1)", [v])?;
            Ok(v)
        }
    }

    #[test]
    fn a_group_runs_each_call_once_and_commits_once() {
        let mut conn = table();
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (a, ra) = new_call(insert(1, &runs));
        let (b, rb) = new_call(insert(2, &runs));
        run_group(&mut conn, vec![a, b]);
        assert_eq!(ra.blocking_recv().expect("answered").expect("ok"), 1);
        assert_eq!(rb.blocking_recv().expect("answered").expect("ok"), 2);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2, "no call ran twice");
        assert_eq!(values(&conn), [1, 2]);
        assert!(conn.is_autocommit(), "committed");
    }

    #[test]
    fn a_call_that_fails_or_panics_fails_alone_and_leaves_no_writes() {
        let mut conn = table();
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (a, ra) = new_call(insert(1, &runs));
        let (failing, rf) = new_call(|c: &mut Connection| -> Result<i64> {
            c.execute("INSERT INTO t VALUES (20)", [])?;
            Err(StoreError::Sqlite("refused after writing".into()))
        });
        let (panicking, rp) = new_call(|c: &mut Connection| -> Result<i64> {
            c.execute("INSERT INTO t VALUES (30)", [])?;
            panic!("a bug in a write")
        });
        let (d, rd) = new_call(insert(4, &runs));
        run_group(&mut conn, vec![a, failing, panicking, d]);
        assert_eq!(ra.blocking_recv().expect("answered").expect("ok"), 1);
        match rf.blocking_recv().expect("answered") {
            Err(StoreError::Sqlite(e)) => assert_eq!(e, "refused after writing"),
            other => panic!("the failing call gets its own error: {other:?}"),
        }
        assert!(rp.blocking_recv().is_err(), "the panicking call is abandoned");
        assert_eq!(rd.blocking_recv().expect("answered").expect("ok"), 4);
        assert_eq!(values(&conn), [1, 4], "only the calls that succeeded wrote, once each");
        assert!(conn.is_autocommit());
    }
}
