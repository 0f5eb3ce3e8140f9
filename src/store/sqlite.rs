//! SQLite backend: WAL, `synchronous=FULL`, one writer connection.
//!
//! Every write goes through one connection owned by one thread (`sqlite_writer`), so SQLite never
//! sees two writers from this process and no transaction waits on a busy lock; reads use a pool of
//! sqlx connections. Case sequence numbers come from an in-memory counter seeded from the file,
//! which is sound because only one process writes an SQLite store (use PostgreSQL for several
//! instances).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::OnceCell;

super::common::shared_queries!(sqlx::Sqlite);

use super::sqlite_writer::{self, WriterThread};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    /// Options of the sqlx connections: the readers, and the short-lived one that runs migrations.
    opts: SqliteConnectOptions,
    read: SqlitePool,
    /// The one connection that writes (see `sqlite_writer`).
    writer: WriterThread,
    seq: OnceCell<AtomicI64>,
}

impl SqliteStore {
    pub async fn open(url: &str, readers: u32) -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false);
        let file = opts.get_filename().to_path_buf();
        // Writes go through a connection of their own (`sqlite_writer`), which an in-memory
        // database would not share with the readers.
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(super::StoreError::Sqlite(format!(
                "{url}: an in-memory SQLite database is not supported; give a file path"
            )));
        }
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        // Creates the file in WAL mode before the writer opens it.
        let read = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .min_connections(1)
            // No ping before each acquire: an SQLite connection is a file handle, which cannot go
            // stale the way a network connection can.
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        // The writer checkpoints the WAL less often, so a page written by many batches reaches the
        // database file once. Durability is unchanged: every commit is still fsynced to the WAL
        // (synchronous=FULL).
        //
        // Its page cache is 8 MiB and no larger, because of how SQLite pays for a big one: a page
        // split (balance_nonroot) swaps page numbers through the lock page's number (page 262,145
        // with 4 KiB pages), which leaves that number as the cache's highest key; the end of every
        // transaction then scans the cache's whole hash table, since the database (under 1 GiB) is
        // smaller than that key. With 32 MiB of cache the scan took 100 µs per commit, on the one
        // serial step; with 8 MiB it is a quarter of that. Measured in alternating 10 s closed-loop
        // runs: 17,300-18,200 complaints/s against 14,800-15,700 with 32 MiB on a new database, and
        // no difference on a 1.5 GB one (1,000,000 cases), where the scan does not happen.
        //
        // Statements with `ON CONFLICT` need a statement journal; with the default temp_store it
        // spills to a new temporary file in /var/tmp on every batch (open, write, unlink, close). In
        // memory it costs nothing, and it never had to survive a crash.
        let writer_pragmas: Vec<(&'static str, String)> = vec![
            ("journal_mode", "WAL".into()),
            ("synchronous", "FULL".into()),
            ("busy_timeout", "10000".into()),
            ("foreign_keys", "OFF".into()),
            ("cache_size", "-8192".into()),
            ("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES.into()),
            ("temp_store", "MEMORY".into()),
        ];
        let writer = WriterThread::open(&file, &writer_pragmas).await?;
        spawn_checkpointer(read.clone(), file.clone());
        Ok(SqliteStore { opts, read, writer, seq: OnceCell::new() })
    }
}

/// The writer checkpoints by itself only when the WAL has grown this large (pages of 4 KiB, so
/// 256 MiB). Under sustained load the WAL never starts over by itself: the background checkpointer
/// copies the frames that were there when it started, and the writer has added more by the time
/// it ends. So the writer's own checkpoint is what lets the WAL start over, and it copies what the
/// background one has not yet (up to its 250 ms); it is also the safety net for when the
/// background checkpointer falls behind. At 64 MiB the writer spent 15% of its time in it and
/// stalled its batch each time (closed-loop p99 36 ms); at 256 MiB 5-7% more complaints/s and a
/// p99 of 8 ms, in alternating 20 s runs (1 GiB was slower). A quiet gateway never reaches it.
const WRITER_AUTOCHECKPOINT_PAGES: &str = "65536";
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed WAL pages into the database file off the writer's path, and makes them durable
/// there.
///
/// A checkpoint run by the writer (SQLite's automatic one) stalls every request waiting on that
/// batch for as long as it writes and fsyncs the database file. A PASSIVE checkpoint on a reader
/// connection runs beside the writer instead, and never blocks it.
///
/// SQLite's PASSIVE checkpoint fsyncs the database file only when it has copied the whole WAL. Under
/// steady load a commit nearly always lands while it copies, so the pages it wrote stayed in the
/// page cache, unsynced, until the writer's own checkpoint (at [`WRITER_AUTOCHECKPOINT_PAGES`])
/// fsynced all of them at once, inside a commit. On a store grown by a burst, that was 40-90 ms
/// every ten seconds or so at 1,000 complaints/s (seen with strace), and the intake p99 went from
/// 4 ms to 40 ms. So a background checkpoint that copied pages is followed by an fsync of the
/// database file here, on a blocking thread: each one flushes a quarter of a second's pages, and the
/// writer's checkpoint finds little left to sync. In alternating runs (a 30 s closed-loop burst, then
/// 30 s at 1,000/s on the same store), the open-loop p99 was 12.6, 18.1 and 15.8 ms with it against
/// 40.5, 34.2 and 38.9 ms without, and no intake commit took over 50 ms against 5 to 8. It costs
/// disk writes: a hot page (a B-tree's interior, the end of an index that only grows) now reaches
/// the disk up to four times a second. The burst rates of those runs did not differ (5,100-6,900/s
/// against 4,200-7,500/s on a noisy machine); two pairs of 15 s runs were 9-12% slower with it.
/// Skipping a sync is always safe (the WAL keeps every frame until a checkpoint that did sync lets
/// it start over); it only leaves the flush to the writer.
fn spawn_checkpointer(read: SqlitePool, file: std::path::PathBuf) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let db = match tokio::fs::File::open(&file).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "Cannot open the database file to sync checkpoints; the writer's checkpoint syncs them.");
                None
            }
        };
        // Frames copied to the database file as of the round before (the count starts over with the WAL).
        let mut copied_before = 0i64;
        loop {
            tick.tick().await;
            if read.is_closed() {
                return;
            }
            // (busy, frames in the WAL, frames copied to the database file)
            let copied = match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&read).await
            {
                Ok((_, _, copied)) => copied,
                Err(e) => {
                    if read.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "background WAL checkpoint failed; the writer's own checkpoint still runs");
                    continue;
                }
            };
            let this_round = if copied >= copied_before { copied - copied_before } else { copied };
            copied_before = copied.max(0);
            tracing::trace!(pages = this_round, "Background WAL checkpoint round.");
            if let Some(db) = db.as_ref().filter(|_| this_round > 0) {
                // tokio runs the fsync on its blocking pool, off the request workers.
                if let Err(e) = db.sync_data().await {
                    tracing::warn!(error = %e, "Could not sync the database file after a checkpoint; the writer's checkpoint syncs it.");
                }
            }
        }
    });
}

#[async_trait]
impl super::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<()> {
        // On a connection of its own, closed afterwards: sqlx's migrator needs an sqlx connection,
        // and the writer thread does not take new work while it runs (nothing is queued yet).
        let opts = super::for_migrations(self.opts.clone());
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        let ran = MIGRATOR.run(&pool).await;
        pool.close().await;
        ran?;
        Ok(())
    }

    async fn ready(&self) -> Result<()> {
        let applied = applied_migrations(&mut *self.read.acquire().await?).await?;
        if applied < MIGRATOR.iter().count() as i64 {
            return Err(super::StoreError::Corrupt(format!(
                "{applied} migrations applied, {} known",
                MIGRATOR.iter().count()
            )));
        }
        Ok(())
    }

    async fn next_seqs(&self, n: usize) -> Result<Vec<i64>> {
        let counter = self
            .seq
            .get_or_try_init(|| async {
                let max = self.writer.call(|c| sqlite_writer::max_seq(c)).await?;
                Ok::<_, super::StoreError>(AtomicI64::new(max))
            })
            .await?;
        let first = counter.fetch_add(n as i64, Ordering::Relaxed) + 1;
        Ok((first..first + n as i64).collect())
    }

    // The intake writer's reads (customers, suppressions, recent acknowledgements) go through the
    // writer connection: its page cache is hot and stays valid, whereas a reader connection drops
    // its whole cache each time it sees that the writer committed, i.e. on every batch.
    async fn customers_for(&self, identities: &[Identity]) -> Result<HashMap<Identity, String>> {
        let identities = identities.to_vec();
        self.writer.call(move |conn| sqlite_writer::customers_for(conn, &identities)).await
    }

    async fn commit_batch(&self, items: Arc<Vec<NewCase>>) -> Result<Vec<Committed>> {
        self.writer.call(move |conn| sqlite_writer::commit_batch(conn, &items)).await
    }

    async fn lease_jobs(
        &self,
        destination: Option<&super::Destination>,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<Job>> {
        let destination = destination.map(ToString::to_string);
        self.writer.call(move |c| sqlite_writer::lease(c, destination.as_deref(), now_ms, lease_until_ms, limit)).await
    }

    async fn record_outcomes(&self, outcomes: Vec<super::JobOutcome>, now_ms: i64) -> Result<Vec<bool>> {
        self.writer.call(move |c| sqlite_writer::record_outcomes(c, &outcomes, now_ms)).await
    }

    async fn discard_job(&self, id: super::JobId, now_ms: i64) -> Result<bool> {
        self.writer.call(move |c| sqlite_writer::discard(c, id, now_ms)).await
    }

    async fn purge_done(&self, after: i64, cutoff_ms: i64, limit: i64) -> Result<super::Purged> {
        // Read on a reader connection; only the delete goes through the writer.
        let rows = jobs_after(&mut *self.read.acquire().await?, after, limit).await?;
        let (ids, purged) = super::common::purge_plan(&rows, after, cutoff_ms, limit);
        if ids.is_empty() {
            return Ok(purged);
        }
        let deleted = self.writer.call(move |c| sqlite_writer::delete_done(c, &ids, cutoff_ms)).await?;
        Ok(super::Purged { deleted, ..purged })
    }

    async fn outbox_backlog(&self) -> Result<Vec<super::Backlog>> {
        outbox_backlog(&mut *self.read.acquire().await?).await
    }

    async fn job_destinations(&self) -> Result<Vec<super::Destination>> {
        job_destinations(&mut *self.read.acquire().await?).await
    }

    async fn list_jobs(&self, state: Option<&str>, limit: i64) -> Result<Vec<Job>> {
        list_jobs(&mut *self.read.acquire().await?, state, limit).await
    }

    async fn replay_job(&self, id: super::JobId, now_ms: i64) -> Result<bool> {
        Ok(self.writer.call(move |c| sqlite_writer::replay(c, Some(id), now_ms)).await? == 1)
    }

    async fn replay_all_dead(&self, now_ms: i64) -> Result<u64> {
        self.writer.call(move |c| sqlite_writer::replay(c, None, now_ms)).await
    }

    async fn job_counts(&self) -> Result<Vec<(String, i64)>> {
        job_counts(&mut *self.read.acquire().await?).await
    }

    async fn list_cases(&self, limit: i64) -> Result<Vec<CaseRow>> {
        list_cases(&mut *self.read.acquire().await?, limit).await
    }

    async fn get_case(&self, id: &super::CaseId) -> Result<Option<(CaseRow, Vec<String>)>> {
        get_case(&mut *self.read.acquire().await?, id).await
    }

    async fn customer_cases(
        &self,
        customer_id: &str,
        channel: &str,
        seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CaseRow>> {
        customer_cases(&mut *self.read.acquire().await?, customer_id, channel, seq, limit).await
    }

    async fn open_case_of(&self, customer_id: &str, channel: &str, since_ms: i64) -> Result<Option<super::CaseId>> {
        open_case_of(&mut *self.read.acquire().await?, customer_id, channel, since_ms).await
    }

    async fn count_cases(&self) -> Result<i64> {
        count_cases(&mut *self.read.acquire().await?).await
    }

    async fn find_thread(
        &self,
        channel: &str,
        message_ids: &[String],
        event_ids: &[String],
        refs: &[String],
    ) -> Result<Vec<super::ThreadHit>> {
        find_thread(&mut *self.read.acquire().await?, channel, message_ids, event_ids, refs).await
    }

    async fn job_by_event_id(&self, event_id: &str) -> Result<Option<Job>> {
        job_by_event_id(&mut *self.read.acquire().await?, event_id).await
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<String>> {
        load_cursor(&mut *self.read.acquire().await?, name).await
    }

    async fn save_cursor(&self, name: &str, value: &str, now_ms: i64) -> Result<()> {
        let (name, value) = (name.to_owned(), value.to_owned());
        self.writer.call(move |c| sqlite_writer::save_cursor(c, &name, &value, now_ms)).await
    }

    async fn try_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.writer.call(move |c| sqlite_writer::try_lease(c, &name, &holder, now_ms, ttl_ms)).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.writer.call(move |c| sqlite_writer::release_lease(c, &name, &holder)).await
    }

    async fn quarantine(&self, channel: &str, source: &str, reason: &str, raw: &[u8], now_ms: i64) -> Result<i64> {
        let (channel, source, reason, raw) = (channel.to_owned(), source.to_owned(), reason.to_owned(), raw.to_vec());
        self.writer.call(move |c| sqlite_writer::quarantine(c, &channel, &source, &reason, &raw, now_ms)).await
    }

    async fn list_quarantine(&self, limit: i64) -> Result<Vec<super::QuarantineRow>> {
        list_quarantine(&mut *self.read.acquire().await?, limit).await
    }

    async fn has_event(&self, channel: &str, external_id: &str) -> Result<bool> {
        has_event(&mut *self.read.acquire().await?, channel, external_id).await
    }

    async fn record_event(&self, event: &super::NewEvent) -> Result<bool> {
        let event = event.clone();
        self.writer.call(move |c| sqlite_writer::record_event(c, &event)).await
    }

    async fn count_events(&self, kind: Option<&str>) -> Result<i64> {
        count_events(&mut *self.read.acquire().await?, kind).await
    }

    async fn suppress(&self, address: &str, reason: &str, until_ms: i64) -> Result<()> {
        let (address, reason) = (address.to_owned(), reason.to_owned());
        self.writer.call(move |c| sqlite_writer::suppress(c, &address, &reason, until_ms)).await
    }

    async fn suppressed(&self, addresses: &[String], now_ms: i64) -> Result<Vec<String>> {
        let addresses = addresses.to_vec();
        self.writer.call(move |conn| sqlite_writer::suppressed(conn, &addresses, now_ms)).await
    }

    async fn acked_since(&self, addresses: &[String], since_ms: i64) -> Result<Vec<String>> {
        let addresses = addresses.to_vec();
        self.writer.call(move |conn| sqlite_writer::acked_since(conn, &addresses, since_ms)).await
    }

    async fn raw_messages(&self, after: &str, limit: i64) -> Result<Vec<(String, String, Vec<u8>, String)>> {
        raw_messages(&mut *self.read.acquire().await?, after, limit).await
    }

    async fn update_message(&self, message_id: &str, data: &str) -> Result<()> {
        let (message_id, data) = (message_id.to_owned(), data.to_owned());
        self.writer.call(move |c| sqlite_writer::update_message(c, &message_id, &data)).await
    }

    async fn apply_change(&self, ch: super::CaseChange) -> Result<super::ChangeOutcome> {
        self.writer.call(move |c| sqlite_writer::apply_change(c, &ch)).await
    }

    async fn inbox_digest(&self, endpoint: &str, webhook_id: &str) -> Result<Option<String>> {
        inbox_digest(&mut *self.read.acquire().await?, endpoint, webhook_id).await
    }

    async fn sla_due_cases(&self, now_ms: i64, limit: i64) -> Result<Vec<super::CaseId>> {
        sla_due_cases(&mut *self.read.acquire().await?, now_ms, limit).await
    }

    async fn survey(&self, token: &str) -> Result<Option<(super::CaseId, i64)>> {
        survey(&mut *self.read.acquire().await?, token).await
    }

    async fn case_log(&self, case_id: &super::CaseId) -> Result<Vec<super::LogEntry>> {
        case_log(&mut *self.read.acquire().await?, case_id).await
    }

    async fn case_jobs(&self, case_id: &super::CaseId) -> Result<Vec<Job>> {
        case_jobs(&mut *self.read.acquire().await?, case_id).await
    }

    async fn search_cases(&self, filter: &super::CaseFilter) -> Result<Vec<CaseRow>> {
        search_cases(&mut *self.read.acquire().await?, filter).await
    }

    async fn close(&self) {
        self.read.close().await;
        self.writer.close().await;
    }
}
