//! Messages to a chat: `sendMessage`, split at line boundaries under Telegram's 4,096 characters,
//! the survey as an inline keyboard, and the Bot API's errors as the contract's send outcomes.

use earshot_channel::{Outbound, OutboundKind, ReplyRoute, SendError, Sent, Survey};
use teloxide_core::prelude::*;
use teloxide_core::types::{InlineKeyboardButton, InlineKeyboardMarkup, MessageId, ReplyParameters};
use teloxide_core::{ApiError, RequestError};

use crate::TelegramChannel;
use crate::parse::{message_key, survey_button};

pub(crate) async fn send(channel: &TelegramChannel, msg: &Outbound) -> Result<Sent, SendError> {
    let ReplyRoute::Direct { recipient, reply_to, .. } = &msg.reply_route else {
        return Err(SendError::Permanent { reason: "not a Telegram reply route".into() });
    };
    let chat: i64 = recipient
        .parse()
        .map_err(|_| SendError::Permanent { reason: format!("{recipient:?} is not a Telegram chat id") })?;
    let reply_to = reply_to.as_deref().and_then(|r| r.parse::<i32>().ok());
    let keyboard = match &msg.kind {
        OutboundKind::Survey(s) => Some(keyboard(s)),
        _ => None,
    };
    let parts = split(&msg.text, crate::MAX_TEXT_CHARS);
    let last_index = parts.len().saturating_sub(1);
    let mut last = None;
    for (i, part) in parts.into_iter().enumerate() {
        channel.turn(chat).await;
        let mut req = channel.inner.bot.send_message(ChatId(chat), part);
        if let Some(r) = reply_to.filter(|_| i == 0) {
            // The customer's message may be gone (deleted); the answer still goes out.
            req = req.reply_parameters(ReplyParameters::new(MessageId(r)).allow_sending_without_reply());
        }
        if let Some(k) = keyboard.clone().filter(|_| i == last_index) {
            req = req.reply_markup(k);
        }
        let sent = req.await.map_err(error)?;
        // A customer's reply to this message finds its case by this id.
        last = Some(message_key(chat, sent.id.0));
    }
    Ok(Sent { provider_id: last, segments: None })
}

/// Ratings on one row, solved / not solved on the next.
fn keyboard(s: &Survey) -> InlineKeyboardMarkup {
    let button = |c: &earshot_channel::SurveyChoice| {
        InlineKeyboardButton::callback(c.label.clone(), survey_button(&s.token, &c.value))
    };
    let ratings: Vec<_> = s.choices.iter().filter(|c| c.value.starts_with("rating=")).map(button).collect();
    let solved: Vec<_> = s.choices.iter().filter(|c| !c.value.starts_with("rating=")).map(button).collect();
    InlineKeyboardMarkup::new([ratings, solved].into_iter().filter(|row| !row.is_empty()))
}

/// Parts of at most `max` characters, cut after a line where one fits, else hard.
pub(crate) fn split(text: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut current_len = 0;
    for line in text.split_inclusive('\n') {
        let mut line = line;
        let mut len = line.chars().count();
        while len > 0 {
            if current_len + len <= max {
                current.push_str(line);
                current_len += len;
                break;
            }
            if current_len > 0 {
                parts.push(std::mem::take(&mut current).trim_end_matches('\n').to_owned());
                current_len = 0;
                continue;
            }
            // One line longer than a message: cut it at the limit.
            let cut = line.char_indices().nth(max).map(|(i, _)| i).unwrap_or(line.len());
            parts.push(line[..cut].to_owned());
            line = &line[cut..];
            len -= max.min(len);
        }
    }
    if current_len > 0 || parts.is_empty() {
        parts.push(current.trim_end_matches('\n').to_owned());
    }
    parts
}

/// The Bot API's answer as a send outcome. Blocked, deactivated or unknown chats cannot be reached
/// (no retry); 429 waits the `retry_after` Telegram gives; network errors and server trouble are
/// retried; any other refusal is permanent. Descriptions only: teloxide does not keep the HTTP status.
pub(crate) fn error(e: RequestError) -> SendError {
    match e {
        RequestError::RetryAfter(after) => SendError::Transient {
            reason: format!("Telegram: too many requests, retry after {} s", after.seconds()),
            retry_after: Some(after.duration()),
        },
        RequestError::Api(api) => match api {
            ApiError::BotBlocked
            | ApiError::UserDeactivated
            | ApiError::ChatNotFound
            | ApiError::BotKicked
            | ApiError::BotKickedFromSupergroup
            | ApiError::CantInitiateConversation
            | ApiError::CantTalkWithBots => SendError::Unreachable { reason: format!("Telegram: {api}") },
            ApiError::Unknown(ref d) if d.starts_with("Forbidden") => {
                SendError::Unreachable { reason: format!("Telegram: {d}") }
            }
            ApiError::Unknown(ref d) if d.starts_with("Internal Server Error") || d.starts_with("Bad Gateway") => {
                SendError::Transient { reason: format!("Telegram: {d}"), retry_after: None }
            }
            ApiError::InvalidToken => SendError::Transient {
                // The operator fixes the token and reloads; the message should still go out then.
                reason: "Telegram: the bot token is not valid (check channels.telegram.token)".into(),
                retry_after: None,
            },
            other => SendError::Permanent { reason: format!("Telegram: {other}") },
        },
        // The error's URL has the token cut out by teloxide.
        RequestError::Network(e) => {
            SendError::Transient { reason: format!("Telegram unreachable: {e}"), retry_after: None }
        }
        RequestError::Io(e) => SendError::Transient { reason: format!("Telegram I/O: {e}"), retry_after: None },
        // The raw body is not repeated: it may be anything a proxy answered.
        RequestError::InvalidJson { .. } => SendError::Transient {
            reason: "Telegram answered with something that is not a Bot API response".into(),
            retry_after: None,
        },
        RequestError::MigrateToChatId(to) => {
            SendError::Permanent { reason: format!("Telegram: the group moved to chat {}", to.0) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_line_boundaries_under_the_limit() {
        assert_eq!(split("short", 10), vec!["short"]);
        assert_eq!(split("aaaa\nbbbb\ncccc", 10), vec!["aaaa\nbbbb", "cccc"]);
        let long = "x".repeat(25);
        assert_eq!(split(&long, 10), vec!["x".repeat(10), "x".repeat(10), "x".repeat(5)]);
        let zh = "投诉".repeat(3000);
        let parts = split(&zh, crate::MAX_TEXT_CHARS);
        assert!(parts.iter().all(|p| p.chars().count() <= crate::MAX_TEXT_CHARS));
        assert_eq!(parts.concat(), zh, "nothing lost");
    }

    #[test]
    fn bot_api_errors_become_send_outcomes() {
        use std::time::Duration;
        use teloxide_core::types::Seconds;
        let blocked = error(RequestError::Api(ApiError::BotBlocked));
        assert!(matches!(blocked, SendError::Unreachable { .. }), "{blocked:?}");
        let forbidden = error(RequestError::Api(ApiError::Unknown("Forbidden: user is not allowed".into())));
        assert!(matches!(forbidden, SendError::Unreachable { .. }), "{forbidden:?}");
        match error(RequestError::RetryAfter(Seconds::from_seconds(7))) {
            SendError::Transient { retry_after, .. } => assert_eq!(retry_after, Some(Duration::from_secs(7))),
            other => panic!("{other:?}"),
        }
        let server = error(RequestError::Api(ApiError::Unknown("Internal Server Error".into())));
        assert!(server.is_transient(), "5xx is retried: {server:?}");
        let bad = error(RequestError::Api(ApiError::MessageIsTooLong));
        assert!(matches!(bad, SendError::Permanent { .. }), "{bad:?}");
    }
}
