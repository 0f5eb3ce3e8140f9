//! The Telegram channel against a local Bot API server (`botapi.rs`, the documented wire format):
//! long polling and webhook intake, acknowledgements and the case's later messages in the chat,
//! commands, the survey keyboard, Telegram's errors, restarts, and the token kept out of logs.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::botapi::{self, BotApi, TOKEN};
use crate::support::*;

const WEBHOOK_SECRET: &str = "tg-hook_Secret-42";

fn telegram_toml(db: &str, bot: &BotApi, tickets: &Receiver, extra: &str) -> String {
    let mut t = config_toml(db, "");
    t.push_str(&downstream_toml(&tickets.url, 50));
    t.push_str(&format!(
        r#"
[channels.telegram]
token = "{TOKEN}"
api_url = "{}"
poll_timeout_secs = 1
per_chat_per_sec = 20
send_timeout_secs = 3
{extra}
"#,
        bot.base
    ));
    t
}

fn created(got: &[Received]) -> Vec<&Value> {
    got.iter()
        .filter(|r| r.answered == 200 && r.body["type"] == "case.created")
        .map(|r| &r.body["data"]["case"])
        .collect()
}

fn of_type<'a>(got: &'a [Received], kind: &str) -> Vec<&'a Value> {
    got.iter().filter(|r| r.answered == 200 && r.body["type"] == kind).map(|r| &r.body["data"]).collect()
}

async fn telegram_cases(gw: &Gateway) -> Vec<Value> {
    let (status, body) = gw.admin_get("/v1/cases?channel=telegram&limit=100").await;
    assert_eq!(status, 200, "{body}");
    body["cases"].as_array().cloned().unwrap_or_default()
}

async fn case(gw: &Gateway, id: &str) -> Value {
    let (status, body) = gw.admin_get(&format!("/v1/cases/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn a_text_complaint_becomes_a_case_acknowledged_in_the_chat(db: TestDb) {
    let (bot, tickets) = (BotApi::start().await, Receiver::start().await);
    let gw = Gateway::start(&telegram_toml(&db.url, &bot, &tickets, "")).await;

    bot.push(botapi::text(501, 11, "zh-hans", "我买的杯子到货时就碎了，请尽快处理"));
    bot.push(botapi::text(502, 21, "en", "The parcel never arrived."));
    let sent = bot.wait_sent(20, "two acknowledgements", |s| s.len() >= 2).await;
    let got = tickets.wait_until(20, "two case.created", |g| created(g).len() >= 2).await;

    let zh = sent.iter().find(|m| m.chat_id == 501).expect("an answer in chat 501");
    assert_eq!(zh.reply_to, Some(11), "the acknowledgement replies to the customer's message");
    assert!(zh.text.contains("我们已收到您的投诉"), "Chinese for a Chinese-speaking customer: {}", zh.text);
    let en = sent.iter().find(|m| m.chat_id == 502).expect("an answer in chat 502");
    assert!(en.text.contains("we have received your complaint"), "{}", en.text);

    let cases = created(&got);
    let c = cases.iter().find(|c| c["customer"]["identities"][0]["value"] == "501").expect("case of 501");
    assert_eq!(c["channel"], "telegram");
    assert_eq!(c["source"], "bot");
    assert_eq!(c["lang"], "zh");
    assert!(zh.text.contains(c["case_ref"].as_str().expect("ref")), "the reference is in the answer");
    assert_eq!(c["messages"][0]["metadata"]["telegram_chat_id"], 501, "{c}");

    // Delivered: the case moves to acknowledged, and the bot's message id is kept on the job.
    let id = c["id"].as_str().expect("id");
    let deadline = Instant::now() + Duration::from_secs(10);
    while case(&gw, id).await["status"] != "acknowledged" {
        assert!(Instant::now() < deadline, "the delivered acknowledgement moves the case to acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn telegram_text_complaint_sqlite() {
    a_text_complaint_becomes_a_case_acknowledged_in_the_chat(TestDb::sqlite()).await;
}

#[tokio::test]
async fn telegram_text_complaint_postgres() {
    let Some(db) = TestDb::postgres().await else { return };
    a_text_complaint_becomes_a_case_acknowledged_in_the_chat(db).await;
}

#[tokio::test]
async fn photos_and_documents_keep_their_file_metadata() {
    let db = TestDb::sqlite();
    let (bot, tickets) = (BotApi::start().await, Receiver::start().await);
    let gw = Gateway::start(&telegram_toml(&db.url, &bot, &tickets, "")).await;
    bot.push(botapi::photo(601, 1, "Broken lift, 3rd floor"));
    bot.push(botapi::document(602, 1, "receipt"));
    let got = tickets.wait_until(20, "two cases", |g| created(g).len() >= 2).await;
    let cases = created(&got);
    let photo = cases.iter().find(|c| c["messages"][0]["text"] == "Broken lift, 3rd floor").expect("the photo's case");
    let files = &photo["messages"][0]["metadata"]["telegram_files"];
    assert_eq!(files.as_array().map(Vec::len), Some(1), "the largest size only: {files}");
    assert_eq!(files[0]["file_id"], "AgACAgIAAxkBAAIBc2Vlarge");
    assert_eq!(files[0]["file_unique_id"], "AQADlarge");
    assert_eq!(files[0]["type"], "photo");
    assert_eq!(files[0]["size"], 48213);
    let doc = cases.iter().find(|c| c["messages"][0]["text"] == "receipt").expect("the document's case");
    let files = &doc["messages"][0]["metadata"]["telegram_files"];
    assert_eq!(
        (
            files[0]["type"].as_str(),
            files[0]["name"].as_str(),
            files[0]["mime_type"].as_str(),
            files[0]["size"].as_u64()
        ),
        (Some("document"), Some("receipt.pdf"), Some("application/pdf"), Some(20480))
    );
    assert_eq!(doc["messages"][0]["attachments"][0]["name"], "receipt.pdf");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn follow_ups_new_cases_and_status_commands() {
    let db = TestDb::sqlite();
    let (bot, tickets) = (BotApi::start().await, Receiver::start().await);
    let gw = Gateway::start(&telegram_toml(&db.url, &bot, &tickets, "")).await;
    let chat = 701;

    bot.push(botapi::text(chat, 1, "en", "My order 1234 came without the charger."));
    let got = tickets.wait_until(20, "the first case", |g| created(g).len() == 1).await;
    let first = created(&got)[0].clone();
    bot.wait_sent(20, "the acknowledgement", |s| s.len() == 1).await;

    // A further message while the case is open joins it.
    bot.push(botapi::text(chat, 2, "en", "Also the box was wet."));
    let got = tickets.wait_until(20, "a follow-up", |g| !of_type(g, "case.message_added").is_empty()).await;
    let added = of_type(&got, "case.message_added");
    assert_eq!(added[0]["case"]["id"], first["id"], "the follow-up joins the open case");
    assert_eq!(created(&got).len(), 1, "no second case for a follow-up");

    // A reply to the bot's acknowledgement joins that case too.
    let ack_id = bot.sent_to(chat)[0].message_id;
    bot.push(botapi::reply(chat, 3, ack_id, "Any news?"));
    tickets.wait_until(20, "the reply joins the case", |g| of_type(g, "case.message_added").len() == 2).await;

    // `/new` starts a separate case.
    bot.push(botapi::text(chat, 4, "en", "/new The second order is late as well."));
    let got = tickets.wait_until(20, "a second case", |g| created(g).len() == 2).await;
    let second = created(&got).into_iter().find(|c| c["id"] != first["id"]).expect("second").clone();
    assert_eq!(second["messages"][0]["text"], "The second order is late as well.");
    let sent = bot.wait_sent(20, "the second case acknowledged too", |s| s.iter().any(|m| m.reply_to == Some(4))).await;
    let ack = &sent.iter().find(|m| m.reply_to == Some(4)).expect("ack").text;
    assert!(
        ack.contains(second["case_ref"].as_str().expect("ref")),
        "a chat is not held to the acknowledgement window: {ack}"
    );

    // `/status` lists both, newest first; `/status REF` shows one.
    bot.push(botapi::text(chat, 5, "en", "/status"));
    let sent = bot.wait_sent(20, "the /status answer", |s| s.iter().any(|m| m.reply_to == Some(5))).await;
    let list = &sent.iter().find(|m| m.reply_to == Some(5)).expect("answer").text;
    let (r1, r2) = (first["case_ref"].as_str().expect("ref"), second["case_ref"].as_str().expect("ref"));
    assert!(list.contains(r1) && list.contains(r2), "{list}");
    assert!(list.find(r2) < list.find(r1), "newest first: {list}");

    bot.push(botapi::text(chat, 6, "en", &format!("/status {r1}")));
    let sent = bot.wait_sent(20, "/status REF", |s| s.iter().any(|m| m.reply_to == Some(6))).await;
    let one = &sent.iter().find(|m| m.reply_to == Some(6)).expect("answer").text;
    assert!(one.contains(r1) && !one.contains(r2), "{one}");

    // A wrong check digit is answered as such.
    let last = r1.chars().last().and_then(|c| c.to_digit(10)).expect("digit");
    let typo = format!("{}{}", &r1[..r1.len() - 1], (last + 1) % 10);
    bot.push(botapi::text(chat, 7, "en", &format!("/status {typo}")));
    let sent = bot.wait_sent(20, "/status typo", |s| s.iter().any(|m| m.reply_to == Some(7))).await;
    let answer = &sent.iter().find(|m| m.reply_to == Some(7)).expect("answer").text;
    assert!(answer.contains("check digit"), "{answer}");

    // Another chat's case reveals nothing.
    bot.push(botapi::text(702, 1, "en", &format!("/status {r1}")));
    let sent = bot.wait_sent(20, "/status from another chat", |s| s.iter().any(|m| m.chat_id == 702)).await;
    let answer = &sent.iter().find(|m| m.chat_id == 702).expect("answer").text;
    assert!(answer.contains("There is no case") && !answer.contains("being worked on"), "{answer}");

    // `/start` greets in the user's language.
    bot.push(botapi::text(703, 1, "zh", "/start"));
    let sent = bot.wait_sent(20, "/start", |s| s.iter().any(|m| m.chat_id == 703)).await;
    assert!(sent.iter().find(|m| m.chat_id == 703).expect("answer").text.contains("您好"));
    assert_eq!(telegram_cases(&gw).await.len(), 2, "commands make no cases");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn duplicates_edits_groups_and_unknown_updates() {
    let db = TestDb::sqlite();
    let (bot, tickets) = (BotApi::start().await, Receiver::start().await);
    let gw = Gateway::start(&telegram_toml(&db.url, &bot, &tickets, "")).await;

    let mut first = botapi::text(801, 1, "en", "The heater is broken.");
    let id = bot.push(first.clone());
    first["update_id"] = json!(id);
    bot.wait_sent(20, "the acknowledgement", |s| s.len() == 1).await;
    // The same update again (as after a webhook retry or a lost offset): one case, one answer.
    bot.push_again(first);
    bot.push(botapi::group_text(5, "hello group"));
    bot.push(json!({ "something_new": { "x": 1 } }));
    bot.push(botapi::edited(801, 1, "The heater is broken and smells of smoke."));
    let got = tickets.wait_until(20, "the edit", |g| !of_type(g, "case.message_added").is_empty()).await;
    let edit = &of_type(&got, "case.message_added")[0]["case"];
    let last = edit["messages"].as_array().and_then(|m| m.last()).expect("a message");
    assert_eq!(last["text"], "The heater is broken and smells of smoke.");
    assert_eq!(last["metadata"]["edited"], true, "{last}");
    assert_eq!(last["metadata"]["edit_of"], "801:1");
    assert_eq!(edit["messages"][0]["text"], "The heater is broken and smells of smoke.", "the stored text is updated");
    let stored = case(&gw, edit["id"].as_str().expect("id")).await;
    assert_eq!(stored["messages"][0]["text"], "The heater is broken and smells of smoke.", "{stored}");

    // Everything was taken (the offset moved past it all), and only one case was made.
    bot.wait_confirmed(10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(created(&tickets.received()).len(), 1);
    assert_eq!(bot.sent().len(), 1, "one acknowledgement, nothing to the group");
    let metrics = reqwest::get(format!("{}/metrics", gw.base)).await.expect("metrics").text().await.expect("text");
    for reason in ["group", "unknown_update"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("earshot_telegram_ignored_total") && l.contains(reason) && !l.ends_with(" 0")),
            "{reason} is counted: {}",
            metrics.lines().filter(|l| l.contains("telegram")).collect::<Vec<_>>().join("\n")
        );
    }
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn too_many_requests_waits_and_a_blocked_bot_makes_the_chat_unreachable_until_it_writes_again() {
    let db = TestDb::sqlite();
    let (bot, tickets) = (BotApi::start().await, Receiver::start().await);
    let gw = Gateway::start(&telegram_toml(&db.url, &bot, &tickets, "")).await;

    // 429 with retry_after 1: the acknowledgement comes after the wait, once.
    bot.script_send(vec![BotApi::too_many_requests(1)]);
    let t0 = Instant::now();
    bot.push(botapi::text(901, 1, "en", "Where is my refund?"));
    let sent = bot.wait_sent(20, "the acknowledgement after a 429", |s| s.len() == 1).await;
    assert!(sent[0].at.duration_since(t0) >= Duration::from_millis(900), "waited the retry_after");
    assert_eq!(bot.calls("sendMessage").len(), 2, "one refused, one sent");

    // 403 (blocked): not retried; the case says unreachable and downstream hears it.
    bot.block(902);
    bot.push(botapi::text(902, 1, "en", "You never answer."));
    let got = tickets
        .wait_until(20, "case.updated reachable false", |g| {
            of_type(g, "case.updated").iter().any(|d| d["reachable"] == false)
        })
        .await;
    let upd = of_type(&got, "case.updated").into_iter().find(|d| d["reachable"] == false).expect("update").clone();
    assert!(upd["reason"].as_str().unwrap_or_default().contains("blocked"), "{upd}");
    assert!(upd["case"]["unreachable"].as_str().unwrap_or_default().contains("blocked"), "the case says so: {upd}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let tries = bot.calls("sendMessage").iter().filter(|b| b.contains("902")).count();
    assert_eq!(tries, 1, "an unreachable chat is not tried again");
    let (_, dead) = gw.admin_get("/v1/outbox?state=dead").await;
    assert!(dead.to_string().contains("blocked"), "the job is dead with the reason: {dead}");

    // Unblocked, the customer writes again: the case is reachable, and the acknowledgement that
    // died is sent after all, once.
    bot.unblock(902);
    bot.push(botapi::text(902, 2, "en", "Hello? Anyone?"));
    let got = tickets
        .wait_until(20, "case.updated reachable true", |g| {
            of_type(g, "case.updated").iter().any(|d| d["reachable"] == true)
        })
        .await;
    let back = of_type(&got, "case.updated").into_iter().find(|d| d["reachable"] == true).expect("update").clone();
    assert_eq!(back["case"]["id"], upd["case"]["id"], "{back}");
    assert!(back["case"].get("unreachable").is_none(), "the mark is gone from the case: {back}");
    bot.wait_sent(20, "the replayed acknowledgement", |s| s.iter().filter(|m| m.chat_id == 902).count() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bot.sent().iter().filter(|m| m.chat_id == 902).count(), 1, "sent once");
    let (_, dead) = gw.admin_get("/v1/outbox?state=dead").await;
    assert!(!dead.to_string().contains("blocked"), "no dead job left: {dead}");

    // Another customer comes back the usual way, restarting the bot: /start does the same.
    bot.block(905);
    bot.push(botapi::text(905, 1, "en", "Broken on arrival."));
    tickets
        .wait_until(20, "the second chat unreachable", |g| {
            of_type(g, "case.updated").iter().filter(|d| d["reachable"] == false).count() == 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bot.unblock(905);
    bot.push(botapi::text(905, 2, "en", "/start"));
    tickets
        .wait_until(20, "the second chat reachable", |g| {
            of_type(g, "case.updated").iter().filter(|d| d["reachable"] == true).count() == 2
        })
        .await;
    // The greeting, and the acknowledgement that died.
    let sent =
        bot.wait_sent(20, "the second chat's messages", |s| s.iter().filter(|m| m.chat_id == 905).count() == 2).await;
    assert!(
        sent.iter().any(|m| m.chat_id == 905 && m.text.contains("reference is")),
        "{:?}",
        sent.iter().map(|m| &m.text).collect::<Vec<_>>()
    );
    gw.stop().await;
    db.cleanup().await;
}

/// A stop the moment `getUpdates` handed out two complaints: whether the gateway committed them
/// before it stopped or not, the restarted one makes exactly one case and one acknowledgement each.
/// (A crash with the commit held back is `process::telegram_crash_between_get_updates_and_commit…`.)
#[tokio::test]
async fn a_stop_right_after_get_updates_loses_and_repeats_nothing() {
    let db = TestDb::sqlite();
    let (bot, tickets) = (BotApi::start().await, Receiver::start().await);
    let toml = telegram_toml(&db.url, &bot, &tickets, "");
    let gw = Gateway::start(&toml).await;
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    bot.on_batch(move || {
        let _ = stop_tx.send(());
    });
    bot.push(botapi::text(1001, 1, "en", "First complaint."));
    bot.push(botapi::text(1002, 1, "en", "Second complaint."));
    stop_rx.recv().await.expect("a batch went out");
    gw.stop().await;
    bot.on_batch(|| {});

    let gw = Gateway::start(&toml).await;
    let sent = bot.wait_sent(20, "both acknowledged after the restart", |s| s.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bot.sent().len(), 2, "one acknowledgement each, none repeated: {sent:#?}");
    assert_eq!(telegram_cases(&gw).await.len(), 2, "one case each");
    bot.wait_confirmed(10).await;
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn the_ticket_stores_update_reply_and_survey_reach_the_chat_in_order() {
    let db = TestDb::sqlite();
    let (bot, tickets) = (BotApi::start().await, Receiver::start().await);
    let gw = Gateway::start(&telegram_toml(&db.url, &bot, &tickets, "")).await;
    let ts = TicketStore::new(&gw, DOWNSTREAM_SECRET);
    let chat = 1101;
    bot.push(botapi::text(chat, 1, "en", "The washing machine leaks."));
    let got = tickets.wait_until(20, "the case", |g| created(g).len() == 1).await;
    let id = created(&got)[0]["id"].as_str().expect("id").to_owned();
    bot.wait_sent(20, "ack", |s| s.len() == 1).await;

    assert_eq!(ts.status(&id, "in_progress").await.0, 200);
    let (status, _) = ts
        .send(&id, &json!({ "type": "public_reply", "data": { "text": "A technician comes on Monday.", "author_display_name": "Wang" } }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(ts.status(&id, "resolved").await.0, 200);
    let sent = bot.wait_sent(20, "update, reply, resolution and survey", |s| s.len() == 5).await;
    let texts: Vec<&str> = sent.iter().map(|m| m.text.as_str()).collect();
    assert!(texts[1].contains("being worked on"), "{texts:#?}");
    assert!(texts[2].contains("A technician comes on Monday.") && texts[2].contains("Wang"), "{texts:#?}");
    assert!(texts[3].contains("is now resolved"), "{texts:#?}");
    assert!(texts[4].contains("has been resolved") && texts[4].contains("Tap a button"), "{texts:#?}");
    assert!(sent.iter().all(|m| m.reply_to == Some(1)), "every message answers the customer's complaint");
    let survey = &sent[4];
    let keyboard = survey.reply_markup.clone().expect("the survey has buttons");
    let rows = keyboard["inline_keyboard"].as_array().expect("rows");
    assert_eq!(rows[0].as_array().map(Vec::len), Some(5), "ratings 1 to 5: {keyboard}");
    assert_eq!(rows[1].as_array().map(Vec::len), Some(2), "solved, not solved: {keyboard}");
    let data: Vec<String> = rows
        .iter()
        .flat_map(|r| r.as_array().cloned().unwrap_or_default())
        .map(|b| b["callback_data"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(data.iter().all(|d| d.len() <= 64), "{data:?}");
    let four = data.iter().find(|d| d.ends_with("rating=4")).expect("a 4").clone();
    let not_solved = data.iter().find(|d| d.ends_with("solved=no")).expect("not solved").clone();

    // Tapping 4, then "not solved": answered, forwarded as case.feedback, and the case reopens.
    bot.push(botapi::callback(chat, "cb-1", &four, survey.message_id));
    bot.push(botapi::callback(chat, "cb-2", &not_solved, survey.message_id));
    let got = tickets
        .wait_until(20, "feedback and the reopening", |g| {
            of_type(g, "case.feedback").len() >= 2
                && of_type(g, "case.updated").iter().any(|d| d["case"]["status"] == "reopened")
        })
        .await;
    let fb = of_type(&got, "case.feedback");
    assert_eq!(fb[0]["rating"], 4, "{}", fb[0]);
    assert_eq!(fb.last().expect("feedback")["solved"], false);
    let answered: Vec<String> =
        bot.callbacks().iter().map(|c| c["callback_query_id"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(answered, vec!["cb-1", "cb-2"], "every button press is answered");
    gw.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn webhook_mode_checks_the_secret_and_answers_after_commit() {
    let db = TestDb::sqlite();
    let (bot, tickets) = (BotApi::start().await, Receiver::start().await);
    let extra = format!("mode = \"webhook\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"");
    let gw = Gateway::start(&telegram_toml(&db.url, &bot, &tickets, &extra)).await;
    let url = format!("{}/v1/inbound/telegram", gw.base);
    let client = reqwest::Client::new();
    let mut update = botapi::text(1201, 1, "en", "Delivered to the wrong address.");
    update["update_id"] = json!(5000);

    for secret in [None, Some("wrong")] {
        let mut req = client.post(&url).json(&update);
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        let r = req.send().await.expect("post");
        assert_eq!(r.status(), 401, "secret {secret:?}");
    }
    assert!(telegram_cases(&gw).await.is_empty(), "a refused update stores nothing");

    for _ in 0..2 {
        let r = client
            .post(&url)
            .header("X-Telegram-Bot-Api-Secret-Token", WEBHOOK_SECRET)
            .json(&update)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        // 200 means committed: the case is there already.
        assert_eq!(telegram_cases(&gw).await.len(), 1);
    }
    bot.wait_sent(20, "one acknowledgement for the twice-delivered update", |s| s.len() == 1).await;
    assert!(bot.calls("getUpdates").is_empty(), "webhook mode does not poll");
    gw.stop().await;
    db.cleanup().await;
}
