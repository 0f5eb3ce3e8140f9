//! A local Telegram Bot API server, as documented at https://core.telegram.org/bots/api: every
//! method is `POST /bot<token>/<method>`, answers are `{"ok":true,"result":…}` or
//! `{"ok":false,"error_code":…,"description":…,"parameters":{"retry_after":…}}`. `getUpdates` keeps
//! updates until an `offset` above their id confirms them and long-polls for `timeout` seconds.
//! Only the methods Earshot calls are served: getMe, getUpdates, sendMessage, answerCallbackQuery,
//! setWebhook, deleteWebhook.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A realistic token (a bot id and 35 characters), so that teloxide treats it as one.
pub const TOKEN: &str = "7000000001:AAH-test_Secret-Part0123456789abcdefgh";
pub const BOT_ID: i64 = 7000000001;

/// One message the bot sent.
#[derive(Debug, Clone)]
pub struct SentMessage {
    pub chat_id: i64,
    pub message_id: i64,
    pub text: String,
    /// The message it replies to (`reply_parameters.message_id`).
    pub reply_to: Option<i64>,
    pub reply_markup: Option<Value>,
    pub at: Instant,
}

#[derive(Default)]
struct BotState {
    /// Updates not yet confirmed, in id order.
    queue: Mutex<VecDeque<Value>>,
    next_update_id: AtomicI64,
    next_message_id: AtomicI64,
    sent: Mutex<Vec<SentMessage>>,
    callbacks: Mutex<Vec<Value>>,
    /// Every call: method and body (as text; setWebhook comes as multipart/form-data).
    calls: Mutex<Vec<(String, String)>>,
    /// Offsets `getUpdates` was called with.
    offsets: Mutex<Vec<i64>>,
    /// Scripted answers to the next sendMessage calls: (HTTP status, body).
    send_script: Mutex<VecDeque<(u16, Value)>>,
    blocked: Mutex<HashSet<i64>>,
    /// Called when a getUpdates answer with updates is about to go out.
    on_batch: Mutex<Option<Box<dyn Fn() + Send>>>,
    changed: Notify,
    arrived: Notify,
}

pub struct BotApi {
    pub base: String,
    state: Arc<BotState>,
    handle: JoinHandle<()>,
}

impl Drop for BotApi {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

fn ok(result: Value) -> Response {
    (StatusCode::OK, axum::Json(json!({ "ok": true, "result": result }))).into_response()
}

fn fail(code: u16, description: &str, retry_after: Option<u64>) -> (u16, Value) {
    let mut body = json!({ "ok": false, "error_code": code, "description": description });
    if let Some(s) = retry_after {
        body["parameters"] = json!({ "retry_after": s });
    }
    (code, body)
}

fn answer((code, body): (u16, Value)) -> Response {
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

async fn method(State(st): State<Arc<BotState>>, Path((bot, method)): Path<(String, String)>, body: Bytes) -> Response {
    if bot != format!("bot{TOKEN}") {
        return answer(fail(401, "Unauthorized", None));
    }
    // "All methods in the Bot API are case-insensitive" (teloxide sends `GetUpdates`).
    let method = method.to_ascii_lowercase();
    let text = String::from_utf8_lossy(&body).into_owned();
    st.calls.lock().expect("lock").push((method.clone(), text));
    let args: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match method.as_str() {
        "getme" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "Earshot", "username": "earshot_test_bot",
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
            "can_connect_to_business": false, "has_main_web_app": false
        })),
        "getupdates" => get_updates(&st, &args).await,
        "sendmessage" => send_message(&st, &args),
        "answercallbackquery" => {
            st.callbacks.lock().expect("lock").push(args);
            st.changed.notify_waiters();
            ok(json!(true))
        }
        "setwebhook" | "deletewebhook" => ok(json!(true)),
        _ => answer(fail(404, "Not Found: method not found", None)),
    }
}

async fn get_updates(st: &BotState, args: &Value) -> Response {
    let offset = args["offset"].as_i64().unwrap_or(0);
    let limit = args["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
    let timeout = Duration::from_secs(args["timeout"].as_u64().unwrap_or(0));
    st.offsets.lock().expect("lock").push(offset);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let arrived = st.arrived.notified();
        let batch: Vec<Value> = {
            let mut q = st.queue.lock().expect("lock");
            // An offset confirms every update below it: they are gone for good.
            while q.front().is_some_and(|u| u["update_id"].as_i64().unwrap_or(0) < offset) {
                q.pop_front();
            }
            q.iter().take(limit).cloned().collect()
        };
        if !batch.is_empty() {
            if let Some(hook) = st.on_batch.lock().expect("lock").as_ref() {
                hook();
            }
            return ok(Value::Array(batch));
        }
        if tokio::time::timeout_at(deadline, arrived).await.is_err() {
            return ok(json!([]));
        }
    }
}

fn send_message(st: &BotState, args: &Value) -> Response {
    let chat_id = args["chat_id"].as_i64().unwrap_or(0);
    if let Some(scripted) = st.send_script.lock().expect("lock").pop_front() {
        return answer(scripted);
    }
    if st.blocked.lock().expect("lock").contains(&chat_id) {
        return answer(fail(403, "Forbidden: bot was blocked by the user", None));
    }
    let text = args["text"].as_str().unwrap_or_default().to_owned();
    if text.is_empty() || text.chars().count() > 4096 {
        return answer(fail(400, "Bad Request: message text is empty or too long", None));
    }
    let message_id = st.next_message_id.fetch_add(1, Ordering::SeqCst) + 1000;
    st.sent.lock().expect("lock").push(SentMessage {
        chat_id,
        message_id,
        text: text.clone(),
        reply_to: args["reply_parameters"]["message_id"].as_i64(),
        reply_markup: args.get("reply_markup").cloned(),
        at: Instant::now(),
    });
    st.changed.notify_waiters();
    ok(json!({
        "message_id": message_id,
        "from": { "id": BOT_ID, "is_bot": true, "first_name": "Earshot", "username": "earshot_test_bot" },
        "chat": { "id": chat_id, "type": "private", "first_name": "Customer" },
        "date": super::support::now(),
        "text": text,
    }))
}

impl BotApi {
    pub async fn start() -> BotApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(BotState { next_update_id: AtomicI64::new(100_000), ..Default::default() });
        let app = Router::new().route("/{bot}/{method}", post(method)).with_state(state.clone());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BotApi { base: format!("http://{addr}"), state, handle }
    }

    /// Queues an update (its `update_id` is filled in) and returns the id.
    pub fn push(&self, mut update: Value) -> i64 {
        let id = self.state.next_update_id.fetch_add(1, Ordering::SeqCst);
        update["update_id"] = json!(id);
        self.state.queue.lock().expect("lock").push_back(update);
        self.state.arrived.notify_waiters();
        id
    }

    /// Queues the very same update again (a redelivery): same `update_id`, same content.
    pub fn push_again(&self, update: Value) {
        self.state.queue.lock().expect("lock").push_back(update);
        self.state.arrived.notify_waiters();
    }

    pub fn script_send(&self, answers: Vec<(u16, Value)>) {
        self.state.send_script.lock().expect("lock").extend(answers);
    }

    pub fn too_many_requests(retry_after: u64) -> (u16, Value) {
        fail(429, &format!("Too Many Requests: retry after {retry_after}"), Some(retry_after))
    }

    pub fn block(&self, chat_id: i64) {
        self.state.blocked.lock().expect("lock").insert(chat_id);
    }

    pub fn unblock(&self, chat_id: i64) {
        self.state.blocked.lock().expect("lock").remove(&chat_id);
    }

    pub fn on_batch(&self, hook: impl Fn() + Send + 'static) {
        *self.state.on_batch.lock().expect("lock") = Some(Box::new(hook));
    }

    pub fn sent(&self) -> Vec<SentMessage> {
        self.state.sent.lock().expect("lock").clone()
    }

    pub fn sent_to(&self, chat_id: i64) -> Vec<SentMessage> {
        self.sent().into_iter().filter(|m| m.chat_id == chat_id).collect()
    }

    pub fn callbacks(&self) -> Vec<Value> {
        self.state.callbacks.lock().expect("lock").clone()
    }

    /// The bodies of the calls of `method` (any case).
    pub fn calls(&self, method: &str) -> Vec<String> {
        let method = method.to_ascii_lowercase();
        self.state.calls.lock().expect("lock").iter().filter(|(m, _)| *m == method).map(|(_, b)| b.clone()).collect()
    }

    pub fn offsets(&self) -> Vec<i64> {
        self.state.offsets.lock().expect("lock").clone()
    }

    /// Waits until every queued update is confirmed (a later `getUpdates` offset is above it).
    pub async fn wait_confirmed(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = self.state.queue.lock().expect("lock").len();
            if left == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{left} update(s) still unconfirmed after {secs} s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `pred` holds for the messages sent so far.
    pub async fn wait_sent(&self, secs: u64, what: &str, pred: impl Fn(&[SentMessage]) -> bool) -> Vec<SentMessage> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let changed = self.state.changed.notified();
            let sent = self.sent();
            if pred(&sent) {
                return sent;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let sent = self.sent();
                assert!(pred(&sent), "{what}: not within {secs} s; sent: {sent:#?}");
                return sent;
            }
        }
    }
}

// --- Updates as the Bot API documents them ---------------------------------------------------------

pub fn user(id: i64, first_name: &str, lang: &str) -> Value {
    json!({ "id": id, "is_bot": false, "first_name": first_name, "username": format!("user{id}"), "language_code": lang })
}

pub fn private_chat(id: i64, first_name: &str) -> Value {
    json!({ "id": id, "first_name": first_name, "type": "private" })
}

/// A private text message from user `chat` (a private chat's id is the user's).
pub fn text(chat: i64, message_id: i64, lang: &str, text: &str) -> Value {
    json!({ "message": {
        "message_id": message_id, "from": user(chat, "Li", lang), "chat": private_chat(chat, "Li"),
        "date": super::support::now(), "text": text,
    }})
}

pub fn reply(chat: i64, message_id: i64, to_message: i64, text: &str) -> Value {
    let mut u = self::text(chat, message_id, "en", text);
    u["message"]["reply_to_message"] = json!({
        "message_id": to_message, "from": { "id": BOT_ID, "is_bot": true, "first_name": "Earshot" },
        "chat": private_chat(chat, "Li"), "date": super::support::now(), "text": "…",
    });
    u
}

pub fn photo(chat: i64, message_id: i64, caption: &str) -> Value {
    json!({ "message": {
        "message_id": message_id, "from": user(chat, "Waffle", "en"), "chat": private_chat(chat, "Waffle"),
        "date": super::support::now(), "caption": caption,
        "photo": [
            { "file_id": "AgACAgIAAxkBAAIBc2Vsmall", "file_unique_id": "AQADsmall", "file_size": 1290, "width": 90, "height": 67 },
            { "file_id": "AgACAgIAAxkBAAIBc2Vlarge", "file_unique_id": "AQADlarge", "file_size": 48213, "width": 1280, "height": 960 }
        ],
    }})
}

pub fn document(chat: i64, message_id: i64, caption: &str) -> Value {
    json!({ "message": {
        "message_id": message_id, "from": user(chat, "Waffle", "en"), "chat": private_chat(chat, "Waffle"),
        "date": super::support::now(), "caption": caption,
        "document": { "file_name": "receipt.pdf", "mime_type": "application/pdf", "file_id": "BQACAgIAAxkBAAIBdGVdoc", "file_unique_id": "AgADdoc1", "file_size": 20480 },
    }})
}

pub fn edited(chat: i64, message_id: i64, text: &str) -> Value {
    json!({ "edited_message": {
        "message_id": message_id, "from": user(chat, "Li", "en"), "chat": private_chat(chat, "Li"),
        "date": super::support::now() - 60, "edit_date": super::support::now(), "text": text,
    }})
}

pub fn group_text(message_id: i64, text: &str) -> Value {
    json!({ "message": {
        "message_id": message_id, "from": user(408258968, "Hirrolot", "en"),
        "chat": { "id": -1001276785818i64, "title": "teloxide dev", "type": "supergroup", "username": "teloxide_dev" },
        "date": super::support::now(), "text": text,
    }})
}

pub fn callback(chat: i64, id: &str, data: &str, on_message: i64) -> Value {
    json!({ "callback_query": {
        "id": id, "from": user(chat, "Li", "en"), "chat_instance": "-5723412938471234", "data": data,
        "message": {
            "message_id": on_message, "from": { "id": BOT_ID, "is_bot": true, "first_name": "Earshot" },
            "chat": private_chat(chat, "Li"), "date": super::support::now(), "text": "survey",
        },
    }})
}
