//! The store contract, run against both backends: every check is one `check_*` function, and each
//! runs as a `sqlite_*` and a `postgres_*` test (the PostgreSQL one skips when no server is reachable).
//!
//! Times are explicit milliseconds (the store takes them as arguments), so leases, retries and ordering
//! are checked at exact instants instead of by sleeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use earshot::schema::{CaseId, CaseRef, EventId, MessageId};
use earshot::store::{Committed, Destination, Job, JobId, JobOutcome, NewCase, NewJob, OutcomeKind, Store};
use earshot_channel::{Identity, IdentityKind};
use serde_json::json;

use crate::support::TestDb;

/// An arbitrary fixed "now"; every check counts from it.
const T0: i64 = 1_700_000_000_000;
const LEASE_MS: i64 = 30_000;
const TICKETS: &str = "downstream:tickets";
/// A new case whose jobs were all written pending.
const CREATED: Committed = Committed::Created { leased: Vec::new() };
const WEB: &str = "channel:web";

/// One pair of tests per check. `store` checks get one opened store; `db` checks get the database and
/// open what they need (two stores, raw connections).
macro_rules! on_both_backends {
    (store $check:ident => $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let db = TestDb::sqlite();
            let store = db.store().await;
            $check(&*store).await;
            store.close().await;
            db.cleanup().await;
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(db) = TestDb::postgres().await else {
                return;
            };
            let store = db.store().await;
            $check(&*store).await;
            store.close().await;
            db.cleanup().await;
        }
    };
    (db $check:ident => $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let db = TestDb::sqlite();
            $check(&db).await;
            db.cleanup().await;
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(db) = TestDb::postgres().await else {
                return;
            };
            $check(&db).await;
            db.cleanup().await;
        }
    };
}

on_both_backends!(store check_commit_creates_everything => sqlite_commit_creates_everything, postgres_commit_creates_everything);
on_both_backends!(store check_full_size_batch => sqlite_full_size_batch, postgres_full_size_batch);
on_both_backends!(store check_exact_dedup => sqlite_exact_dedup, postgres_exact_dedup);
on_both_backends!(store check_same_key_twice_in_one_batch => sqlite_same_key_twice_in_one_batch, postgres_same_key_twice_in_one_batch);
on_both_backends!(db check_batch_is_all_or_nothing => sqlite_batch_is_all_or_nothing, postgres_batch_is_all_or_nothing);
on_both_backends!(db check_seqs_continue_after_reopen => sqlite_seqs_continue_after_reopen, postgres_seqs_continue_after_reopen);
on_both_backends!(store check_leasing => sqlite_leasing, postgres_leasing);
on_both_backends!(store check_per_case_ordering => sqlite_per_case_ordering, postgres_per_case_ordering);
on_both_backends!(store check_dead_and_replay => sqlite_dead_and_replay, postgres_dead_and_replay);
on_both_backends!(store check_written_leased => sqlite_written_leased, postgres_written_leased);
on_both_backends!(store check_ticket_id => sqlite_ticket_id, postgres_ticket_id);
on_both_backends!(store check_batched_outcomes => sqlite_batched_outcomes, postgres_batched_outcomes);
on_both_backends!(store check_dead_job_holds_later_jobs_until_discarded => sqlite_dead_job_holds_later_jobs_until_discarded, postgres_dead_job_holds_later_jobs_until_discarded);
on_both_backends!(store check_lease_by_destination => sqlite_lease_by_destination, postgres_lease_by_destination);
on_both_backends!(store check_retention => sqlite_retention, postgres_retention);
on_both_backends!(store check_digest_comes_back_with_a_duplicate => sqlite_digest_comes_back_with_a_duplicate, postgres_digest_comes_back_with_a_duplicate);
on_both_backends!(store check_customers_for => sqlite_customers_for, postgres_customers_for);
on_both_backends!(store check_customer_checked_at_commit => sqlite_customer_checked_at_commit, postgres_customer_checked_at_commit);
on_both_backends!(store check_mailbox_leases => sqlite_mailbox_leases, postgres_mailbox_leases);
on_both_backends!(store check_channel_state_is_idempotent => sqlite_channel_state_is_idempotent, postgres_channel_state_is_idempotent);
on_both_backends!(store check_case_changes => sqlite_case_changes, postgres_case_changes);
on_both_backends!(store check_acknowledged_and_provider_id => sqlite_acknowledged_and_provider_id, postgres_acknowledged_and_provider_id);
on_both_backends!(store check_sla_due_and_search => sqlite_sla_due_and_search, postgres_sla_due_and_search);
on_both_backends!(db check_customer_cases_only_on_chat_channels => sqlite_customer_cases_only_on_chat_channels, postgres_customer_cases_only_on_chat_channels);

// Concurrency: SQLite is written by one process, so its concurrent callers share one store; on
// PostgreSQL they are two stores (two pools, as two gateway instances) on one database.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_next_seqs_concurrent() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    check_seqs_concurrent(&[store.clone(), store.clone()]).await;
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_next_seqs_concurrent() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    check_seqs_concurrent(&[a.clone(), b.clone()]).await;
    a.close().await;
    b.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_leasing() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    check_concurrent_leasing(&[store.clone(), store.clone()]).await;
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_leasing() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    check_concurrent_leasing(&[a.clone(), b.clone()]).await;
    a.close().await;
    b.close().await;
    db.cleanup().await;
}

/// PostgreSQL's hot statements (the intake batch, the outbox's lease and outcomes) keep one plan
/// from their first run. Each plan must reach every table through an index condition on the
/// statement's own values, whatever the tables held when it was made: a plain join, planned with
/// 30 analyzed rows, became a hash join over the whole of `identities`, and a lease planned on an
/// empty table scanned `outbox_order` by destination alone for every due job. Either would have
/// stayed so as the tables grew.
/// Every outbox write checks `state` (its CHECK, and the WHERE of the partial indexes), and SQLite
/// evaluated an `IN` list of three or more values by building a temporary B-tree of them for each
/// row written: about five per complaint, on the one writer thread. The migrated schema checks
/// `state` with comparisons only, so none of the outbox's writes opens one; the CHECK still refuses
/// an unknown state; and a wait for an earlier unfinished job written as the store writes it
/// (`store/common.rs`) still reads `outbox_order`, whose WHERE a query must hold in the same words.
#[tokio::test]
async fn sqlite_outbox_writes_build_no_temporary_table_and_the_lease_keeps_its_index() {
    use sqlx::Connection;
    let db = TestDb::sqlite();
    let store = db.store().await;
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("open the test database");
    let writes = [
        "INSERT INTO outbox (event_id, case_id, kind, destination, state, attempts, max_attempts, \
         next_attempt_at, created_at, updated_at) VALUES ('e', 'c', 'k', 'd', 'pending', 0, 1, 1, 1, 1)",
        "UPDATE outbox SET state = 'leased', attempts = attempts + 1, next_attempt_at = 2 WHERE id = 1",
        "UPDATE outbox SET state = 'done', next_attempt_at = 3 WHERE id = 1",
        "UPDATE outbox SET state = 'dead' WHERE id = 1",
    ];
    for sql in writes {
        let ops: Vec<String> = sqlx::query(&format!("EXPLAIN {sql}"))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, "opcode"))
            .collect();
        assert!(!ops.is_empty(), "EXPLAIN {sql} gave no program");
        assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "{sql} builds a temporary table: {ops:?}");
    }
    let bad = sqlx::query(
        "INSERT INTO outbox (event_id, case_id, kind, destination, state, attempts, max_attempts, \
         next_attempt_at, created_at, updated_at) VALUES ('e2', 'c', 'k', 'd', 'sent', 0, 1, 1, 1, 1)",
    )
    .execute(&mut conn)
    .await;
    assert!(bad.is_err_and(|e| e.to_string().contains("CHECK")), "an unknown state must be refused");

    // The store's lease runs on the migrated schema (the one job is dead, so nothing is due), and
    // the wait for an earlier unfinished job, in the store's words, reads the order index.
    assert!(lease(&*store, T0, 10).await.is_empty());
    let plan = sqlite_plan(
        &mut conn,
        "SELECT 1 FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM outbox p \
         WHERE p.case_id = o.case_id AND p.destination = o.destination \
         AND (p.state = 'pending' OR p.state = 'leased' OR p.state = 'dead') AND p.id < o.id)",
    )
    .await;
    assert!(plan.iter().any(|d| d.contains("USING INDEX outbox_order")), "{plan:?}");
    let _ = conn.close().await;
    store.close().await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_kept_plans_reach_every_table_by_an_index_condition() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = earshot::store::PgStore::connect(&db.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let leading: HashMap<String, String> = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect to the test database");
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.indexrelid::regclass::text, a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]",
        )
        .fetch_all(&mut conn)
        .await
        .expect("index columns");
        let _ = conn.close().await;
        rows.into_iter().collect()
    };
    let check = |when: &str, plans: Vec<(&str, (String, bool))>| {
        for (name, (plan, generic)) in plans {
            let whole = (name == "lease of every destination").then_some("outbox_due");
            let problems = unbounded_scans(&plan, &leading, whole);
            assert!(problems.is_empty(), "{name}, {when}: {problems:?} in\n{plan}");
            assert!(generic, "{name}, {when}: a generic plan, the one kept:\n{plan}");
            if name == "batch" {
                assert!(
                    plan.contains("Index Cond: ((kind = c.kind) AND (value = c.value))"),
                    "{name}, {when}: contacts looked up by their key:\n{plan}"
                );
            }
            if name == "cases of duplicates" {
                assert!(
                    plan.contains("Index Cond: ((channel = k.channel) AND (external_id = k.external_id))")
                        && plan.contains("Index Cond: (id = messages.case_id)"),
                    "{name}, {when}: messages and cases looked up by their keys:\n{plan}"
                );
            }
        }
    };
    check("new database", store.kept_plans().await.expect("plans"));
    raw_exec(
        &db.url,
        "INSERT INTO identities (kind, value, customer_id, created_at) \
            SELECT 'email', 'c' || g || '@example.com', 'cust-' || g, 0 FROM generate_series(1, 30) g; \
         INSERT INTO cases (id, seq, case_ref, status, channel, source, customer_id, data, created_at, updated_at) \
            SELECT 'case-' || g, g, 'R' || g, 'new', 'web', 'site', 'cust-' || g, '{}', 0, 0 \
            FROM generate_series(1, 30) g; \
         INSERT INTO outbox (event_id, case_id, kind, destination, state, attempts, max_attempts, \
                             next_attempt_at, created_at, updated_at) \
            SELECT 'evt-' || g, 'case-' || (g % 7), 'case.created', 'webhook:tickets', \
                   (ARRAY['pending', 'leased', 'done', 'dead'])[1 + g % 4], 0, 5, g, g, g \
            FROM generate_series(1, 30) g; \
         INSERT INTO outbox_payloads (job_id, payload) SELECT id, '{}' FROM outbox; \
         INSERT INTO messages (id, case_id, channel, external_id, direction, data, received_at) \
            SELECT 'msg-' || g, 'case-' || g, 'web', 'site:' || g, 'in', '{}', 0 FROM generate_series(1, 30) g; \
         ANALYZE",
    )
    .await;
    check("30 rows, analyzed", store.kept_plans().await.expect("plans"));
    store.close().await;
    db.cleanup().await;
}

/// The scans in an `EXPLAIN` plan that read a table other than by an index condition on the
/// index's first column (`leading`: index name to column): a sequential scan, or an index read
/// whole or by a later column alone. `whole` names an index that may be read in order by a later
/// column: `outbox_due` by due time, for a lease of every destination.
fn unbounded_scans(plan: &str, leading: &HashMap<String, String>, whole: Option<&str>) -> Vec<String> {
    let lines: Vec<&str> = plan.lines().map(str::trim).collect();
    let mut problems = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let node = line.trim_start_matches("->  ");
        let reads_table = ["Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan", "Tid"]
            .iter()
            .any(|kind| node.starts_with(kind));
        if !reads_table {
            continue;
        }
        // The index, and the node's own detail lines, up to its first child or sibling.
        let index = node.split_whitespace().skip_while(|w| *w != "using" && *w != "on").nth(1).unwrap_or("");
        let cond = lines[i + 1..]
            .iter()
            .take_while(|l| !l.starts_with("->") && !l.starts_with("SubPlan"))
            .find(|l| l.starts_with("Index Cond:"));
        let by_first_column = match (leading.get(index), cond) {
            (Some(column), Some(cond)) => cond.contains(&format!("({column} = ")),
            _ => false,
        };
        if !by_first_column && whole != Some(index) {
            problems.push(node.to_owned());
        }
    }
    problems
}

/// What a batch commits on a connection that keeps its plans, past the runs after which PostgreSQL
/// would choose one by itself: new cases, a redelivery reported as the original (its case looked
/// up on the same connection), a known contact's case handed back to be rendered for its customer.
#[tokio::test]
async fn postgres_batches_with_kept_plans_commit_cases_and_report_duplicates() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = earshot::store::PgStore::connect(&db.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    for round in 0..8 {
        let s = seqs(&store, 3).await;
        let mut first = new_case(s[0], T0 + round, &[TICKETS]);
        first.check_customer = true;
        let second = new_case(s[1], T0 + round, &[]);
        let results = commit(&store, &[first.clone(), second.clone()]).await;
        assert_eq!(results, vec![CREATED, CREATED], "round {round}");
        let again = redelivery_of(&first, s[2], T0 + round, &[TICKETS]);
        assert_eq!(commit(&store, &[again]).await, vec![duplicate_of(&first)], "round {round}");
    }
    assert_eq!(store.count_cases().await.expect("count"), 16);
    check_customer_checked_at_commit(&store).await;
    store.close().await;
    db.cleanup().await;
}

/// The writer keeps its PostgreSQL connection between batches. When the server drops it (a
/// restart, an administrator), the next batch fails whole and writes nothing, and the batch after
/// that commits on a new connection: one failed batch, which the writer answers with 503s.
/// (An idle connection of the main pool that the server dropped fails its next use once too.)
#[tokio::test]
async fn postgres_batch_after_a_dropped_connection_fails_once_then_commits() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = earshot::store::PgStore::connect(&db.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let s = seqs(&store, 3).await;
    let first = new_case(s[0], T0, &[TICKETS]);
    assert_eq!(commit(&store, std::slice::from_ref(&first)).await, vec![CREATED]);
    let before = raw_count(&db.url, "messages").await;

    // Every other connection to the test database, the writer's kept one among them.
    raw_exec(
        &db.url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    let second = new_case(s[1], T0 + 1, &[TICKETS]);
    let failed = store.commit_batch(Arc::new(vec![second.clone()])).await;
    assert!(failed.is_err(), "a batch on the dropped connection fails: {failed:?}");
    assert_eq!(raw_count(&db.url, "messages").await, before, "the failed batch wrote nothing");

    assert_eq!(commit(&store, std::slice::from_ref(&second)).await, vec![CREATED]);
    let third = new_case(s[2], T0 + 2, &[]);
    assert_eq!(commit(&store, &[third]).await, vec![CREATED]);
    assert_eq!(raw_count(&db.url, "messages").await, before + 2);
    store.close().await;
    db.cleanup().await;
}

// ---------------------------------------------------------------------------------------------------
// Helpers

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A new web case received at `now_ms` with one job per destination (in this order). Every id and the
/// external id are fresh, so cases of one test never collide by accident.
fn new_case(seq: i64, now_ms: i64, destinations: &[&str]) -> NewCase {
    let u = uid();
    let case_id = CaseId::generate();
    let message_id = MessageId::generate().0;
    let external_id = format!("ext_{u}");
    NewCase {
        channel: "web",
        external_id: external_id.clone(),
        case_id: case_id.clone(),
        seq,
        case_ref: CaseRef::from_seq(u64::try_from(seq).expect("sequence numbers are positive")),
        status: "new",
        source: "site".to_owned(),
        customer_id: format!("cus_{u}"),
        identities: vec![Identity { kind: IdentityKind::Email, value: format!("{u}@example.com") }],
        message_id: message_id.clone(),
        message_json: json!({ "id": message_id, "external_id": external_id, "text": "The cup arrived broken." })
            .to_string(),
        case_json: json!({ "id": case_id, "seq": seq }).to_string(),
        now_ms,
        jobs: destinations
            .iter()
            .map(|d| NewJob {
                event_id: EventId::generate().0,
                kind: "case.created",
                destination: dest(d),
                payload: json!({ "case_id": case_id, "destination": d }).to_string(),
                max_attempts: 5,
                lease_until: None,
            })
            .collect(),
        follow_up: false,
        raw: None,
        attachments: vec![],
        ack_address: None,
        check_customer: false,
        reply_route: None,
        sla_due: None,
        digest: None,
        edit: None,
        reachable_again: None,
    }
}

/// Another delivery of `original`'s message: same channel and external id, everything else new.
fn redelivery_of(original: &NewCase, seq: i64, now_ms: i64, destinations: &[&str]) -> NewCase {
    let mut again = new_case(seq, now_ms, destinations);
    again.external_id = original.external_id.clone();
    again
}

fn duplicate_of(original: &NewCase) -> Committed {
    Committed::Duplicate {
        case_id: original.case_id.clone(),
        case_ref: original.case_ref.clone(),
        status: original.status.to_owned(),
        digest: original.digest.clone(),
    }
}

async fn seqs(store: &dyn Store, n: usize) -> Vec<i64> {
    let seqs = store.next_seqs(n).await.expect("next_seqs");
    assert_eq!(seqs.len(), n, "next_seqs({n}) returns {n} numbers: {seqs:?}");
    seqs
}

async fn commit(store: &dyn Store, items: &[NewCase]) -> Vec<Committed> {
    store.commit_batch(Arc::new(items.to_vec())).await.expect("commit_batch")
}

async fn job_counts(store: &dyn Store) -> BTreeMap<String, i64> {
    store.job_counts().await.expect("job_counts").into_iter().collect()
}

fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
}

async fn all_jobs(store: &dyn Store) -> Vec<Job> {
    let mut jobs = store.list_jobs(None, 100_000).await.expect("list_jobs");
    jobs.sort_by_key(|j| j.id);
    jobs
}

async fn job(store: &dyn Store, id: JobId) -> Job {
    all_jobs(store).await.into_iter().find(|j| j.id == id).unwrap_or_else(|| panic!("job {id} exists"))
}

/// The jobs of one case, oldest first.
async fn jobs_of(store: &dyn Store, case_id: &CaseId) -> Vec<Job> {
    all_jobs(store).await.into_iter().filter(|j| &j.case_id == case_id).collect()
}

/// Leases until `now_ms + LEASE_MS`. The result is sorted by id: "oldest first" is about which jobs
/// are chosen under the limit; the worker delivers a leased batch concurrently, so the order of the
/// returned rows means nothing (and `UPDATE … RETURNING` does not promise one).
async fn lease(store: &dyn Store, now_ms: i64, limit: i64) -> Vec<Job> {
    let mut jobs = store.lease_jobs(None, now_ms, now_ms + LEASE_MS, limit).await.expect("lease_jobs");
    jobs.sort_by_key(|j| j.id);
    jobs
}

fn dest(stored: &str) -> Destination {
    Destination::parse(stored).expect("a destination")
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// Runs statements on the test database beside the store, for what the `Store` API cannot do.
async fn raw_exec(url: &str, sql: &str) {
    use sqlx::Connection;
    let result = if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect to the test database");
        let r = sqlx::raw_sql(sql).execute(&mut conn).await.map(drop);
        let _ = conn.close().await;
        r
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("open the test database");
        let r = sqlx::raw_sql(sql).execute(&mut conn).await.map(drop);
        let _ = conn.close().await;
        r
    };
    if let Err(e) = result {
        panic!("{sql}: {e}");
    }
}

/// The `detail` lines of SQLite's `EXPLAIN QUERY PLAN` for `sql` (parameters left unbound).
async fn sqlite_plan(conn: &mut sqlx::SqliteConnection, sql: &str) -> Vec<String> {
    sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN QUERY PLAN {sql}: {e}"))
        .iter()
        .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
        .collect()
}

/// Committed rows of `table`, counted on a connection of its own (so only what was really committed).
async fn raw_count(url: &str, table: &str) -> i64 {
    use sqlx::Connection;
    let sql = format!("SELECT COUNT(*) FROM {table}");
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect to the test database");
        let n = sqlx::query_scalar(&sql).fetch_one(&mut conn).await.expect("count rows");
        let _ = conn.close().await;
        n
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("open the test database");
        let n = sqlx::query_scalar(&sql).fetch_one(&mut conn).await.expect("count rows");
        let _ = conn.close().await;
        n
    }
}

// ---------------------------------------------------------------------------------------------------
// Checks

async fn check_commit_creates_everything(store: &dyn Store) {
    assert_eq!(store.count_cases().await.expect("count"), 0);
    assert!(job_counts(store).await.is_empty());
    assert_eq!(commit(store, &[]).await, vec![], "an empty batch is a no-op");

    let s = seqs(store, 3).await;
    let a = new_case(s[0], T0, &[TICKETS, WEB]);
    let b = new_case(s[1], T0 + 1, &[TICKETS]);
    let c = new_case(s[2], T0 + 2, &[]);
    assert_eq!(commit(store, &[a.clone(), b.clone()]).await, vec![CREATED, CREATED]);
    assert_eq!(commit(store, std::slice::from_ref(&c)).await, vec![CREATED]);

    assert_eq!(store.count_cases().await.expect("count"), 3);
    assert_eq!(job_counts(store).await, counts(&[("pending", 3)]));

    let (row, messages) = store.get_case(&a.case_id).await.expect("get_case").expect("case a is stored");
    assert_eq!(row.id, a.case_id);
    assert_eq!(row.case_ref, a.case_ref);
    assert_eq!(row.status, "new");
    assert_eq!(row.channel, "web");
    assert_eq!(row.source, "site");
    assert_eq!(row.ticket_id, None);
    assert_eq!(row.data, a.case_json);
    assert_eq!(row.created_at, T0);
    assert_eq!(messages, vec![a.message_json.clone()]);
    let (_, messages) = store.get_case(&c.case_id).await.expect("get_case").expect("case c is stored");
    assert_eq!(messages, vec![c.message_json.clone()], "a case without jobs still has its message");
    assert!(store.get_case(&CaseId::from("case_unknown")).await.expect("get_case").is_none());

    // Newest first, whatever batch they came in.
    let listed: Vec<CaseId> = store.list_cases(10).await.expect("list_cases").into_iter().map(|r| r.id).collect();
    assert_eq!(listed, vec![c.case_id.clone(), b.case_id.clone(), a.case_id.clone()]);
    let listed: Vec<CaseId> = store.list_cases(2).await.expect("list_cases").into_iter().map(|r| r.id).collect();
    assert_eq!(listed, vec![c.case_id.clone(), b.case_id.clone()], "the limit keeps the newest");

    let newest_first = ids(&store.list_jobs(None, 10).await.expect("list_jobs"));
    assert_eq!(newest_first.len(), 3);
    assert!(newest_first.windows(2).all(|w| w[0] > w[1]), "list_jobs is newest first: {newest_first:?}");

    // Each job as rendered, in the order the case listed them (ids follow creation order).
    let a_jobs = jobs_of(store, &a.case_id).await;
    assert_eq!(a_jobs.len(), 2);
    for (stored, wanted) in a_jobs.iter().zip(&a.jobs) {
        assert_eq!(stored.event_id, wanted.event_id);
        assert_eq!(stored.kind, wanted.kind);
        assert_eq!(stored.destination, wanted.destination);
        assert_eq!(stored.payload, wanted.payload);
        assert_eq!(stored.max_attempts, wanted.max_attempts);
        assert_eq!(stored.state, "pending");
        assert_eq!(stored.attempts, 0);
        assert_eq!(stored.next_attempt_at, T0, "a new job is due when its case is created");
        assert_eq!(stored.created_at, T0);
        assert_eq!(stored.last_error, None);
    }
    assert_eq!(jobs_of(store, &b.case_id).await.len(), 1);
    assert!(jobs_of(store, &c.case_id).await.is_empty());

    // The customers and their identities were written with the cases.
    for it in [&a, &b, &c] {
        let known = store.customers_for(&it.identities).await.expect("customers_for");
        assert_eq!(known, HashMap::from([(it.identities[0].clone(), it.customer_id.clone())]));
    }
}

/// A batch as large as the intake writer's default `max_batch` (256), with several jobs per case,
/// fits in one statement per table on both backends.
async fn check_full_size_batch(store: &dyn Store) {
    let s = seqs(store, 256).await;
    let items: Vec<NewCase> =
        s.iter().enumerate().map(|(i, seq)| new_case(*seq, T0 + i as i64, &[TICKETS, WEB, "downstream:crm"])).collect();
    let results = commit(store, &items).await;
    assert!(results.iter().all(|r| *r == CREATED), "{results:?}");
    assert_eq!(store.count_cases().await.expect("count"), 256);
    assert_eq!(job_counts(store).await, counts(&[("pending", 768)]));
}

async fn check_exact_dedup(store: &dyn Store) {
    let s = seqs(store, 2).await;
    let original = new_case(s[0], T0, &[TICKETS]);
    assert_eq!(commit(store, std::slice::from_ref(&original)).await, vec![CREATED]);

    // The same message again, rendered anew (new case and message ids, more jobs): reported with the
    // original case's ids, and nothing of the new rendering is stored.
    let again = redelivery_of(&original, s[1], T0 + 5, &[TICKETS, WEB]);
    assert_eq!(commit(store, std::slice::from_ref(&again)).await, vec![duplicate_of(&original)]);
    assert_eq!(store.count_cases().await.expect("count"), 1);
    assert_eq!(job_counts(store).await, counts(&[("pending", 1)]));
    assert!(store.get_case(&again.case_id).await.expect("get_case").is_none());
    let (_, messages) = store.get_case(&original.case_id).await.expect("get_case").expect("original case");
    assert_eq!(messages, vec![original.message_json.clone()], "the redelivered message is not stored twice");
    assert!(
        store.customers_for(&again.identities).await.expect("customers_for").is_empty(),
        "a duplicate's customer is not created"
    );

    // Mixed with new items in a later batch: the new ones are created, the duplicate reported in place.
    // The same external id on another channel is another message.
    let s = seqs(store, 4).await;
    let first = new_case(s[0], T0 + 10, &[TICKETS]);
    let once_more = redelivery_of(&original, s[1], T0 + 11, &[TICKETS]);
    let second = new_case(s[2], T0 + 12, &[WEB]);
    let mut by_email = redelivery_of(&original, s[3], T0 + 13, &[TICKETS]);
    by_email.channel = "email";
    let results = commit(store, &[first.clone(), once_more.clone(), second.clone(), by_email.clone()]).await;
    assert_eq!(results, vec![CREATED, duplicate_of(&original), CREATED, CREATED]);
    assert_eq!(store.count_cases().await.expect("count"), 4);
    assert_eq!(job_counts(store).await, counts(&[("pending", 4)]));
    assert!(store.get_case(&once_more.case_id).await.expect("get_case").is_none());
    assert!(jobs_of(store, &once_more.case_id).await.is_empty());
    for it in [&first, &second, &by_email] {
        assert!(store.get_case(&it.case_id).await.expect("get_case").is_some(), "{} is stored", it.case_id);
        assert_eq!(jobs_of(store, &it.case_id).await.len(), 1);
    }
}

/// The intake writer merges identical deliveries before a batch, so `commit_batch` is not required to
/// accept one key twice in a batch; but whatever it does, it must not make two cases or half of one.
async fn check_same_key_twice_in_one_batch(store: &dyn Store) {
    let s = seqs(store, 2).await;
    let first = new_case(s[0], T0, &[TICKETS]);
    let copy = redelivery_of(&first, s[1], T0, &[TICKETS]);
    match store.commit_batch(Arc::new(vec![first.clone(), copy.clone()])).await {
        Ok(results) => {
            assert_eq!(results, vec![CREATED, duplicate_of(&first)]);
            assert_eq!(store.count_cases().await.expect("count"), 1);
            assert_eq!(job_counts(store).await, counts(&[("pending", 1)]));
        }
        Err(_) => {
            assert_eq!(store.count_cases().await.expect("count"), 0);
            assert!(job_counts(store).await.is_empty());
        }
    }
    assert!(store.get_case(&copy.case_id).await.expect("get_case").is_none());
}

/// One item that the database refuses fails the whole batch and nothing of the batch is stored: not
/// its messages, identities (its customers), cases nor jobs. The refusal is staged at each table in turn, so
/// that the rows the transaction had already written before it must be rolled back too.
async fn check_batch_is_all_or_nothing(db: &TestDb) {
    let store = db.store().await;
    let store = &*store;
    let url = db.url.as_str();
    let postgres = url.starts_with("postgres");

    // Something already stored, so that "unchanged" is not merely "empty".
    let s = seqs(store, 1).await;
    assert_eq!(commit(store, &[new_case(s[0], T0, &[TICKETS])]).await, vec![CREATED]);

    let tables = ["messages", "identities", "cases", "outbox", "outbox_payloads"];
    for (table, column) in [("messages", "data"), ("cases", "data"), ("outbox_payloads", "payload")] {
        let s = seqs(store, 3).await;
        let good = new_case(s[0], T0 + 10, &[TICKETS, WEB]);
        // The bad item carries the marker in every row, so it is refused wherever the refusal is staged;
        // the marker names the table because earlier rounds store their bad item once cured.
        let marker = format!("POISON-{table}");
        let mut bad = new_case(s[1], T0 + 11, &[TICKETS]);
        bad.message_json = json!({ "text": marker }).to_string();
        bad.case_json = json!({ "note": marker }).to_string();
        bad.jobs[0].payload = json!({ "note": marker }).to_string();
        let also_good = new_case(s[2], T0 + 12, &[TICKETS]);
        let batch = [good.clone(), bad.clone(), also_good.clone()];

        let mut before = Vec::new();
        for t in tables {
            before.push(raw_count(url, t).await);
        }
        let (cases_before, jobs_before) = (store.count_cases().await.expect("count"), job_counts(store).await);

        let (poison, cure) = if postgres {
            (
                format!("ALTER TABLE {table} ADD CONSTRAINT poison CHECK ({column} NOT LIKE '%{marker}%')"),
                format!("ALTER TABLE {table} DROP CONSTRAINT poison"),
            )
        } else {
            // SQLite cannot add a CHECK to a table; a trigger refuses the row the same way.
            (
                format!(
                    "CREATE TRIGGER poison BEFORE INSERT ON {table} WHEN NEW.{column} LIKE '%{marker}%' \
                     BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
                ),
                "DROP TRIGGER poison".to_owned(),
            )
        };
        raw_exec(url, &poison).await;
        let result = store.commit_batch(Arc::new(batch.to_vec())).await;
        assert!(result.is_err(), "a batch with a refused {table} row fails as a whole, got {result:?}");

        let mut after = Vec::new();
        for t in tables {
            after.push(raw_count(url, t).await);
        }
        assert_eq!(after, before, "rows of {tables:?} after the failed batch (refused in {table})");
        assert_eq!(store.count_cases().await.expect("count"), cases_before);
        assert_eq!(job_counts(store).await, jobs_before);
        for it in &batch {
            assert!(store.get_case(&it.case_id).await.expect("get_case").is_none());
            assert!(store.customers_for(&it.identities).await.expect("customers_for").is_empty());
        }

        // The failed attempt left no trace: once the refusal is lifted, the very same items are all new.
        raw_exec(url, &cure).await;
        assert_eq!(commit(store, &batch).await, vec![CREATED; 3], "refused in {table}");
        assert_eq!(jobs_of(store, &good.case_id).await.len(), 2);
    }
    store.close().await;
}

/// Sequence numbers handed out after a restart never repeat those of stored cases (SQLite seeds its
/// counter from the file; PostgreSQL has a sequence).
async fn check_seqs_continue_after_reopen(db: &TestDb) {
    let store = db.store().await;
    let first = seqs(&*store, 5).await;
    let items: Vec<NewCase> = first.iter().map(|s| new_case(*s, T0, &[])).collect();
    assert!(commit(&*store, &items).await.iter().all(|r| *r == CREATED));
    store.close().await;

    let store = db.store().await;
    let max = first.iter().copied().max().expect("five numbers");
    let next = seqs(&*store, 5).await;
    assert!(next.iter().all(|s| *s > max), "after reopening: {next:?}, stored up to {max}");
    // And they are usable: no case_ref or seq collides with a stored case.
    let items: Vec<NewCase> = next.iter().map(|s| new_case(*s, T0, &[])).collect();
    assert!(commit(&*store, &items).await.iter().all(|r| *r == CREATED));
    assert_eq!(store.count_cases().await.expect("count"), 10);
    store.close().await;
}

/// Many callers at once (several tasks per store; on PostgreSQL, two stores) never get the same number.
async fn check_seqs_concurrent(stores: &[Arc<dyn Store>]) {
    let mut tasks = Vec::new();
    for store in stores {
        for _ in 0..2 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for n in [1, 7, 3, 20, 1, 64, 2] {
                    got.extend(seqs(&*store, n).await);
                    tokio::task::yield_now().await;
                }
                got
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("seq task"));
    }
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "{} numbers handed out, {} distinct", all.len(), distinct.len());
    assert!(all.iter().all(|s| *s > 0), "sequence numbers are positive (CaseRef::from_seq takes them)");
}

async fn check_leasing(store: &dyn Store) {
    let s = seqs(store, 4).await;
    // Jobs are due when their case is created: a, b, c at once, d much later.
    let d_due = T0 + 1_000_000;
    let items = [
        new_case(s[0], T0, &[TICKETS]),
        new_case(s[1], T0 + 1, &[TICKETS]),
        new_case(s[2], T0 + 2, &[TICKETS]),
        new_case(s[3], d_due, &[TICKETS]),
    ];
    commit(store, &items).await;
    let mut job_ids = Vec::new();
    for it in &items {
        job_ids.push(jobs_of(store, &it.case_id).await[0].id);
    }
    let [a, b, c, d] = job_ids[..] else { panic!("four jobs: {job_ids:?}") };

    // Oldest first, up to the limit; leasing counts an attempt and holds the job until the lease ends.
    let now = T0 + 100;
    let got = lease(store, now, 2).await;
    assert_eq!(ids(&got), vec![a, b]);
    for j in &got {
        assert_eq!(j.state, "leased");
        assert_eq!(j.attempts, 1);
        assert_eq!(j.next_attempt_at, now + LEASE_MS, "a leased job keeps its lease end as next attempt");
    }
    assert_eq!(ids(&lease(store, now + 1, 10).await), vec![c], "leased jobs are not leased again; d is not due");
    assert!(lease(store, now + 2, 10).await.is_empty());
    assert!(lease(store, now + LEASE_MS - 1, 10).await.is_empty(), "a lease holds until its end");

    // The lease ended (the worker died, say): another worker takes the jobs, with one more attempt.
    let t1 = now + LEASE_MS;
    let got = lease(store, t1, 10).await;
    assert_eq!(ids(&got), vec![a, b], "c was leased 1 ms later and is still held");
    assert!(got.iter().all(|j| j.attempts == 2), "{got:?}");

    // The first worker's results are fenced out by its stale attempt number.
    assert!(!store.complete_job(a, 1, t1).await.expect("complete"));
    assert!(!store.fail_job(a, 1, Some(t1 + 10), "stale", t1).await.expect("fail"));
    assert!(!store.fail_job(a, 1, None, "stale", t1).await.expect("fail"));
    let j = job(store, a).await;
    assert_eq!((j.state.as_str(), j.attempts, j.last_error), ("leased", 2, None), "stale results change nothing");

    // The current worker's do count, once.
    assert!(store.complete_job(a, 2, t1).await.expect("complete"));
    assert_eq!(job(store, a).await.state, "done");
    assert!(!store.complete_job(a, 2, t1).await.expect("complete"), "a done job is not completed twice");
    assert!(!store.fail_job(a, 2, None, "late", t1).await.expect("fail"), "a done job cannot fail");
    assert_eq!(job(store, a).await.state, "done");

    let retry_at = t1 + 5_000;
    assert!(store.fail_job(b, 2, Some(retry_at), "HTTP 503", t1).await.expect("fail"));
    let j = job(store, b).await;
    assert_eq!(j.state, "pending");
    assert_eq!(j.attempts, 2);
    assert_eq!(j.next_attempt_at, retry_at);
    assert_eq!(j.last_error.as_deref(), Some("HTTP 503"));
    assert!(!store.complete_job(b, 2, t1).await.expect("complete"), "a pending job is not leased: no completion");

    // c's lease (from now + 1) has ended by now, b's retry is not yet due.
    assert_eq!(ids(&lease(store, retry_at - 1, 10).await), vec![c]);
    let got = lease(store, retry_at, 10).await;
    assert_eq!(ids(&got), vec![b], "a failed job is leased again at its retry time");
    assert_eq!(got[0].attempts, 3);
    assert!(store.complete_job(b, 3, retry_at).await.expect("complete"));
    assert!(store.complete_job(c, 2, retry_at).await.expect("complete"));

    assert!(lease(store, d_due - 1, 10).await.is_empty(), "d is not due yet");
    assert_eq!(ids(&lease(store, d_due, 10).await), vec![d]);
    assert_eq!(job_counts(store).await, counts(&[("done", 3), ("leased", 1)]));
}

/// Jobs of one case to one destination go out in order: a later one waits while an earlier one is
/// unfinished, including while that one waits for a retry.
async fn check_per_case_ordering(store: &dyn Store) {
    let s = seqs(store, 2).await;
    let x = new_case(s[0], T0, &[TICKETS, TICKETS, WEB]);
    let y = new_case(s[1], T0 + 1, &[TICKETS]);
    commit(store, &[x.clone(), y.clone()]).await;
    let x_jobs = ids(&jobs_of(store, &x.case_id).await);
    let [x1, x2, x3] = x_jobs[..] else { panic!("three jobs of x: {x_jobs:?}") };
    let y1 = jobs_of(store, &y.case_id).await[0].id;

    // x2 waits for x1; x's job to another destination and y's job do not.
    assert_eq!(ids(&lease(store, T0 + 10, 10).await), vec![x1, x3, y1]);
    assert!(lease(store, T0 + 11, 10).await.is_empty(), "x2 waits while x1 is leased");

    let retry_at = T0 + 60_000;
    assert!(store.fail_job(x1, 1, Some(retry_at), "HTTP 502", T0 + 12).await.expect("fail"));
    assert!(lease(store, T0 + 13, 10).await.is_empty(), "x2 waits while x1 waits for its retry");
    assert!(store.complete_job(x3, 1, T0 + 14).await.expect("complete"));
    assert!(store.complete_job(y1, 1, T0 + 14).await.expect("complete"));
    assert!(lease(store, T0 + 15, 10).await.is_empty(), "x2 still waits for x1 alone");

    let got = lease(store, retry_at, 10).await;
    assert_eq!(ids(&got), vec![x1], "at its retry time x1 goes again, still before x2");
    assert!(store.complete_job(x1, 2, retry_at).await.expect("complete"));
    assert_eq!(ids(&lease(store, retry_at + 1, 10).await), vec![x2], "x1 done: x2's turn");
}

/// A job written leased (`lease_until`, a new case's first job handed to its loop) comes back by
/// id, holds the later jobs of its case like a leased one, and is leased again, payload and all,
/// if its lease ends unsent.
async fn check_written_leased(store: &dyn Store) {
    let s = seqs(store, 3).await;
    let until = T0 + LEASE_MS;
    let mut x = new_case(s[0], T0, &[TICKETS, TICKETS, WEB]);
    x.jobs[0].lease_until = Some(until);
    x.jobs[2].lease_until = Some(until);
    let y = new_case(s[1], T0, &[TICKETS]);
    let results = commit(store, &[x.clone(), y.clone()]).await;
    let x_jobs = jobs_of(store, &x.case_id).await;
    let [x1, x2, x3] = &x_jobs[..] else { panic!("three jobs of x: {x_jobs:?}") };
    assert_eq!(
        results,
        vec![
            Committed::Created {
                leased: vec![(x.jobs[0].event_id.clone(), x1.id), (x.jobs[2].event_id.clone(), x3.id)]
            },
            CREATED
        ]
    );
    for j in [x1, x3] {
        assert_eq!((j.state.as_str(), j.attempts, j.next_attempt_at), ("leased", 1, until), "{j:?}");
    }
    assert_eq!((x2.state.as_str(), x2.attempts, x2.held_by), ("held", 0, Some(x1.id)), "x2 waits behind x1");

    // A redelivery with a job marked the same way writes no job.
    let before = job_counts(store).await;
    let mut again = redelivery_of(&x, s[2], T0 + 1, &[TICKETS]);
    again.jobs[0].lease_until = Some(until);
    assert_eq!(commit(store, std::slice::from_ref(&again)).await, vec![duplicate_of(&x)]);
    assert_eq!(job_counts(store).await, before);

    // Only y's job is for the taking: x2 waits behind x1, which is leased like x3.
    let y1 = jobs_of(store, &y.case_id).await[0].id;
    assert_eq!(ids(&lease(store, T0 + 10, 10).await), vec![y1]);
    assert!(store.complete_job(x1.id, 1, T0 + 20).await.expect("complete"), "the handed attempt is attempt 1");
    assert_eq!(ids(&lease(store, T0 + 21, 10).await), vec![x2.id], "x1 done: x2's turn");

    // x3 was never sent: at the end of its lease it is leased again, with its payload.
    let got = lease(store, until, 10).await;
    assert_eq!(ids(&got), vec![x3.id]);
    assert_eq!((got[0].attempts, got[0].payload.as_str()), (2, x.jobs[2].payload.as_str()));
}

async fn check_dead_and_replay(store: &dyn Store) {
    let s = seqs(store, 2).await;
    let a = new_case(s[0], T0, &[TICKETS, WEB]);
    let b = new_case(s[1], T0 + 1, &[TICKETS]);
    commit(store, &[a.clone(), b.clone()]).await;
    let a_jobs = ids(&jobs_of(store, &a.case_id).await);
    let [a1, a2] = a_jobs[..] else { panic!("two jobs of a: {a_jobs:?}") };
    let b1 = jobs_of(store, &b.case_id).await[0].id;
    assert_eq!(ids(&lease(store, T0 + 10, 10).await), vec![a1, a2, b1]);

    // Giving up (no next attempt) makes the job dead, with its last error kept for the operator.
    assert!(store.fail_job(a1, 1, None, "HTTP 410 Gone", T0 + 11).await.expect("fail"));
    let dead = store.list_jobs(Some("dead"), 10).await.expect("list dead");
    assert_eq!(ids(&dead), vec![a1]);
    assert_eq!(dead[0].state, "dead");
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 410 Gone"));
    assert_eq!(job_counts(store).await, counts(&[("dead", 1), ("leased", 2)]));
    assert!(store.complete_job(a2, 1, T0 + 12).await.expect("complete"));
    assert!(store.complete_job(b1, 1, T0 + 12).await.expect("complete"));
    assert!(lease(store, T0 + 100 * LEASE_MS, 10).await.is_empty(), "a dead job is never leased");

    // Only dead jobs can be replayed.
    assert!(!store.replay_job(a2, T0 + 20).await.expect("replay"), "a done job is not replayed");
    assert!(!store.replay_job(JobId(i64::MAX), T0 + 20).await.expect("replay"), "no such job");
    assert_eq!(job(store, a2).await.state, "done");

    let replay_at = T0 + 200 * LEASE_MS;
    assert!(store.replay_job(a1, replay_at).await.expect("replay"));
    let j = job(store, a1).await;
    assert_eq!((j.state.as_str(), j.attempts, j.next_attempt_at), ("pending", 0, replay_at));
    assert!(store.list_jobs(Some("dead"), 10).await.expect("list dead").is_empty());
    let got = lease(store, replay_at, 10).await;
    assert_eq!(ids(&got), vec![a1], "a replayed job is due at once");
    assert_eq!(got[0].attempts, 1, "with fresh attempts");
    assert!(!store.replay_job(a1, replay_at).await.expect("replay"), "a leased job is not replayed");

    // Replaying all: three dead jobs of two cases.
    let t = replay_at + 10;
    assert!(store.fail_job(a1, 1, None, "HTTP 410 Gone again", t).await.expect("fail"));
    let s = seqs(store, 1).await;
    let c = new_case(s[0], t, &[TICKETS, WEB]);
    commit(store, std::slice::from_ref(&c)).await;
    let got = lease(store, t, 10).await;
    assert_eq!(got.len(), 2);
    for j in &got {
        assert!(store.fail_job(j.id, j.attempts, None, "refused", t).await.expect("fail"));
    }
    assert_eq!(job_counts(store).await, counts(&[("dead", 3), ("done", 2)]));
    assert_eq!(store.replay_all_dead(t + 1).await.expect("replay all"), 3);
    assert_eq!(store.replay_all_dead(t + 2).await.expect("replay all"), 0, "nothing left to replay");
    assert_eq!(job_counts(store).await, counts(&[("done", 2), ("pending", 3)]));
    let pending = store.list_jobs(Some("pending"), 10).await.expect("list pending");
    assert!(pending.iter().all(|j| j.attempts == 0 && j.next_attempt_at == t + 1), "{pending:?}");
    assert_eq!(lease(store, t + 1, 10).await.len(), 3);
}

fn done(job: &Job, ticket: Option<&str>) -> JobOutcome {
    JobOutcome {
        id: job.id,
        attempts: job.attempts,
        kind: OutcomeKind::Done {
            case_id: job.case_id.clone(),
            ticket_id: ticket.map(str::to_owned),
            provider_id: None,
            segments: None,
            acknowledges: false,
        },
    }
}

async fn check_ticket_id(store: &dyn Store) {
    let s = seqs(store, 2).await;
    let a = new_case(s[0], T0, &[TICKETS, "downstream:other"]);
    let b = new_case(s[1], T0, &[]);
    commit(store, &[a.clone(), b.clone()]).await;
    let got = lease(store, T0 + 1, 10).await;
    assert_eq!(got.len(), 2);

    let counted = store.record_outcomes(vec![done(&got[0], Some("T-42"))], T0 + 5).await.expect("record");
    assert_eq!(counted, vec![true]);
    let (row, _) = store.get_case(&a.case_id).await.expect("get_case").expect("case a");
    assert_eq!(row.ticket_id.as_deref(), Some("T-42"));
    let (row, _) = store.get_case(&b.case_id).await.expect("get_case").expect("case b");
    assert_eq!(row.ticket_id, None, "only the named case gets the ticket");
    let listed = store.list_cases(10).await.expect("list_cases");
    let listed_a = listed.iter().find(|r| r.id == a.case_id).expect("a is listed");
    assert_eq!(listed_a.ticket_id.as_deref(), Some("T-42"));

    // A delivery without a ticket id keeps the one stored; another ticket id replaces it.
    let counted = store.record_outcomes(vec![done(&got[1], None)], T0 + 6).await.expect("record");
    assert_eq!(counted, vec![true]);
    let (row, _) = store.get_case(&a.case_id).await.expect("get_case").expect("case a");
    assert_eq!(row.ticket_id.as_deref(), Some("T-42"));
    let c = new_case(seqs(store, 1).await[0], T0 + 7, &[TICKETS]);
    commit(store, std::slice::from_ref(&c)).await;
    let mut again = lease(store, T0 + 8, 10).await.remove(0);
    again.case_id = a.case_id.clone();
    store.record_outcomes(vec![done(&again, Some("T-43"))], T0 + 9).await.expect("record");
    let (row, _) = store.get_case(&a.case_id).await.expect("get_case").expect("case a");
    assert_eq!(row.ticket_id.as_deref(), Some("T-43"));
}

/// Outcomes of many deliveries in one call: each is applied as if alone, and a stale one (its lease
/// taken over) changes nothing while the others count.
async fn check_batched_outcomes(store: &dyn Store) {
    let s = seqs(store, 5).await;
    let items: Vec<NewCase> = s.iter().map(|q| new_case(*q, T0, &[TICKETS])).collect();
    commit(store, &items).await;
    let got = lease(store, T0 + 1, 10).await;
    let [a, b, c, d, e] = &got[..] else { panic!("five jobs: {got:?}") };
    let now = T0 + 10;
    let outcomes = vec![
        done(a, Some("T-1")),
        JobOutcome {
            id: b.id,
            attempts: b.attempts,
            kind: OutcomeKind::Retry { at_ms: now + 5_000, error: "HTTP 503".into() },
        },
        JobOutcome { id: c.id, attempts: c.attempts, kind: OutcomeKind::Dead { error: "HTTP 410 Gone".into() } },
        JobOutcome { id: d.id, attempts: d.attempts, kind: OutcomeKind::Released },
        // A worker whose lease expired long ago: fenced out by its attempt number.
        JobOutcome { id: e.id, attempts: e.attempts - 1, kind: OutcomeKind::Dead { error: "stale".into() } },
    ];
    let counted = store.record_outcomes(outcomes, now).await.expect("record");
    assert_eq!(counted, vec![true, true, true, true, false]);

    let j = job(store, a.id).await;
    assert_eq!((j.state.as_str(), j.last_error.as_deref()), ("done", None));
    let j = job(store, b.id).await;
    assert_eq!((j.state.as_str(), j.next_attempt_at, j.attempts), ("pending", now + 5_000, 1));
    assert_eq!(j.last_error.as_deref(), Some("HTTP 503"));
    let j = job(store, c.id).await;
    assert_eq!((j.state.as_str(), j.last_error.as_deref()), ("dead", Some("HTTP 410 Gone")));
    let j = job(store, d.id).await;
    assert_eq!(
        (j.state.as_str(), j.attempts, j.next_attempt_at),
        ("pending", 0, now),
        "a released job is due at once, its attempt given back"
    );
    let j = job(store, e.id).await;
    assert_eq!((j.state.as_str(), j.attempts), ("leased", 1), "the stale outcome changed nothing");
    let (row, _) = store.get_case(&a.case_id).await.expect("get_case").expect("case a");
    assert_eq!(row.ticket_id.as_deref(), Some("T-1"));
    assert!(store.record_outcomes(Vec::new(), now).await.expect("record nothing").is_empty());
}

/// A dead job holds back the later jobs of its case to its destination (shown as held, naming it),
/// until it is replayed and delivered, or discarded.
async fn check_dead_job_holds_later_jobs_until_discarded(store: &dyn Store) {
    let s = seqs(store, 2).await;
    let x = new_case(s[0], T0, &[TICKETS, TICKETS, TICKETS, WEB]);
    let y = new_case(s[1], T0 + 1, &[TICKETS]);
    commit(store, &[x.clone(), y.clone()]).await;
    let x_jobs = ids(&jobs_of(store, &x.case_id).await);
    let [x1, x2, x3, xw] = x_jobs[..] else { panic!("four jobs of x: {x_jobs:?}") };
    let y1 = jobs_of(store, &y.case_id).await[0].id;
    assert_eq!(ids(&lease(store, T0 + 10, 10).await), vec![x1, xw, y1]);
    assert!(store.fail_job(x1, 1, None, "HTTP 410 Gone", T0 + 11).await.expect("fail"));
    assert!(store.complete_job(xw, 1, T0 + 11).await.expect("complete"));
    assert!(store.complete_job(y1, 1, T0 + 11).await.expect("complete"));
    assert!(lease(store, T0 + 100 * LEASE_MS, 10).await.is_empty(), "x2 and x3 wait behind the dead x1");

    let held = store.list_jobs(Some("held"), 10).await.expect("list held");
    assert_eq!(ids(&held), vec![x3, x2]);
    assert!(held.iter().all(|j| j.state == "held"), "{held:?}");
    assert_eq!(held[1].held_by, Some(x1), "x2 names the job it waits for");
    assert_eq!(held[0].held_by, Some(x1), "x3 names the first unfinished job, the one that blocks the case");
    let all = store.list_jobs(None, 10).await.expect("list");
    assert_eq!(all.iter().find(|j| j.id == x2).map(|j| j.state.as_str()), Some("held"));
    assert!(store.list_jobs(Some("pending"), 10).await.expect("list pending").is_empty());
    let backlog = store.outbox_backlog().await.expect("backlog");
    let t = backlog.iter().find(|b| b.destination == TICKETS).expect("tickets backlog");
    assert_eq!((t.pending, t.held, t.dead), (0, 2, 1), "{backlog:?}");

    // Replayed, x1 goes first and alone; dead again, it holds the others again.
    assert!(store.replay_job(x1, T0 + 20).await.expect("replay"));
    assert_eq!(ids(&lease(store, T0 + 20, 10).await), vec![x1]);
    assert!(store.fail_job(x1, 1, None, "HTTP 410 Gone", T0 + 21).await.expect("fail"));
    assert!(lease(store, T0 + 22, 10).await.is_empty());

    // Discarded, it holds nothing: x2, then x3, in order.
    assert!(!store.discard_job(x2, T0 + 23).await.expect("discard"), "only a dead job can be discarded");
    assert!(store.discard_job(x1, T0 + 23).await.expect("discard"));
    assert!(!store.discard_job(x1, T0 + 23).await.expect("discard"), "discarded once");
    assert_eq!(job(store, x1).await.state, "discarded");
    assert!(!store.replay_job(x1, T0 + 24).await.expect("replay"), "a discarded job is not replayed");
    assert_eq!(ids(&lease(store, T0 + 24, 10).await), vec![x2]);
    assert!(store.complete_job(x2, 1, T0 + 25).await.expect("complete"));
    assert_eq!(ids(&lease(store, T0 + 26, 10).await), vec![x3]);
    assert_eq!(
        store.list_jobs(Some("discarded"), 10).await.expect("list discarded").iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![x1]
    );
}

/// Each destination leases its own jobs, whatever the others have due.
async fn check_lease_by_destination(store: &dyn Store) {
    let s = seqs(store, 3).await;
    let items: Vec<NewCase> = s.iter().map(|q| new_case(*q, T0, &[TICKETS, WEB])).collect();
    commit(store, &items).await;
    assert_eq!(store.job_destinations().await.expect("destinations"), vec![dest(WEB), dest(TICKETS)]);
    let web = store.lease_jobs(Some(&dest(WEB)), T0 + 1, T0 + 1 + LEASE_MS, 2).await.expect("lease web");
    assert_eq!(web.len(), 2);
    assert!(web.iter().all(|j| j.destination == dest(WEB)));
    let tickets = store.lease_jobs(Some(&dest(TICKETS)), T0 + 1, T0 + 1 + LEASE_MS, 10).await.expect("lease tickets");
    assert_eq!(tickets.len(), 3);
    assert!(tickets.iter().all(|j| j.destination == dest(TICKETS)));
    let none = store.lease_jobs(Some(&dest("downstream:nobody")), T0 + 1, T0 + 1 + LEASE_MS, 10).await.expect("lease");
    assert!(none.is_empty());
    assert_eq!(store.job_destinations().await.expect("destinations"), vec![dest(WEB), dest(TICKETS)]);
}

/// Done and discarded jobs older than the cut-off are deleted; dead, pending and newer ones stay.
/// The content digest is kept with the message and handed back with a duplicate, so that intake can
/// tell a retry from a reused id.
async fn check_digest_comes_back_with_a_duplicate(store: &dyn Store) {
    let s = seqs(store, 2).await;
    let mut original = new_case(s[0], T0, &[TICKETS]);
    original.digest = Some("d1".into());
    assert_eq!(commit(store, std::slice::from_ref(&original)).await, vec![CREATED]);
    let mut again = redelivery_of(&original, s[1], T0 + 1, &[TICKETS]);
    again.digest = Some("d2".into());
    assert_eq!(commit(store, &[again]).await, vec![duplicate_of(&original)], "the first delivery's digest, d1");
}

async fn check_retention(store: &dyn Store) {
    let s = seqs(store, 4).await;
    let old: Vec<NewCase> = s[..3].iter().map(|q| new_case(*q, T0, &[TICKETS])).collect();
    commit(store, &old).await;
    let got = lease(store, T0 + 1, 10).await;
    let [a, b, c] = &got[..] else { panic!("three jobs: {got:?}") };
    store.record_outcomes(vec![done(a, None)], T0 + 2).await.expect("record");
    assert!(store.fail_job(b.id, b.attempts, None, "HTTP 410 Gone", T0 + 2).await.expect("fail"));
    assert!(store.fail_job(c.id, c.attempts, None, "HTTP 410 Gone", T0 + 2).await.expect("fail"));
    assert!(store.discard_job(c.id, T0 + 3).await.expect("discard"));
    // A job delivered later than the cut-off, and one created after it.
    let newer = new_case(s[3], T0 + 1_000, &[TICKETS]);
    commit(store, std::slice::from_ref(&newer)).await;
    let n = lease(store, T0 + 1_001, 10).await;
    store.record_outcomes(vec![done(&n[0], None)], T0 + 1_002).await.expect("record");

    let token = tokio_util::sync::CancellationToken::new();
    let deleted = earshot::outbox::retention_sweep(store, T0 + 500, &token).await.expect("sweep");
    assert_eq!(deleted, 2, "the old done job and the discarded one");
    let left: Vec<JobId> = ids(&all_jobs(store).await);
    assert_eq!(left, vec![b.id, n[0].id], "the dead job and the newer done one stay");
    assert_eq!(earshot::outbox::retention_sweep(store, T0 + 500, &token).await.expect("sweep"), 0);
    assert_eq!(earshot::outbox::retention_sweep(store, T0 + 2_000, &token).await.expect("sweep"), 1);
    assert_eq!(ids(&all_jobs(store).await), vec![b.id]);
}

async fn check_customers_for(store: &dyn Store) {
    let s = seqs(store, 2).await;
    let mut a = new_case(s[0], T0, &[]);
    let phone = Identity { kind: IdentityKind::Phone, value: format!("+86138{}", &uid()[..8]) };
    a.identities.push(phone.clone());
    let email = a.identities[0].clone();
    commit(store, std::slice::from_ref(&a)).await;

    let unknown = Identity { kind: IdentityKind::Telegram, value: uid() };
    // The same value under another kind is another identity.
    let email_as_web_user = Identity { kind: IdentityKind::WebUser, value: email.value.clone() };
    assert_eq!(
        store.customers_for(std::slice::from_ref(&email)).await.expect("customers_for"),
        HashMap::from([(email.clone(), a.customer_id.clone())])
    );
    assert_eq!(
        store.customers_for(&[phone.clone(), unknown.clone(), email_as_web_user.clone()]).await.expect("customers_for"),
        HashMap::from([(phone.clone(), a.customer_id.clone())])
    );
    assert!(store.customers_for(&[unknown.clone(), email_as_web_user]).await.expect("customers_for").is_empty());
    assert!(store.customers_for(&[]).await.expect("customers_for").is_empty());

    // Another customer record naming a known identity does not take it over; its new identity is its own.
    let mut b = new_case(s[1], T0 + 1, &[]);
    b.identities.push(email.clone());
    let b_own = b.identities[0].clone();
    commit(store, std::slice::from_ref(&b)).await;
    assert_eq!(
        store.customers_for(&[email.clone(), b_own.clone()]).await.expect("customers_for"),
        HashMap::from([(email, a.customer_id.clone()), (b_own, b.customer_id.clone())])
    );
}

/// A customer's cases by contact: found on the chat channels (Telegram, phone), through the partial
/// index `cases_customer`, which holds no web or email case (each was a random index page written
/// for a lookup no web or email message makes).
async fn check_customer_cases_only_on_chat_channels(db: &TestDb) {
    let store = db.store().await;
    let s = seqs(&*store, 3).await;
    let web = new_case(s[0], T0, &[]);
    let customer = web.customer_id.clone();
    let mut cases = vec![web];
    for (i, channel) in [(1, "telegram"), (2, "phone")] {
        let mut c = new_case(s[i], T0 + i as i64, &[]);
        c.channel = channel;
        c.customer_id = customer.clone();
        cases.push(c);
    }
    commit(&*store, &cases).await;
    for c in &cases[1..] {
        let found = store.customer_cases(&customer, c.channel, None, 10).await.expect("customer_cases");
        assert_eq!(found.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), vec![c.case_id.clone()], "{}", c.channel);
        let open = store.open_case_of(&customer, c.channel, T0).await.expect("open_case_of");
        assert_eq!(open.as_ref(), Some(&c.case_id), "{}", c.channel);
    }
    store.close().await;

    // The index is partial, and a query in the store's words (`CONTACT_CHANNELS`) reads it, also
    // in a plan made without the channel's value (PostgreSQL's generic plan).
    let query = format!(
        "SELECT id FROM cases WHERE customer_id = $1 AND channel = $2 AND {} ORDER BY seq DESC LIMIT 1",
        earshot::store::CONTACT_CHANNELS
    );
    use sqlx::Connection;
    let (definition, plan): (String, Vec<String>) = if db.url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect to the test database");
        let definition = sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'cases_customer'")
            .fetch_one(&mut conn)
            .await
            .expect("the index");
        sqlx::raw_sql(&format!("SET plan_cache_mode = force_generic_plan; PREPARE q(text, text) AS {query}"))
            .execute(&mut conn)
            .await
            .expect("prepare");
        let plan =
            sqlx::query_scalar("EXPLAIN EXECUTE q('cus_x', 'telegram')").fetch_all(&mut conn).await.expect("plan");
        let _ = conn.close().await;
        (definition, plan)
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("open the test database");
        let definition = sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE name = 'cases_customer'")
            .fetch_one(&mut conn)
            .await
            .expect("the index");
        let plan = sqlite_plan(&mut conn, &query).await;
        let _ = conn.close().await;
        (definition, plan)
    };
    assert!(definition.contains("WHERE"), "not a partial index: {definition}");
    assert!(plan.iter().any(|d| d.contains("cases_customer")), "{plan:?}");
}

/// A case rendered ahead as a new customer's (`check_customer`) whose contact is already known is
/// written not at all and answered with the known customer; the rest of its batch commits.
async fn check_customer_checked_at_commit(store: &dyn Store) {
    let s = seqs(store, 4).await;
    let known = new_case(s[0], T0, &[]);
    commit(store, std::slice::from_ref(&known)).await;
    let cases0 = store.count_cases().await.expect("count");

    // Its own new contact first, the known one second: the known one decides.
    let mut returning = new_case(s[1], T0 + 1, &[TICKETS]);
    returning.identities.push(known.identities[0].clone());
    returning.check_customer = true;
    let mut stranger = new_case(s[2], T0 + 1, &[TICKETS]);
    stranger.check_customer = true;
    // Not checked: written with the customer it names, as the writer resolved it itself.
    let mut unchecked = new_case(s[3], T0 + 1, &[]);
    unchecked.identities.push(known.identities[0].clone());

    let results = commit(store, &[returning.clone(), stranger.clone(), unchecked.clone()]).await;
    assert_eq!(results, vec![Committed::OtherCustomer { customer_id: known.customer_id.clone() }, CREATED, CREATED]);
    assert_eq!(store.count_cases().await.expect("count"), cases0 + 2, "the returning customer's case is not written");
    assert!(jobs_of(store, &returning.case_id).await.is_empty(), "nor its jobs");
    assert_eq!(jobs_of(store, &stranger.case_id).await.len(), 1);

    // Rendered again for the known customer, it commits.
    let mut again = new_case(s[1], T0 + 2, &[TICKETS]);
    again.external_id = returning.external_id.clone();
    again.identities = returning.identities.clone();
    again.customer_id = known.customer_id.clone();
    again.check_customer = true;
    assert_eq!(commit(store, std::slice::from_ref(&again)).await, vec![CREATED]);
}

/// Several leasers at once (two stores on PostgreSQL) never lease one job twice, and between them
/// lease every job.
async fn check_concurrent_leasing(stores: &[Arc<dyn Store>]) {
    let store = &*stores[0];
    // 200 jobs: 100 cases with one job to each of two destinations, so ordering does not hold any back.
    for _ in 0..2 {
        let s = seqs(store, 50).await;
        let items: Vec<NewCase> = s.iter().map(|seq| new_case(*seq, T0, &[TICKETS, WEB])).collect();
        commit(store, &items).await;
    }
    assert_eq!(job_counts(store).await, counts(&[("pending", 200)]));

    let now = T0 + 10;
    let mut tasks = Vec::new();
    for store in stores {
        for _ in 0..2 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                // Bounded, so that a store that leases jobs again and again fails the test instead
                // of hanging it: 200 jobs take at most 67 rounds of 3.
                for _ in 0..1_000 {
                    let batch = lease(&*store, now, 3).await;
                    if batch.is_empty() {
                        break;
                    }
                    got.extend(ids(&batch));
                }
                got
            }));
        }
    }
    let mut leased = Vec::new();
    for t in tasks {
        leased.extend(t.await.expect("leasing task"));
    }
    // A leaser stops at its first empty answer, which may come while others still hold rows locked;
    // whatever is left must still be leasable exactly once.
    leased.extend(ids(&lease(store, now, 1_000).await));

    let distinct: HashSet<JobId> = leased.iter().copied().collect();
    assert_eq!(distinct.len(), leased.len(), "{} leases for {} distinct jobs", leased.len(), distinct.len());
    assert_eq!(distinct.len(), 200, "every job was leased");
    let jobs = all_jobs(store).await;
    assert!(jobs.iter().all(|j| j.state == "leased" && j.attempts == 1), "each job leased once");
}

/// The lease that lets exactly one instance poll a mailbox: taken when free, renewed by its holder,
/// refused to others while it lasts, taken over once it has expired, handed on when released.
async fn check_mailbox_leases(store: &dyn Store) {
    let name = format!("imap:{}", uid());
    let ttl = 60_000;
    assert!(store.try_lease(&name, "a", 1_000, ttl).await.expect("lease"), "a free lease is taken");
    assert!(!store.try_lease(&name, "b", 2_000, ttl).await.expect("lease"), "refused while a holds it");
    assert!(store.try_lease(&name, "a", 30_000, ttl).await.expect("lease"), "renewed by its holder");
    // a renewed at 30 s, so the lease lasts until 90 s: still refused at 61 s.
    assert!(!store.try_lease(&name, "b", 61_000 + 1, ttl).await.expect("lease"), "renewal extended it");
    assert!(store.try_lease(&name, "b", 90_001, ttl).await.expect("lease"), "taken over once expired");
    assert!(!store.try_lease(&name, "a", 90_002, ttl).await.expect("lease"), "the old holder lost it");
    store.release_lease(&name, "a").await.expect("release");
    assert!(!store.try_lease(&name, "c", 90_003, ttl).await.expect("lease"), "only the holder can release");
    store.release_lease(&name, "b").await.expect("release");
    assert!(store.try_lease(&name, "c", 90_004, ttl).await.expect("lease"), "free again after release");
    // Leases of other mailboxes are separate.
    assert!(store.try_lease(&format!("{name}-other"), "a", 90_005, ttl).await.expect("lease"));
}

/// What a channel records about messages it fetches is recorded once, however often they are
/// fetched: cursors overwrite, events and quarantine entries are kept once per message.
async fn check_channel_state_is_idempotent(store: &dyn Store) {
    let key = format!("imap:{}:INBOX", uid());
    assert_eq!(store.load_cursor(&key).await.expect("cursor"), None);
    store.save_cursor(&key, "7:10", 1).await.expect("save");
    store.save_cursor(&key, "7:12", 2).await.expect("save");
    assert_eq!(store.load_cursor(&key).await.expect("cursor").as_deref(), Some("7:12"));

    let event = earshot::store::NewEvent {
        channel: "email",
        source: "support".into(),
        kind: "bounce".into(),
        external_id: format!("{}@mx.example", uid()),
        sender: Some("mailer-daemon@mx.example".into()),
        subject: Some("Undelivered".into()),
        data: "{}".into(),
        raw: Some(bytes::Bytes::from_static(b"raw bounce")),
        now_ms: 1,
    };
    let before = store.count_events(Some("bounce")).await.expect("count");
    assert!(store.record_event(&event).await.expect("event"), "new the first time");
    assert!(!store.record_event(&event).await.expect("event"), "known the second time");
    assert_eq!(store.count_events(Some("bounce")).await.expect("count"), before + 1);

    let raw = format!("not a mail {}", uid()).into_bytes();
    let first = store.quarantine("email", "support", "no sender", &raw, 1).await.expect("quarantine");
    let again = store.quarantine("email", "support", "no sender", &raw, 2).await.expect("quarantine");
    assert_eq!(first, again, "the same bytes are quarantined once");
    let other = store.quarantine("email", "sales", "no sender", &raw, 3).await.expect("quarantine");
    assert_ne!(first, other, "another mailbox keeps its own entry");
    let listed = store.list_quarantine(100).await.expect("list");
    assert_eq!(listed.iter().filter(|q| q.id == first || q.id == other).count(), 2);
    assert_eq!(listed.iter().find(|q| q.id == first).map(|q| q.size), Some(raw.len() as i64));
}

/// Writes go through a connection of their own, which an in-memory database would not share.
#[tokio::test]
async fn sqlite_in_memory_is_refused_with_a_clear_error() {
    for url in ["sqlite::memory:", "sqlite://file:x?mode=memory"] {
        let err = earshot::store::SqliteStore::open(url, 1).await.err().expect("refused");
        assert!(err.to_string().contains("in-memory SQLite database is not supported"), "{url}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------------
// The lifecycle's store API

fn change(case_id: &CaseId, version: i64, status: &str, now_ms: i64) -> earshot::store::CaseChange {
    earshot::store::CaseChange {
        case_id: case_id.clone(),
        version,
        status: status.to_owned(),
        ticket_id: None,
        lifecycle: "{}".to_owned(),
        sla_due: None,
        breached: false,
        log: vec![("status_changed".into(), Some("downstream:tickets".into()), "{}".into())],
        inbox: None,
        survey: None,
        jobs: vec![NewJob {
            event_id: EventId::generate().0,
            kind: "status_update",
            destination: dest(WEB),
            payload: "{}".to_owned(),
            max_attempts: 5,
            lease_until: None,
        }],
        now_ms,
    }
}

/// A change is written whole over the version it was computed from, once per inbox key; a stale
/// or repeated one writes nothing.
async fn check_case_changes(store: &dyn Store) {
    use earshot::store::{ChangeOutcome, InboxKey};
    let s = seqs(store, 1).await;
    let a = new_case(s[0], T0, &[]);
    commit(store, std::slice::from_ref(&a)).await;
    let state = store.get_case(&a.case_id).await.expect("get_case").expect("the case").0;
    assert_eq!((state.status.as_str(), state.version), ("new", 0));

    let key = InboxKey { endpoint: "tickets".into(), webhook_id: "evt_1".into(), digest: "d1".into() };
    let mut first = change(&a.case_id, 0, "in_progress", T0 + 1);
    first.inbox = Some(key.clone());
    first.survey = Some(("sv_token".into(), T0 + 1000));
    assert_eq!(store.apply_change(first.clone()).await.expect("apply"), ChangeOutcome::Applied);
    let state = store.get_case(&a.case_id).await.expect("get_case").expect("the case").0;
    assert_eq!((state.status.as_str(), state.version, state.lifecycle.as_deref()), ("in_progress", 1, Some("{}")));
    assert_eq!(store.inbox_digest("tickets", "evt_1").await.expect("inbox"), Some("d1".to_owned()));
    assert_eq!(store.survey("sv_token").await.expect("survey"), Some((a.case_id.clone(), T0 + 1000)));
    assert_eq!(store.case_log(&a.case_id).await.expect("log").len(), 1);
    assert_eq!(jobs_of(store, &a.case_id).await.len(), 1);

    // The same key again: a duplicate, nothing written (not even over the right version).
    let mut again = change(&a.case_id, 1, "awaiting_customer", T0 + 2);
    again.inbox = Some(key);
    assert_eq!(store.apply_change(again).await.expect("apply"), ChangeOutcome::Duplicate { digest: "d1".into() });
    // Over a version that has moved on: stale, nothing written, its inbox key not kept.
    let mut stale = change(&a.case_id, 0, "resolved", T0 + 3);
    stale.inbox = Some(InboxKey { endpoint: "tickets".into(), webhook_id: "evt_2".into(), digest: "d2".into() });
    assert_eq!(store.apply_change(stale).await.expect("apply"), ChangeOutcome::Stale);
    assert_eq!(store.inbox_digest("tickets", "evt_2").await.expect("inbox"), None);
    let state = store.get_case(&a.case_id).await.expect("get_case").expect("the case").0;
    assert_eq!((state.status.as_str(), state.version), ("in_progress", 1));
    assert_eq!(store.case_log(&a.case_id).await.expect("log").len(), 1);
    assert_eq!(jobs_of(store, &a.case_id).await.len(), 1);
    assert!(store.get_case(&CaseId::from("case_missing")).await.expect("get_case").is_none());
}

/// A delivered acknowledgement moves a new case to acknowledged (and only a new one); a delivered
/// job keeps the channel's id of the message, by which a reply finds its case.
async fn check_acknowledged_and_provider_id(store: &dyn Store) {
    let s = seqs(store, 1).await;
    let a = new_case(s[0], T0, &["channel:telegram:bot"]);
    commit(store, std::slice::from_ref(&a)).await;
    let got = lease(store, T0 + 1, 10).await;
    let outcome = JobOutcome {
        id: got[0].id,
        attempts: got[0].attempts,
        kind: OutcomeKind::Done {
            case_id: a.case_id.clone(),
            ticket_id: None,
            provider_id: Some("4242:17".into()),
            segments: Some(2),
            acknowledges: true,
        },
    };
    assert_eq!(store.record_outcomes(vec![outcome], T0 + 2).await.expect("record"), vec![true]);
    let state = store.get_case(&a.case_id).await.expect("get_case").expect("the case").0;
    assert_eq!((state.status.as_str(), state.version), ("acknowledged", 1));
    let hits = store.find_thread("telegram", &["4242:17".to_owned()], &[], &[]).await.expect("find_thread");
    assert_eq!(hits.iter().map(|h| h.case_id.as_str()).collect::<Vec<_>>(), [a.case_id.as_str()]);
    assert!(
        store.find_thread("email", &["4242:17".to_owned()], &[], &[]).await.expect("find_thread").is_empty(),
        "a provider id counts only on its own channel"
    );
}

/// The breach scan finds cases by their earliest running due time; the listing filters.
async fn check_sla_due_and_search(store: &dyn Store) {
    use earshot::store::CaseFilter;
    let s = seqs(store, 3).await;
    let mut cases: Vec<NewCase> = s.iter().map(|&n| new_case(n, T0, &[])).collect();
    cases[0].sla_due = Some(T0 + 100);
    cases[1].sla_due = Some(T0 + 50);
    commit(store, &cases).await;
    let due = store.sla_due_cases(T0 + 100, 10).await.expect("due");
    assert_eq!(due, [cases[1].case_id.clone(), cases[0].case_id.clone()], "earliest first, none without a clock");
    assert_eq!(store.sla_due_cases(T0 + 60, 10).await.expect("due"), [cases[1].case_id.clone()]);
    let mut breach = change(&cases[1].case_id, 0, "new", T0 + 60);
    breach.breached = true;
    breach.jobs.clear();
    store.apply_change(breach).await.expect("apply");
    assert_eq!(store.sla_due_cases(T0 + 100, 10).await.expect("due"), [cases[0].case_id.clone()]);

    let all = |f: CaseFilter| async move {
        store
            .search_cases(&CaseFilter { limit: 10, ..f })
            .await
            .expect("search")
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(all(CaseFilter { breached: Some(true), ..Default::default() }).await, [cases[1].case_id.clone()]);
    assert_eq!(all(CaseFilter { before_seq: Some(s[2]), ..Default::default() }).await.len(), 2);
    assert_eq!(all(CaseFilter { text: Some("CUP ARRIVED".into()), ..Default::default() }).await.len(), 3);
    assert!(all(CaseFilter { text: Some("cup%".into()), ..Default::default() }).await.is_empty());
    assert!(all(CaseFilter { status: Some("closed".into()), ..Default::default() }).await.is_empty());
}
