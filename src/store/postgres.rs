//! PostgreSQL backend, for several gateway instances sharing one database.
//!
//! Leasing uses `FOR UPDATE SKIP LOCKED`, so instances never deliver one job at once; case sequence
//! numbers come from the `case_seq` sequence; exact dedup rests on the UNIQUE index, which also holds
//! between instances (a concurrent insert of the same key waits for the other commit, then skips).

use async_trait::async_trait;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

super::common::shared_queries!(sqlx::Postgres);
super::common::write_queries!(sqlx::Postgres);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pool: PgPool,
    /// Options of the short-lived connection that runs migrations.
    migrate_opts: PgConnectOptions,
    /// Connections for the intake writer's batch statement, which keep its plan.
    ///
    /// Every other statement is planned afresh on each run (`connect_options`). Planning the batch
    /// statement, with its ten parts, each time was about a quarter of the server's CPU on the
    /// whole path, so its connections keep one generic plan from its first run
    /// (`force_generic_plan`). That plan must not depend on the table sizes of the moment, which it
    /// would keep as the tables grow: the statement reads one table, `identities`, one contact at a
    /// time by its whole key (a `LATERAL ... LIMIT 1` lookup: a plain join, planned with 30 rows in
    /// the table, became a hash join over the whole index), and sequential scans are off on these
    /// connections (`enable_seqscan`), which a plan made on an empty table would otherwise choose.
    /// Every other part inserts or reads the statement's own arrays.
    ///
    /// The cases of duplicates are looked up afterwards on the same connection, by a statement
    /// written the same way (`EXISTING_SQL`).
    batch: KeptConns,
    /// Connections for the outbox's lease and outcome statements, which keep their plans too
    /// (`kept_plan_options`): each runs a few hundred times a second under load, and planning one
    /// took four to seven times as long as running it.
    outbox: KeptConns,
}

/// A pool whose connections are kept by their users between statements. sqlx pings a connection
/// given back to its pool: a round trip, and a wake-up of its server process, after every batch,
/// lease and outcome statement (measured: the ping and the return were 4.5% of the gateway's CPU
/// on the whole path). A kept connection goes back to the pool only when a statement on it fails,
/// so that a broken one is dropped.
struct KeptConns {
    pool: PgPool,
    /// `None` once closing: a connection kept after that goes back to the pool, which waits for it.
    held: std::sync::Mutex<Option<Vec<PoolConnection<Postgres>>>>,
}

/// The settings of a connection whose statements keep one plan from their first run (see
/// `PgStore::batch`). Only statements written for it run there: every table they read is reached
/// by an index condition on the statement's own arrays or parameters, whatever the planner thinks
/// of the tables' sizes, and sequential scans are off.
fn kept_plan_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off")]))
}

impl KeptConns {
    fn new(pool: PgPool) -> KeptConns {
        KeptConns { pool, held: std::sync::Mutex::new(Some(Vec::new())) }
    }

    /// A connection for the next statement: one kept, else one from the pool.
    async fn acquire(&self) -> Result<PoolConnection<Postgres>> {
        let held = self.held.lock().ok().and_then(|mut h| h.as_mut().and_then(Vec::pop));
        match held {
            Some(conn) => Ok(conn),
            None => Ok(self.pool.acquire().await?),
        }
    }

    /// Runs `f` on a kept connection, and keeps the connection if `f` succeeded.
    async fn with<R>(&self, f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<R>) -> Result<R> {
        let mut conn = self.acquire().await?;
        let r = f(&mut conn).await?;
        self.keep(conn);
        Ok(r)
    }

    /// Keeps a connection whose statement succeeded for the next one.
    fn keep(&self, conn: PoolConnection<Postgres>) {
        let mut conn = Some(conn);
        if let Ok(mut held) = self.held.lock()
            && let Some(held) = held.as_mut()
        {
            held.extend(conn.take());
        }
        // Closing (or a poisoned lock): back to the pool, outside the lock.
        drop(conn);
    }

    async fn close(&self) {
        // Given back first: a pool closes once its connections are back.
        let held = self.held.lock().ok().and_then(|mut h| h.take()).unwrap_or_default();
        drop(held);
        self.pool.close().await;
    }
}

/// The main pool's settings: the server plans every statement with the table sizes of the moment
/// (`force_custom_plan`). (The few statements written to keep one plan run on connections of their
/// own: `kept_plan_options`.)
///
/// sqlx keeps each statement prepared on its connection, and PostgreSQL, by default, switches a
/// prepared statement to one generic plan after five runs and keeps it. On a new or small
/// database that plan is made for nearly empty tables (a sequential scan of `identities` for
/// the customer lookup) and stays while the tables grow: measured, the lookup of 33 contacts
/// took 1.5 ms at 30,000 rows. Planning each run costs far less than that.
fn connect_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_custom_plan")]))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        // sqlx already pings every connection when it comes back to the pool; a second ping
        // before each use is one more round trip on the intake writer's path, twice a batch.
        // A connection broken while idle (a server restart) fails its first query instead,
        // which the writer answers with 503 and the pool then drops.
        .test_before_acquire(false)
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore> {
        let pool = pool_options(max_connections.max(2)).connect_with(connect_options(url)?).await?;
        // One connection per intake writer, which keeps it (`KeptConns::held`), and one for a block
        // of case numbers reserved meanwhile, so the pool opens about as many as there are writers;
        // its limit is the most writers config allows, plus one. A smaller limit would leave a
        // writer waiting for a connection that another one holds.
        let batch = pool_options(crate::config::MAX_WRITERS as u32 + 1).connect_lazy_with(kept_plan_options(url)?);
        let outbox = pool_options(max_connections.max(2)).connect_lazy_with(kept_plan_options(url)?);
        let migrate_opts = super::for_migrations(connect_options(url)?);
        Ok(PgStore { pool, migrate_opts, batch: KeptConns::new(batch), outbox: KeptConns::new(outbox) })
    }

    /// The plans that connections keep for their statements, as `EXPLAIN` prints them, by
    /// statement, and whether each is generic: for tests, which check that each reaches every
    /// table by an index condition whatever the table sizes when it was made.
    #[doc(hidden)]
    pub async fn kept_plans(&self) -> Result<Vec<(&'static str, (String, bool))>> {
        let batch_args = vec!["'{}'"; BATCH_PARAMS].join(", ");
        let outcome_args = vec!["'{}'"; 13]
            .iter()
            .enumerate()
            .map(|(i, a)| if i == 6 { "0" } else { a })
            .collect::<Vec<_>>()
            .join(", ");
        let mut plans = self
            .batch
            .with(async |conn| {
                Ok(vec![
                    ("batch", explain_generic(conn, BATCH_SQL, &batch_args).await?),
                    ("cases of duplicates", explain_generic(conn, EXISTING_SQL, "'{}', '{}'").await?),
                ])
            })
            .await?;
        plans.extend(
            self.outbox
                .with(async |conn| {
                    Ok([
                        ("lease", explain_generic(conn, &lease_sql(true), "0, 0, 1, 'webhook:tickets'").await?),
                        ("lease of every destination", explain_generic(conn, &lease_sql(false), "0, 0, 1").await?),
                        ("outcomes", explain_generic(conn, OUTCOMES_SQL, &outcome_args).await?),
                    ])
                })
                .await?,
        );
        Ok(plans)
    }
}

/// The plan `conn` makes and keeps for `sql` (`PREPARE`, then `EXPLAIN EXECUTE` with `args`), and
/// whether it is a generic one (PostgreSQL counts the plans a prepared statement was given).
async fn explain_generic(conn: &mut sqlx::PgConnection, sql: &str, args: &str) -> Result<(String, bool)> {
    use sqlx::Executor;
    conn.execute(format!("PREPARE earshot_kept_plan AS {sql}").as_str()).await?;
    let lines: std::result::Result<Vec<String>, sqlx::Error> =
        sqlx::query_scalar(&format!("EXPLAIN EXECUTE earshot_kept_plan({args})")).fetch_all(&mut *conn).await;
    let counts: std::result::Result<(i64, i64), sqlx::Error> = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'earshot_kept_plan'",
    )
    .fetch_one(&mut *conn)
    .await;
    // The statement's own error first: the ones after it may only follow from it.
    let deallocated = conn.execute("DEALLOCATE earshot_kept_plan").await;
    let (lines, (generic, custom)) = (lines?, counts?);
    deallocated?;
    Ok((lines.join("\n"), generic == 1 && custom == 0))
}

#[async_trait]
impl super::Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<()> {
        // On a connection of its own, closed afterwards, whose slow statements are not warnings.
        let pool = PgPoolOptions::new().max_connections(1).connect_with(self.migrate_opts.clone()).await?;
        let ran = MIGRATOR.run(&pool).await;
        pool.close().await;
        ran?;
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
        // On a kept connection (no ping after each block); the statement reads no table, so its
        // plan cannot go stale.
        self.batch
            .with(async |conn| {
                Ok(sqlx::query_scalar("SELECT nextval('case_seq') FROM generate_series(1, $1)")
                    .bind(n as i32)
                    .fetch_all(conn)
                    .await?)
            })
            .await
    }

    async fn customers_for(&self, identities: &[Identity]) -> Result<HashMap<Identity, String>> {
        customers_for(&mut *self.pool.acquire().await?, identities).await
    }

    async fn commit_batch(&self, items: Arc<Vec<NewCase>>) -> Result<Vec<Committed>> {
        let items = items.as_slice();
        if !needs_extras(items) {
            // One statement, its own transaction; the cases of duplicates are looked up after it.
            return self
                .batch
                .with(async |conn| {
                    let written = insert_batch(conn, items).await?;
                    let duplicates = written.duplicates(items);
                    // On the same connection: the batch has committed, and waiting for another one
                    // (the main pool may be busy with readers) could only turn its success into a 503.
                    let existing =
                        if duplicates.is_empty() { HashMap::new() } else { existing_cases(conn, &duplicates).await? };
                    written.outcomes(items, &existing)
                })
                .await;
        }
        let mut tx = self.pool.begin().await?;
        let written = insert_batch(&mut tx, items).await?;
        let duplicates = written.duplicates(items);
        let existing =
            if duplicates.is_empty() { HashMap::new() } else { existing_cases(&mut tx, &duplicates).await? };
        let out = written.outcomes(items, &existing)?;
        commit_extras(&mut tx, items, &out).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn lease_jobs(
        &self,
        destination: Option<&super::Destination>,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<Job>> {
        let sql = lease_sql(destination.is_some());
        let mut q = sqlx::query_as::<_, Job>(&sql).bind(lease_until_ms).bind(now_ms).bind(limit);
        if let Some(d) = destination {
            q = q.bind(d.to_string());
        }
        self.outbox.with(async |conn| Ok(q.fetch_all(conn).await?)).await
    }

    async fn record_outcomes(&self, outcomes: Vec<JobOutcome>, now_ms: i64) -> Result<Vec<bool>> {
        self.outbox.with(async |conn| record_outcomes(conn, &outcomes, now_ms).await).await
    }

    async fn discard_job(&self, id: super::JobId, now_ms: i64) -> Result<bool> {
        discard(&mut *self.pool.acquire().await?, id, now_ms).await
    }

    async fn purge_done(&self, after: i64, cutoff_ms: i64, limit: i64) -> Result<super::Purged> {
        let mut conn = self.pool.acquire().await?;
        let rows = jobs_after(&mut conn, after, limit).await?;
        let (ids, purged) = super::common::purge_plan(&rows, after, cutoff_ms, limit);
        if ids.is_empty() {
            return Ok(purged);
        }
        let deleted: i64 = sqlx::query_scalar(
            "WITH d AS (DELETE FROM outbox WHERE id = ANY($1::int8[]) AND state IN ('done', 'discarded') \
                        AND updated_at < $2 RETURNING id), \
                  p AS (DELETE FROM outbox_payloads WHERE job_id IN (SELECT id FROM d)) \
             SELECT COUNT(*) FROM d",
        )
        .bind(&ids)
        .bind(cutoff_ms)
        .fetch_one(&mut *conn)
        .await?;
        Ok(super::Purged { deleted: u64::try_from(deleted).unwrap_or(0), ..purged })
    }

    async fn outbox_backlog(&self) -> Result<Vec<super::Backlog>> {
        outbox_backlog(&mut *self.pool.acquire().await?).await
    }

    async fn job_destinations(&self) -> Result<Vec<super::Destination>> {
        job_destinations(&mut *self.pool.acquire().await?).await
    }

    async fn list_jobs(&self, state: Option<&str>, limit: i64) -> Result<Vec<Job>> {
        list_jobs(&mut *self.pool.acquire().await?, state, limit).await
    }

    async fn replay_job(&self, id: super::JobId, now_ms: i64) -> Result<bool> {
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

    async fn get_case(&self, id: &super::CaseId) -> Result<Option<(CaseRow, Vec<String>)>> {
        get_case(&mut *self.pool.acquire().await?, id).await
    }

    async fn customer_cases(
        &self,
        customer_id: &str,
        channel: &str,
        seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<CaseRow>> {
        customer_cases(&mut *self.pool.acquire().await?, customer_id, channel, seq, limit).await
    }

    async fn open_case_of(&self, customer_id: &str, channel: &str, since_ms: i64) -> Result<Option<super::CaseId>> {
        open_case_of(&mut *self.pool.acquire().await?, customer_id, channel, since_ms).await
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

    async fn apply_change(&self, ch: super::CaseChange) -> Result<super::ChangeOutcome> {
        use super::ChangeOutcome;
        use super::common::sql;
        let mut tx = self.pool.begin().await?;
        if let Some(k) = &ch.inbox {
            let n = sqlx::query(sql::INBOX)
                .bind(&k.endpoint)
                .bind(&k.webhook_id)
                .bind(&ch.case_id)
                .bind(&k.digest)
                .bind(ch.now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                let digest: String = sqlx::query_scalar(sql::INBOX_DIGEST)
                    .bind(&k.endpoint)
                    .bind(&k.webhook_id)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.rollback().await?;
                return Ok(ChangeOutcome::Duplicate { digest });
            }
        }
        let n = sqlx::query(sql::CHANGE_CASE)
            .bind(&ch.case_id)
            .bind(ch.version)
            .bind(&ch.status)
            .bind(&ch.ticket_id)
            .bind(&ch.lifecycle)
            .bind(ch.sla_due)
            .bind(i64::from(ch.breached))
            .bind(ch.now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(ChangeOutcome::Stale);
        }
        for (kind, actor, data) in &ch.log {
            sqlx::query(sql::LOG)
                .bind(&ch.case_id)
                .bind(kind)
                .bind(actor)
                .bind(data)
                .bind(ch.now_ms)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((token, expires)) = &ch.survey {
            sqlx::query(sql::SURVEY)
                .bind(token)
                .bind(&ch.case_id)
                .bind(ch.now_ms)
                .bind(expires)
                .execute(&mut *tx)
                .await?;
        }
        for j in &ch.jobs {
            let id: i64 = sqlx::query_scalar(sql::JOB)
                .bind(&j.event_id)
                .bind(&ch.case_id)
                .bind(j.kind)
                .bind(j.destination.to_string())
                .bind(j.max_attempts)
                .bind(ch.now_ms)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(sql::PAYLOAD).bind(id).bind(&j.payload).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(ChangeOutcome::Applied)
    }

    async fn inbox_digest(&self, endpoint: &str, webhook_id: &str) -> Result<Option<String>> {
        inbox_digest(&mut *self.pool.acquire().await?, endpoint, webhook_id).await
    }

    async fn sla_due_cases(&self, now_ms: i64, limit: i64) -> Result<Vec<super::CaseId>> {
        sla_due_cases(&mut *self.pool.acquire().await?, now_ms, limit).await
    }

    async fn survey(&self, token: &str) -> Result<Option<(super::CaseId, i64)>> {
        survey(&mut *self.pool.acquire().await?, token).await
    }

    async fn case_log(&self, case_id: &super::CaseId) -> Result<Vec<super::LogEntry>> {
        case_log(&mut *self.pool.acquire().await?, case_id).await
    }

    async fn case_jobs(&self, case_id: &super::CaseId) -> Result<Vec<Job>> {
        case_jobs(&mut *self.pool.acquire().await?, case_id).await
    }

    async fn search_cases(&self, filter: &super::CaseFilter) -> Result<Vec<CaseRow>> {
        search_cases(&mut *self.pool.acquire().await?, filter).await
    }

    async fn close(&self) {
        self.batch.close().await;
        self.outbox.close().await;
        self.pool.close().await;
    }
}

/// Leases due jobs, with their payloads (see `Store::lease_jobs`), on a connection that keeps its
/// plan: the due jobs are read from `outbox_due` by destination and due time; whether an earlier
/// job of the case holds one back is a subquery per job, by case (`OFFSET 0` keeps the planner from
/// turning it into a join, which, planned on an empty table, scanned `outbox_order` by destination
/// alone for every due job); the rows to update are found by id; each payload by its job's id.
fn lease_sql(by_destination: bool) -> String {
    let dest = if by_destination { "o.destination = $4::text AND " } else { "" };
    format!(
        "WITH l AS ( \
            UPDATE outbox SET state = 'leased', attempts = attempts + 1, next_attempt_at = $1::int8, \
                updated_at = $2::int8 \
            WHERE id = ANY(ARRAY( \
                SELECT o.id FROM outbox o \
                WHERE {dest}o.state IN ('pending', 'leased') AND o.next_attempt_at <= $2::int8 \
                  AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.case_id = o.case_id \
                                  AND p.destination = o.destination \
                                  AND p.state IN ('pending', 'leased', 'dead') AND p.id < o.id OFFSET 0) \
                ORDER BY o.next_attempt_at, o.id LIMIT $3::int8 FOR UPDATE SKIP LOCKED)) \
            RETURNING {} \
        ) \
        SELECT l.*, COALESCE((SELECT p.payload FROM outbox_payloads p WHERE p.job_id = l.id), '') AS payload FROM l",
        super::common::JOB_FIELDS
    )
}

/// The cases of messages already stored, by (channel, external id). It runs on a connection that
/// keeps its plan (after a batch statement) as well as in a transaction on the main pool: each
/// message and its case are reached by a lookup per key (`LATERAL ... LIMIT 1` cannot become a
/// join, which, planned on small tables, would read `messages` or `cases` whole).
const EXISTING_SQL: &str = "\
    SELECT k.channel, k.external_id, c.id, c.case_ref, c.status, m.digest \
    FROM unnest($1::text[], $2::text[]) AS k(channel, external_id) \
    CROSS JOIN LATERAL (SELECT case_id, digest FROM messages \
                        WHERE channel = k.channel AND external_id = k.external_id LIMIT 1) m \
    CROSS JOIN LATERAL (SELECT id, case_ref, status FROM cases WHERE id = m.case_id LIMIT 1) c";

async fn existing_cases(
    conn: &mut sqlx::PgConnection,
    items: &[&NewCase],
) -> Result<HashMap<(String, String), Committed>> {
    let rows: Vec<(String, String, super::CaseId, String, String, Option<String>)> = sqlx::query_as(EXISTING_SQL)
        .bind(items.iter().map(|it| it.channel).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.external_id.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter()
        .map(|(channel, ext, case_id, case_ref, status, digest)| {
            let case_ref = super::common::stored_ref(case_ref)?;
            Ok(((channel, ext), Committed::Duplicate { case_id, case_ref, status, digest }))
        })
        .collect()
}

/// The outcomes statement (see [`record_outcomes`]), on a connection that keeps its plan: jobs and
/// cases are reached by their ids in the arrays (`id = ANY`), whatever join the plan makes. A job
/// is updated only if still leased under the attempt reported; that check compares with a column
/// of `o` rather than a constant, which would let the planner read the partial indexes on `state`
/// whole instead (`MATERIALIZED` keeps the column from being folded back into one).
const OUTCOMES_SQL: &str = "\
    WITH o AS MATERIALIZED ( \
        SELECT t.*, 'leased'::text AS fence \
        FROM unnest($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::int8[], $10::text[], \
                    $13::int8[]) \
            AS t(id, attempts, state, next_at, error, delta, provider, segments) \
    ), j AS ( \
        UPDATE outbox SET state = o.state, next_attempt_at = o.next_at, \
            last_error = CASE WHEN o.state = 'done' THEN NULL ELSE COALESCE(o.error, outbox.last_error) END, \
            attempts = outbox.attempts + o.delta, updated_at = $7::int8, \
            provider_id = COALESCE(o.provider, outbox.provider_id), \
            segments = COALESCE(o.segments, outbox.segments) \
        FROM o WHERE outbox.id = o.id AND outbox.id = ANY($1::int8[]) AND outbox.attempts = o.attempts \
            AND outbox.state = o.fence \
        RETURNING outbox.id \
    ), t AS ( \
        UPDATE cases SET ticket_id = COALESCE(x.ticket, cases.ticket_id), \
            status = CASE WHEN x.ack AND cases.status = 'new' THEN 'acknowledged' ELSE cases.status END, \
            version = cases.version + CASE WHEN x.ack AND cases.status = 'new' THEN 1 ELSE 0 END, \
            updated_at = $7::int8 \
        FROM unnest($8::text[], $9::text[], $11::int8[], $12::bool[]) AS x(case_id, ticket, job, ack) \
        WHERE cases.id = x.case_id AND cases.id = ANY($8::text[]) AND x.job IN (SELECT id FROM j) \
    ) \
    SELECT id FROM j";

/// The outcomes of a batch of deliveries, with the ticket ids of delivered ones, in one statement
/// (its own transaction): one round trip and one commit for all of them. Rows are updated in id
/// order, and cases in id order, so two instances recording at once lock them in one order.
async fn record_outcomes(conn: &mut sqlx::PgConnection, outcomes: &[JobOutcome], now_ms: i64) -> Result<Vec<bool>> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<&JobOutcome> = outcomes.iter().collect();
    sorted.sort_unstable_by_key(|o| o.id);
    let cols: Vec<_> = sorted.iter().map(|o| o.kind.columns(now_ms)).collect();
    // What delivered jobs change on their case: one row per case (one UPDATE may not change a row
    // twice), the last ticket id and whether any was an acknowledgement, in case id order. A case
    // is changed only if the job that changes it counted (`x.job`: the last such job).
    let mut cases: std::collections::BTreeMap<&str, (Option<&str>, i64, bool)> = std::collections::BTreeMap::new();
    for o in &sorted {
        if let super::OutcomeKind::Done { case_id, ticket_id, acknowledges, .. } = &o.kind
            && !case_id.as_str().is_empty()
            && (ticket_id.is_some() || *acknowledges)
        {
            let e = cases.entry(case_id.as_str()).or_insert((None, o.id.0, false));
            if ticket_id.is_some() {
                e.0 = ticket_id.as_deref();
            }
            e.1 = o.id.0;
            e.2 |= *acknowledges;
        }
    }
    let updated: Vec<i64> = sqlx::query_scalar(OUTCOMES_SQL)
        .bind(sorted.iter().map(|o| o.id.0).collect::<Vec<_>>())
        .bind(sorted.iter().map(|o| o.attempts).collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.1).collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.2).collect::<Vec<_>>())
        .bind(cols.iter().map(|c| c.3).collect::<Vec<_>>())
        .bind(now_ms)
        .bind(cases.keys().copied().collect::<Vec<_>>())
        .bind(cases.values().map(|v| v.0).collect::<Vec<_>>())
        .bind(
            sorted
                .iter()
                .map(|o| match &o.kind {
                    super::OutcomeKind::Done { provider_id, .. } => provider_id.as_deref(),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )
        .bind(cases.values().map(|v| v.1).collect::<Vec<_>>())
        .bind(cases.values().map(|v| v.2).collect::<Vec<_>>())
        .bind(
            sorted
                .iter()
                .map(|o| match &o.kind {
                    super::OutcomeKind::Done { segments, .. } => *segments,
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    let updated: HashSet<i64> = updated.into_iter().collect();
    Ok(outcomes.iter().map(|o| updated.contains(&o.id.0)).collect())
}

/// Whether a batch has rows only email has (follow-ups, raw messages, attachments, the
/// acknowledgement log): [`commit_extras`] writes them after the batch statement, in one
/// transaction with it.
fn needs_extras(items: &[NewCase]) -> bool {
    items.iter().any(|it| it.raw.is_some() || !it.attachments.is_empty() || it.ack_address.is_some() || it.follow_up)
}

/// The batch statement's parameters, `$1` to `$27`.
const BATCH_PARAMS: usize = 27;

/// The messages, contacts (which are the customers), cases and outbox jobs of a batch in one
/// statement, as data-modifying CTEs over arrays: one round trip, and its own transaction unless
/// the caller has one open (see [`insert_batch`]). Every part sees which messages were new through `m`, the messages
/// insert that decides them. Rows go in in key order, so concurrent batches (several writers or
/// instances) lock them in one order. A case with `check_customer` whose contact is known is written not at all
/// ([`Committed::OtherCustomer`]).
const BATCH_SQL: &str = "\
    WITH given AS ( \
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::bool[], \
                             $8::int8[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
                             $23::bool[], $24::text[], $25::text[], $26::int8[]) \
            WITH ORDINALITY AS t(message_id, case_id, channel, external_id, message_json, at, follow_up, \
                                 seq, case_ref, status, source, customer_id, case_json, \
                                 check_customer, digest, reply_route, sla_due, n) \
    ), contacts AS ( \
        SELECT * FROM unnest($14::text[], $15::text[], $16::text[]) WITH ORDINALITY AS i(kind, value, message_id, n) \
    ), known AS ( \
        SELECT DISTINCT ON (c.message_id) c.message_id, ident.customer_id \
        FROM contacts c CROSS JOIN LATERAL ( \
            SELECT customer_id FROM identities WHERE kind = c.kind AND value = c.value LIMIT 1 \
        ) ident \
        ORDER BY c.message_id, c.n \
    ), other AS ( \
        SELECT g.message_id, k.customer_id FROM given g JOIN known k ON k.message_id = g.message_id \
        WHERE g.check_customer AND NOT g.follow_up AND k.customer_id <> g.customer_id \
    ), input AS ( \
        SELECT * FROM given WHERE message_id NOT IN (SELECT message_id FROM other) \
    ), m AS ( \
        INSERT INTO messages (id, case_id, channel, external_id, direction, data, received_at, digest) \
        SELECT message_id, case_id, channel, external_id, 'inbound', message_json, at, digest FROM input \
        ORDER BY channel, external_id \
        ON CONFLICT (channel, external_id) DO NOTHING RETURNING id \
    ), new AS ( \
        SELECT input.* FROM input JOIN m ON m.id = input.message_id \
    ), id AS ( \
        INSERT INTO identities (kind, value, customer_id, created_at) \
        SELECT * FROM (SELECT DISTINCT ON (i.kind, i.value) i.kind, i.value, new.customer_id, new.at \
                       FROM contacts i \
                       JOIN new ON new.message_id = i.message_id AND NOT new.follow_up \
                       ORDER BY i.kind, i.value, i.n) x \
        ORDER BY 1, 2 \
        ON CONFLICT (kind, value) DO NOTHING \
    ), ca AS ( \
        INSERT INTO cases (id, seq, case_ref, status, channel, source, customer_id, data, created_at, updated_at, \
                           reply_route, sla_due) \
        SELECT case_id, seq, case_ref, status, channel, source, customer_id, case_json, at, at, \
               reply_route, sla_due FROM new \
        WHERE NOT follow_up ORDER BY n \
    ), given_jobs AS ( \
        SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::int8[], \
                             $27::int8[]) \
            WITH ORDINALITY AS j(event_id, message_id, kind, destination, payload, max_attempts, lease_until, n) \
    ), jobs AS ( \
        INSERT INTO outbox (event_id, case_id, kind, destination, state, attempts, max_attempts, \
                            next_attempt_at, created_at, updated_at) \
        SELECT j.event_id, new.case_id, j.kind, j.destination, \
               CASE WHEN j.lease_until IS NULL THEN 'pending' ELSE 'leased' END, \
               CASE WHEN j.lease_until IS NULL THEN 0 ELSE 1 END, j.max_attempts, \
               COALESCE(j.lease_until, new.at), new.at, new.at \
        FROM given_jobs j \
        JOIN new ON new.message_id = j.message_id \
        ORDER BY j.n \
        RETURNING id, event_id, state \
    ), payloads AS ( \
        INSERT INTO outbox_payloads (job_id, payload) \
        SELECT jobs.id, j.payload FROM jobs JOIN given_jobs j ON j.event_id = jobs.event_id \
    ) \
    SELECT id, NULL::text, NULL::int8 FROM m UNION ALL SELECT message_id, customer_id, NULL FROM other \
    UNION ALL SELECT event_id, NULL, id FROM jobs WHERE state = 'leased'";

/// What the batch statement wrote: the items whose message was new, the items not written because
/// their contact belongs to another customer, and the jobs leased at once.
struct Written {
    inserted: HashSet<String>,
    others: HashMap<String, String>,
    leased: HashMap<String, super::JobId>,
}

/// Runs the batch statement ([`BATCH_SQL`]).
async fn insert_batch(conn: &mut sqlx::PgConnection, items: &[NewCase]) -> Result<Written> {
    let mut written = Written { inserted: HashSet::new(), others: HashMap::new(), leased: HashMap::new() };
    if items.is_empty() {
        return Ok(written);
    }

    let idents: Vec<(&NewCase, &earshot_channel::Identity)> =
        items.iter().flat_map(|it| it.identities.iter().map(move |i| (it, i))).collect();
    let jobs: Vec<(&NewCase, &super::NewJob)> =
        items.iter().flat_map(|it| it.jobs.iter().map(move |j| (it, j))).collect();
    let rows: Vec<(String, Option<String>, Option<i64>)> = sqlx::query_as(BATCH_SQL)
        .bind(items.iter().map(|it| it.message_id.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.case_id.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.channel).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.external_id.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.message_json.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.now_ms).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.follow_up).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.seq).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.case_ref.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.status).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.source.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.customer_id.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.case_json.as_str()).collect::<Vec<_>>())
        .bind(idents.iter().map(|(_, i)| i.kind.as_str()).collect::<Vec<_>>())
        .bind(idents.iter().map(|(_, i)| i.value.as_str()).collect::<Vec<_>>())
        .bind(idents.iter().map(|(it, _)| it.message_id.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.event_id.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(it, _)| it.message_id.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.kind).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.destination.to_string()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.payload.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.max_attempts).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.check_customer).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.digest.as_deref()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.reply_route.as_deref()).collect::<Vec<_>>())
        .bind(items.iter().map(|it| it.sla_due).collect::<Vec<_>>())
        .bind(jobs.iter().map(|(_, j)| j.lease_until).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
    // Rows are a new message's id, an item's other customer, or a leased job's event id and id.
    for (key, other, job) in rows {
        match (other, job) {
            (_, Some(id)) => {
                written.leased.insert(key, super::JobId(id));
            }
            (Some(customer_id), None) => {
                written.others.insert(key, customer_id);
            }
            (None, None) => {
                written.inserted.insert(key);
            }
        }
    }
    Ok(written)
}

impl Written {
    /// The items whose message was already stored.
    fn duplicates<'a>(&self, items: &'a [NewCase]) -> Vec<&'a NewCase> {
        items
            .iter()
            .filter(|it| !self.inserted.contains(&it.message_id) && !self.others.contains_key(&it.message_id))
            .collect()
    }

    /// What became of each item, given the cases of the duplicates.
    fn outcomes(
        mut self,
        items: &[NewCase],
        existing: &HashMap<(String, String), Committed>,
    ) -> Result<Vec<Committed>> {
        items
            .iter()
            .map(|it| match self.others.remove(&it.message_id) {
                Some(customer_id) => Ok(Committed::OtherCustomer { customer_id }),
                None => match outcome(it, &self.inserted, existing)? {
                    Committed::Created { .. } => Ok(Committed::Created {
                        leased: it
                            .jobs
                            .iter()
                            .filter_map(|j| self.leased.remove(&j.event_id).map(|id| (j.event_id.clone(), id)))
                            .collect(),
                    }),
                    other => Ok(other),
                },
            })
            .collect()
    }
}
