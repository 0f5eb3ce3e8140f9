//! The configuration file: plain serde structs with documented defaults.
//!
//! Parsing is lenient about *missing* values (they become `None`) so that [`resolve`] can report every
//! problem at once with its key path; unknown keys are refused by `deny_unknown_fields`. Secrets stay
//! as written (`env:NAME` or a literal) until [`resolve`] turns them into `SecretString`s.

mod resolve;

use std::path::Path;

use serde::Deserialize;

pub use resolve::{DbSettings, Endpoint, MAX_WRITERS, OutboxSettings, Problem, Settings, resolve};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub downstream: Vec<DownstreamConfig>,
    #[serde(default)]
    pub channels: ChannelsConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub sla: SlaConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub survey: SurveyConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// The statuses the customer is told about, in the case's channel and language. Default
    /// `["in_progress", "awaiting_customer", "resolved"]`. Agents' public replies always go out.
    #[serde(default = "default_notify")]
    pub notify: Vec<String>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig { notify: default_notify() }
    }
}

fn default_notify() -> Vec<String> {
    vec!["in_progress".into(), "awaiting_customer".into(), "resolved".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurveyConfig {
    /// How long after a case is resolved its survey can be answered; a later reply is an ordinary
    /// follow-up. Default `7d`.
    #[serde(default = "default_survey_window")]
    pub window: String,
}

impl Default for SurveyConfig {
    fn default() -> Self {
        SurveyConfig { window: default_survey_window() }
    }
}

fn default_survey_window() -> String {
    "7d".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The URL customers and systems reach this gateway at. Default `http://<listen>`.
    pub public_url: Option<String>,
    /// Bearer token for the admin routes; `env:NAME` allowed. Without it the admin routes answer 401.
    pub admin_token: Option<String>,
    /// How long shutdown waits for in-flight requests and deliveries. Default `30s`.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: String,
    /// Folder of message templates, relative to the config file. Default `templates`; the shipped
    /// templates are built in and used for any file the folder lacks.
    #[serde(default = "default_templates")]
    pub templates: String,
    /// How long a client has to send a request's headers; then the connection is closed. Default `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: String,
    /// How long a client has to send a request's body; then it gets 408. Default `30s`.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: String,
    /// Open connections at most; more wait until one closes. Default 1024.
    #[serde(default = "default_server_max_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` (relative to the working directory; created if missing) or `postgres://…`.
    #[serde(default = "default_db_url")]
    pub url: String,
    /// Connection pool size (readers on SQLite; on PostgreSQL the main pool, as many again at most
    /// for the outbox's lease and outcome statements, and one per intake writer for its batch
    /// statements, plus one for reserving case numbers). Default 8.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamConfig {
    pub name: Option<String>,
    pub url: Option<String>,
    /// `whsec_…` Standard Webhooks secret; `env:NAME` allowed.
    pub secret: Option<String>,
    /// Several secrets, during a rotation (instead of `secret`; the first is the new one): each
    /// delivery carries one signature per secret.
    pub secrets: Option<Vec<String>>,
    /// Deadline of one whole delivery (connect, request, answer), in seconds. Default 15.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Attempts before a job is dead-lettered. Default 12.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Deliveries to this endpoint at once. Default `outbox.max_in_flight`.
    pub max_in_flight: Option<u32>,
    /// Consecutive failed deliveries that pause this endpoint. Default `outbox.breaker_failures`.
    pub breaker_failures: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    /// `[channels.web]`, owned by the web channel's crate.
    #[cfg(feature = "web")]
    pub web: Option<earshot_channel_web::WebConfig>,
    #[cfg(not(feature = "web"))]
    pub web: Option<toml::Value>,
    /// `[channels.email]`, owned by the email channel's crate.
    #[cfg(feature = "email")]
    pub email: Option<earshot_channel_email::config::EmailConfig>,
    #[cfg(not(feature = "email"))]
    pub email: Option<toml::Value>,
    /// `[channels.telegram]`, owned by the Telegram channel's crate.
    #[cfg(feature = "telegram")]
    pub telegram: Option<earshot_channel_telegram::TelegramConfig>,
    #[cfg(not(feature = "telegram"))]
    pub telegram: Option<toml::Value>,
    /// `[channels.phone]`, owned by the phone channel's crate.
    #[cfg(feature = "phone")]
    pub phone: Option<earshot_channel_phone::PhoneConfig>,
    #[cfg(not(feature = "phone"))]
    pub phone: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// Most submissions committed in one transaction. Default 256.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Batches committed at the same time. Default 1. SQLite allows only 1 (one writer
    /// connection). On PostgreSQL more writers overlap their round trips, which pays when the
    /// database is on another host; on one 2-core machine they measured no faster than one.
    pub writers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// No longer used: each destination has its own delivery loop and in-flight budget
    /// (`max_in_flight`). Accepted, with a warning, so that older files still load.
    pub workers: Option<usize>,
    /// Delay before each retry; the last one repeats. ±20% jitter is added.
    #[serde(default = "default_retry_schedule")]
    pub retry_schedule: Vec<String>,
    /// How long a leased job is reserved before another worker may take it. Default `60s`.
    #[serde(default = "default_lease")]
    pub lease: String,
    /// How often idle workers look for due jobs. Default `1s` (new jobs wake them at once).
    #[serde(default = "default_poll")]
    pub poll_interval: String,
    /// Attempts before a channel job (acknowledgement, status update) is dead-lettered. Default 12.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Longest `Retry-After` honoured. Default `6h`.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after: String,
    /// Sends at once to one destination (a downstream endpoint, a mailbox, a web source's
    /// callback); a slow or hung destination holds only these. Default 64.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Consecutive failed sends after which a destination is paused (its breaker opens). Default 5.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// The first pause of an open breaker; each failed probe doubles it, up to 10 minutes.
    /// Default `5s`.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown: String,
    /// Delivered (and discarded) jobs are deleted this long after they finished. Default `7d`.
    #[serde(default = "default_keep_done")]
    pub keep_done: String,
    /// How long delivery outcomes are gathered before they are written together, at most `1s`.
    /// Default: `5ms` on PostgreSQL, where each write is a statement and a commit of its own;
    /// `0ms` on SQLite, whose one writer already writes whatever has queued in one transaction.
    pub record_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    /// Due time of the first answer. Default `1h`.
    #[serde(default = "default_first_response")]
    pub first_response: String,
    /// Due time of a first solution. Default `24h`.
    #[serde(default = "default_resolution")]
    pub resolution: String,
    /// How often the clocks are checked for targets passed unmet. Default `1s`.
    #[serde(default = "default_sla_check_every")]
    pub check_every: String,
}

fn default_sla_check_every() -> String {
    "1s".into()
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_shutdown_grace() -> String {
    "30s".into()
}
fn default_templates() -> String {
    "templates".into()
}
fn default_header_read_timeout() -> String {
    "10s".into()
}
fn default_body_read_timeout() -> String {
    "30s".into()
}
fn default_server_max_connections() -> usize {
    1024
}
fn default_db_url() -> String {
    "sqlite://data/earshot.db".into()
}
fn default_max_connections() -> u32 {
    8
}
fn default_timeout_secs() -> u64 {
    15
}
fn default_max_attempts() -> u32 {
    12
}
fn default_max_batch() -> usize {
    256
}
fn default_retry_schedule() -> Vec<String> {
    ["5s", "5m", "30m", "2h", "5h", "10h", "10h"].map(String::from).to_vec()
}
fn default_lease() -> String {
    "60s".into()
}
fn default_poll() -> String {
    "1s".into()
}
fn default_max_retry_after() -> String {
    "6h".into()
}
fn default_max_in_flight() -> u32 {
    64
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> String {
    "5s".into()
}
fn default_keep_done() -> String {
    "7d".into()
}
fn default_first_response() -> String {
    "1h".into()
}
fn default_resolution() -> String {
    "24h".into()
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // An empty table gets every documented default, the same as in a file.
                toml::from_str("").unwrap_or_else(|e| unreachable!("defaults of {} parse: {e}", stringify!($t)))
            }
        }
    )*};
}
default_from_serde!(ServerConfig, DatabaseConfig, IntakeConfig, OutboxConfig, SlaConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_of_the_wrong_type_is_not_repeated_in_the_error() {
        for (toml, key) in [
            ("[server]\nadmin_token = 1234567890123456\n", "server.admin_token"),
            ("[[downstream]]\nname = \"t\"\nsecret = 98765432109876\n", "downstream[0].secret"),
        ] {
            let (k, msg) = Config::parse(toml).expect_err("refused");
            assert_eq!(k, key);
            assert!(!msg.contains("1234567890123456") && !msg.contains("98765432109876"), "{msg}");
            assert!(msg.contains("invalid type"), "still says what is wrong: {msg}");
        }
        // Other keys keep the value: it helps, and it is no secret.
        let (_, msg) = Config::parse("[server]\nlisten = 8080\n").expect_err("refused");
        assert!(msg.contains("8080"), "{msg}");
    }
}

/// Whether the value at `key` (a path like `downstream[0].secret`) is a secret, whose value an error
/// message must not repeat.
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    let last = last.split('[').next().unwrap_or(last);
    matches!(last, "admin_token" | "secret" | "secrets" | "password" | "token" | "auth_token" | "webhook_secret")
}

/// serde quotes the offending value between backticks (`invalid type: integer \`1234\`, expected a
/// string`): for a secret, say what was wrong without it.
fn hide_quoted(msg: &str) -> String {
    msg.split('`').enumerate().map(|(i, part)| if i % 2 == 1 { "(value not shown: a secret)" } else { part }).collect()
}

/// Why a config file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {key}: {message}")]
    Parse { path: String, key: String, message: String },
}

impl Config {
    /// Reads and parses a file; the error names the key path of the first value that does not parse.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|(key, message)| LoadError::Parse { path: path.display().to_string(), key, message })
    }

    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let mut msg = e.into_inner().message().to_owned();
            if is_secret_key(&key) {
                msg = hide_quoted(&msg);
            }
            (if key == "." { "(top level)".into() } else { key }, msg)
        })
    }
}
