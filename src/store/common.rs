//! SQL of the store: the reads, expanded once per backend by [`shared_queries!`], and the writes of
//! PostgreSQL ([`write_queries!`]; SQLite's writer has its own, see `sqlite_writer.rs`).
//!
//! The statements are the same text on SQLite and PostgreSQL (`$n` placeholders work on both in sqlx);
//! only the pool type differs, and sqlx's generic executor bounds are far harder to read than this
//! macro. Backend differences (row locking, sequences, one writer connection) stay in the backend files.

/// Columns of a [`super::Job`] but its payload, in `RETURNING` order.
pub(super) const JOB_FIELDS: &str =
    "id, event_id, case_id, kind, destination, state, attempts, max_attempts, next_attempt_at, last_error, created_at";

/// Every column of a [`super::Job`] from `outbox o` joined with its payload (`PAYLOAD_JOIN`).
pub(super) const JOB_COLUMNS: &str = "o.id, o.event_id, o.case_id, o.kind, o.destination, o.state, o.attempts, \
    o.max_attempts, o.next_attempt_at, o.last_error, o.created_at, COALESCE(p.payload, '') AS payload";
pub(super) const PAYLOAD_JOIN: &str = "LEFT JOIN outbox_payloads p ON p.job_id = o.id";

pub(super) const CASE_COLUMNS: &str = "id, seq, case_ref, status, channel, source, ticket_id, data, created_at, \
    lifecycle, breached <> 0 AS breached, reply_route, version";

/// The list filter's pattern for `LIKE … ESCAPE '\'`: the text itself, wildcards taken literally.
pub(super) fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// "Unfinished" (pending, leased or dead) for the outbox row named `$t`, in the words of the WHERE
/// of the partial index `outbox_order`: SQLite uses a partial index only for a query that holds its
/// WHERE as written, and that WHERE is a chain of ORs rather than `IN (...)`, which SQLite evaluated
/// with a temporary table for every row written (migrations/sqlite/0012_outbox_checks.sql).
/// PostgreSQL proves either form from the other. One macro, so that every use stays in those words.
macro_rules! unfinished {
    ($t:literal) => {
        concat!("(", $t, ".state = 'pending' OR ", $t, ".state = 'leased' OR ", $t, ".state = 'dead')")
    };
}

/// The channels whose cases are looked up by contact (a chat's `/status`, the follow-up rule of
/// chat channels, a survey answered by SMS, an opt-in again), in the words of the WHERE of the
/// partial index `cases_customer`, which keeps only their cases: every query by customer holds it
/// as written, so that SQLite, and PostgreSQL's generic plans (made without the channel's value),
/// can use that index. A query for another channel's cases by contact finds none, as no channel
/// asks for them (migrations/sqlite/0013_customer_cases_chat.sql).
pub const CONTACT_CHANNELS: &str = "(channel = 'telegram' OR channel = 'phone')";

/// The first unfinished job of the same case and destination that job `o` waits for, if any: the one
/// that blocks the case (replay or discard it to release the others).
pub(super) const HOLDER: &str = concat!(
    "(SELECT MIN(p.id) FROM outbox p WHERE p.case_id = o.case_id AND p.destination = o.destination AND ",
    unfinished!("p"),
    " AND p.id < o.id)"
);

/// Job `o` is unfinished (the backlog).
pub(super) const UNFINISHED_O: &str = unfinished!("o");

/// A stored case reference read back; one that is not valid is corrupt data.
pub(super) fn stored_ref(text: String) -> super::Result<earshot_channel::CaseRef> {
    earshot_channel::CaseRef::parse(&text)
        .map_err(|e| super::StoreError::Corrupt(format!("case reference {text:?}: {e}")))
}

/// SQLite's lease statement, ordered by due time over the partial index of unfinished jobs (which
/// leads with the destination, so one destination's lease never walks past another's backlog). A
/// job waits while an earlier one of its case and destination is pending, leased or dead. The
/// single writer connection serialises leasing. With `by_destination`, `$4` is the destination.
/// (PostgreSQL's, which locks rows and keeps its plan, is `postgres::lease_sql`.)
pub(super) fn lease_sql(by_destination: bool) -> String {
    let dest = if by_destination { "o.destination = $4 AND " } else { "" };
    format!(
        "UPDATE outbox SET state = 'leased', attempts = attempts + 1, next_attempt_at = $1, updated_at = $2 \
         WHERE id IN (SELECT o.id FROM outbox o \
            WHERE {dest}o.state IN ('pending', 'leased') AND o.next_attempt_at <= $2 \
              AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.case_id = o.case_id AND p.destination = o.destination \
                              AND {unfinished} AND p.id < o.id) \
            ORDER BY o.next_attempt_at, o.id LIMIT $3) \
         RETURNING {JOB_FIELDS}",
        unfinished = unfinished!("p")
    )
}

/// The single-statement writes, with `$n` placeholders: PostgreSQL runs them through sqlx
/// ([`write_queries!`]), SQLite's writer through rusqlite after [`numbered`].
pub(super) mod sql {
    /// A lifecycle change of a case, written only over the version it was computed from.
    pub const CHANGE_CASE: &str = "UPDATE cases SET status = $3, ticket_id = COALESCE($4, ticket_id), lifecycle = $5, \
        sla_due = $6, breached = $7, version = version + 1, updated_at = $8 WHERE id = $1 AND version = $2";
    pub const INBOX: &str = "INSERT INTO events_in (endpoint, webhook_id, case_id, digest, created_at) \
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (endpoint, webhook_id) DO NOTHING";
    pub const INBOX_DIGEST: &str = "SELECT digest FROM events_in WHERE endpoint = $1 AND webhook_id = $2";
    pub const LOG: &str = "INSERT INTO case_log (case_id, kind, actor, data, created_at) VALUES ($1, $2, $3, $4, $5)";
    pub const SURVEY: &str = "INSERT INTO surveys (token, case_id, created_at, expires_at) VALUES ($1, $2, $3, $4)";
    pub const JOB: &str = "INSERT INTO outbox (event_id, case_id, kind, destination, state, attempts, max_attempts, \
        next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $6, $6) RETURNING id";
    pub const PAYLOAD: &str = "INSERT INTO outbox_payloads (job_id, payload) VALUES ($1, $2)";

    /// One job's outcome (see `OutcomeKind::columns`); a done job's error is cleared, a released
    /// one keeps its last.
    pub const RECORD_OUTCOME: &str = "UPDATE outbox SET state = $3, next_attempt_at = $4, \
        last_error = CASE WHEN $3 = 'done' THEN NULL ELSE COALESCE($5, last_error) END, \
        attempts = attempts + $6, updated_at = $7, provider_id = COALESCE($8, provider_id), \
        segments = COALESCE($9, segments) \
        WHERE id = $1 AND attempts = $2 AND state = 'leased'";
    pub const DISCARD_DEAD: &str =
        "UPDATE outbox SET state = 'discarded', updated_at = $1 WHERE state = 'dead' AND id = $2";
    pub const REPLAY_ALL_DEAD: &str =
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $1 WHERE state = 'dead'";
    pub const REPLAY_DEAD: &str = "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $1 \
        WHERE state = 'dead' AND id = $2";
    pub const SAVE_CURSOR: &str = "INSERT INTO cursors (name, value, updated_at) VALUES ($1, $2, $3) \
        ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at";
    pub const TRY_LEASE: &str = "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
        ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
        WHERE leases.holder = excluded.holder OR leases.expires_at < $4";
    pub const RELEASE_LEASE: &str = "DELETE FROM leases WHERE name = $1 AND holder = $2";
    pub const QUARANTINE: &str = "INSERT INTO quarantine (channel, source, reason, raw, created_at, digest) \
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (channel, source, digest) DO NOTHING RETURNING id";
    pub const QUARANTINED: &str = "SELECT id FROM quarantine WHERE channel = $1 AND source = $2 AND digest = $3";
    pub const RECORD_EVENT: &str = "INSERT INTO channel_events \
        (channel, source, kind, external_id, sender, subject, data, raw, created_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (channel, external_id) DO NOTHING";
    pub const SUPPRESS: &str = "INSERT INTO suppressions (address, reason, until) VALUES ($1, $2, $3) \
        ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, until = excluded.until";
    pub const UPDATE_MESSAGE: &str = "UPDATE messages SET data = $2 WHERE id = $1";
}

/// Which of `rows` (jobs after id `after` in id order: id, state, created_at, updated_at) the
/// retention sweep deletes, and where it goes on. Ids follow creation, and a job is updated no
/// earlier than it was created, so the first job created at or after the cut-off ends the sweep: no
/// later one can be old enough.
pub(super) fn purge_plan(
    rows: &[(i64, String, i64, i64)],
    after: i64,
    cutoff_ms: i64,
    limit: i64,
) -> (Vec<i64>, super::Purged) {
    let mut ids = Vec::new();
    let mut next_after = after;
    for (id, state, created_at, updated_at) in rows {
        if *created_at >= cutoff_ms {
            return (ids, super::Purged { deleted: 0, next_after, finished: true });
        }
        if matches!(state.as_str(), "done" | "discarded") && *updated_at < cutoff_ms {
            ids.push(*id);
        }
        next_after = *id;
    }
    let finished = (rows.len() as i64) < limit;
    (ids, super::Purged { deleted: 0, next_after, finished })
}

/// `sql` with SQLite's explicit `?n` placeholders: SQLite numbers `$n` by first appearance.
pub(super) fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

macro_rules! shared_queries {
    ($db:ty) => {
        #[allow(unused_imports)]
        use std::collections::{HashMap, HashSet};

        #[allow(unused_imports)]
        use earshot_channel::{Identity, IdentityKind};
        use sqlx::QueryBuilder;

        use super::common::{CASE_COLUMNS, CONTACT_CHANNELS, JOB_COLUMNS};
        #[allow(unused_imports)]
        use super::{CaseRow, Committed, Job, JobOutcome, NewCase, Result};

        type Conn = <$db as sqlx::Database>::Connection;
        pub(super) async fn list_jobs(conn: &mut Conn, state: Option<&str>, limit: i64) -> Result<Vec<Job>> {
            use super::common::{HOLDER, PAYLOAD_JOIN};
            let filter = match state {
                None => String::new(),
                Some("held") => format!("WHERE o.state = 'pending' AND {HOLDER} IS NOT NULL"),
                Some("pending") => format!("WHERE o.state = 'pending' AND {HOLDER} IS NULL"),
                Some(_) => "WHERE o.state = $2".to_owned(),
            };
            let sql = format!(
                "SELECT {JOB_COLUMNS}, CASE WHEN o.state = 'pending' THEN {HOLDER} END AS held_by \
                 FROM outbox o {PAYLOAD_JOIN} {filter} ORDER BY o.id DESC LIMIT $1"
            );
            let mut q = sqlx::query_as::<_, Job>(&sql).bind(limit);
            if let Some(s) = state.filter(|s| !matches!(*s, "held" | "pending")) {
                q = q.bind(s);
            }
            let mut jobs = q.fetch_all(&mut *conn).await?;
            for j in &mut jobs {
                if j.held_by.is_some() {
                    j.state = "held".into();
                }
            }
            Ok(jobs)
        }

        pub(super) async fn outbox_backlog(conn: &mut Conn) -> Result<Vec<super::Backlog>> {
            let rows: Vec<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(&format!(
                "SELECT o.destination, o.state, \
                        CAST(CASE WHEN o.state = 'pending' AND {} IS NOT NULL THEN 1 ELSE 0 END AS BIGINT) AS held, \
                        COUNT(*), MIN(o.created_at) \
                 FROM outbox o WHERE {} GROUP BY 1, 2, 3",
                super::common::HOLDER,
                super::common::UNFINISHED_O
            ))
            .fetch_all(&mut *conn)
            .await?;
            let mut by_dest: std::collections::BTreeMap<String, super::Backlog> = Default::default();
            for (destination, state, held, n, oldest) in rows {
                let b = by_dest
                    .entry(destination.clone())
                    .or_insert_with(|| super::Backlog { destination, ..Default::default() });
                match (state.as_str(), held) {
                    ("dead", _) => b.dead += n,
                    (_, 1) => b.held += n,
                    _ => {
                        b.pending += n;
                        b.oldest_pending_ms = match (b.oldest_pending_ms, oldest) {
                            (Some(a), Some(o)) => Some(a.min(o)),
                            (a, o) => a.or(o),
                        };
                    }
                }
            }
            Ok(by_dest.into_values().collect())
        }

        pub(super) async fn job_destinations(conn: &mut Conn) -> Result<Vec<super::Destination>> {
            let stored: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT destination FROM outbox WHERE state IN ('pending', 'leased') ORDER BY 1",
            )
            .fetch_all(&mut *conn)
            .await?;
            stored.into_iter().map(|d| super::Destination::try_from(d).map_err(super::StoreError::Corrupt)).collect()
        }

        /// Up to `limit` jobs after id `after`, in id order: (id, state, created_at, updated_at).
        pub(super) async fn jobs_after(conn: &mut Conn, after: i64, limit: i64) -> Result<Vec<(i64, String, i64, i64)>> {
            Ok(sqlx::query_as("SELECT id, state, created_at, updated_at FROM outbox WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?)
        }

        pub(super) async fn job_counts(conn: &mut Conn) -> Result<Vec<(String, i64)>> {
            Ok(sqlx::query_as("SELECT state, COUNT(*) FROM outbox GROUP BY state ORDER BY state")
                .fetch_all(&mut *conn)
                .await?)
        }

        pub(super) async fn list_cases(conn: &mut Conn, limit: i64) -> Result<Vec<CaseRow>> {
            Ok(sqlx::query_as(&format!("SELECT {CASE_COLUMNS} FROM cases ORDER BY seq DESC LIMIT $1"))
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?)
        }

        pub(super) async fn customer_cases(
            conn: &mut Conn,
            customer_id: &str,
            channel: &str,
            seq: Option<i64>,
            limit: i64,
        ) -> Result<Vec<CaseRow>> {
            let seq_filter = if seq.is_some() { "AND seq = $4 " } else { "" };
            let sql = format!(
                "SELECT {CASE_COLUMNS} FROM cases WHERE customer_id = $1 AND channel = $2 AND {CONTACT_CHANNELS} \
                 {seq_filter}ORDER BY seq DESC LIMIT $3"
            );
            let mut q = sqlx::query_as(&sql)
            .bind(customer_id)
            .bind(channel)
            .bind(limit);
            if let Some(s) = seq {
                q = q.bind(s);
            }
            Ok(q.fetch_all(&mut *conn).await?)
        }

        pub(super) async fn open_case_of(
            conn: &mut Conn,
            customer_id: &str,
            channel: &str,
            since_ms: i64,
        ) -> Result<Option<super::CaseId>> {
            Ok(sqlx::query_scalar(&format!(
                "SELECT id FROM cases WHERE customer_id = $1 AND channel = $2 AND {CONTACT_CHANNELS} \
                 AND updated_at >= $3 AND status NOT IN ('resolved', 'closed') ORDER BY seq DESC LIMIT 1"
            ))
            .bind(customer_id)
            .bind(channel)
            .bind(since_ms)
            .fetch_optional(&mut *conn)
            .await?)
        }

        pub(super) async fn get_case(conn: &mut Conn, id: &super::CaseId) -> Result<Option<(CaseRow, Vec<String>)>> {
            let row: Option<CaseRow> = sqlx::query_as(&format!("SELECT {CASE_COLUMNS} FROM cases WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let messages: Vec<String> =
                sqlx::query_scalar("SELECT data FROM messages WHERE case_id = $1 ORDER BY received_at, id")
                    .bind(id)
                    .fetch_all(&mut *conn)
                    .await?;
            Ok(Some((row, messages)))
        }

        pub(super) async fn count_cases(conn: &mut Conn) -> Result<i64> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM cases").fetch_one(&mut *conn).await?)
        }

        fn in_list<'a>(qb: &mut QueryBuilder<'a, $db>, values: &'a [String]) {
            qb.push("(");
            let mut sep = qb.separated(", ");
            for v in values {
                sep.push_bind(v);
            }
            qb.push(")");
        }

        pub(super) async fn find_thread(
            conn: &mut Conn,
            channel: &str,
            message_ids: &[String],
            event_ids: &[String],
            refs: &[String],
        ) -> Result<Vec<super::ThreadHit>> {
            let mut hits = Vec::new();
            type Row = (super::CaseId, String, String, String, String);
            let to_hit = |(case_id, case_ref, status, customer_id, matched): Row| -> Result<super::ThreadHit> {
                Ok(super::ThreadHit { case_id, case_ref: super::common::stored_ref(case_ref)?, status, customer_id, matched })
            };
            if !message_ids.is_empty() {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT c.id, c.case_ref, c.status, c.customer_id, m.external_id FROM messages m \
                     JOIN cases c ON c.id = m.case_id WHERE m.channel = ",
                );
                qb.push_bind(channel).push(" AND m.external_id IN ");
                in_list(&mut qb, message_ids);
                let rows: Vec<Row> = qb.build_query_as().fetch_all(&mut *conn).await?;
                hits.extend(rows.into_iter().map(to_hit).collect::<Result<Vec<_>>>()?);
                // A reply that quotes the channel's own id of one of our messages to it
                // (`Sent::provider_id`: a Telegram message id, an SMS sid).
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT c.id, c.case_ref, c.status, c.customer_id, o.provider_id FROM outbox o \
                     JOIN cases c ON c.id = o.case_id WHERE o.destination LIKE ",
                );
                let any_sender = super::Destination::Channel { kind: channel.to_owned(), sender: None };
                qb.push_bind(format!("{any_sender}:%")).push(" AND o.provider_id IN ");
                in_list(&mut qb, message_ids);
                let rows: Vec<(super::CaseId, String, String, String, Option<String>)> =
                    qb.build_query_as().fetch_all(&mut *conn).await?;
                let rows = rows.into_iter().map(|(a, b, c, d, e)| to_hit((a, b, c, d, e.unwrap_or_default())));
                hits.extend(rows.collect::<Result<Vec<_>>>()?);
            }
            if !event_ids.is_empty() {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT c.id, c.case_ref, c.status, c.customer_id, o.event_id FROM outbox o \
                     JOIN cases c ON c.id = o.case_id WHERE o.event_id IN ",
                );
                in_list(&mut qb, event_ids);
                let rows: Vec<Row> = qb.build_query_as().fetch_all(&mut *conn).await?;
                hits.extend(rows.into_iter().map(to_hit).collect::<Result<Vec<_>>>()?);
            }
            // References are looked up through the sequence number they encode (cases.seq is indexed).
            let seqs: Vec<i64> = refs
                .iter()
                .filter_map(|r| earshot_channel::CaseRef::parse(r).ok())
                .filter_map(|r| i64::try_from(r.seq()).ok())
                .collect();
            if !seqs.is_empty() {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT c.id, c.case_ref, c.status, c.customer_id, c.case_ref FROM cases c WHERE c.seq IN (",
                );
                let mut sep = qb.separated(", ");
                for s in &seqs {
                    sep.push_bind(*s);
                }
                qb.push(")");
                let rows: Vec<Row> = qb.build_query_as().fetch_all(&mut *conn).await?;
                hits.extend(rows.into_iter().map(to_hit).collect::<Result<Vec<_>>>()?);
            }
            Ok(hits)
        }

        pub(super) async fn job_by_event_id(conn: &mut Conn, event_id: &str) -> Result<Option<Job>> {
            Ok(sqlx::query_as::<_, Job>(&format!(
                "SELECT {JOB_COLUMNS} FROM outbox o {} WHERE o.event_id = $1",
                super::common::PAYLOAD_JOIN
            ))
                .bind(event_id)
                .fetch_optional(&mut *conn)
                .await?)
        }

        pub(super) async fn load_cursor(conn: &mut Conn, name: &str) -> Result<Option<String>> {
            Ok(sqlx::query_scalar("SELECT value FROM cursors WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?)
        }

        pub(super) async fn list_quarantine(conn: &mut Conn, limit: i64) -> Result<Vec<super::QuarantineRow>> {
            Ok(sqlx::query_as(
                "SELECT id, channel, source, reason, CAST(LENGTH(raw) AS BIGINT) AS size, created_at FROM quarantine \
                 ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?)
        }

        pub(super) async fn has_event(conn: &mut Conn, channel: &str, external_id: &str) -> Result<bool> {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM channel_events WHERE channel = $1 AND external_id = $2")
                    .bind(channel)
                    .bind(external_id)
                    .fetch_one(&mut *conn)
                    .await?;
            Ok(n > 0)
        }

        pub(super) async fn count_events(conn: &mut Conn, kind: Option<&str>) -> Result<i64> {
            Ok(match kind {
                Some(k) => {
                    sqlx::query_scalar("SELECT COUNT(*) FROM channel_events WHERE kind = $1")
                        .bind(k)
                        .fetch_one(&mut *conn)
                        .await?
                }
                None => sqlx::query_scalar("SELECT COUNT(*) FROM channel_events").fetch_one(&mut *conn).await?,
            })
        }

        pub(super) async fn raw_messages(
            conn: &mut Conn,
            after: &str,
            limit: i64,
        ) -> Result<Vec<(String, String, Vec<u8>, String)>> {
            Ok(sqlx::query_as(
                "SELECT r.message_id, r.channel, r.raw, m.data FROM raw_messages r \
                 JOIN messages m ON m.id = r.message_id WHERE r.message_id > $1 ORDER BY r.message_id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?)
        }

        pub(super) async fn inbox_digest(conn: &mut Conn, endpoint: &str, webhook_id: &str) -> Result<Option<String>> {
            Ok(sqlx::query_scalar("SELECT digest FROM events_in WHERE endpoint = $1 AND webhook_id = $2")
                .bind(endpoint)
                .bind(webhook_id)
                .fetch_optional(&mut *conn)
                .await?)
        }

        pub(super) async fn sla_due_cases(conn: &mut Conn, now_ms: i64, limit: i64) -> Result<Vec<super::CaseId>> {
            Ok(sqlx::query_scalar(
                "SELECT id FROM cases WHERE sla_due IS NOT NULL AND sla_due <= $1 ORDER BY sla_due LIMIT $2",
            )
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?)
        }

        pub(super) async fn survey(conn: &mut Conn, token: &str) -> Result<Option<(super::CaseId, i64)>> {
            Ok(sqlx::query_as("SELECT case_id, expires_at FROM surveys WHERE token = $1")
                .bind(token)
                .fetch_optional(&mut *conn)
                .await?)
        }

        pub(super) async fn case_log(conn: &mut Conn, case_id: &super::CaseId) -> Result<Vec<super::LogEntry>> {
            Ok(sqlx::query_as(
                "SELECT id, kind, actor, data, created_at FROM case_log WHERE case_id = $1 ORDER BY id",
            )
            .bind(case_id)
            .fetch_all(&mut *conn)
            .await?)
        }

        pub(super) async fn case_jobs(conn: &mut Conn, case_id: &super::CaseId) -> Result<Vec<Job>> {
            Ok(sqlx::query_as::<_, Job>(&format!(
                "SELECT {JOB_COLUMNS} FROM outbox o {} WHERE o.case_id = $1 ORDER BY o.id",
                super::common::PAYLOAD_JOIN
            ))
            .bind(case_id)
            .fetch_all(&mut *conn)
            .await?)
        }

        pub(super) async fn search_cases(conn: &mut Conn, f: &super::CaseFilter) -> Result<Vec<CaseRow>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new(format!("SELECT {CASE_COLUMNS} FROM cases WHERE 1 = 1"));
            if let Some(v) = &f.status {
                qb.push(" AND status = ").push_bind(v.clone());
            }
            if let Some(v) = &f.channel {
                qb.push(" AND channel = ").push_bind(v.clone());
            }
            if let Some(v) = &f.source {
                qb.push(" AND source = ").push_bind(v.clone());
            }
            if let Some(v) = f.created_from {
                qb.push(" AND created_at >= ").push_bind(v);
            }
            if let Some(v) = f.created_to {
                qb.push(" AND created_at < ").push_bind(v);
            }
            if let Some(v) = f.breached {
                qb.push(" AND breached = ").push_bind(i64::from(v));
            }
            if let Some(v) = f.before_seq {
                qb.push(" AND seq < ").push_bind(v);
            }
            if let Some(t) = f.text.as_deref().filter(|t| !t.is_empty()) {
                let pattern = super::common::like_pattern(t);
                qb.push(" AND (LOWER(data) LIKE ").push_bind(pattern.clone()).push(" ESCAPE '\\'");
                qb.push(" OR EXISTS (SELECT 1 FROM messages m WHERE m.case_id = cases.id AND LOWER(m.data) LIKE ")
                    .push_bind(pattern)
                    .push(" ESCAPE '\\'))");
            }
            qb.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
            Ok(qb.build_query_as().fetch_all(&mut *conn).await?)
        }

        pub(super) async fn applied_migrations(conn: &mut Conn) -> Result<i64> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_one(&mut *conn).await?)
        }
    };
}

pub(super) use shared_queries;

/// The writes, as multi-row statements for PostgreSQL. SQLite runs the same statements one row at a
/// time on its writer thread instead (`sqlite_writer.rs`), where a statement costs no round trip.
macro_rules! write_queries {
    ($db:ty) => {
        fn identity_kind(s: &str) -> Option<IdentityKind> {
            [IdentityKind::Email, IdentityKind::Phone, IdentityKind::Telegram, IdentityKind::WebUser]
                .into_iter()
                .find(|k| k.as_str() == s)
        }

        pub(super) async fn customers_for(
            conn: &mut Conn,
            identities: &[Identity],
        ) -> Result<HashMap<Identity, String>> {
            if identities.is_empty() {
                return Ok(HashMap::new());
            }
            // Arrays, not a list of placeholders: one statement text whatever the batch size.
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT i.kind, i.value, i.customer_id FROM unnest($1::text[], $2::text[]) AS k(kind, value) \
                 JOIN identities i ON i.kind = k.kind AND i.value = k.value",
            )
            .bind(identities.iter().map(|i| i.kind.as_str()).collect::<Vec<_>>())
            .bind(identities.iter().map(|i| i.value.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut *conn)
            .await?;
            Ok(rows
                .into_iter()
                .filter_map(|(k, value, c)| identity_kind(&k).map(|kind| (Identity { kind, value }, c)))
                .collect())
        }

        /// The rows only email batches have, for the items `results` says were new: the follow-ups'
        /// cases touched, raw messages, attachments, acknowledgement log. Run in the caller's
        /// transaction, after the batch statement (`postgres::commit_in_one_statement`).
        pub(super) async fn commit_extras(conn: &mut Conn, items: &[NewCase], results: &[Committed]) -> Result<()> {
            let new: Vec<&NewCase> = items
                .iter()
                .zip(results)
                .filter(|(_, r)| matches!(r, Committed::Created { .. }))
                .map(|(it, _)| it)
                .collect();
            // Sorted, like every other table here, so concurrent batches lock rows in one order.
            let mut follow_ups: Vec<&NewCase> = new.iter().copied().filter(|it| it.follow_up).collect();
            follow_ups.sort_unstable_by(|a, b| a.case_id.cmp(&b.case_id));
            for it in follow_ups {
                sqlx::query("UPDATE cases SET updated_at = $2 WHERE id = $1")
                    .bind(&it.case_id)
                    .bind(it.now_ms)
                    .execute(&mut *conn)
                    .await?;
                if let Some((external_id, text)) = &it.edit {
                    sqlx::query(
                        "UPDATE messages SET data = jsonb_set(data::jsonb, '{text}', to_jsonb($4::text))::text \
                         WHERE channel = $1 AND external_id = $2 AND case_id = $3",
                    )
                    .bind(it.channel)
                    .bind(external_id)
                    .bind(&it.case_id)
                    .bind(text)
                    .execute(&mut *conn)
                    .await?;
                }
            }

            let raws: Vec<&NewCase> = new.iter().copied().filter(|it| it.raw.is_some()).collect();
            if !raws.is_empty() {
                let mut qb = QueryBuilder::<$db>::new("INSERT INTO raw_messages (message_id, channel, raw) ");
                qb.push_values(&raws, |mut b, it| {
                    b.push_bind(&it.message_id).push_bind(it.channel).push_bind(it.raw.as_deref().unwrap_or_default());
                });
                qb.build().execute(&mut *conn).await?;
            }
            let attachments: Vec<(&NewCase, &earshot_channel::AttachmentMeta)> =
                new.iter().flat_map(|it| it.attachments.iter().map(move |a| (*it, a))).collect();
            // One statement per attachment: contents can be megabytes, and a multi-row statement
            // would hold them all at once.
            for (it, a) in attachments {
                sqlx::query(
                    "INSERT INTO attachments (message_id, name, media_type, size, sha256, truncated, content) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&it.message_id)
                .bind(&a.name)
                .bind(&a.media_type)
                .bind(i64::try_from(a.size).unwrap_or(i64::MAX))
                .bind(&a.sha256)
                .bind(i64::from(a.truncated))
                .bind(a.content.as_deref())
                .execute(&mut *conn)
                .await?;
            }
            // Sorted, like every other table here, so concurrent batches lock rows in one order.
            let mut acked: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
            for it in &new {
                if let Some(addr) = &it.ack_address {
                    acked.insert(addr, it.now_ms);
                }
            }
            if !acked.is_empty() {
                let mut qb = QueryBuilder::<$db>::new("INSERT INTO ack_log (address, last_at) ");
                qb.push_values(&acked, |mut b, (addr, at)| {
                    b.push_bind(*addr).push_bind(*at);
                });
                qb.push(" ON CONFLICT (address) DO UPDATE SET last_at = excluded.last_at");
                qb.build().execute(&mut *conn).await?;
            }

            Ok(())
        }

        /// What became of `it`: new if its message was inserted, else the case that has it.
        fn outcome(
            it: &NewCase,
            inserted: &HashSet<String>,
            existing: &HashMap<(String, String), Committed>,
        ) -> Result<Committed> {
            if inserted.contains(&it.message_id) {
                return Ok(Committed::Created { leased: Vec::new() });
            }
            existing.get(&(it.channel.to_owned(), it.external_id.clone())).cloned().ok_or_else(|| {
                super::StoreError::Corrupt(format!("message {}:{} exists without its case", it.channel, it.external_id))
            })
        }

        pub(super) async fn discard(conn: &mut Conn, id: super::JobId, now_ms: i64) -> Result<bool> {
            let r = sqlx::query(super::common::sql::DISCARD_DEAD).bind(now_ms).bind(id).execute(&mut *conn).await?;
            Ok(r.rows_affected() == 1)
        }

        pub(super) async fn replay(conn: &mut Conn, id: Option<super::JobId>, now_ms: i64) -> Result<u64> {
            let r = match id {
                Some(id) => {
                    sqlx::query(super::common::sql::REPLAY_DEAD).bind(now_ms).bind(id).execute(&mut *conn).await?
                }
                None => sqlx::query(super::common::sql::REPLAY_ALL_DEAD).bind(now_ms).execute(&mut *conn).await?,
            };
            Ok(r.rows_affected())
        }

        pub(super) async fn save_cursor(conn: &mut Conn, name: &str, value: &str, now_ms: i64) -> Result<()> {
            sqlx::query(super::common::sql::SAVE_CURSOR)
                .bind(name)
                .bind(value)
                .bind(now_ms)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        pub(super) async fn try_lease(
            conn: &mut Conn,
            name: &str,
            holder: &str,
            now_ms: i64,
            ttl_ms: i64,
        ) -> Result<bool> {
            let r = sqlx::query(super::common::sql::TRY_LEASE)
                .bind(name)
                .bind(holder)
                .bind(now_ms + ttl_ms)
                .bind(now_ms)
                .execute(&mut *conn)
                .await?;
            Ok(r.rows_affected() == 1)
        }

        pub(super) async fn release_lease(conn: &mut Conn, name: &str, holder: &str) -> Result<()> {
            sqlx::query(super::common::sql::RELEASE_LEASE).bind(name).bind(holder).execute(&mut *conn).await?;
            Ok(())
        }

        pub(super) async fn quarantine(
            conn: &mut Conn,
            channel: &str,
            source: &str,
            reason: &str,
            raw: &[u8],
            now_ms: i64,
        ) -> Result<i64> {
            let digest = earshot_channel::sha256_hex(raw);
            let inserted: Option<i64> = sqlx::query_scalar(super::common::sql::QUARANTINE)
                .bind(channel)
                .bind(source)
                .bind(reason)
                .bind(raw)
                .bind(now_ms)
                .bind(&digest)
                .fetch_optional(&mut *conn)
                .await?;
            match inserted {
                Some(id) => Ok(id),
                None => Ok(sqlx::query_scalar(super::common::sql::QUARANTINED)
                    .bind(channel)
                    .bind(source)
                    .bind(&digest)
                    .fetch_one(&mut *conn)
                    .await?),
            }
        }

        pub(super) async fn record_event(conn: &mut Conn, e: &super::NewEvent) -> Result<bool> {
            let done = sqlx::query(super::common::sql::RECORD_EVENT)
                .bind(e.channel)
                .bind(&e.source)
                .bind(&e.kind)
                .bind(&e.external_id)
                .bind(&e.sender)
                .bind(&e.subject)
                .bind(&e.data)
                .bind(e.raw.as_deref())
                .bind(e.now_ms)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        pub(super) async fn suppress(conn: &mut Conn, address: &str, reason: &str, until_ms: i64) -> Result<()> {
            sqlx::query(super::common::sql::SUPPRESS)
                .bind(address)
                .bind(reason)
                .bind(until_ms)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        pub(super) async fn suppressed(conn: &mut Conn, addresses: &[String], now_ms: i64) -> Result<Vec<String>> {
            if addresses.is_empty() {
                return Ok(Vec::new());
            }
            let mut qb = QueryBuilder::<$db>::new("SELECT address FROM suppressions WHERE until > ");
            qb.push_bind(now_ms).push(" AND address IN ");
            in_list(&mut qb, addresses);
            Ok(qb.build_query_scalar().fetch_all(&mut *conn).await?)
        }

        pub(super) async fn acked_since(conn: &mut Conn, addresses: &[String], since_ms: i64) -> Result<Vec<String>> {
            if addresses.is_empty() {
                return Ok(Vec::new());
            }
            let mut qb = QueryBuilder::<$db>::new("SELECT address FROM ack_log WHERE last_at >= ");
            qb.push_bind(since_ms).push(" AND address IN ");
            in_list(&mut qb, addresses);
            Ok(qb.build_query_scalar().fetch_all(&mut *conn).await?)
        }

        pub(super) async fn update_message(conn: &mut Conn, message_id: &str, data: &str) -> Result<()> {
            sqlx::query(super::common::sql::UPDATE_MESSAGE).bind(message_id).bind(data).execute(&mut *conn).await?;
            Ok(())
        }
    };
}

pub(super) use write_queries;
