//! The Telegram channel's config section, `[channels.telegram]`: plain serde with documented
//! defaults, and its check into [`TelegramSettings`] (every problem with its key path).

use std::num::NonZeroU32;
use std::time::Duration;

use earshot_channel::config::Checker;
use secrecy::SecretString;
use serde::Deserialize;

/// How updates reach the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `getUpdates` long polling (the default): nothing public needed.
    #[default]
    Polling,
    /// Telegram POSTs each update to `/v1/inbound/telegram` (`earshot telegram set-webhook`).
    Webhook,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot's token from @BotFather; `env:NAME` reads it from the environment. Required.
    pub token: Option<String>,
    /// `polling` (default) or `webhook`.
    #[serde(default)]
    pub mode: Mode,
    /// The secret Telegram sends in `X-Telegram-Bot-Api-Secret-Token` (1–256 of `A-Z a-z 0-9 _ -`);
    /// `env:NAME` allowed. Required in webhook mode.
    pub webhook_secret: Option<String>,
    /// The Bot API server. Default `https://api.telegram.org`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The public URL `earshot telegram set-webhook` registers. Default `server.public_url` +
    /// `/v1/inbound/telegram`.
    pub webhook_url: Option<String>,
    /// The bot's name as the gateway knows it: the cases' source and the outbox's sender. Default `bot`.
    #[serde(default = "default_name")]
    pub name: String,
    /// How long one `getUpdates` waits for updates. Default 25.
    #[serde(default = "default_poll_timeout_secs")]
    pub poll_timeout_secs: u64,
    /// A chat's next message joins its open case if that case changed within this window; after it,
    /// the message makes a new case. Default `24h`.
    #[serde(default = "default_follow_up_window")]
    pub follow_up_window: String,
    /// Take complaints from groups and supergroups too. Default false: only private chats.
    #[serde(default)]
    pub allow_groups: bool,
    /// Messages per second to one chat (Telegram's documented limit is about 1). Default 1.
    #[serde(default = "default_per_chat")]
    pub per_chat_per_sec: u32,
    /// Messages per second in all (Telegram's documented limit is about 30). Default 30.
    #[serde(default = "default_global")]
    pub global_per_sec: u32,
    /// Longest one message to a chat may take, all its parts and their turns under the limits
    /// included. Default 30 (teloxide waits 10 s before it reads a 5xx). `outbox.lease` must be longer.
    #[serde(default = "default_send_timeout_secs")]
    pub send_timeout_secs: u64,
}

fn default_api_url() -> String {
    "https://api.telegram.org".into()
}
fn default_name() -> String {
    "bot".into()
}
fn default_poll_timeout_secs() -> u64 {
    25
}
fn default_follow_up_window() -> String {
    "24h".into()
}
fn default_per_chat() -> u32 {
    1
}
fn default_global() -> u32 {
    30
}
fn default_send_timeout_secs() -> u64 {
    30
}

/// The checked section.
#[derive(Debug, Clone)]
pub struct TelegramSettings {
    pub token: SecretString,
    pub mode: Mode,
    pub webhook_secret: Option<SecretString>,
    pub api_url: reqwest::Url,
    pub webhook_url: Option<String>,
    pub name: String,
    pub poll_timeout: Duration,
    pub follow_up_window: Duration,
    pub allow_groups: bool,
    pub per_chat_per_sec: NonZeroU32,
    pub global_per_sec: NonZeroU32,
    pub send_timeout: Duration,
    /// Who this gateway instance is, for the polling lease.
    pub instance: String,
}

impl TelegramConfig {
    /// Checks the section (`channels.telegram`) into `c`; the settings when nothing is wrong with it.
    pub fn resolve(&self, c: &mut Checker, instance: String) -> Option<TelegramSettings> {
        const P: &str = "channels.telegram";
        let token =
            c.required(&format!("{P}.token"), self.token.as_deref()).and_then(|t| c.secret(&format!("{P}.token"), t));
        if let Some(t) = &token
            && !looks_like_token(t)
        {
            // The token itself is never printed.
            c.problem(format!("{P}.token"), "is not a bot token (digits, a colon, then letters, digits, - and _)");
        }
        let secret = match (self.mode, self.webhook_secret.as_deref()) {
            (Mode::Webhook, None) => {
                c.problem(format!("{P}.webhook_secret"), "missing: webhook mode needs it");
                None
            }
            (_, Some(s)) => c.secret(&format!("{P}.webhook_secret"), s),
            (Mode::Polling, None) => None,
        };
        if let Some(s) = &secret
            && (!(1..=256).contains(&s.len())
                || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            c.problem(format!("{P}.webhook_secret"), "use 1 to 256 of A-Z, a-z, 0-9, _ and - (Telegram's rule)");
        }
        let api_url = c.http_url(&format!("{P}.api_url"), &self.api_url).and_then(|u| {
            // teloxide appends `/bot<token>/<method>`; a trailing slash would double it.
            match reqwest::Url::parse(u.trim_end_matches('/')) {
                Ok(url) => Some(url),
                Err(e) => {
                    c.problem(format!("{P}.api_url"), e.to_string());
                    None
                }
            }
        });
        let webhook_url = self.webhook_url.as_deref().and_then(|u| c.http_url(&format!("{P}.webhook_url"), u));
        if self.name.is_empty() || !self.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            c.problem(format!("{P}.name"), "use letters, digits, - and _ only");
        }
        if !(1..=50).contains(&self.poll_timeout_secs) {
            c.problem(format!("{P}.poll_timeout_secs"), "must be between 1 and 50");
        }
        let window = c.duration(&format!("{P}.follow_up_window"), &self.follow_up_window);
        let per_chat = NonZeroU32::new(self.per_chat_per_sec);
        if per_chat.is_none() {
            c.problem(format!("{P}.per_chat_per_sec"), "must be greater than 0");
        }
        let global = NonZeroU32::new(self.global_per_sec);
        if global.is_none() {
            c.problem(format!("{P}.global_per_sec"), "must be greater than 0");
        }
        c.positive(&format!("{P}.send_timeout_secs"), self.send_timeout_secs);
        Some(TelegramSettings {
            token: SecretString::from(token?),
            mode: self.mode,
            webhook_secret: secret.map(SecretString::from),
            api_url: api_url?,
            webhook_url,
            name: self.name.clone(),
            // The HTTP client waits this long plus a margin (see `TelegramChannel::new`).
            poll_timeout: Duration::from_secs(self.poll_timeout_secs.clamp(1, 50)),
            follow_up_window: window?,
            allow_groups: self.allow_groups,
            per_chat_per_sec: per_chat?,
            global_per_sec: global?,
            send_timeout: Duration::from_secs(self.send_timeout_secs.max(1)),
            instance,
        })
    }
}

/// `123456:ABC-def_…`: a bot id, a colon, a secret. Checked so that a value in the wrong key (an
/// `env:` name misspelt, a URL) is refused at start-up rather than by Telegram's 401 later.
fn looks_like_token(t: &str) -> bool {
    match t.split_once(':') {
        Some((id, secret)) => {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !secret.is_empty()
                && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section given as JSON: serde sees the same shape as from TOML.
    fn parse(section: &str) -> (Option<TelegramSettings>, Vec<String>) {
        let cfg: TelegramConfig = serde_json::from_str(section).unwrap_or_else(|e| panic!("{e}"));
        let mut c = Checker::default();
        let s = cfg.resolve(&mut c, "test".into());
        (s, c.problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn defaults_and_problems_by_key() {
        let (s, problems) = parse(r#"{"token": "123:abc_DEF-9"}"#);
        assert!(problems.is_empty(), "{problems:?}");
        let s = s.unwrap_or_else(|| panic!("settings"));
        assert_eq!(s.mode, Mode::Polling);
        assert_eq!(s.api_url.as_str(), "https://api.telegram.org/");
        assert_eq!(s.follow_up_window, Duration::from_secs(86_400));
        assert_eq!((s.per_chat_per_sec.get(), s.global_per_sec.get()), (1, 30));

        let (s, problems) = parse(r#"{"token": "not a token", "mode": "webhook", "webhook_secret": "has space"}"#);
        assert!(s.is_none() || !problems.is_empty());
        let text = problems.join("\n");
        assert!(text.contains("channels.telegram.token: is not a bot token"), "{text}");
        assert!(!text.contains("not a token"), "the token is never echoed: {text}");
        assert!(text.contains("channels.telegram.webhook_secret: use 1 to 256"), "{text}");

        let (_, problems) = parse(r#"{"token": "1:a", "mode": "webhook"}"#);
        assert!(problems.iter().any(|p| p.contains("channels.telegram.webhook_secret: missing")), "{problems:?}");
    }
}
