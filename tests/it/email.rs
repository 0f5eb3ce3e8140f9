//! The email channel end to end: mail APPENDed to a real Dovecot becomes cases in the in-process
//! gateway, and acknowledgements reach a real SMTP sink, through outages of either server.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::mailsrv::{Dovecot, Mail, SmtpSink, crlf};
use crate::support::*;

const MAILBOX: &str = "support@example.com";
/// Long enough for anything in flight to have shown up, short enough to keep the suite quick.
const SETTLE: Duration = Duration::from_millis(1500);

/// The gateway config: one mailbox on the test Dovecot and SMTP sink, short retries.
fn email_toml(db_url: &str, imap: &Dovecot, smtp: &SmtpSink, batch: u32) -> String {
    format!(
        r#"
[server]
admin_token = "{ADMIN_TOKEN}"
shutdown_grace = "5s"

[database]
url = "{db_url}"
max_connections = 4

[outbox]
retry_schedule = ["200ms", "400ms", "800ms"]
lease = "5s"
poll_interval = "100ms"
breaker_cooldown = "200ms"

[channels.email]
ack_window = "10m"

[[channels.email.mailboxes]]
name = "support"
address = "{MAILBOX}"
display_name = "Example Support"
imap = {{ host = "127.0.0.1", port = {imap_port}, security = "plain", username = "{user}", password = "{password}", folder = "INBOX", idle = true, poll_secs = 1, batch = {batch} }}
smtp = {{ host = "127.0.0.1", timeout_secs = 3, port = {smtp_port}, security = "plain" }}
"#,
        imap_port = imap.port,
        user = imap.user,
        password = imap.password,
        smtp_port = smtp.port,
    )
}

/// The web channel beside the mailbox, with the test source, for tests that send both.
fn web_source_toml() -> String {
    format!(
        "[channels.web]\n[[channels.web.sources]]\nname = \"site\"\nsecret = \"{SOURCE_SECRET}\"\n\
         rate_limit_per_sec = 1000\nrate_limit_burst = 1000\n"
    )
}

/// The same config with no acknowledgement window, for tests where only the loop rules may keep a
/// message unanswered.
fn without_ack_window(config: &str) -> String {
    let out = config.replace("ack_window = \"10m\"", "ack_window = \"0s\"");
    assert_ne!(out, config, "the config sets ack_window");
    out
}

/// Dovecot and the SMTP sink, or `None` (the test skips, saying so) when either is unavailable.
async fn servers() -> Option<(Dovecot, SmtpSink)> {
    let imap = Dovecot::start().await?;
    let smtp = SmtpSink::start().await?;
    Some((imap, smtp))
}

fn new_message_id() -> String {
    format!("{}@customer.example", uuid::Uuid::new_v4().simple())
}

/// A plain UTF-8 message to the mailbox; `extra` is more header lines, each ending in `\n`.
fn mail(from: &str, message_id: &str, subject: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\nTo: Example Support <{MAILBOX}>\nSubject: {subject}\nDate: Mon, 2 Jun 2025 10:00:00 +0000\n\
         Message-ID: <{message_id}>\n{extra}MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\n{body}\n"
    )
    .into_bytes()
}

/// A complaint from `address` with a fresh Message-ID; returns the message and its id.
fn complaint_from(address: &str, subject: &str) -> (Vec<u8>, String) {
    let id = new_message_id();
    (mail(address, &id, subject, "", "Hello,\n\nmy order arrived broken. Please help.\n\nRegards"), id)
}

/// 杯子碎了，要求退款 ("the cup arrived broken, I want a refund") from 李伟, written the way Chinese
/// mail clients write it: GB2312 encoded-words in the headers, a GBK body in base64.
const CHINESE_SUBJECT: &str = "杯子碎了，要求退款";
fn chinese_complaint(message_id: &str) -> Vec<u8> {
    format!(
        "From: =?GB2312?B?wO7OsA==?= <li.wei@example.cn>\nTo: {MAILBOX}\n\
         Subject: =?GB2312?B?sa3X08vpwcujrNKqx/PNy7/u?=\nDate: Mon, 2 Jun 2025 18:00:00 +0800\n\
         Message-ID: <{message_id}>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=\"GBK\"\n\
         Content-Transfer-Encoding: base64\n\n\
         xPq6w6O6DQrO0snP1tzU2rnzterC8rXEsa3X08rVtb3KsdLRvq3L6cHLo6y2qbWlusUgODgxMjOho8frvqG/\n\
         7LSmwO3Ny7/uoaMNCsDuzrANCg==\n"
    )
    .into_bytes()
}

async fn get_ok(gw: &Gateway, path: &str) -> Value {
    let (status, v) = gw.admin_get(path).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// Every case, each with its messages (`GET /v1/cases`, then `GET /v1/cases/{id}`).
async fn cases(gw: &Gateway) -> Vec<Value> {
    let list = get_ok(gw, "/v1/cases?limit=1000").await;
    let mut out = Vec::new();
    for row in list["cases"].as_array().cloned().unwrap_or_default() {
        let id = row["id"].as_str().expect("case id").to_owned();
        out.push(get_ok(gw, &format!("/v1/cases/{id}")).await);
    }
    out
}

async fn case_count(gw: &Gateway) -> usize {
    get_ok(gw, "/v1/cases?limit=1000").await["cases"].as_array().map_or(0, Vec::len)
}

/// The case holding the message with this Message-ID.
fn case_of<'a>(cases: &'a [Value], message_id: &str) -> Option<&'a Value> {
    cases.iter().find(|c| {
        c["messages"].as_array().is_some_and(|ms| ms.iter().any(|m| m["external_id"].as_str() == Some(message_id)))
    })
}

fn messages_of(case: &Value) -> usize {
    case["messages"].as_array().map_or(0, Vec::len)
}

fn case_ref(case: &Value) -> String {
    case["case_ref"].as_str().expect("case_ref").to_owned()
}

/// The acknowledgement jobs in the outbox.
async fn ack_jobs(gw: &Gateway) -> Vec<Value> {
    let v = get_ok(gw, "/v1/outbox?limit=1000").await;
    v["jobs"].as_array().cloned().unwrap_or_default().into_iter().filter(|j| j["kind"] == "ack").collect()
}

/// Waits until `n` cases exist; returns them.
async fn wait_cases(gw: &Gateway, n: usize, secs: u64) -> Vec<Value> {
    eventually(secs, &format!("{n} cases"), || async {
        let all = cases(gw).await;
        (all.len() >= n).then_some(all)
    })
    .await
}

/// Waits until the sink holds `n` messages; returns them.
async fn wait_mail(sink: &SmtpSink, n: usize, secs: u64) -> Vec<Mail> {
    eventually(secs, &format!("{n} messages at the SMTP sink"), || async {
        let got = sink.messages();
        (got.len() >= n).then_some(got)
    })
    .await
}

fn ack_to<'a>(acks: &'a [Mail], address: &str) -> &'a Mail {
    let found: Vec<&Mail> = acks.iter().filter(|m| m.to.iter().any(|t| t == address)).collect();
    assert_eq!(found.len(), 1, "one acknowledgement to {address}: {found:#?}");
    found[0]
}

/// The Message-ID the acknowledgement job of `case` must carry: its event id at the mailbox domain.
async fn ack_message_id(gw: &Gateway, case: &Value) -> String {
    let jobs = ack_jobs(gw).await;
    let job = jobs.iter().find(|j| j["case_id"] == case["id"]).unwrap_or_else(|| panic!("an ack job for {case}"));
    format!("{}@example.com", job["event_id"].as_str().expect("event_id"))
}

/// Checks everything an acknowledgement of `complaint_id` about `case` must be.
async fn assert_ack(gw: &Gateway, ack: &Mail, case: &Value, customer: &str, complaint_id: &str, subject: &str) {
    let r = case_ref(case);
    assert_eq!(ack.to, vec![customer.to_owned()], "To is the customer");
    assert_eq!(ack.rcpt_to, vec![customer.to_owned()], "the envelope goes to the customer");
    assert_eq!(ack.from.as_deref(), Some(MAILBOX));
    assert_eq!(ack.in_reply_to, vec![complaint_id.to_owned()], "In-Reply-To is the complaint");
    assert!(ack.references.iter().any(|x| x == complaint_id), "References carry the complaint: {:?}", ack.references);
    assert_eq!(ack.subject.as_deref(), Some(format!("Re: {subject} [Case {r}]").as_str()));
    assert_eq!(ack.auto_submitted.as_deref(), Some("auto-replied"));
    assert_eq!(ack.content_type, "multipart/alternative");
    assert_eq!((ack.text.len(), ack.html.len()), (1, 1), "one text and one HTML part");
    assert!(ack.text[0].contains(&r) && ack.html[0].contains(&r), "both parts name the case: {ack:#?}");
    assert_eq!(
        ack.message_id.as_deref(),
        Some(ack_message_id(gw, case).await.as_str()),
        "the Message-ID is the job's id, the same on every attempt"
    );
}

#[tokio::test]
async fn email_complaints_become_cases_and_get_threaded_acknowledgements() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;

    let english_id = new_message_id();
    let english = mail(
        "Jane Doe <Jane.Doe@customer.example>",
        &english_id,
        "Broken kettle",
        "",
        "Hello,\n\nthe kettle I bought last week leaks. I would like a replacement.\n\nJane",
    );
    imap.append(&english).await;
    let chinese_id = new_message_id();
    imap.append(&chinese_complaint(&chinese_id)).await;

    let all = wait_cases(&gw, 2, 20).await;
    let acks = wait_mail(&smtp, 2, 20).await;
    let en_case = case_of(&all, &english_id).expect("a case for the English complaint");
    let zh_case = case_of(&all, &chinese_id).expect("a case for the Chinese complaint");
    assert_ne!(en_case["id"], zh_case["id"]);
    assert_eq!(en_case["channel"], "email");
    assert_eq!(en_case["subject"], "Broken kettle");
    assert_eq!(zh_case["subject"], CHINESE_SUBJECT, "the RFC 2047 GB2312 subject is decoded");
    assert!(
        zh_case["messages"][0]["text"].as_str().is_some_and(|t| t.contains("订单号 88123")),
        "the GBK body is decoded: {}",
        zh_case["messages"][0]
    );
    assert_eq!(en_case["lang"], "en");
    assert_eq!(zh_case["lang"], "zh");

    let en_ack = ack_to(&acks, "jane.doe@customer.example");
    assert_ack(&gw, en_ack, en_case, "jane.doe@customer.example", &english_id, "Broken kettle").await;
    assert!(en_ack.text[0].contains("Thank you for writing to us"), "English for English: {}", en_ack.text[0]);
    assert!(en_ack.text[0].contains("Dear Jane Doe"), "{}", en_ack.text[0]);

    let zh_ack = ack_to(&acks, "li.wei@example.cn");
    assert_ack(&gw, zh_ack, zh_case, "li.wei@example.cn", &chinese_id, CHINESE_SUBJECT).await;
    assert!(zh_ack.text[0].contains("感谢您的来信"), "Chinese for Chinese: {}", zh_ack.text[0]);
    assert!(zh_ack.text[0].contains("李伟，您好"), "{}", zh_ack.text[0]);
    assert!(zh_ack.html[0].contains("感谢您的来信"), "{}", zh_ack.html[0]);

    // Committed messages are flagged \Seen, never deleted; nothing more is sent.
    eventually(10, "both messages flagged \\Seen", || async { (imap.counts().await == (2, 2)).then_some(()) }).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(smtp.messages().len(), 2, "one acknowledgement per complaint");
    assert_eq!(ack_jobs(&gw).await.len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn email_reply_to_the_acknowledgement_is_a_follow_up_without_a_second_ack() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;

    let (first, first_id) = complaint_from("ana@customer.example", "Late delivery");
    imap.append(&first).await;
    let ack = wait_mail(&smtp, 1, 20).await.remove(0);
    let case = wait_cases(&gw, 1, 5).await.remove(0);
    let ack_id = ack.message_id.clone().expect("the acknowledgement has a Message-ID");

    // The customer answers the acknowledgement, as a mail client does.
    let reply_id = new_message_id();
    let reply = mail(
        "ana@customer.example",
        &reply_id,
        ack.subject.as_deref().expect("ack subject"),
        &format!("In-Reply-To: <{ack_id}>\nReferences: <{first_id}> <{ack_id}>\n"),
        &format!("It is still not here.\n\nOn Monday Example Support wrote:\n> {}", ack.text[0].replace('\n', "\n> ")),
    );
    imap.append(&reply).await;

    let grown = eventually(20, "the reply added to the case", || async {
        let c = get_ok(&gw, &format!("/v1/cases/{}", case["id"].as_str().expect("id"))).await;
        (messages_of(&c) == 2).then_some(c)
    })
    .await;
    assert_eq!(grown["messages"][1]["external_id"], reply_id.as_str());
    assert!(
        grown["messages"][1]["text"].as_str().is_some_and(|t| t.contains("still not here") && !t.contains("> ")),
        "the quoted acknowledgement is stripped: {}",
        grown["messages"][1]
    );
    assert!(
        grown["messages"][1]["full_text"].as_str().is_some_and(|t| t.contains("still not here") && t.contains("> ")),
        "the full body is kept beside it: {}",
        grown["messages"][1]
    );
    assert_eq!(case_count(&gw).await, 1, "still one case");
    assert_eq!(ack_jobs(&gw).await.len(), 1, "a follow-up gets no acknowledgement job");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(smtp.messages().len(), 1, "no second acknowledgement");
    gw.stop().await;
}

#[tokio::test]
async fn email_case_reference_in_the_subject_links_only_for_the_cases_customer() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;

    let (first, first_id) = complaint_from("omar@customer.example", "Wrong size");
    imap.append(&first).await;
    let all = wait_cases(&gw, 1, 20).await;
    let case = case_of(&all, &first_id).expect("the first case").clone();
    let r = case_ref(&case);
    let case_path = format!("/v1/cases/{}", case["id"].as_str().expect("id"));

    // A new message (no In-Reply-To) from the case's customer with the reference: a follow-up.
    let (again, again_id) = complaint_from("omar@customer.example", &format!("Still waiting [Case {r}]"));
    imap.append(&again).await;
    let grown = eventually(20, "the reference linked to the case", || async {
        let c = get_ok(&gw, &case_path).await;
        (messages_of(&c) == 2).then_some(c)
    })
    .await;
    assert_eq!(grown["messages"][1]["external_id"], again_id.as_str());
    assert_eq!(case_count(&gw).await, 1);

    // The same reference from a stranger: a new case of the stranger's, the first case untouched.
    let (stranger, stranger_id) = complaint_from("eve@elsewhere.example", &format!("Same problem [Case {r}]"));
    imap.append(&stranger).await;
    let all = wait_cases(&gw, 2, 20).await;
    let theirs = case_of(&all, &stranger_id).expect("a case for the stranger");
    assert_ne!(theirs["id"], case["id"], "a stranger quoting a reference does not join the case");
    assert_eq!(theirs["metadata"]["mentioned_case_refs"], serde_json::json!([r]), "the new case mentions it: {theirs}");

    // A reference with a wrong check digit links nothing: a new case.
    let check = r.chars().last().and_then(|c| c.to_digit(10)).expect("check digit");
    let mistyped = format!("{}{}", &r[..r.len() - 1], (check + 1) % 10);
    let (typo, typo_id) = complaint_from("omar@customer.example", &format!("Question [Case {mistyped}]"));
    imap.append(&typo).await;
    let all = wait_cases(&gw, 3, 20).await;
    let typo_case = case_of(&all, &typo_id).expect("a case for the mistyped reference");
    assert_ne!(typo_case["id"], case["id"], "a reference with a wrong check digit links nothing");
    assert_eq!(typo_case["metadata"]["mentioned_case_refs"], serde_json::json!([mistyped]), "{typo_case}");
    assert_eq!(messages_of(&get_ok(&gw, &case_path).await), 2, "the first case got nothing more");
    assert_eq!(all.len(), 3);

    // Omar was acknowledged once (the window), the stranger once.
    let acks = wait_mail(&smtp, 2, 20).await;
    tokio::time::sleep(SETTLE).await;
    let acks = if smtp.messages().len() > acks.len() { smtp.messages() } else { acks };
    assert_eq!(acks.len(), 2, "{acks:#?}");
    ack_to(&acks, "omar@customer.example");
    ack_to(&acks, "eve@elsewhere.example");
    gw.stop().await;
}

#[tokio::test]
async fn email_automatic_mail_gets_no_case_and_no_acknowledgement() {
    let Some((imap, smtp)) = servers().await else { return };
    // The shared corpus beside the repository, as the email crate's corpus tests use it.
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/email/sisimai-set-of-emails");
    if !corpus.is_dir() {
        // A plain clone has no `shared/` beside it; under CI the corpus is required.
        let why = format!("the email corpus is missing: expected {}", corpus.display());
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true and {why}");
        eprintln!("SKIPPED: email_automatic_mail_gets_no_case_and_no_acknowledgement: {why}");
        return;
    }
    let db = TestDb::sqlite();

    // An RFC 3834 auto-reply, an Exchange out-of-office without Auto-Submitted, and a Postfix bounce.
    let (auto, _) = {
        let id = new_message_id();
        (
            mail(
                "Vacationer <away@customer.example>",
                &id,
                "Re: your message",
                "Auto-Submitted: auto-replied\n",
                "I am away until Monday.",
            ),
            id,
        )
    };
    let oof = std::fs::read(corpus.join("rfc3834-02.eml")).expect("rfc3834-02.eml");
    let oof = String::from_utf8_lossy(&oof).replace("kijitora@example.com", MAILBOX).into_bytes();
    let bounce = std::fs::read(corpus.join("lhost-postfix-01.eml")).expect("lhost-postfix-01.eml");
    for raw in [&auto, &oof, &bounce] {
        imap.append(raw).await;
    }
    // A person's complaint after them: once it is a case, the three before it were handled.
    let (person, person_id) = complaint_from("real.person@customer.example", "Missing parts");
    imap.append(&person).await;

    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;
    let all = wait_cases(&gw, 1, 20).await;
    assert!(case_of(&all, &person_id).is_some());
    let acks = wait_mail(&smtp, 1, 20).await;
    eventually(10, "all four messages flagged \\Seen", || async { (imap.counts().await == (4, 4)).then_some(()) })
        .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(case_count(&gw).await, 1, "automatic mail opens no case: {:#?}", cases(&gw).await);
    let acks = if smtp.messages().len() > acks.len() { smtp.messages() } else { acks };
    assert_eq!(acks.len(), 1, "automatic mail is not acknowledged: {acks:#?}");
    ack_to(&acks, "real.person@customer.example");
    assert_eq!(ack_jobs(&gw).await.len(), 1);

    // They are kept as channel events instead, the bounce as a bounce.
    let store = db.store().await;
    assert_eq!(store.count_events(Some("bounce")).await.expect("events"), 1);
    assert_eq!(store.count_events(Some("auto_reply")).await.expect("events"), 2);
    assert_eq!(store.count_events(None).await.expect("events"), 3);
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn email_imap_restart_mid_stream_loses_and_repeats_nothing() {
    let Some((mut imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let mut ids = Vec::new();
    for i in 0..10 {
        let (raw, id) = complaint_from(&format!("customer{i}@customer.example"), &format!("Complaint number {i}"));
        imap.append(&raw).await;
        ids.push(id);
    }

    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 2)).await;
    let store = db.store().await;
    eventually(20, "the first cases", || async { (store.count_cases().await.expect("count") > 0).then_some(()) }).await;
    imap.stop().await;
    let committed_while_up = store.count_cases().await.expect("count");
    eprintln!("IMAP restart: {committed_while_up} of 10 committed when Dovecot stopped");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    imap.start_again().await;
    // A message that arrives after the restart is picked up as well.
    let (late, late_id) = complaint_from("late@customer.example", "After the restart");
    imap.append(&late).await;
    ids.push(late_id);

    let all = wait_cases(&gw, 11, 60).await;
    let acks = wait_mail(&smtp, 11, 30).await;
    eventually(20, "all eleven flagged \\Seen", || async { (imap.counts().await == (11, 11)).then_some(()) }).await;
    tokio::time::sleep(SETTLE).await;

    let all = if case_count(&gw).await > all.len() { cases(&gw).await } else { all };
    assert_eq!(all.len(), 11, "exactly eleven cases");
    for id in &ids {
        let case = case_of(&all, id).unwrap_or_else(|| panic!("a case for {id}"));
        assert_eq!(messages_of(case), 1, "no message stored twice");
    }
    let acks = if smtp.messages().len() > acks.len() { smtp.messages() } else { acks };
    assert_eq!(acks.len(), 11, "eleven acknowledgements, none repeated: {acks:#?}");
    let recipients: HashSet<&String> = acks.iter().flat_map(|a| a.to.iter()).collect();
    let message_ids: HashSet<&Option<String>> = acks.iter().map(|a| &a.message_id).collect();
    let answered: HashSet<&Vec<String>> = acks.iter().map(|a| &a.in_reply_to).collect();
    assert_eq!((recipients.len(), message_ids.len(), answered.len()), (11, 11, 11));
    assert_eq!(ack_jobs(&gw).await.len(), 11);
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn email_smtp_outage_delays_acknowledgements_and_loses_none() {
    let Some((imap, mut smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;
    smtp.stop().await;

    let mut ids = HashMap::new();
    for i in 0..3 {
        let address = format!("patient{i}@customer.example");
        let (raw, id) = complaint_from(&address, &format!("Outage complaint {i}"));
        imap.append(&raw).await;
        ids.insert(address, id);
    }
    wait_cases(&gw, 3, 20).await;
    // The acknowledgements are retried while nobody answers on the SMTP port.
    let retrying = eventually(20, "three acknowledgement jobs retrying", || async {
        let v = get_ok(&gw, "/v1/outbox?state=pending&limit=1000").await;
        let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
        let retrying: Vec<Value> =
            jobs.into_iter().filter(|j| j["kind"] == "ack" && j["attempts"].as_i64().is_some_and(|a| a >= 2)).collect();
        (retrying.len() == 3).then_some(retrying)
    })
    .await;
    assert!(retrying.iter().all(|j| j["last_error"].as_str().is_some_and(|e| !e.is_empty())), "{retrying:#?}");
    assert!(smtp.messages().is_empty());

    smtp.start_again().await;
    let acks = wait_mail(&smtp, 3, 30).await;
    let done = eventually(10, "the three jobs done", || async {
        let jobs = ack_jobs(&gw).await;
        (jobs.len() == 3 && jobs.iter().all(|j| j["state"] == "done")).then_some(jobs)
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let acks = if smtp.messages().len() > acks.len() { smtp.messages() } else { acks };
    assert_eq!(acks.len(), 3, "each acknowledgement arrives exactly once: {acks:#?}");
    for (address, id) in &ids {
        let ack = ack_to(&acks, address);
        assert_eq!(ack.in_reply_to, vec![id.clone()]);
        // The Message-ID is the job's, so every attempt of the job was the same message.
        let job = done
            .iter()
            .find(|j| {
                ack.message_id.as_deref()
                    == Some(format!("{}@example.com", j["event_id"].as_str().unwrap_or("")).as_str())
            })
            .unwrap_or_else(|| panic!("a job whose id is the Message-ID of {ack:#?}"));
        assert!(job["attempts"].as_i64().is_some_and(|a| a > 2), "retried before it went through: {job}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn email_one_acknowledgement_per_sender_within_the_window() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;

    // Back to back, so they are fetched together.
    let (first, first_id) = complaint_from("busy@customer.example", "First problem");
    let (second, second_id) = complaint_from("busy@customer.example", "Second, unrelated problem");
    imap.append(&first).await;
    imap.append(&second).await;

    let all = wait_cases(&gw, 2, 20).await;
    assert!(case_of(&all, &first_id).is_some() && case_of(&all, &second_id).is_some(), "two cases");
    wait_mail(&smtp, 1, 20).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(case_count(&gw).await, 2);
    assert_eq!(ack_jobs(&gw).await.len(), 1, "one acknowledgement job");
    let acks = smtp.messages();
    assert_eq!(acks.len(), 1, "one acknowledgement within the window: {acks:#?}");
    assert_eq!(acks[0].in_reply_to, vec![first_id]);
    gw.stop().await;
}

/// A delivery report from the customer's mail server: our message `<acked_id>` to `address` failed.
fn bounce_of(acked_id: &str, address: &str) -> Vec<u8> {
    let id = new_message_id();
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>\nTo: {MAILBOX}\n\
         Subject: Undelivered Mail Returned to Sender\nDate: Mon, 2 Jun 2025 10:05:00 +0000\nMessage-ID: <{id}>\n\
         Auto-Submitted: auto-replied\nMIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"bb\"\n\n\
         --bb\nContent-Type: text/plain\n\nYour message could not be delivered: the mailbox does not exist.\n\n\
         --bb\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.customer.example\n\n\
         Final-Recipient: rfc822; {address}\nAction: failed\nStatus: 5.1.1\n\n\
         --bb\nContent-Type: text/rfc822-headers\n\nMessage-ID: <{acked_id}>\nFrom: {MAILBOX}\nTo: {address}\n\
         Subject: Re: complaint\n\n--bb--\n"
    )
    .into_bytes()
}

/// Listed quarantine entries.
async fn quarantined(gw: &Gateway) -> Vec<Value> {
    get_ok(gw, "/v1/quarantine").await["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn email_unparseable_mail_is_quarantined_and_blocks_nothing() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let (first, first_id) = complaint_from("before@customer.example", "Before the bad one");
    // No From, no Reply-To: nobody to answer and no customer to file it under.
    let garbage = b"Subject: no sender at all\nMessage-ID: <nosender@customer.example>\n\nwho sent this?\n".to_vec();
    let (second, second_id) = complaint_from("after@customer.example", "After the bad one");
    for raw in [&first, &garbage, &second] {
        imap.append(raw).await;
    }
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;

    let all = wait_cases(&gw, 2, 20).await;
    assert!(case_of(&all, &first_id).is_some() && case_of(&all, &second_id).is_some(), "{all:#?}");
    let items = eventually(10, "one quarantine entry", || async {
        let items = quarantined(&gw).await;
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(items.len(), 1, "{items:#?}");
    assert_eq!(items[0]["channel"], "email");
    assert!(items[0]["reason"].as_str().is_some_and(|r| r.contains("sender")), "the reason says why: {items:#?}");
    assert_eq!(items[0]["size"].as_i64(), Some(crate::mailsrv::crlf(&garbage).len() as i64), "kept whole");
    // All three are done with: flagged, not left to be fetched forever, none deleted.
    eventually(10, "all three flagged \\Seen", || async { (imap.counts().await == (3, 3)).then_some(()) }).await;
    wait_mail(&smtp, 2, 20).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(case_count(&gw).await, 2);
    assert_eq!(smtp.messages().len(), 2, "only the two complaints are acknowledged");
    gw.stop().await;
}

#[tokio::test]
async fn email_uidvalidity_change_rescans_without_duplicates() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (raw, id) = complaint_from(&format!("rescan{i}@customer.example"), &format!("Rescan {i}"));
        imap.append(&raw).await;
        ids.push(id);
    }
    imap.append(b"Subject: no sender\nMessage-ID: <rescan-bad@customer.example>\n\nnobody\n").await;
    let config = email_toml(&db.url, &imap, &smtp, 200);
    let gw = Gateway::start(&config).await;
    wait_cases(&gw, 3, 20).await;
    wait_mail(&smtp, 3, 20).await;
    eventually(10, "all four flagged \\Seen", || async { (imap.counts().await == (4, 4)).then_some(()) }).await;
    gw.stop().await;

    // As if the server had rebuilt the folder: the stored cursor's UIDVALIDITY no longer matches.
    let store = db.store().await;
    let key = "imap:support:INBOX";
    let cursor = store.load_cursor(key).await.expect("cursor").expect("a cursor was saved");
    let (validity, _) = cursor.split_once(':').expect("uidvalidity:uid");
    let stale = format!("{}:999", validity.parse::<u64>().expect("a number") + 1);
    store.save_cursor(key, &stale, 0).await.expect("save cursor");
    let (late, late_id) = complaint_from("rescan-late@customer.example", "After the rescan");
    imap.append(&late).await;
    ids.push(late_id);

    let gw = Gateway::start(&config).await;
    let all = wait_cases(&gw, 4, 20).await;
    eventually(10, "all five flagged \\Seen", || async { (imap.counts().await == (5, 5)).then_some(()) }).await;
    let acks = wait_mail(&smtp, 4, 20).await;
    tokio::time::sleep(SETTLE).await;
    let all = if case_count(&gw).await > all.len() { cases(&gw).await } else { all };
    assert_eq!(all.len(), 4, "the rescan made no second case: {all:#?}");
    for id in &ids {
        assert_eq!(messages_of(case_of(&all, id).unwrap_or_else(|| panic!("a case for {id}"))), 1);
    }
    let acks = if smtp.messages().len() > acks.len() { smtp.messages() } else { acks };
    assert_eq!(acks.len(), 4, "nobody is acknowledged twice: {acks:#?}");
    assert_eq!(quarantined(&gw).await.len(), 1, "the bad message is quarantined once");
    let cursor = store.load_cursor(key).await.expect("cursor").expect("cursor");
    assert!(cursor.starts_with(&format!("{validity}:")), "the cursor follows the server's UIDVALIDITY: {cursor}");
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn email_move_to_moves_committed_mail_and_deletes_nothing() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    for i in 0..3 {
        imap.append(&complaint_from(&format!("mover{i}@customer.example"), &format!("Move {i}")).0).await;
    }
    let config = email_toml(&db.url, &imap, &smtp, 2).replace("batch = 2 }", "batch = 2, move_to = \"Processed\" }");
    assert!(config.contains("move_to"), "{config}");
    let gw = Gateway::start(&config).await;
    wait_cases(&gw, 3, 20).await;
    eventually(10, "INBOX emptied into Processed", || async {
        (imap.counts().await == (0, 0) && imap.folder_count("Processed").await == 3).then_some(())
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn email_smtp_5xx_dead_letters_at_once_with_the_servers_answer() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;
    // The sink refuses recipients named reject… with 550 5.1.1, as a server refuses an unknown user.
    imap.append(&complaint_from("reject.me@customer.example", "Unknown user").0).await;
    imap.append(&complaint_from("fine@customer.example", "Known user").0).await;
    // …and tempfail… with 451 4.3.0, as an overloaded server does: that one is retried.
    imap.append(&complaint_from("tempfail@customer.example", "Try later").0).await;
    wait_cases(&gw, 3, 20).await;
    let dead = eventually(20, "the refused acknowledgement dead-lettered", || async {
        let jobs = ack_jobs(&gw).await;
        jobs.into_iter().find(|j| j["state"] == "dead")
    })
    .await;
    assert_eq!(dead["attempts"].as_i64(), Some(1), "a permanent refusal is not retried: {dead}");
    let error = dead["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("550") && error.contains("User unknown"), "the server's answer is kept: {error}");
    let retrying = eventually(20, "the 451 acknowledgement retried", || async {
        let jobs = ack_jobs(&gw).await;
        jobs.into_iter().find(|j| j["state"] != "dead" && j["attempts"].as_i64().is_some_and(|a| a >= 2))
    })
    .await;
    let error = retrying["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("451"), "a 4xx is transient and kept for the retry: {retrying}");
    let acks = wait_mail(&smtp, 1, 20).await;
    ack_to(&acks, "fine@customer.example");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(smtp.messages().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn email_smtp_authentication_is_used_and_a_refused_login_is_reported() {
    let Some(imap) = Dovecot::start().await else { return };
    let Some(smtp) = SmtpSink::start_auth("acks@example.com", "s3cret-smtp").await else { return };
    let db = TestDb::sqlite();
    let smtp_plain = format!("port = {}, security = \"plain\" }}", smtp.port);
    let with = |password: &str| {
        let config = email_toml(&db.url, &imap, &smtp, 200).replace(
            &smtp_plain,
            &format!(
                "port = {}, security = \"plain\", username = \"acks@example.com\", password = \"{password}\" }}",
                smtp.port
            ),
        );
        assert!(config.contains(password), "{config}");
        config
    };

    // A wrong password: the server refuses the login, the job is dead-lettered with its answer.
    let gw = Gateway::start(&with("wrong")).await;
    imap.append(&complaint_from("authed@customer.example", "Needs a login").0).await;
    wait_cases(&gw, 1, 20).await;
    let dead = eventually(20, "the acknowledgement dead-lettered", || async {
        ack_jobs(&gw).await.into_iter().find(|j| j["state"] == "dead")
    })
    .await;
    let error = dead["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("535"), "the server's refusal is kept: {dead}");
    assert!(smtp.messages().is_empty());
    gw.stop().await;

    // The right one: replayed, the acknowledgement goes out.
    let gw = Gateway::start(&with("s3cret-smtp")).await;
    let (status, replayed) = gw.admin_post("/v1/outbox/replay-dead").await;
    assert_eq!((status, replayed["replayed"].as_i64()), (200, Some(1)), "{replayed}");
    let acks = wait_mail(&smtp, 1, 20).await;
    ack_to(&acks, "authed@customer.example");
    gw.stop().await;
}

#[tokio::test]
async fn email_bounce_of_an_acknowledgement_suppresses_the_address() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    // No acknowledgement window: only the suppression can keep the second complaint unanswered.
    let gw = Gateway::start(&without_ack_window(&email_toml(&db.url, &imap, &smtp, 200))).await;
    let address = "gone@customer.example";
    let (first, first_id) = complaint_from(address, "First try");
    imap.append(&first).await;
    let all = wait_cases(&gw, 1, 20).await;
    let acked = ack_message_id(&gw, case_of(&all, &first_id).expect("the case")).await;
    wait_mail(&smtp, 1, 20).await;

    imap.append(&bounce_of(&acked, address)).await;
    let store = db.store().await;
    eventually(20, "the bounce stored", || async {
        (store.count_events(Some("bounce")).await.expect("events") == 1).then_some(())
    })
    .await;
    assert_eq!(case_count(&gw).await, 1, "a bounce opens no case");

    let (second, second_id) = complaint_from(address, "Second try");
    imap.append(&second).await;
    let all = wait_cases(&gw, 2, 20).await;
    let second_case = case_of(&all, &second_id).expect("the second complaint is still a case");
    tokio::time::sleep(SETTLE).await;
    let jobs = ack_jobs(&gw).await;
    assert!(
        jobs.iter().all(|j| j["case_id"] != second_case["id"]),
        "no acknowledgement to a bounced address: {jobs:#?}"
    );
    assert_eq!(smtp.messages().len(), 1);

    // A stranger is still answered: the suppression is for that address only.
    imap.append(&complaint_from("other@customer.example", "Unrelated").0).await;
    wait_mail(&smtp, 2, 20).await;
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn email_reparse_restores_normalized_text_from_the_raw_message() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let message_id = new_message_id();
    imap.append(&chinese_complaint(&message_id)).await;
    imap.append(&complaint_from("plain@customer.example", "Plain").0).await;
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;
    wait_cases(&gw, 2, 20).await;
    gw.stop().await;

    // As if an older parser had garbled the text: the raw message is what reparse works from.
    let store = db.store().await;
    let garbled = db
        .exec(&format!(
            "UPDATE messages SET data = json_set(data, '$.text', 'garbled', '$.subject', '???') WHERE external_id = '{message_id}'"
        ))
        .await;
    assert_eq!(garbled, 1);
    let done = earshot::reparse::reparse(&*store, 1 << 20).await.expect("reparse");
    assert_eq!((done.updated, done.unchanged, done.failed), (1, 1, 0), "{done:?}");
    let again = earshot::reparse::reparse(&*store, 1 << 20).await.expect("reparse");
    assert_eq!((again.updated, again.unchanged), (0, 2), "a second run changes nothing: {again:?}");
    store.close().await;

    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;
    let all = cases(&gw).await;
    let case = case_of(&all, &message_id).expect("the case");
    let message = &case["messages"][0];
    assert_eq!(message["subject"], CHINESE_SUBJECT);
    assert!(message["text"].as_str().is_some_and(|t| t.contains("杯子")), "{message}");
    gw.stop().await;
}

/// Complaint in over TLS, acknowledgement out over TLS, both servers trusted through `ca_file`
/// only (a private CA): what a production mailbox does, against real servers.
async fn tls_round_trip(imap_security: &str, smtp_implicit: bool) {
    let Some(certs) = crate::mailsrv::TestCerts::make() else { return };
    let Some(imap) = Dovecot::start_tls(&certs).await else { return };
    let Some(smtp) = SmtpSink::start_tls(&certs, smtp_implicit).await else { return };
    let db = TestDb::sqlite();
    let imap_port = if imap_security == "tls" { imap.tls_port.expect("IMAPS port") } else { imap.port };
    let ca = certs.ca.display().to_string();
    let smtp_security = if smtp_implicit { "tls" } else { "starttls" };
    let config = email_toml(&db.url, &imap, &smtp, 200)
        .replace(
            &format!("port = {}, security = \"plain\", username", imap.port),
            &format!("port = {imap_port}, security = \"{imap_security}\", ca_file = \"{ca}\", username"),
        )
        .replace(
            &format!("port = {}, security = \"plain\" }}", smtp.port),
            &format!("port = {}, security = \"{smtp_security}\", ca_file = \"{ca}\" }}", smtp.port),
        );
    assert_eq!(config.matches("ca_file").count(), 2, "{config}");

    // Without the CA the same servers are not trusted: the check happens, it is not switched off.
    let untrusted = Gateway::start(&config.replace(&format!(", ca_file = \"{ca}\""), "")).await;
    let (raw, id) = complaint_from("secure@customer.example", "Over TLS");
    imap.append(&raw).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(case_count(&untrusted).await, 0, "an untrusted IMAP server is not read");
    untrusted.stop().await;

    let gw = Gateway::start(&config).await;
    let all = wait_cases(&gw, 1, 20).await;
    let case = case_of(&all, &id).expect("the case").clone();
    let acks = wait_mail(&smtp, 1, 20).await;
    assert_ack(&gw, ack_to(&acks, "secure@customer.example"), &case, "secure@customer.example", &id, "Over TLS").await;
    gw.stop().await;
}

#[tokio::test]
async fn email_over_implicit_tls_imap_and_starttls_smtp() {
    tls_round_trip("tls", false).await;
}

#[tokio::test]
async fn email_over_starttls_imap_and_implicit_tls_smtp() {
    tls_round_trip("starttls", true).await;
}

/// The holder of the mailbox lease, read from the shared database.
async fn lease_holder(db: &TestDb) -> Option<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let holders: Vec<String> = sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'imap:support'")
        .fetch_all(&mut conn)
        .await
        .expect("leases");
    let _ = conn.close().await;
    assert!(holders.len() <= 1, "one lease row per mailbox: {holders:?}");
    holders.into_iter().next()
}

#[tokio::test]
async fn email_two_gateways_on_postgres_share_a_mailbox_through_one_lease() {
    let Some((imap, smtp)) = servers().await else { return };
    let Some(db) = TestDb::postgres().await else { return };
    let config = email_toml(&db.url, &imap, &smtp, 5);
    let first = Gateway::start(&config).await;
    let second = Gateway::start(&config).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (raw, id) = complaint_from(&format!("shared{i}@customer.example"), &format!("Shared {i}"));
        imap.append(&raw).await;
        ids.push(id);
    }
    wait_cases(&first, 10, 30).await;
    let holder = lease_holder(&db).await.expect("someone holds the mailbox lease");

    // Stop the holder, whichever it is, so that a takeover must happen: stopping the first
    // gateway releases the lease if it held it; if the second held it, a third one is started and
    // the second stopped.
    first.stop().await;
    let live = if lease_holder(&db).await.as_ref() == Some(&holder) {
        let third = Gateway::start(&config).await;
        second.stop().await;
        third
    } else {
        second
    };
    assert_ne!(lease_holder(&db).await.as_ref(), Some(&holder), "the stopped holder released the lease");
    for i in 10..15 {
        let (raw, id) = complaint_from(&format!("shared{i}@customer.example"), &format!("Shared {i}"));
        imap.append(&raw).await;
        ids.push(id);
    }
    // A waiting instance looks at the lease every third of its lifetime (20 s).
    let all = wait_cases(&live, 15, 45).await;
    let now_held_by = lease_holder(&db).await.expect("the remaining gateway holds the lease");
    assert_ne!(now_held_by, holder, "another instance took the mailbox over");
    let acks = wait_mail(&smtp, 15, 30).await;
    tokio::time::sleep(SETTLE).await;
    let all = if case_count(&live).await > all.len() { cases(&live).await } else { all };
    assert_eq!(all.len(), 15, "no message became two cases");
    for id in &ids {
        assert_eq!(messages_of(case_of(&all, id).unwrap_or_else(|| panic!("a case for {id}"))), 1);
    }
    let acks = if smtp.messages().len() > acks.len() { smtp.messages() } else { acks };
    assert_eq!(acks.len(), 15, "every complaint acknowledged once: {acks:#?}");
    eventually(10, "all fifteen flagged \\Seen", || async { (imap.counts().await == (15, 15)).then_some(()) }).await;
    live.stop().await;
    assert_eq!(lease_holder(&db).await, None, "a clean stop releases the lease");
    db.cleanup().await;
}

#[tokio::test]
async fn email_auto_reply_to_an_acknowledgement_joins_the_case_unanswered_and_own_mail_is_never_acknowledged() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    // No window: what keeps these unanswered must be the loop rules themselves.
    let gw = Gateway::start(&without_ack_window(&email_toml(&db.url, &imap, &smtp, 200))).await;
    let (first, first_id) = complaint_from("traveller@customer.example", "Lost parcel");
    imap.append(&first).await;
    let all = wait_cases(&gw, 1, 20).await;
    let case = case_of(&all, &first_id).expect("the case").clone();
    let ack_id = ack_message_id(&gw, &case).await;
    wait_mail(&smtp, 1, 20).await;

    // The customer's out-of-office answers our acknowledgement.
    let auto_id = new_message_id();
    imap.append(&mail(
        "traveller@customer.example",
        &auto_id,
        "Automatic reply: Lost parcel",
        &format!("In-Reply-To: <{ack_id}>\nReferences: <{first_id}> <{ack_id}>\nAuto-Submitted: auto-replied\n"),
        "I am travelling until the 14th.",
    ))
    .await;
    // And a message from our own address (a misrouted copy, a loop through a forwarder).
    let (own, own_id) = complaint_from(MAILBOX, "Our own words");
    imap.append(&own).await;

    let case_path = format!("/v1/cases/{}", case["id"].as_str().expect("id"));
    let grown = eventually(20, "the auto-reply stored on the case", || async {
        let c = get_ok(&gw, &case_path).await;
        (messages_of(&c) == 2).then_some(c)
    })
    .await;
    assert_eq!(grown["messages"][1]["external_id"], auto_id.as_str());
    let all = wait_cases(&gw, 2, 20).await;
    let own_case = case_of(&all, &own_id).expect("our own mail is kept as a case, not dropped");
    tokio::time::sleep(SETTLE).await;
    let jobs = ack_jobs(&gw).await;
    assert_eq!(jobs.len(), 1, "only the customer's complaint gets an acknowledgement job: {jobs:#?}");
    assert!(jobs.iter().all(|j| j["case_id"] != own_case["id"]));
    assert_eq!(smtp.messages().len(), 1, "nothing answers the auto-reply or our own address");
    gw.stop().await;
}

/// A TCP proxy between the gateway and Dovecot that withholds one message's body. A real Dovecot
/// always sends the body asked for, but a server may not (a message expunged or damaged while it is
/// fetched, a broken proxy): while holding, an untagged FETCH reply whose `BODY[]` literal contains
/// `marker` is passed on without that item, e.g. `* 2 FETCH (UID 2)`. Every other reply, and
/// everything the gateway sends, goes through unchanged.
struct BodyWithholdingProxy {
    port: u16,
    state: Arc<Mutex<Withheld>>,
    task: tokio::task::JoinHandle<()>,
}

struct Withheld {
    /// Withholding the body; off after [`BodyWithholdingProxy::release`].
    hold: bool,
    /// The UID of each reply passed on without the body, in order.
    stripped: Vec<u32>,
    /// Replies that carried the body through after the release.
    passed: usize,
}

/// One server response: its lines (CRLF included), each but the last followed by the literal it
/// announces with `{N}`.
#[derive(Default)]
struct Response {
    lines: Vec<Vec<u8>>,
    literals: Vec<Vec<u8>>,
}

impl BodyWithholdingProxy {
    async fn start(upstream: u16, marker: &str) -> BodyWithholdingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(Withheld { hold: true, stripped: Vec::new(), passed: 0 }));
        let (st, marker) = (state.clone(), Arc::<[u8]>::from(marker.as_bytes()));
        let task = tokio::spawn(async move {
            // Aborting the accept task drops this set, and with it every relayed connection.
            let mut relays = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                relays.spawn(relay(client, upstream, marker.clone(), st.clone()));
            }
        });
        BodyWithholdingProxy { port, state, task }
    }

    fn stripped(&self) -> Vec<u32> {
        self.state.lock().expect("lock").stripped.clone()
    }

    fn passed(&self) -> usize {
        self.state.lock().expect("lock").passed
    }

    /// From now on the body goes through like any other.
    fn release(&self) {
        self.state.lock().expect("lock").hold = false;
    }
}

impl Drop for BodyWithholdingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection until either side closes it: the gateway's bytes as they come, the
/// server's a whole response at a time, so that a FETCH reply can be rewritten.
async fn relay(client: TcpStream, upstream: u16, marker: Arc<[u8]>, state: Arc<Mutex<Withheld>>) {
    // With Dovecot unreachable the gateway sees its connection close, as with a dead server.
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
    let (mut from_client, mut to_client) = client.into_split();
    let (from_server, mut to_server) = server.into_split();
    let down = async {
        let mut from_server = BufReader::new(from_server);
        while let Some(response) = read_response(&mut from_server).await? {
            to_client.write_all(&withhold_body(response, &marker, &state)).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
        _ = down => {}
    }
}

/// The next response, literals included; `None` once the server closed the connection.
async fn read_response(from: &mut BufReader<OwnedReadHalf>) -> std::io::Result<Option<Response>> {
    let mut response = Response::default();
    loop {
        let mut line = Vec::new();
        if from.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let announced = literal_len(&line);
        response.lines.push(line);
        let Some(len) = announced else { return Ok(Some(response)) };
        let mut literal = vec![0u8; len];
        from.read_exact(&mut literal).await?;
        response.literals.push(literal);
    }
}

/// `N` when `line` ends by announcing a literal: `{N}\r\n`.
fn literal_len(line: &[u8]) -> Option<usize> {
    let open = line.strip_suffix(b"}\r\n")?;
    let start = open.iter().rposition(|&b| b == b'{')? + 1;
    std::str::from_utf8(&open[start..]).ok()?.parse().ok()
}

/// The response as bytes, without the marked message's `BODY[] {N}` item and literal while the
/// proxy holds it back.
fn withhold_body(mut r: Response, marker: &[u8], state: &Mutex<Withheld>) -> Vec<u8> {
    let is_fetch = r.lines.first().is_some_and(|l| l.starts_with(b"* ") && l.windows(7).any(|w| w == b" FETCH "));
    let body_at = r.lines.iter().zip(&r.literals).position(|(line, literal)| {
        is_fetch && line.windows(8).any(|w| w == b"BODY[] {") && literal.windows(marker.len()).any(|w| w == marker)
    });
    if let Some(i) = body_at {
        let mut st = state.lock().expect("lock");
        if st.hold {
            let text = String::from_utf8_lossy(&r.lines.concat()).into_owned();
            let uid = text
                .split_once("UID ")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()));
            st.stripped.push(uid.expect("the FETCH reply names its UID (the gateway asks for it)"));
            // `… (UID 2 BODY[] {N}` + literal + `)\r\n` becomes `… (UID 2)\r\n`, whichever side of
            // the body the other items are.
            let line = &r.lines[i];
            let cut = line.windows(8).rposition(|w| w == b"BODY[] {").expect("BODY[] in the line");
            let mut joined = line[..cut].trim_ascii_end().to_vec();
            let rest = r.lines.remove(i + 1);
            joined.extend_from_slice(if joined.ends_with(b"(") { rest.trim_ascii_start() } else { &rest });
            r.lines[i] = joined;
            r.literals.remove(i);
        } else {
            st.passed += 1;
        }
    }
    let mut out = Vec::new();
    for (i, line) in r.lines.iter().enumerate() {
        out.extend_from_slice(line);
        if let Some(literal) = r.literals.get(i) {
            out.extend_from_slice(literal);
        }
    }
    out
}

/// Issue 14 item 6, through the real path: a FETCH reply without a body does not move the UID cursor
/// past that message. A, B and C are fetched in one batch, B's reply comes without its body (from the
/// proxy above), so A and C become cases, the cursor stops before B, and B is asked for again at the
/// next check; once its body comes, B is a case too, and the re-fetched C is no second case and no
/// second acknowledgement.
#[tokio::test]
async fn email_a_fetch_reply_without_a_body_does_not_move_the_cursor_past_it() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    // In before the gateway starts, so the first check fetches all three in one batch.
    let (a, a_id) = complaint_from("first.in.batch@customer.example", "First in the batch");
    let (b, b_id) = complaint_from("bodiless@customer.example", "Sent without its body");
    let (c, c_id) = complaint_from("last.in.batch@customer.example", "Last in the batch");
    for raw in [&a, &b, &c] {
        imap.append(raw).await;
    }
    let proxy = BodyWithholdingProxy::start(imap.port, &b_id).await;
    let config = email_toml(&db.url, &imap, &smtp, 200)
        .replace(&format!("port = {}, security", imap.port), &format!("port = {}, security", proxy.port));
    assert!(config.contains(&format!("port = {}, security = \"plain\", username", proxy.port)), "{config}");
    // poll_secs = 1: the next check after a short batch comes within a second or so.
    let gw = Gateway::start(&config).await;
    let store = db.store().await;
    let key = "imap:support:INBOX";

    // A second reply without B's body means B was asked for again after the first: the cursor did not
    // pass it. (With a cursor past B, it would never be asked for again.)
    let stripped = eventually(20, "B's body asked for again after a reply without it", || async {
        let s = proxy.stripped();
        (s.len() >= 2).then_some(s)
    })
    .await;
    let b_uid = stripped[0];
    assert!(stripped.iter().all(|u| *u == b_uid), "only B's body is withheld: {stripped:?}");
    let all = wait_cases(&gw, 2, 20).await;
    assert!(case_of(&all, &a_id).is_some() && case_of(&all, &c_id).is_some(), "A and C are cases: {all:#?}");
    assert!(case_of(&all, &b_id).is_none(), "B never came, so it is no case: {all:#?}");
    let cursor = store.load_cursor(key).await.expect("cursor").expect("a cursor after A");
    let (validity, last_uid) = cursor.split_once(':').expect("uidvalidity:uid");
    let last_uid: u32 = last_uid.parse().expect("a UID");
    // A, B and C went into a fresh folder in that order: consecutive UIDs.
    assert_eq!(last_uid, b_uid - 1, "the cursor passed A and waits before B (UID {b_uid}): {cursor}");

    // Now the body comes: B becomes a case at the next check, and the cursor moves on past C.
    proxy.release();
    let all = wait_cases(&gw, 3, 20).await;
    assert!(case_of(&all, &b_id).is_some(), "B is a case once its body came: {all:#?}");
    assert!(proxy.passed() >= 1, "B's body went through after the release");
    let done = format!("{validity}:{}", b_uid + 1);
    eventually(10, "the cursor past C", || async {
        (store.load_cursor(key).await.expect("cursor").as_deref() == Some(done.as_str())).then_some(())
    })
    .await;
    eventually(10, "all three flagged \\Seen", || async { (imap.counts().await == (3, 3)).then_some(()) }).await;
    let acks = wait_mail(&smtp, 3, 20).await;
    tokio::time::sleep(SETTLE).await;

    // C was fetched again with B (twice): still one case, one message, one acknowledgement each.
    let all = cases(&gw).await;
    assert_eq!(all.len(), 3, "one case per complaint: {all:#?}");
    for id in [&a_id, &b_id, &c_id] {
        assert_eq!(messages_of(case_of(&all, id).unwrap_or_else(|| panic!("a case for {id}"))), 1, "{all:#?}");
    }
    let acks = if smtp.messages().len() > acks.len() { smtp.messages() } else { acks };
    assert_eq!(acks.len(), 3, "each complaint acknowledged once: {acks:#?}");
    for customer in ["first.in.batch@customer.example", "bodiless@customer.example", "last.in.batch@customer.example"] {
        ack_to(&acks, customer);
    }
    assert_eq!(ack_jobs(&gw).await.len(), 3);
    store.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn email_polling_without_idle_picks_up_new_mail() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let config = email_toml(&db.url, &imap, &smtp, 200).replace("idle = true", "idle = false");
    assert!(config.contains("idle = false"));
    let (first, first_id) = complaint_from("early.poller@customer.example", "Before the start");
    imap.append(&first).await;
    let gw = Gateway::start(&config).await;
    // Once the first message is a case, the first scan is over: the second one can only be found
    // by a later poll (poll_secs = 1).
    let all = wait_cases(&gw, 1, 20).await;
    assert!(case_of(&all, &first_id).is_some());
    let (raw, id) = complaint_from("patient.poller@customer.example", "Polled");
    imap.append(&raw).await;
    let all = wait_cases(&gw, 2, 20).await;
    assert!(case_of(&all, &id).is_some());
    wait_mail(&smtp, 2, 20).await;
    gw.stop().await;
}

/// An SMTP server that takes the connection and never says a word: acknowledgements wait (each send
/// is cut off at `smtp.timeout_secs`), web complaints sent meanwhile reach the ticket store within
/// seconds, and once a working server takes the port each acknowledgement is sent exactly once.
#[tokio::test]
async fn email_hung_smtp_server_holds_up_nothing_else_and_each_ack_goes_once() {
    let Some((imap, mut smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let rx = Receiver::start().await;
    smtp.stop().await;
    let hung = Blackhole::start_on(&format!("127.0.0.1:{}", smtp.port)).await;
    let web = format!("{}{}", web_source_toml(), downstream_toml(&rx.url, 50));
    let config = format!("{}{web}", email_toml(&db.url, &imap, &smtp, 200)).replace(
        "retry_schedule = [\"200ms\", \"400ms\", \"800ms\"]",
        "retry_schedule = [\"200ms\"]\nmax_attempts = 50",
    );
    let gw = Gateway::start(&config).await;

    let mut ids = HashMap::new();
    for i in 0..10 {
        let address = format!("waiting{i}@customer.example");
        let (raw, id) = complaint_from(&address, &format!("Hung SMTP complaint {i}"));
        imap.append(&raw).await;
        ids.insert(address, id);
    }
    wait_cases(&gw, 10, 20).await;
    eventually(10, "acknowledgements stuck on the hung server", || async { (hung.connections() >= 1).then_some(()) })
        .await;

    let started = std::time::Instant::now();
    for i in 0..20 {
        assert_eq!(gw.web().send(&complaint(&format!("web complaint while SMTP hangs {i}"))).await.0, 202);
    }
    rx.wait_until(10, "20 web and 10 email cases downstream", |r| r.iter().filter(|x| x.answered == 200).count() >= 30)
        .await;
    assert!(started.elapsed() < Duration::from_secs(5), "downstream delivery waited: {:?}", started.elapsed());
    assert!(smtp.messages().is_empty());

    // Let the hung sends reach their deadline at least once, then put a working server on the port.
    tokio::time::sleep(Duration::from_secs(4)).await;
    hung.stop().await;
    smtp.start_again().await;
    wait_mail(&smtp, 10, 60).await;
    eventually(20, "the ten acknowledgement jobs done", || async {
        let jobs = ack_jobs(&gw).await;
        (jobs.len() == 10 && jobs.iter().all(|j| j["state"] == "done")).then_some(())
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let acks = smtp.messages();
    assert_eq!(acks.len(), 10, "each acknowledgement exactly once: {acks:#?}");
    let message_ids: HashSet<&Option<String>> = acks.iter().map(|a| &a.message_id).collect();
    assert_eq!(message_ids.len(), 10);
    for (address, id) in &ids {
        assert_eq!(ack_to(&acks, address).in_reply_to, vec![id.clone()]);
    }
    gw.stop().await;
}

/// A customer's subject that reads like a bounce is still a customer's complaint: without a null
/// Return-Path, a returned message or a mailer-daemon sender, it becomes a case and is acknowledged.
#[tokio::test]
async fn email_a_complaint_whose_subject_reads_like_a_bounce_is_a_case() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;
    let id = new_message_id();
    imap.append(&mail(
        "Li Wei <li@example.com>",
        &id,
        "Delivery failure – SO-1001 never arrived",
        "",
        "The parcel never came.",
    ))
    .await;
    let all = wait_cases(&gw, 1, 20).await;
    let case = case_of(&all, &id).expect("a case for the complaint");
    assert_eq!(case["channel"], "email");
    let acks = wait_mail(&smtp, 1, 20).await;
    assert_eq!(ack_to(&acks, "li@example.com").in_reply_to, vec![id]);
    gw.stop().await;
}

/// A web shop's contact form relayed by mail: `From: no-reply@…` with the customer in `Reply-To` is a
/// complaint, acknowledged to the Reply-To; the same robot sender without a Reply-To stays automatic.
#[tokio::test]
async fn email_contact_form_relay_is_a_case_answered_at_the_reply_to() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;
    let relayed = new_message_id();
    imap.append(&mail(
        "Shop Contact Form <no-reply@shop.example>",
        &relayed,
        "Contact form: broken cup",
        "Reply-To: Li Wei <li.wei@customer.example>\n",
        "Name: Li Wei\nMessage: the cup arrived broken.",
    ))
    .await;
    let robot = new_message_id();
    imap.append(&mail("Shop <no-reply@shop.example>", &robot, "Your newsletter", "", "News.")).await;
    let all = wait_cases(&gw, 1, 20).await;
    assert!(case_of(&all, &relayed).is_some(), "the relayed form is a case");
    let acks = wait_mail(&smtp, 1, 20).await;
    assert_eq!(ack_to(&acks, "li.wei@customer.example").in_reply_to, vec![relayed]);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(case_count(&gw).await, 1, "the robot's own mail makes no case");
    assert_eq!(smtp.messages().len(), 1, "and gets no answer");
    gw.stop().await;
}

/// Runs `program` with `args` and returns what it prints: a message made by another mail library.
/// `None` (the test skips, saying so) when the program is missing; under `CI=true` that fails.
fn made_by(program: &str, args: &[&str]) -> Option<Vec<u8>> {
    match std::process::Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Some(out.stdout),
        Ok(out) => panic!("{program} failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true and {program} cannot run: {e}");
            eprintln!("SKIPPED: {program} cannot run ({e})");
            None
        }
    }
}

/// Python's `email` package and Perl's Encode::MIME::Header encode the whole From value, address
/// included, as one encoded word (and Python labels GB2312 with its codec name `eucgb2312_cn`):
/// both complaints become cases of the right customer and are acknowledged.
#[tokio::test]
async fn email_from_encoded_whole_by_python_and_perl_keeps_its_sender() {
    let Some((imap, smtp)) = servers().await else { return };
    let python = r#"
from email.mime.text import MIMEText
from email.header import Header
m = MIMEText("杯子碎了，要求退款。", "plain", "gb2312")
m["From"] = Header('"张伟" <zhang.wei@example.cn>', "utf-8")
m["To"] = "support@example.com"
m["Subject"] = Header("杯子碎了", "gb2312")
m["Message-ID"] = "<python-whole-from@customer.example>"
print(m.as_string())
"#;
    let perl = r#"use Encode; binmode STDOUT;
print "From: ", encode("MIME-B", decode("UTF-8", "\"李娜\" <li.na\@example.cn>")), "\n";
print "To: support\@example.com\nSubject: ", encode("MIME-B", decode("UTF-8", "快递破损")), "\n";
print "Message-ID: <perl-whole-from\@customer.example>\nMIME-Version: 1.0\n";
print "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n箱子是破的。\n";"#;
    let Some(from_python) = made_by("python3", &["-c", python]) else { return };
    let Some(from_perl) = made_by("perl", &["-e", perl]) else { return };
    assert!(String::from_utf8_lossy(&from_python).contains("=?eucgb2312_cn?"), "Python still labels its codec name");

    let db = TestDb::sqlite();
    let gw = Gateway::start(&email_toml(&db.url, &imap, &smtp, 200)).await;
    imap.append(&crlf(&from_python)).await;
    imap.append(&crlf(&from_perl)).await;
    let all = wait_cases(&gw, 2, 20).await;
    for (id, customer, subject) in [
        ("python-whole-from@customer.example", "zhang.wei@example.cn", "杯子碎了"),
        ("perl-whole-from@customer.example", "li.na@example.cn", "快递破损"),
    ] {
        let case = case_of(&all, id).unwrap_or_else(|| panic!("a case for {id}: {all:#?}"));
        let text = case.to_string();
        assert!(text.contains(customer) && text.contains(subject), "{case:#}");
    }
    let acks = wait_mail(&smtp, 2, 20).await;
    ack_to(&acks, "zhang.wei@example.cn");
    ack_to(&acks, "li.na@example.cn");
    assert_eq!(get_ok(&gw, "/v1/quarantine").await["items"].as_array().map(Vec::len), Some(0), "nothing quarantined");
    gw.stop().await;
}

/// A forged bounce (`From: mailer-daemon@…` naming a customer in `X-Failed-Recipients`, about no
/// message of ours) is stored and counted, and silences nobody: the customer's next complaint is
/// acknowledged.
#[tokio::test]
async fn email_a_forged_bounce_does_not_silence_a_customer() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let gw = Gateway::start(&without_ack_window(&email_toml(&db.url, &imap, &smtp, 200))).await;
    let victim = "victim@customer.example";
    imap.append(&complaint_from(victim, "First complaint").0).await;
    wait_cases(&gw, 1, 20).await;
    wait_mail(&smtp, 1, 20).await;

    let forged = format!(
        "From: Mail Delivery System <mailer-daemon@evil.example>\nTo: {MAILBOX}\nSubject: Undelivered Mail\n\
         Message-ID: <{}>\nX-Failed-Recipients: {victim}\nMIME-Version: 1.0\nContent-Type: text/plain\n\n\
         Delivery to {victim} failed permanently.\n",
        new_message_id()
    );
    imap.append(forged.as_bytes()).await;
    let store = db.store().await;
    eventually(20, "the forged bounce stored", || async {
        (store.count_events(Some("bounce")).await.expect("events") == 1).then_some(())
    })
    .await;
    assert!(store.suppressed(&[victim.to_owned()], earshot::now_ms()).await.expect("suppressed").is_empty());

    imap.append(&complaint_from(victim, "Second complaint").0).await;
    let acks = wait_mail(&smtp, 2, 20).await;
    assert_eq!(acks.iter().filter(|m| m.to.iter().any(|t| t == victim)).count(), 2, "both complaints answered");
    store.close().await;
    gw.stop().await;
}

/// A message with a 40,000-id References header is one case like any other (the ids are cut to a
/// documented bound), and web complaints committed beside it are answered 202.
#[tokio::test]
async fn email_a_huge_references_header_fails_nobody() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let web = web_source_toml();
    let gw = Gateway::start(&format!("{}{web}", email_toml(&db.url, &imap, &smtp, 200))).await;
    let id = new_message_id();
    let refs: Vec<String> = (0..40_000).map(|i| format!("<old{i}@customer.example>")).collect();
    let extra = format!("References: {}\n", refs.join("\n "));
    imap.append(&mail("Long Thread <long@customer.example>", &id, "Still broken", &extra, "Please help.")).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let w = gw.web();
        sent.push(tokio::spawn(async move { w.send(&complaint(&format!("beside a huge header {i}"))).await }));
    }
    for t in sent {
        let (status, body) = t.await.expect("request");
        assert_eq!(status, 202, "{body}");
    }
    let all = wait_cases(&gw, 6, 30).await;
    assert!(case_of(&all, &id).is_some(), "the long-threaded message is a case");
    let acks = wait_mail(&smtp, 1, 20).await;
    let ack = ack_to(&acks, "long@customer.example");
    assert!(ack.references.len() <= 51, "our reply's References are bounded too: {}", ack.references.len());
    gw.stop().await;
}

/// A message over `max_message_bytes` is not fetched whole: its header and size go to the
/// quarantine, and the complaint beside it becomes a case as usual.
#[tokio::test]
async fn email_a_message_over_the_size_limit_is_quarantined_by_its_header() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let config = email_toml(&db.url, &imap, &smtp, 200)
        .replace("ack_window = \"10m\"", "ack_window = \"10m\"\nmax_message_bytes = 4096");
    assert!(config.contains("max_message_bytes = 4096"));
    let gw = Gateway::start(&config).await;
    let big_id = new_message_id();
    let big =
        mail("Big Sender <big@customer.example>", &big_id, "A large photo", "", &"0123456789abcdef\n".repeat(2000));
    imap.append(&big).await;
    let (small, small_id) = complaint_from("small@customer.example", "A small complaint");
    imap.append(&small).await;
    let all = wait_cases(&gw, 1, 20).await;
    assert!(case_of(&all, &small_id).is_some(), "the small complaint is a case");
    let items = eventually(20, "the large message quarantined", || async {
        let q = quarantined(&gw).await;
        (!q.is_empty()).then_some(q)
    })
    .await;
    let item = &items[0];
    let reason = item["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("over channels.email.max_message_bytes (4096)"), "{item}");
    assert!(reason.contains(&format!("{} bytes", crate::mailsrv::crlf(&big).len())), "the size is named: {item}");
    let kept = item["size"].as_i64().expect("size");
    assert!(kept > 0 && kept < 1024, "only the header was kept: {item}");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(case_count(&gw).await, 1, "the large message made no case");
    gw.stop().await;
}

/// Mail to the customer about a case, in the order the sink received it.
fn mail_about<'a>(sink: &'a [Mail], case_ref: &str) -> Vec<&'a Mail> {
    sink.iter().filter(|m| m.subject.as_deref().is_some_and(|s| s.contains(case_ref))).collect()
}

/// A Chinese email complaint hears the ticket store's progress in its own thread, in order and in
/// Chinese; a digit reply to the survey and a link answer both reach downstream as `case.feedback`,
/// and "not solved" reopens the case.
async fn the_email_lifecycle(db: TestDb, imap: Dovecot, smtp: SmtpSink) {
    let tickets = Receiver::start().await;
    let toml = email_toml(&db.url, &imap, &smtp, 200) + &downstream_toml(&tickets.url, 50);
    let gw = Gateway::start(&toml).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let complaint_id = new_message_id();
    imap.append(&chinese_complaint(&complaint_id)).await;
    let ack = wait_mail(&smtp, 1, 20).await.remove(0);
    let case = wait_cases(&gw, 1, 5).await.remove(0);
    let (case_id, r) = (case["id"].as_str().expect("id").to_owned(), case_ref(&case));

    assert_eq!(ts.status(&case_id, "in_progress").await.0, 200);
    let reply = json!({ "type": "public_reply", "data": { "text": "您好，我们将为您全额退款，三个工作日内到账。", "author_display_name": "客服 王芳" } });
    assert_eq!(ts.send(&case_id, &reply).await.0, 200);
    assert_eq!(ts.status(&case_id, "resolved").await.0, 200);
    let all = wait_mail(&smtp, 5, 20).await;
    let thread = mail_about(&all, &r);
    assert_eq!(thread.len(), 5, "acknowledgement, update, reply, update, survey: {thread:#?}");
    assert_eq!(thread[0].message_id, ack.message_id);
    for m in &thread {
        assert_eq!(m.to, vec!["li.wei@example.cn".to_owned()]);
        assert_eq!(m.in_reply_to, vec![complaint_id.clone()], "a reply in the customer's thread");
        assert!(m.references.contains(&complaint_id));
        assert!(m.subject.as_deref().is_some_and(|s| s.contains(&format!("[Case {r}]"))), "{:?}", m.subject);
    }
    let text = |i: usize| thread[i].text.join("\n");
    assert!(text(1).contains("正在处理中"), "{}", text(1));
    assert!(text(2).contains("全额退款") && text(2).contains("客服 王芳"), "{}", text(2));
    assert!(text(3).contains("已解决"), "{}", text(3));
    assert!(text(4).contains("1（很不满意）到 5（非常满意）") && text(4).contains("/v1/feedback/sv_"), "{}", text(4));

    // The customer answers the survey by replying "5 是" on the first line.
    let survey = thread[4];
    let survey_id = survey.message_id.clone().expect("survey Message-ID");
    let answer = mail(
        "li.wei@example.cn",
        &new_message_id(),
        survey.subject.as_deref().expect("subject"),
        &format!("In-Reply-To: <{survey_id}>\nReferences: <{complaint_id}> <{survey_id}>\n"),
        &format!("5 是\n\n> {}", survey.text[0].replace('\n', "\n> ")),
    );
    imap.append(&answer).await;
    let got = tickets.wait_until(20, "case.feedback", |g| g.iter().any(|x| x.body["type"] == "case.feedback")).await;
    let fb = got.iter().find(|x| x.body["type"] == "case.feedback").map(|x| x.body["data"].clone()).expect("feedback");
    assert_eq!((fb["rating"].as_u64(), fb["solved"].as_bool()), (Some(5), Some(true)), "{fb}");
    assert_eq!(fb["case"]["feedback"]["via"], "reply");

    // Then a one-click link says it is not solved after all: forwarded again, and the case reopens.
    let link = survey.text[0]
        .split_whitespace()
        .find(|w| w.contains("solved=no"))
        .expect("a 'not solved' link in the survey")
        .to_owned();
    let page = reqwest::get(&link).await.expect("link");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("page").contains("谢谢您"));
    let got = tickets
        .wait_until(20, "the second answer and the reopening", |g| {
            g.iter().filter(|x| x.body["type"] == "case.feedback").count() == 2
                && g.iter().any(|x| x.body["type"] == "case.updated" && x.body["data"]["case"]["status"] == "reopened")
        })
        .await;
    let last = got.iter().rev().find(|x| x.body["type"] == "case.feedback").expect("feedback");
    assert_eq!((last.body["data"]["rating"].as_u64(), last.body["data"]["solved"].as_bool()), (Some(5), Some(false)));
    // The reply's message commits after its answer is recorded (the answer first, then the
    // message through the intake batch), so it may land a moment after the events above.
    let mut c = get_ok(&gw, &format!("/v1/cases/{case_id}")).await;
    for _ in 0..100 {
        if messages_of(&c) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        c = get_ok(&gw, &format!("/v1/cases/{case_id}")).await;
    }
    assert_eq!(c["status"], "reopened");
    assert_eq!(messages_of(&c), 2, "the survey reply is kept on the case too");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn email_lifecycle_sqlite() {
    let Some((imap, smtp)) = servers().await else { return };
    the_email_lifecycle(TestDb::sqlite(), imap, smtp).await;
}

#[tokio::test]
async fn email_lifecycle_postgres() {
    let Some((imap, smtp)) = servers().await else { return };
    let Some(db) = TestDb::postgres().await else { return };
    the_email_lifecycle(db, imap, smtp).await;
}

/// A bounced address is unreachable: an update to it is not retried, the case records why, and the
/// ticket store hears `case.updated` with `reachable: false`.
#[tokio::test]
async fn email_a_bounced_address_is_unreachable_for_updates() {
    let Some((imap, smtp)) = servers().await else { return };
    let db = TestDb::sqlite();
    let tickets = Receiver::start().await;
    let gw = Gateway::start(&(email_toml(&db.url, &imap, &smtp, 200) + &downstream_toml(&tickets.url, 50))).await;
    let address = "gone@customer.example";
    let (first, first_id) = complaint_from(address, "Broken kettle");
    imap.append(&first).await;
    let all = wait_cases(&gw, 1, 20).await;
    let case = case_of(&all, &first_id).expect("the case").clone();
    let acked = ack_message_id(&gw, &case).await;
    wait_mail(&smtp, 1, 20).await;
    imap.append(&bounce_of(&acked, address)).await;
    let store = db.store().await;
    eventually(20, "the bounce stored", || async {
        (store.count_events(Some("bounce")).await.expect("events") == 1).then_some(())
    })
    .await;

    let case_id = case["id"].as_str().expect("id");
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let reply = json!({ "type": "public_reply", "data": { "text": "We are sending a new kettle." } });
    assert_eq!(ts.send(case_id, &reply).await.0, 200);
    let got = tickets
        .wait_until(20, "case.updated reachable false", |g| {
            g.iter().any(|x| x.body["type"] == "case.updated" && x.body["data"]["reachable"] == false)
        })
        .await;
    let upd = got.iter().find(|x| x.body["type"] == "case.updated").expect("update");
    assert!(upd.body["data"]["reason"].as_str().is_some_and(|r| r.contains(address)), "{}", upd.body);
    tokio::time::sleep(SETTLE).await;
    let jobs = get_ok(&gw, "/v1/outbox?limit=1000").await;
    let reply_job = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["kind"] == "agent_reply")
        .cloned()
        .expect("the reply job");
    assert_eq!(
        (reply_job["state"].as_str(), reply_job["attempts"].as_i64()),
        (Some("dead"), Some(1)),
        "not retried: {reply_job}"
    );
    assert_eq!(smtp.messages().len(), 1, "nothing more was sent to the bounced address");
    let c = get_ok(&gw, &format!("/v1/cases/{case_id}")).await;
    assert!(c["unreachable"].as_str().is_some_and(|r| r.contains("bounced")), "{c}");
    store.close().await;
    gw.stop().await;
}
