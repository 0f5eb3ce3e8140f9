//! The email channel end to end: mail APPENDed to a real Dovecot becomes cases in the in-process
//! gateway, and acknowledgements reach a real SMTP sink, through outages of either server.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::mailsrv::{Dovecot, Mail, SmtpSink};
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
workers = 2
retry_schedule = ["200ms", "400ms", "800ms"]
lease = "5s"
poll_interval = "100ms"

[channels.email]
ack_window = "10m"

[[channels.email.mailboxes]]
name = "support"
address = "{MAILBOX}"
display_name = "Example Support"
imap = {{ host = "127.0.0.1", port = {imap_port}, security = "plain", username = "{user}", password = "{password}", folder = "INBOX", idle = true, poll_secs = 1, batch = {batch} }}
smtp = {{ host = "127.0.0.1", port = {smtp_port}, security = "plain" }}
"#,
        imap_port = imap.port,
        user = imap.user,
        password = imap.password,
        smtp_port = smtp.port,
    )
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

    // A reference with a wrong check digit links nothing: a new case.
    let check = r.chars().last().and_then(|c| c.to_digit(10)).expect("check digit");
    let mistyped = format!("{}{}", &r[..r.len() - 1], (check + 1) % 10);
    let (typo, typo_id) = complaint_from("omar@customer.example", &format!("Question [Case {mistyped}]"));
    imap.append(&typo).await;
    let all = wait_cases(&gw, 3, 20).await;
    let typo_case = case_of(&all, &typo_id).expect("a case for the mistyped reference");
    assert_ne!(typo_case["id"], case["id"], "a reference with a wrong check digit links nothing");
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
    assert!(corpus.is_dir(), "the email corpus is missing: expected {}", corpus.display());
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
