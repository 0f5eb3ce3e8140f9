//! The Telegram channel: a chat bot, through teloxide's Bot API client (`teloxide-core`).
//!
//! Intake by long polling (the default) or by webhook (`POST /v1/inbound/telegram`). Either way an
//! update counts as taken only once its effect is committed: the polling offset moves past an
//! update only after that, and the webhook answers 200 only after that (Telegram redelivers on any
//! other answer). Messages go back by `sendMessage` in the customer's chat, within Telegram's
//! documented limits (about one message a second per chat, thirty in all).
//!
//! The bot's token never leaves this crate in text: teloxide puts it in request URLs, and
//! `teloxide_core::Bot`'s `Debug` prints it, so neither a `Bot` nor a request is ever logged;
//! teloxide's own network errors come with the token cut out of their URL.

pub mod config;
mod openapi;
pub mod parse;
mod send;
mod texts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use earshot_channel::{
    ApiError, CaseRef, CaseRefError, Channel, ChannelError, ChannelKind, Intake, IntakeError, OpenApiPart, Outbound,
    Recipient, SendError, Sent,
};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::ExposeSecret;
use teloxide_core::prelude::*;
use teloxide_core::types::{AllowedUpdate, CallbackQueryId, MessageId, ReplyParameters, Update};
use tokio_util::sync::CancellationToken;

pub use config::{Mode, TelegramConfig, TelegramSettings};
use parse::{Command, ParseContext, Parsed};

/// Telegram's documented longest message.
pub const MAX_TEXT_CHARS: usize = 4096;

#[derive(Clone)]
pub struct TelegramChannel {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TelegramSettings,
    /// Holds the token; never logged (its `Debug` prints the token).
    bot: Bot,
    per_chat: DefaultKeyedRateLimiter<i64>,
    global: DefaultDirectRateLimiter,
    parse: ParseContext,
}

impl TelegramChannel {
    pub fn new(settings: TelegramSettings) -> Result<TelegramChannel, ChannelError> {
        // Longer than a long poll: teloxide does not stretch the client's timeout for getUpdates.
        let timeout = settings.send_timeout.max(settings.poll_timeout + Duration::from_secs(10));
        let client = teloxide_core::net::default_reqwest_settings()
            .timeout(timeout)
            .build()
            .map_err(|e| ChannelError(format!("telegram: HTTP client: {e}")))?;
        let bot = Bot::with_client(settings.token.expose_secret(), client).set_api_url(settings.api_url.clone());
        let parse = ParseContext {
            source: settings.name.clone(),
            allow_groups: settings.allow_groups,
            follow_up_secs: settings.follow_up_window.as_secs(),
        };
        Ok(TelegramChannel {
            inner: Arc::new(Inner {
                per_chat: RateLimiter::keyed(Quota::per_second(settings.per_chat_per_sec)),
                global: RateLimiter::direct(Quota::per_second(settings.global_per_sec)),
                settings,
                bot,
                parse,
            }),
        })
    }

    /// `getMe`: the bot's username, which proves the token works.
    pub async fn me(&self) -> Result<String, SendError> {
        let me = self.inner.bot.get_me().await.map_err(send::error)?;
        Ok(me.username().to_owned())
    }

    /// `setWebhook` with the configured secret, for the updates this channel uses.
    pub async fn set_webhook(&self, url: &str) -> Result<(), SendError> {
        let url = reqwest::Url::parse(url).map_err(|e| SendError::Permanent { reason: format!("webhook URL: {e}") })?;
        let mut req = self.inner.bot.set_webhook(url).allowed_updates(allowed_updates());
        if let Some(s) = &self.inner.settings.webhook_secret {
            req = req.secret_token(s.expose_secret().to_owned());
        }
        req.await.map_err(send::error)?;
        Ok(())
    }

    pub async fn delete_webhook(&self) -> Result<(), SendError> {
        self.inner.bot.delete_webhook().await.map_err(send::error)?;
        Ok(())
    }

    fn cursor_name(&self) -> String {
        format!("telegram:{}:offset", self.inner.settings.name)
    }

    /// Waits for this chat's and the bot's turn under Telegram's limits.
    async fn turn(&self, chat: i64) {
        let inner = &self.inner;
        inner.global.until_ready().await;
        inner.per_chat.until_key_ready(&chat).await;
        // The keyed limiter keeps a state per chat; drop the idle ones now and then.
        if inner.per_chat.len() > 10_000 {
            inner.per_chat.retain_recent();
        }
    }

    /// A text from the bot itself (a command's answer), sent at once rather than through the outbox:
    /// it belongs to no case, and a lost one is asked for again.
    async fn say(&self, chat: i64, reply_to: i32, text: &str) {
        self.turn(chat).await;
        let req = self
            .inner
            .bot
            .send_message(ChatId(chat), text)
            .reply_parameters(ReplyParameters::new(MessageId(reply_to)).allow_sending_without_reply());
        if let Err(e) = req.await {
            tracing::warn!(chat, error = %send::error(e), "Could not answer a Telegram command.");
        }
    }

    /// Everything one update asks for, committed before this returns `Ok`.
    pub async fn handle(&self, intake: &dyn Intake, update: &Update) -> Result<(), IntakeError> {
        let parsed = parse::parse(update, &self.inner.parse);
        let kind = match &parsed {
            Parsed::Message(_) => "message",
            Parsed::Command(..) => "command",
            Parsed::Answer { .. } | Parsed::UnknownButton { .. } => "button",
            Parsed::Ignored(_) => "ignored",
        };
        metrics::counter!("earshot_telegram_updates_total", "kind" => kind).increment(1);
        match parsed {
            Parsed::Message(inbound) => {
                let receipt = intake.submit(*inbound).await?;
                tracing::debug!(update_id = update.id.0, case_ref = %receipt.case_ref, duplicate = receipt.duplicate, follow_up = receipt.follow_up, "Telegram message committed.");
            }
            Parsed::Command(chat, cmd) => self.command(intake, &chat, cmd).await?,
            Parsed::Answer { callback_id, token, answer, lang } => {
                let taken = intake.answer_survey(&token, &answer).await?;
                let text = if taken { texts::thanks(lang) } else { texts::survey_closed(lang) };
                if let Err(e) = self.inner.bot.answer_callback_query(CallbackQueryId(callback_id)).text(text).await {
                    tracing::warn!(error = %send::error(e), "Could not answer a Telegram button press.");
                }
            }
            Parsed::UnknownButton { callback_id } => {
                if let Err(e) = self.inner.bot.answer_callback_query(CallbackQueryId(callback_id)).await {
                    tracing::warn!(error = %send::error(e), "Could not answer a Telegram button press.");
                }
            }
            Parsed::Ignored(why) => {
                metrics::counter!("earshot_telegram_ignored_total", "reason" => why.as_str()).increment(1);
                tracing::debug!(update_id = update.id.0, reason = why.as_str(), "Telegram update ignored.");
            }
        }
        Ok(())
    }

    async fn command(&self, intake: &dyn Intake, chat: &parse::Chat, cmd: Command) -> Result<(), IntakeError> {
        let lang = chat.lang;
        let text = match cmd {
            Command::Start => {
                // A customer who blocked the bot and comes back restarts it: their cases here are
                // reachable again, and what died because of the block is sent now.
                let recipient = Recipient::new(ChannelKind::Telegram, &chat.chat_id.to_string());
                intake.opt_in(&recipient, &chat.user, "the customer restarted the bot (/start)").await?;
                texts::start(lang)
            }
            Command::NewWithoutText => texts::new_without_text(lang),
            Command::Status(None) => {
                let cases = intake.cases_of(ChannelKind::Telegram, &chat.user, None, 10).await?;
                texts::status_list(lang, &cases)
            }
            Command::Status(Some(typed)) => match CaseRef::parse(&typed) {
                Err(CaseRefError::CheckDigit) => texts::check_digit(lang, &typed),
                Err(CaseRefError::Length) => texts::not_a_reference(lang, &typed),
                Ok(r) => {
                    let cases = intake.cases_of(ChannelKind::Telegram, &chat.user, Some(&r), 1).await?;
                    match cases.first() {
                        Some(c) => texts::status_one(lang, c),
                        // Another chat's case looks exactly like no case at all.
                        None => texts::no_such_case(lang, r.as_str()),
                    }
                }
            },
        };
        self.say(chat.chat_id, chat.message_id, &text).await;
        Ok(())
    }

    /// Handles a batch from `getUpdates`: the chats side by side, each chat's updates in order
    /// (a follow-up must find the case its earlier message made). Fails if any update failed.
    async fn handle_batch(&self, intake: &dyn Intake, updates: &[Update]) -> Result<(), IntakeError> {
        let mut chats: HashMap<i64, Vec<&Update>> = HashMap::new();
        let mut order = Vec::new();
        for u in updates {
            let chat = u.chat().map(|c| c.id.0).unwrap_or_default();
            chats.entry(chat).or_insert_with(|| {
                order.push(chat);
                Vec::new()
            });
            if let Some(v) = chats.get_mut(&chat) {
                v.push(u);
            }
        }
        let runs = order.into_iter().filter_map(|c| chats.remove(&c)).map(|list| async move {
            for u in list {
                self.handle(intake, u).await?;
            }
            Ok::<(), IntakeError>(())
        });
        for result in futures_util::future::join_all(runs).await {
            result?;
        }
        Ok(())
    }

    /// The polling loop: one instance polls (a lease in the store), and the offset saved in the
    /// store moves only past updates whose effects are committed.
    async fn poll(&self, intake: Arc<dyn Intake>, shutdown: CancellationToken) -> Result<(), ChannelError> {
        let s = &self.inner.settings;
        let lease = format!("telegram:{}", s.name);
        let cursor = self.cursor_name();
        // Renewed before every getUpdates; a crashed holder's lease runs out this long after its
        // last poll began, and another instance takes over.
        let ttl = s.poll_timeout + Duration::from_secs(15);
        let mut failures = 0u32;
        let mut holding = false;
        tracing::info!(bot = %s.name, "Telegram: long polling.");
        while !shutdown.is_cancelled() {
            let pause = match self.poll_once(&*intake, &lease, &cursor, ttl, &shutdown, &mut holding).await {
                Ok(()) => {
                    failures = 0;
                    continue;
                }
                Err(PollError::NotHolder) => Duration::from_secs(5),
                Err(PollError::Stopped) => break,
                Err(PollError::Failed(e, retry_after)) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(500u64.saturating_mul(1 << failures.min(6)));
                    let pause = retry_after.unwrap_or(backoff).min(Duration::from_secs(60));
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "Telegram polling failed; will try again.");
                    pause
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if holding {
            let _ = intake.release_lease(&lease, &s.instance).await;
        }
        Ok(())
    }

    async fn poll_once(
        &self,
        intake: &dyn Intake,
        lease: &str,
        cursor: &str,
        ttl: Duration,
        shutdown: &CancellationToken,
        holding: &mut bool,
    ) -> Result<(), PollError> {
        let s = &self.inner.settings;
        let failed = |e: IntakeError| PollError::Failed(e.to_string(), None);
        *holding = intake.try_lease(lease, &s.instance, ttl).await.map_err(failed)?;
        if !*holding {
            return Err(PollError::NotHolder);
        }
        let offset: i32 = intake.load_cursor(cursor).await.map_err(failed)?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let req = self
            .inner
            .bot
            .get_updates()
            .offset(offset)
            .timeout(u32::try_from(s.poll_timeout.as_secs()).unwrap_or(25))
            .limit(100)
            .allowed_updates(allowed_updates());
        let updates = tokio::select! {
            r = req.send() => r,
            _ = shutdown.cancelled() => return Err(PollError::Stopped),
        };
        let updates = updates.map_err(|e| {
            let e = send::error(e);
            let retry_after = match &e {
                SendError::Transient { retry_after, .. } => *retry_after,
                _ => None,
            };
            PollError::Failed(e.to_string(), retry_after)
        })?;
        let Some(next) = updates.iter().map(|u| u.id.as_offset()).max() else { return Ok(()) };
        // Everything before `next` is committed before `next` is saved; a crash in between gets
        // the same updates again, and their ids find what was already stored.
        self.handle_batch(intake, &updates).await.map_err(failed)?;
        intake.save_cursor(cursor, &next.to_string()).await.map_err(failed)?;
        Ok(())
    }
}

enum PollError {
    /// Another instance polls this bot.
    NotHolder,
    Stopped,
    Failed(String, Option<Duration>),
}

fn allowed_updates() -> [AllowedUpdate; 3] {
    [AllowedUpdate::Message, AllowedUpdate::EditedMessage, AllowedUpdate::CallbackQuery]
}

#[derive(Clone)]
struct RouteState {
    channel: TelegramChannel,
    intake: Arc<dyn Intake>,
}

/// `POST /v1/inbound/telegram`: one update, answered 200 once its effect is committed.
async fn webhook(State(st): State<RouteState>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    let expected = st.channel.inner.settings.webhook_secret.as_ref().map(|s| s.expose_secret().as_bytes().to_vec());
    let given = headers.get("x-telegram-bot-api-secret-token").map(|v| v.as_bytes());
    let authorized = match (expected.as_deref(), given) {
        (Some(e), Some(g)) => constant_time_eq(e, g),
        _ => false,
    };
    if !authorized {
        metrics::counter!("earshot_telegram_webhook_refused_total").increment(1);
        return ApiError::unauthorized("bad_secret", "X-Telegram-Bot-Api-Secret-Token is missing or wrong")
            .into_response();
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return ApiError::bad_request("invalid_update", format!("not a Telegram update: {e}"), "body")
                .into_response();
        }
    };
    match st.channel.handle(&*st.intake, &update).await {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Compares the webhook secret without an early exit (no crate is needed for these few lines; the
/// length may leak, the content does not).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl Channel for TelegramChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Telegram
    }

    fn routes(&self, intake: Arc<dyn Intake>) -> Option<axum::Router> {
        if self.inner.settings.mode != Mode::Webhook {
            return None;
        }
        let state = RouteState { channel: self.clone(), intake };
        Some(axum::Router::new().route("/v1/inbound/telegram", post(webhook)).with_state(state))
    }

    /// As [`Channel::routes`]: the webhook route exists in webhook mode only.
    fn openapi(&self) -> Option<OpenApiPart> {
        (self.inner.settings.mode == Mode::Webhook).then(openapi::part)
    }

    async fn run(&self, intake: Arc<dyn Intake>, shutdown: CancellationToken) -> Result<(), ChannelError> {
        match self.inner.settings.mode {
            Mode::Polling => self.poll(intake, shutdown).await,
            Mode::Webhook => {
                shutdown.cancelled().await;
                Ok(())
            }
        }
    }

    async fn send(&self, msg: &Outbound) -> Result<Sent, SendError> {
        send::send(self, msg).await
    }

    fn senders(&self) -> Vec<String> {
        vec![self.inner.settings.name.clone()]
    }

    fn own_identities(&self) -> Vec<Recipient> {
        // The bot's own user id is the token's first part: its messages are never complaints.
        let token = self.inner.settings.token.expose_secret();
        token.split_once(':').map(|(id, _)| vec![Recipient::new(ChannelKind::Telegram, id)]).unwrap_or_default()
    }

    fn send_deadline(&self, _sender: &str) -> Duration {
        self.inner.settings.send_timeout
    }

    /// Bots cannot write to each other in private chats, and messages from bots are ignored: a
    /// customer who starts a second case with `/new` gets its reference at once.
    fn loop_free(&self) -> bool {
        true
    }
}
