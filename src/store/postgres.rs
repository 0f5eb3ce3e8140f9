//! PostgreSQL backend, for several gateway instances sharing one database.
//!
//! Leasing uses `FOR UPDATE SKIP LOCKED`, so instances never deliver one job at once; case sequence
//! numbers come from the `case_seq` sequence; exact dedup rests on the UNIQUE index, which also holds
//! between instances (a concurrent insert of the same key waits for the other commit, then skips).

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

super::common::shared_queries!(sqlx::Postgres);
super::common::write_queries!(sqlx::Postgres);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(10))
            // sqlx already pings every connection when it comes back to the pool; a second ping
            // before each use is one more round trip on the intake writer's path, twice a batch.
            // A connection broken while idle (a server restart) fails its first query instead,
            // which the writer answers with 503 and the pool then drops.
            .test_before_acquire(false)
            .connect(url)
            .await?;
        Ok(PgStore { pool })
    }
}

#[async_trait]
impl super::Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ready(&self) -> Result<()> {
        let applied = applied_migrations(&mut *self.pool.acquire().await?).await?;
        if applied < MIGRATOR.iter().count() as i64 {
            return Err(super::StoreError::Corrupt(format!(
                "{applied} migrations applied, {} known",
                MIGRATOR.iter().count()
            )));
        }
        Ok(())
    }

    async fn next_seqs(&self, n: usize) -> Result<Vec<i64>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar("SELECT nextval('case_seq') FROM generate_series(1, $1)")
            .bind(n as i32)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn customers_for(&self, identities: &[Identity]) -> Result<HashMap<Identity, String>> {
        customers_for(&mut *self.pool.acquire().await?, identities).await
    }

    async fn commit_batch(&self, items: &[NewCase]) -> Result<Vec<Committed>> {
        let mut tx = self.pool.begin().await?;
        let out = commit_items(&mut tx, items).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn lease_jobs(&self, now_ms: i64, lease_until_ms: i64, limit: i64) -> Result<Vec<Job>> {
        lease(&mut *self.pool.acquire().await?, "FOR UPDATE SKIP LOCKED", now_ms, lease_until_ms, limit).await
    }

    async fn complete_job(&self, id: i64, attempts: i64, now_ms: i64) -> Result<bool> {
        complete(&mut *self.pool.acquire().await?, id, attempts, now_ms).await
    }

    async fn fail_job(&self, id: i64, attempts: i64, next_ms: Option<i64>, error: &str, now_ms: i64) -> Result<bool> {
        fail(&mut *self.pool.acquire().await?, id, attempts, next_ms, error, now_ms).await
    }

    async fn set_ticket_id(&self, case_id: &str, ticket_id: &str, now_ms: i64) -> Result<()> {
        set_ticket(&mut *self.pool.acquire().await?, case_id, ticket_id, now_ms).await
    }

    async fn list_jobs(&self, state: Option<&str>, limit: i64) -> Result<Vec<Job>> {
        list_jobs(&mut *self.pool.acquire().await?, state, limit).await
    }

    async fn replay_job(&self, id: i64, now_ms: i64) -> Result<bool> {
        Ok(replay(&mut *self.pool.acquire().await?, Some(id), now_ms).await? == 1)
    }

    async fn replay_all_dead(&self, now_ms: i64) -> Result<u64> {
        replay(&mut *self.pool.acquire().await?, None, now_ms).await
    }

    async fn job_counts(&self) -> Result<Vec<(String, i64)>> {
        job_counts(&mut *self.pool.acquire().await?).await
    }

    async fn list_cases(&self, limit: i64) -> Result<Vec<CaseRow>> {
        list_cases(&mut *self.pool.acquire().await?, limit).await
    }

    async fn get_case(&self, id: &str) -> Result<Option<(CaseRow, Vec<String>)>> {
        get_case(&mut *self.pool.acquire().await?, id).await
    }

    async fn count_cases(&self) -> Result<i64> {
        count_cases(&mut *self.pool.acquire().await?).await
    }

    async fn find_thread(
        &self,
        channel: &str,
        message_ids: &[String],
        event_ids: &[String],
        refs: &[String],
    ) -> Result<Vec<super::ThreadHit>> {
        find_thread(&mut *self.pool.acquire().await?, channel, message_ids, event_ids, refs).await
    }

    async fn job_by_event_id(&self, event_id: &str) -> Result<Option<Job>> {
        job_by_event_id(&mut *self.pool.acquire().await?, event_id).await
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<String>> {
        load_cursor(&mut *self.pool.acquire().await?, name).await
    }

    async fn save_cursor(&self, name: &str, value: &str, now_ms: i64) -> Result<()> {
        save_cursor(&mut *self.pool.acquire().await?, name, value, now_ms).await
    }

    async fn try_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        try_lease(&mut *self.pool.acquire().await?, name, holder, now_ms, ttl_ms).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        release_lease(&mut *self.pool.acquire().await?, name, holder).await
    }

    async fn quarantine(&self, channel: &str, source: &str, reason: &str, raw: &[u8], now_ms: i64) -> Result<i64> {
        quarantine(&mut *self.pool.acquire().await?, channel, source, reason, raw, now_ms).await
    }

    async fn list_quarantine(&self, limit: i64) -> Result<Vec<super::QuarantineRow>> {
        list_quarantine(&mut *self.pool.acquire().await?, limit).await
    }

    async fn has_event(&self, channel: &str, external_id: &str) -> Result<bool> {
        has_event(&mut *self.pool.acquire().await?, channel, external_id).await
    }

    async fn record_event(&self, event: &super::NewEvent) -> Result<bool> {
        record_event(&mut *self.pool.acquire().await?, event).await
    }

    async fn count_events(&self, kind: Option<&str>) -> Result<i64> {
        count_events(&mut *self.pool.acquire().await?, kind).await
    }

    async fn suppress(&self, address: &str, reason: &str, until_ms: i64) -> Result<()> {
        suppress(&mut *self.pool.acquire().await?, address, reason, until_ms).await
    }

    async fn suppressed(&self, addresses: &[String], now_ms: i64) -> Result<Vec<String>> {
        suppressed(&mut *self.pool.acquire().await?, addresses, now_ms).await
    }

    async fn acked_since(&self, addresses: &[String], since_ms: i64) -> Result<Vec<String>> {
        acked_since(&mut *self.pool.acquire().await?, addresses, since_ms).await
    }

    async fn raw_messages(&self, after: &str, limit: i64) -> Result<Vec<(String, String, Vec<u8>, String)>> {
        raw_messages(&mut *self.pool.acquire().await?, after, limit).await
    }

    async fn update_message(&self, message_id: &str, data: &str) -> Result<()> {
        update_message(&mut *self.pool.acquire().await?, message_id, data).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
