//! SQLite backend: WAL, `synchronous=FULL`, one writer connection.
//!
//! All writes go through a pool of exactly one connection, so SQLite never sees two writers from this
//! process and no transaction waits on a busy lock; reads use their own pool. Case sequence numbers come
//! from an in-memory counter seeded from the file, which is sound because only one process writes an
//! SQLite store (use PostgreSQL for several instances).

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::OnceCell;

super::common::shared_queries!(sqlx::Sqlite);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    seq: OnceCell<AtomicI64>,
}

impl SqliteStore {
    pub async fn open(url: &str, readers: u32) -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false)
            // Batch inserts have one SQL text per batch size and table; keep them all prepared.
            .statement_cache_capacity(4096);
        let file = opts.get_filename().to_path_buf();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        // The writer keeps a larger page cache (index pages of random keys stay hot) and checkpoints
        // the WAL less often, so a page written by many batches reaches the database file once.
        // Durability is unchanged: every commit is still fsynced to the WAL (synchronous=FULL).
        //
        // Multi-row `INSERT … ON CONFLICT` statements need a statement journal; with the default
        // temp_store it spills to a new temporary file in /var/tmp on every batch (open, write,
        // unlink, close). In memory it costs nothing, and it never had to survive a crash.
        let write_opts = opts
            .clone()
            .pragma("cache_size", "-32768")
            .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .pragma("temp_store", "MEMORY");
        let write = SqlitePoolOptions::new().max_connections(1).min_connections(1).connect_with(write_opts).await?;
        let read = SqlitePoolOptions::new().max_connections(readers.max(1)).connect_with(opts).await?;
        spawn_checkpointer(read.clone());
        Ok(SqliteStore { write, read, seq: OnceCell::new() })
    }
}

/// The writer checkpoints by itself only when the WAL has grown this large (pages of 4 KiB, so
/// 64 MiB): the background checkpointer has by then copied nearly all of it, so the writer only
/// finishes the rest and lets the WAL start over. It is also the safety net for when the
/// background checkpointer falls behind.
const WRITER_AUTOCHECKPOINT_PAGES: &str = "16384";
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed WAL pages into the database file off the writer's path.
///
/// A checkpoint run by the writer (SQLite's automatic one) stalls every request waiting on that
/// batch for as long as it writes and fsyncs the database file. A PASSIVE checkpoint on a reader
/// connection runs beside the writer instead, and never blocks it.
fn spawn_checkpointer(read: SqlitePool) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if read.is_closed() {
                return;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&read).await {
                if read.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "background WAL checkpoint failed; the writer's own checkpoint still runs");
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
        MIGRATOR.run(&self.write).await?;
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
                let max: i64 =
                    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM cases").fetch_one(&self.write).await?;
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
        customers_for(&mut *self.write.acquire().await?, identities).await
    }

    async fn commit_batch(&self, items: &[NewCase]) -> Result<Vec<Committed>> {
        let mut tx = self.write.begin().await?;
        let out = commit_items(&mut tx, items).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn lease_jobs(&self, now_ms: i64, lease_until_ms: i64, limit: i64) -> Result<Vec<Job>> {
        lease(&mut *self.write.acquire().await?, "", now_ms, lease_until_ms, limit).await
    }

    async fn complete_job(&self, id: i64, attempts: i64, now_ms: i64) -> Result<bool> {
        complete(&mut *self.write.acquire().await?, id, attempts, now_ms).await
    }

    async fn fail_job(&self, id: i64, attempts: i64, next_ms: Option<i64>, error: &str, now_ms: i64) -> Result<bool> {
        fail(&mut *self.write.acquire().await?, id, attempts, next_ms, error, now_ms).await
    }

    async fn set_ticket_id(&self, case_id: &str, ticket_id: &str, now_ms: i64) -> Result<()> {
        set_ticket(&mut *self.write.acquire().await?, case_id, ticket_id, now_ms).await
    }

    async fn list_jobs(&self, state: Option<&str>, limit: i64) -> Result<Vec<Job>> {
        list_jobs(&mut *self.read.acquire().await?, state, limit).await
    }

    async fn replay_job(&self, id: i64, now_ms: i64) -> Result<bool> {
        Ok(replay(&mut *self.write.acquire().await?, Some(id), now_ms).await? == 1)
    }

    async fn replay_all_dead(&self, now_ms: i64) -> Result<u64> {
        replay(&mut *self.write.acquire().await?, None, now_ms).await
    }

    async fn job_counts(&self) -> Result<Vec<(String, i64)>> {
        job_counts(&mut *self.read.acquire().await?).await
    }

    async fn list_cases(&self, limit: i64) -> Result<Vec<CaseRow>> {
        list_cases(&mut *self.read.acquire().await?, limit).await
    }

    async fn get_case(&self, id: &str) -> Result<Option<(CaseRow, Vec<String>)>> {
        get_case(&mut *self.read.acquire().await?, id).await
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
        save_cursor(&mut *self.write.acquire().await?, name, value, now_ms).await
    }

    async fn try_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        try_lease(&mut *self.write.acquire().await?, name, holder, now_ms, ttl_ms).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        release_lease(&mut *self.write.acquire().await?, name, holder).await
    }

    async fn quarantine(&self, channel: &str, source: &str, reason: &str, raw: &[u8], now_ms: i64) -> Result<i64> {
        quarantine(&mut *self.write.acquire().await?, channel, source, reason, raw, now_ms).await
    }

    async fn list_quarantine(&self, limit: i64) -> Result<Vec<super::QuarantineRow>> {
        list_quarantine(&mut *self.read.acquire().await?, limit).await
    }

    async fn has_event(&self, channel: &str, external_id: &str) -> Result<bool> {
        has_event(&mut *self.read.acquire().await?, channel, external_id).await
    }

    async fn record_event(&self, event: &super::NewEvent) -> Result<bool> {
        record_event(&mut *self.write.acquire().await?, event).await
    }

    async fn count_events(&self, kind: Option<&str>) -> Result<i64> {
        count_events(&mut *self.read.acquire().await?, kind).await
    }

    async fn suppress(&self, address: &str, reason: &str, until_ms: i64) -> Result<()> {
        suppress(&mut *self.write.acquire().await?, address, reason, until_ms).await
    }

    async fn suppressed(&self, addresses: &[String], now_ms: i64) -> Result<Vec<String>> {
        suppressed(&mut *self.write.acquire().await?, addresses, now_ms).await
    }

    async fn acked_since(&self, addresses: &[String], since_ms: i64) -> Result<Vec<String>> {
        acked_since(&mut *self.write.acquire().await?, addresses, since_ms).await
    }

    async fn raw_messages(&self, after: &str, limit: i64) -> Result<Vec<(String, String, Vec<u8>, String)>> {
        raw_messages(&mut *self.read.acquire().await?, after, limit).await
    }

    async fn update_message(&self, message_id: &str, data: &str) -> Result<()> {
        update_message(&mut *self.write.acquire().await?, message_id, data).await
    }

    async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}
