//! Group commit under failure, on PostgreSQL where constraints let a test break one item or all.

use std::collections::HashSet;

use crate::support::*;

async fn send_concurrently(web: &WebClient, texts: Vec<String>) -> Vec<(String, u16, serde_json::Value)> {
    let tasks: Vec<_> = texts
        .into_iter()
        .map(|t| {
            let web = web.clone();
            tokio::spawn(async move {
                let (s, b) = web.send(&complaint(&t)).await;
                (t, s, b)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

async fn exec(db: &TestDb, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query(sql).execute(&mut conn).await.expect(sql);
    let _ = conn.close().await;
}

async fn count(db: &TestDb, table: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let n: i64 =
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&mut conn).await.expect("count");
    let _ = conn.close().await;
    n
}

#[tokio::test]
async fn one_bad_item_fails_alone_and_the_others_commit() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let rx = Receiver::start().await;
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 5))).await;
    // A constraint only one complaint violates: a genuine per-item database error inside the batch.
    exec(&db, "ALTER TABLE messages ADD CONSTRAINT poison CHECK (data NOT LIKE '%POISON%')").await;

    let mut texts: Vec<String> = (0..29).map(|i| format!("complaint number {i}")).collect();
    texts.insert(13, "this one carries POISON".into());
    let answers = send_concurrently(&gw.web(), texts).await;
    for (text, status, body) in &answers {
        if text.contains("POISON") {
            assert_eq!(*status, 503, "the bad item is refused: {body}");
            assert_eq!(body["code"], "store_unavailable");
        } else {
            assert_eq!(*status, 202, "{text}: {body}");
        }
    }
    let ids: HashSet<&str> = answers.iter().filter_map(|(_, _, b)| b["case_id"].as_str()).collect();
    assert_eq!(ids.len(), 29);
    assert_eq!(count(&db, "cases").await, 29);
    assert_eq!(count(&db, "messages").await, 29);
    assert_eq!(count(&db, "outbox").await, 29, "one downstream job per stored case, none for the refused one");
    rx.wait_until(15, "29 deliveries", |r| r.iter().filter(|x| x.answered == 200).count() == 29).await;
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_failing_commit_answers_503_and_writes_nothing() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let rx = Receiver::start().await;
    let gw = Gateway::start(&config_toml(&db.url, &downstream_toml(&rx.url, 5))).await;
    // Every outbox insert fails, after the message and case rows of the same transaction were written.
    exec(&db, "ALTER TABLE outbox ADD CONSTRAINT refuse_all CHECK (false) NOT VALID").await;

    let answers = send_concurrently(&gw.web(), (0..20).map(|i| format!("doomed {i}")).collect()).await;
    assert!(answers.iter().all(|(_, s, b)| *s == 503 && b["code"] == "store_unavailable"), "{answers:?}");
    assert!(answers.iter().all(|(_, _, b)| b.get("case_id").is_none()));
    for table in ["messages", "cases", "identities", "outbox"] {
        assert_eq!(count(&db, table).await, 0, "{table} has no half-written rows");
    }

    // The database recovers; the same deliveries (new ids) go through.
    exec(&db, "ALTER TABLE outbox DROP CONSTRAINT refuse_all").await;
    let answers = send_concurrently(&gw.web(), (0..5).map(|i| format!("fine {i}")).collect()).await;
    assert!(answers.iter().all(|(_, s, _)| *s == 202));
    assert_eq!(count(&db, "cases").await, 5);
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn postgres_end_to_end_and_dedup() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let rx = Receiver::start().await;
    // Three writers: the copies land in concurrent batches, and the unique key still decides.
    let extra = format!("[intake]\nwriters = 3\n{}", downstream_toml(&rx.url, 5));
    let gw = Gateway::start(&config_toml(&db.url, &extra)).await;
    let web = gw.web();
    let body = complaint("投诉：客服态度很差，电话一直没人接");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (web, body) = (web.clone(), body.clone());
            tokio::spawn(async move { web.send_id("msg_pg_same", &body).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        let (s, b) = t.await.expect("task");
        assert_eq!(s, 202);
        ids.insert(b["case_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(count(&db, "cases").await, 1);
    let got = rx.wait_until(10, "the event", |r| r.iter().any(|x| x.answered == 200)).await;
    assert!(case_validator().is_valid(&got[0].body["data"]["case"]));
    assert_eq!(got[0].body["data"]["case"]["lang"], "zh");
    gw.stop().await;
    db.cleanup().await;
}
