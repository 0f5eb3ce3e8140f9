//! The Telegram channel's figures (`bench/telegram.sh`). This process is Telegram: a local Bot API
//! server (`POST /bot<token>/<method>`, the documented answers) with N updates from C private chats
//! queued (polling), or a client POSTing those updates to the gateway's webhook route (webhook).
//!
//! Polling: updates/s committed, from the first `getUpdates` answered to the `offset` that confirms
//! the last update (the gateway moves the offset only past committed updates), and the
//! acknowledgement latency from each case's commit (`created_at` from the admin API) to the
//! `sendMessage` received here, with Telegram's limits in force (the gateway's defaults: 1/s per
//! chat, 30/s in all).
//!
//! Webhook: updates/s committed (each 200 means committed), closed loop as the web channel's figure;
//! each worker sends its own chats' updates in order (as Telegram delivers one chat's updates).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Polling,
    Webhook,
}

#[derive(Args)]
pub struct TelegramArgs {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Where this Bot API server listens (the gateway's channels.telegram.api_url).
    #[arg(long)]
    listen: String,
    /// The bot token the gateway is configured with.
    #[arg(long)]
    token: String,
    /// The gateway's base URL.
    #[arg(long)]
    url: String,
    #[arg(long)]
    admin_token: String,
    #[arg(long, default_value_t = 10_000)]
    updates: u64,
    #[arg(long, default_value_t = 2_000)]
    chats: u64,
    /// Webhook mode: the secret, and the workers sending at once.
    #[arg(long, default_value = "")]
    webhook_secret: String,
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    #[arg(long, default_value = "telegram")]
    label: String,
}

#[derive(Default)]
struct Bot {
    token: String,
    queue: Mutex<VecDeque<Value>>,
    last_update: AtomicI64,
    /// When the first non-empty getUpdates answer went out, and when the last update was confirmed.
    first_batch: Mutex<Option<Instant>>,
    confirmed_all: Mutex<Option<Instant>>,
    /// sendMessage: chat → (unix ms received, text) of each message, in order.
    sent: Mutex<HashMap<i64, Vec<(i64, String)>>>,
    next_message_id: AtomicI64,
    /// Events the gateway delivered to the ticket store (`POST /events` here).
    events: AtomicI64,
}

async fn ticket_store(State(bot): State<Arc<Bot>>) -> axum::Json<Value> {
    bot.events.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({}))
}

fn unix_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

fn ok(result: Value) -> axum::Json<Value> {
    axum::Json(json!({ "ok": true, "result": result }))
}

async fn method(
    State(bot): State<Arc<Bot>>,
    Path((path, name)): Path<(String, String)>,
    body: Bytes,
) -> axum::Json<Value> {
    if path != format!("bot{}", bot.token) {
        return axum::Json(json!({ "ok": false, "error_code": 401, "description": "Unauthorized" }));
    }
    let args: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match name.to_ascii_lowercase().as_str() {
        "getupdates" => {
            let offset = args["offset"].as_i64().unwrap_or(0);
            let limit = args["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
            let timeout = Duration::from_secs(args["timeout"].as_u64().unwrap_or(0).min(2));
            let deadline = Instant::now() + timeout;
            loop {
                let batch: Vec<Value> = {
                    let mut q = bot.queue.lock().expect("lock");
                    while q.front().is_some_and(|u| u["update_id"].as_i64().unwrap_or(0) < offset) {
                        q.pop_front();
                    }
                    q.iter().take(limit).cloned().collect()
                };
                if offset > bot.last_update.load(Ordering::SeqCst) {
                    bot.confirmed_all.lock().expect("lock").get_or_insert_with(Instant::now);
                }
                if !batch.is_empty() {
                    bot.first_batch.lock().expect("lock").get_or_insert_with(Instant::now);
                    return ok(Value::Array(batch));
                }
                if Instant::now() >= deadline {
                    return ok(json!([]));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        "sendmessage" => {
            let chat = args["chat_id"].as_i64().unwrap_or(0);
            let text = args["text"].as_str().unwrap_or_default().to_owned();
            bot.sent.lock().expect("lock").entry(chat).or_default().push((unix_ms(), text.clone()));
            let id = bot.next_message_id.fetch_add(1, Ordering::SeqCst) + 1;
            ok(json!({
                "message_id": id, "date": unix_ms() / 1000, "text": text,
                "chat": { "id": chat, "type": "private", "first_name": "Customer" },
                "from": { "id": 1, "is_bot": true, "first_name": "Bench" },
            }))
        }
        "getme" => ok(json!({
            "id": 1, "is_bot": true, "first_name": "Bench", "username": "bench_bot",
            "can_join_groups": false, "can_read_all_group_messages": false, "supports_inline_queries": false,
        })),
        _ => ok(json!(true)),
    }
}

/// Update `k` (0-based): chat `k % chats`, that chat's `k / chats + 1`-th message.
fn update(k: u64, chats: u64) -> Value {
    let chat = 5_000_000 + (k % chats) as i64;
    let message_id = (k / chats + 1) as i64;
    let lang = if k.is_multiple_of(2) { "zh" } else { "en" };
    let text = if k.is_multiple_of(2) {
        format!("订单 {k} 的商品到货时已经损坏，包装也是湿的，请尽快处理。")
    } else {
        format!("Order {k} arrived damaged and the box was wet; please sort it out.")
    };
    json!({
        "update_id": 1_000_000 + k as i64,
        "message": {
            "message_id": message_id,
            "from": { "id": chat, "is_bot": false, "first_name": "Customer", "language_code": lang },
            "chat": { "id": chat, "first_name": "Customer", "type": "private" },
            "date": unix_ms() / 1000,
            "text": text,
        }
    })
}

fn percentile(sorted: &[i64], p: f64) -> String {
    if sorted.is_empty() {
        return "nan".into();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].to_string()
}

/// Case reference → commit time (ms), from the admin API.
async fn case_times(client: &reqwest::Client, a: &TelegramArgs) -> anyhow::Result<HashMap<String, i64>> {
    let mut out = HashMap::new();
    let mut cursor: Option<i64> = None;
    loop {
        let mut url = format!("{}/v1/cases?channel=telegram&limit=500", a.url);
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client.get(&url).bearer_auth(&a.admin_token).send().await?.json().await?;
        for c in page["cases"].as_array().into_iter().flatten() {
            if let (Some(r), Some(t)) = (c["case_ref"].as_str(), c["created_at"].as_i64()) {
                out.insert(r.to_owned(), t);
            }
        }
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

fn case_ref_in(text: &str) -> Option<String> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(10)).find_map(|i| {
        let s = &b[i..i + 11];
        let shape = s.iter().enumerate().all(|(j, c)| if j == 4 || j == 9 { *c == b'-' } else { c.is_ascii_digit() });
        shape.then(|| String::from_utf8_lossy(s).into_owned())
    })
}

pub async fn run(a: TelegramArgs) -> anyhow::Result<()> {
    let bot = Arc::new(Bot { token: a.token.clone(), ..Default::default() });
    bot.last_update.store(1_000_000 + a.updates as i64 - 1, Ordering::SeqCst);
    if a.mode == Mode::Polling {
        let mut q = bot.queue.lock().expect("lock");
        for k in 0..a.updates {
            q.push_back(update(k, a.chats));
        }
    }
    let app = Router::new()
        .route("/{path}/{method}", post(method))
        .route("/events", post(ticket_store))
        .with_state(bot.clone());
    let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    println!("ready");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let acks = |bot: &Bot| bot.sent.lock().expect("lock").len() as u64;

    let (committed_secs, label) = match a.mode {
        Mode::Polling => {
            eprintln!("{}: {} updates from {} chats queued; waiting for the gateway", a.label, a.updates, a.chats);
            loop {
                if bot.confirmed_all.lock().expect("lock").is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "not all updates confirmed in {} s ({} left)",
                        a.timeout,
                        bot.queue.lock().expect("lock").len()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let first = bot.first_batch.lock().expect("lock").context("no batch went out")?;
            let done = bot.confirmed_all.lock().expect("lock").context("not confirmed")?;
            (done.duration_since(first).as_secs_f64(), "polling")
        }
        Mode::Webhook => {
            // The gateway starts after this server: wait until it is ready.
            while !client.get(format!("{}/readyz", a.url)).send().await.is_ok_and(|r| r.status() == 200) {
                if Instant::now() > deadline {
                    bail!("the gateway did not become ready");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let url = format!("{}/v1/inbound/telegram", a.url);
            let t0 = Instant::now();
            let mut workers = Vec::new();
            for w in 0..a.concurrency {
                let (client, url, secret) = (client.clone(), url.clone(), a.webhook_secret.clone());
                let (updates, chats, conc) = (a.updates, a.chats, a.concurrency);
                workers.push(tokio::spawn(async move {
                    let mut failed = 0u64;
                    // This worker's chats: every update k with (k % chats) % conc == w, in order.
                    for k in (0..updates).filter(|k| (k % chats) % conc == w) {
                        let r = client
                            .post(&url)
                            .header("X-Telegram-Bot-Api-Secret-Token", &secret)
                            .json(&update(k, chats))
                            .send()
                            .await;
                        if !r.is_ok_and(|r| r.status() == 200) {
                            failed += 1;
                        }
                    }
                    failed
                }));
            }
            let mut failed = 0;
            for w in workers {
                failed += w.await?;
            }
            if failed > 0 {
                bail!("{failed} webhook POSTs were not answered 200");
            }
            (t0.elapsed().as_secs_f64(), "webhook")
        }
    };
    let per_sec = a.updates as f64 / committed_secs;
    let since_start = Instant::now();

    // Every new case acknowledged (one chat, one case: the other updates are follow-ups), and every
    // update delivered downstream (case.created or case.message_added).
    loop {
        if acks(&bot) >= a.chats && bot.events.load(Ordering::SeqCst) >= a.updates as i64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} chats acknowledged and {} of {} events delivered in {} s",
                acks(&bot),
                a.chats,
                bot.events.load(Ordering::SeqCst),
                a.updates,
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_secs = committed_secs + since_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let times = case_times(&client, &a).await?;
    let sent = bot.sent.lock().expect("lock").clone();
    let mut lat: Vec<i64> = Vec::new();
    let mut extra = 0;
    for msgs in sent.values() {
        extra += msgs.len().saturating_sub(1);
        if let Some((at, text)) = msgs.first()
            && let Some(t) = case_ref_in(text).and_then(|r| times.get(&r))
        {
            lat.push(at - t);
        }
    }
    lat.sort_unstable();
    println!(
        "{}: mode={label} updates={} chats={} cases={} committed_secs={committed_secs:.2} updates_per_sec={per_sec:.0} all_acked_and_delivered_secs={drained_secs:.1} downstream_events={} acks={} extra_messages={extra} ack_latency_ms_p50={} ack_latency_ms_p99={} ack_latency_ms_max={}",
        a.label,
        a.updates,
        a.chats,
        times.len(),
        bot.events.load(Ordering::SeqCst),
        sent.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or_default(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_a_reference() {
        assert_eq!(super::case_ref_in("Your case reference is 4827-1936-5."), Some("4827-1936-5".into()));
        assert_eq!(super::case_ref_in("no 4827-193-5 here"), None);
    }
}
