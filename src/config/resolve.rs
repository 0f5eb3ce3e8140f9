//! Turning a parsed [`Config`] into checked [`Settings`], collecting every problem with its key path.
//!
//! A problem message never contains a secret's value: only the key path and what is wrong with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use earshot_channel::config::Checker;
pub use earshot_channel::config::Problem;

/// The most intake writers (`intake.writers`) a gateway runs.
pub const MAX_WRITERS: usize = 32;
use earshot_channel::webhooks::SigningKeys;
use secrecy::SecretString;

use super::Config;

/// A downstream ticket-store endpoint, checked.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    /// Parsed once here: parsing it for every delivery was 3% of the gateway's CPU under load.
    pub url: http::Uri,
    /// Every secret in force; deliveries are signed with each.
    pub keys: SigningKeys,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub max_in_flight: usize,
    pub breaker_failures: u32,
}

#[derive(Debug, Clone)]
pub struct DbSettings {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// Set in the file although unused (see `OutboxConfig::workers`): warned about at start.
    pub workers_set: bool,
    pub retry_schedule: Vec<Duration>,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub max_attempts: u32,
    pub max_retry_after: Duration,
    /// Default in-flight budget of a destination.
    pub max_in_flight: usize,
    /// Default consecutive failures that open a destination's breaker.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub keep_done: Duration,
    /// How long the outcome recorder gathers outcomes before writing them (`outbox.record_window`).
    pub record_window: Duration,
}

/// Everything the gateway runs with, checked and with secrets resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub public_url: String,
    /// `server.public_url` was set; without it the URL follows the address actually listened on.
    pub public_url_set: bool,
    pub admin_token: Option<SecretString>,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub templates_dir: PathBuf,
    pub database: DbSettings,
    pub downstream: Vec<Endpoint>,
    pub web: Option<WebOut>,
    pub email: Option<EmailOut>,
    pub telegram: Option<TelegramOut>,
    pub phone: Option<PhoneOut>,
    /// At most one email acknowledgement per address within this window.
    pub ack_window: Duration,
    /// How long a bounced address is suppressed.
    pub undeliverable_for: Duration,
    pub max_batch: usize,
    /// Intake batches committed concurrently (1 on SQLite).
    pub writers: usize,
    pub outbox: OutboxSettings,
    pub sla_first_response: Duration,
    pub sla_resolution: Duration,
    pub sla_check_every: Duration,
    pub survey_window: Duration,
    /// The statuses customers are told about (`lifecycle.notify`).
    pub notify: Vec<crate::schema::CaseStatus>,
}

/// Checks `cfg`; `base` is the folder of the config file, against which `templates` is resolved.
pub fn resolve(cfg: &Config, base: &Path) -> Result<Settings, Vec<Problem>> {
    let mut c = Checker::default();

    let listen = match cfg.server.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.problem("server.listen", format!("{:?} is not an address like 127.0.0.1:8080", cfg.server.listen));
            None
        }
    };
    let public_url = match &cfg.server.public_url {
        Some(u) => c.http_url("server.public_url", u),
        None => Some(format!("http://{}", cfg.server.listen)),
    };
    let admin_token =
        cfg.server.admin_token.as_deref().and_then(|t| c.secret("server.admin_token", t)).map(SecretString::from);
    if admin_token.as_ref().is_some_and(|t| secrecy::ExposeSecret::expose_secret(t).len() < 16) {
        c.problem("server.admin_token", "must be at least 16 characters");
    }
    let shutdown_grace = c.duration("server.shutdown_grace", &cfg.server.shutdown_grace);
    let header_read_timeout = c.duration("server.header_read_timeout", &cfg.server.header_read_timeout);
    let body_read_timeout = c.duration("server.body_read_timeout", &cfg.server.body_read_timeout);
    c.positive("server.max_connections", cfg.server.max_connections as u64);
    for (key, d) in
        [("server.header_read_timeout", header_read_timeout), ("server.body_read_timeout", body_read_timeout)]
    {
        if d.is_some_and(|d| d.is_zero()) {
            c.problem(key, "must be greater than 0");
        }
    }

    let url = cfg.database.url.trim();
    let postgres = crate::store::is_postgres_url(url);
    if !(url.starts_with("sqlite:") || postgres) {
        c.problem("database.url", "must start with sqlite:// or postgres://");
    }
    if cfg.database.max_connections == 0 {
        c.problem("database.max_connections", "must be greater than 0");
    }

    let mut downstream = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, d) in cfg.downstream.iter().enumerate() {
        let p = format!("downstream[{i}]");
        let name = c.required(&format!("{p}.name"), d.name.as_deref()).map(str::to_owned);
        if let Some(n) = &name
            && !names.insert(n.clone())
        {
            c.problem(format!("{p}.name"), format!("{n:?} is used by another downstream"));
        }
        let url = c
            .required(&format!("{p}.url"), d.url.as_deref())
            .and_then(|u| c.parsed(&format!("{p}.url"), earshot_channel::webhooks::webhook_uri(u)));
        let keys = c.whsec_keys(&p, d.secret.as_deref(), d.secrets.as_deref());
        c.positive(&format!("{p}.timeout_secs"), d.timeout_secs);
        c.positive(&format!("{p}.max_attempts"), u64::from(d.max_attempts));
        let max_in_flight = d.max_in_flight.unwrap_or(cfg.outbox.max_in_flight);
        c.positive(&format!("{p}.max_in_flight"), u64::from(max_in_flight));
        let breaker_failures = d.breaker_failures.unwrap_or(cfg.outbox.breaker_failures);
        c.positive(&format!("{p}.breaker_failures"), u64::from(breaker_failures));
        if let (Some(name), Some(url), Some(keys)) = (name, url, keys) {
            downstream.push(Endpoint {
                name,
                url,
                keys,
                timeout: Duration::from_secs(d.timeout_secs),
                max_attempts: d.max_attempts.max(1),
                max_in_flight: max_in_flight.max(1) as usize,
                breaker_failures: breaker_failures.max(1),
            });
        }
    }

    #[cfg(feature = "web")]
    let web =
        cfg.channels.web.as_ref().and_then(|w| w.resolve(&mut c, body_read_timeout.unwrap_or(Duration::from_secs(30))));
    #[cfg(not(feature = "web"))]
    let web: Option<WebOut> = cfg.channels.web.as_ref().and_then(|_| {
        c.problem("channels.web", "this build has no web channel (cargo feature `web`)");
        None
    });
    // Host and pid say where a lease holder runs; the random part keeps two gateways in one
    // process (or a pid reused after a restart) from passing for the same holder.
    let instance = format!("{}-{}-{}", hostname(), std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    #[cfg(feature = "email")]
    let email = cfg.channels.email.as_ref().and_then(|e| e.resolve(&mut c, instance.clone()));
    #[cfg(not(feature = "email"))]
    let email: Option<EmailOut> = cfg.channels.email.as_ref().and_then(|_| {
        let _ = &instance;
        c.problem("channels.email", "this build has no email channel (cargo feature `email`)");
        None
    });
    // The per-recipient rules work for every channel; their keys live in the email section, where
    // they were first documented.
    #[cfg_attr(not(feature = "email"), allow(unused_mut))]
    let (mut ack_window, mut undeliverable_for) =
        (Some(Duration::from_secs(600)), Some(Duration::from_secs(7 * 86400)));
    #[cfg(feature = "email")]
    if let Some(e) = &cfg.channels.email {
        ack_window = c.duration("channels.email.ack_window", &e.ack_window);
        undeliverable_for = c.duration("channels.email.undeliverable_for", &e.undeliverable_for);
    }
    #[cfg(feature = "telegram")]
    let telegram = cfg.channels.telegram.as_ref().and_then(|t| t.resolve(&mut c, instance.clone()));
    #[cfg(not(feature = "telegram"))]
    let telegram: Option<TelegramOut> = cfg.channels.telegram.as_ref().and_then(|_| {
        c.problem("channels.telegram", "this build has no Telegram channel (cargo feature `telegram`)");
        None
    });
    #[cfg(feature = "phone")]
    let phone = cfg.channels.phone.as_ref().and_then(|p| {
        let public = public_url.clone().unwrap_or_else(|| format!("http://{}", cfg.server.listen));
        p.resolve(&mut c, &public, cfg.server.public_url.is_some())
    });
    #[cfg(not(feature = "phone"))]
    let phone: Option<PhoneOut> = cfg.channels.phone.as_ref().and_then(|_| {
        c.problem("channels.phone", "this build has no phone channel (cargo feature `phone`)");
        None
    });

    // Each batch is one multi-row statement per table; past ~1000 items SQLite's bind-parameter limit
    // (32,766) comes into reach once outbox jobs are counted.
    if !(1..=1000).contains(&cfg.intake.max_batch) {
        c.problem("intake.max_batch", "must be between 1 and 1000");
    }
    let writers = match cfg.intake.writers {
        None => 1,
        Some(n) if !(1..=MAX_WRITERS).contains(&n) => {
            c.problem("intake.writers", format!("must be between 1 and {MAX_WRITERS}"));
            1
        }
        Some(n) if n > 1 && !postgres => {
            c.problem(
                "intake.writers",
                "SQLite has one writer connection: only 1 is possible (PostgreSQL allows more)",
            );
            1
        }
        Some(n) => n,
    };
    let o = &cfg.outbox;
    c.positive("outbox.max_attempts", u64::from(o.max_attempts));
    let mut schedule = Vec::new();
    if o.retry_schedule.is_empty() {
        c.problem("outbox.retry_schedule", "must list at least one delay");
    }
    for (i, s) in o.retry_schedule.iter().enumerate() {
        if let Some(d) = c.duration(&format!("outbox.retry_schedule[{i}]"), s) {
            schedule.push(d);
        }
    }
    let lease = c.duration("outbox.lease", &o.lease);
    let poll = c.duration("outbox.poll_interval", &o.poll_interval);
    let max_retry_after = c.duration("outbox.max_retry_after", &o.max_retry_after);
    c.positive("outbox.max_in_flight", u64::from(o.max_in_flight));
    c.positive("outbox.breaker_failures", u64::from(o.breaker_failures));
    let breaker_cooldown = c.duration("outbox.breaker_cooldown", &o.breaker_cooldown);
    let keep_done = c.duration("outbox.keep_done", &o.keep_done);
    let record_window = match &o.record_window {
        Some(w) => c.duration("outbox.record_window", w),
        None => Some(default_record_window(postgres)),
    };
    if let Some(w) = record_window
        && w > MAX_RECORD_WINDOW
    {
        c.problem(
            "outbox.record_window",
            format!(
                "{} is longer than 1s: a delivered job would wait that long to be marked done, and the \
                 jobs of its case behind it as long",
                o.record_window.as_deref().unwrap_or_default()
            ),
        );
    }
    if let (Some(lease), Some((key, deadline)), Some(window)) = (lease, longest_send_deadline(cfg), record_window) {
        // A send still running when its lease ends would be leased again and sent twice; so would one
        // whose outcome, gathered for `record_window`, is written after the lease ended.
        if lease <= deadline + window {
            let plus = if !window.is_zero() {
                format!(" plus outbox.record_window ({} ms)", window.as_millis())
            } else {
                String::new()
            };
            c.problem(
                "outbox.lease",
                format!(
                    "{} is not longer than {key} ({} s){plus}, the longest send deadline: a send still running \
                     when its lease ends would be sent twice; make outbox.lease longer or {key} shorter",
                    o.lease,
                    deadline.as_secs()
                ),
            );
        }
    }
    let first = c.duration("sla.first_response", &cfg.sla.first_response);
    let resolution = c.duration("sla.resolution", &cfg.sla.resolution);
    let sla_check_every = c.duration("sla.check_every", &cfg.sla.check_every);
    let survey_window = c.duration("survey.window", &cfg.survey.window);
    let mut notify = Vec::new();
    for (i, s) in cfg.lifecycle.notify.iter().enumerate() {
        match crate::schema::CaseStatus::parse(s) {
            Some(st) => notify.push(st),
            None => {
                let all: Vec<&str> = crate::schema::CaseStatus::ALL.iter().map(|s| s.as_str()).collect();
                c.problem(
                    format!("lifecycle.notify[{i}]"),
                    format!("unknown status {s:?}; statuses are {}", all.join(", ")),
                );
            }
        }
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let missing = || vec![Problem { key: "(internal)".into(), message: "a checked value is missing".into() }];
    Ok(Settings {
        listen: listen.ok_or_else(missing)?,
        public_url: public_url.ok_or_else(missing)?,
        public_url_set: cfg.server.public_url.is_some(),
        admin_token,
        shutdown_grace: shutdown_grace.ok_or_else(missing)?,
        header_read_timeout: header_read_timeout.ok_or_else(missing)?,
        max_connections: cfg.server.max_connections.max(1),
        templates_dir: base.join(&cfg.server.templates),
        database: DbSettings { url: url.to_owned(), max_connections: cfg.database.max_connections },
        downstream,
        web,
        email,
        telegram,
        phone,
        ack_window: ack_window.ok_or_else(missing)?,
        undeliverable_for: undeliverable_for.ok_or_else(missing)?,
        max_batch: cfg.intake.max_batch,
        writers,
        outbox: OutboxSettings {
            workers_set: o.workers.is_some(),
            retry_schedule: schedule,
            lease: lease.ok_or_else(missing)?,
            poll_interval: poll.ok_or_else(missing)?,
            max_attempts: o.max_attempts,
            max_retry_after: max_retry_after.ok_or_else(missing)?,
            max_in_flight: o.max_in_flight.max(1) as usize,
            breaker_failures: o.breaker_failures.max(1),
            breaker_cooldown: breaker_cooldown.ok_or_else(missing)?,
            keep_done: keep_done.ok_or_else(missing)?,
            record_window: record_window.ok_or_else(missing)?,
        },
        sla_first_response: first.ok_or_else(missing)?,
        sla_resolution: resolution.ok_or_else(missing)?,
        sla_check_every: sla_check_every.ok_or_else(missing)?.max(Duration::from_millis(100)),
        survey_window: survey_window.ok_or_else(missing)?,
        notify,
    })
}

/// The longest `outbox.record_window` accepted.
const MAX_RECORD_WINDOW: Duration = Duration::from_secs(1);

/// `outbox.record_window` when the file does not set it. On PostgreSQL each write of outcomes is a
/// statement and a commit of its own, about a third of a millisecond of the server's time whatever
/// its size; without a window the recorder wrote about ten outcomes a time under load, with 5 ms
/// about thirty (the measurements are in the README). SQLite's one writer already puts every call
/// that has queued into one transaction, and a window there measured no gain.
fn default_record_window(postgres: bool) -> Duration {
    if postgres { Duration::from_millis(5) } else { Duration::ZERO }
}

/// The longest deadline of any one send, with the key that sets it: every downstream endpoint's
/// `timeout_secs`, the web callbacks' and each mailbox's SMTP timeout.
fn longest_send_deadline(cfg: &Config) -> Option<(String, Duration)> {
    let mut all: Vec<(String, u64)> = Vec::new();
    for (i, d) in cfg.downstream.iter().enumerate() {
        all.push((format!("downstream[{i}].timeout_secs"), d.timeout_secs));
    }
    #[cfg(feature = "web")]
    if let Some(w) = &cfg.channels.web
        && w.sources.iter().any(|s| s.callback_url.is_some())
    {
        all.push(("channels.web.callback_timeout_secs".into(), w.callback_timeout_secs));
    }
    #[cfg(feature = "email")]
    if let Some(e) = &cfg.channels.email {
        for (i, m) in e.mailboxes.iter().enumerate() {
            if let Some(smtp) = &m.smtp {
                all.push((format!("channels.email.mailboxes[{i}].smtp.timeout_secs"), smtp.timeout_secs));
            }
        }
    }
    #[cfg(feature = "phone")]
    if let Some(p) = &cfg.channels.phone {
        all.push(("channels.phone.send_timeout_secs".into(), p.send_timeout_secs));
    }
    #[cfg(feature = "telegram")]
    if let Some(t) = &cfg.channels.telegram {
        all.push(("channels.telegram.send_timeout_secs".into(), t.send_timeout_secs));
    }
    // The first of the longest, so the message names a key the operator can find.
    let mut best: Option<(String, u64)> = None;
    for (k, v) in all {
        if best.as_ref().is_none_or(|(_, b)| v > *b) {
            best = Some((k, v));
        }
    }
    best.map(|(k, v)| (k, Duration::from_secs(v)))
}

/// The email channel's settings, or nothing when the channel is not compiled in.
#[cfg(feature = "email")]
pub type EmailOut = earshot_channel_email::settings::EmailSettings;
#[cfg(not(feature = "email"))]
pub type EmailOut = std::convert::Infallible;

/// The phone channel's settings, or nothing when the channel is not compiled in.
#[cfg(feature = "phone")]
pub type PhoneOut = earshot_channel_phone::PhoneSettings;
#[cfg(not(feature = "phone"))]
pub type PhoneOut = std::convert::Infallible;

/// The Telegram channel's settings, or nothing when the channel is not compiled in.
#[cfg(feature = "telegram")]
pub type TelegramOut = earshot_channel_telegram::TelegramSettings;
#[cfg(not(feature = "telegram"))]
pub type TelegramOut = std::convert::Infallible;

/// The web channel's settings, or nothing when the channel is not compiled in.
#[cfg(feature = "web")]
pub type WebOut = earshot_channel_web::WebSettings;
#[cfg(not(feature = "web"))]
pub type WebOut = std::convert::Infallible;

/// This machine's name, for lease holders in logs (`/etc/hostname`, else "earshot").
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "earshot".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> Result<Settings, Vec<String>> {
        let cfg = Config::parse(toml).map_err(|(k, m)| vec![format!("{k}: {m}")])?;
        resolve(&cfg, Path::new(".")).map_err(|ps| ps.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../config/earshot.example.toml");
        let s = check(text).expect("example config resolves");
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.outbox.retry_schedule.len(), 7);
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let problems = check(
            r#"
            [server]
            listen = "nonsense"
            admin_token = "env:EARSHOT_TEST_SURELY_UNSET_VARIABLE"
            [[downstream]]
            name = "t"
            url = "ftp://x"
            secret = "whsec_c2VjcmV0LWZvci10aWNrZXRzLWV4YW1wbGU="
            [channels.web]
            [[channels.web.sources]]
            name = "site"
            [channels.email]
            [[channels.email.mailboxes]]
            name = "support"
            address = "support@example.com"
            imap = { host = "127.0.0.1", security = "plain", username = "u" }
            smtp = { host = "127.0.0.1", security = "smoke-signals" }
            "#,
        )
        .expect_err("invalid");
        for want in [
            "server.listen: \"nonsense\" is not an address like 127.0.0.1:8080",
            "server.admin_token: environment variable EARSHOT_TEST_SURELY_UNSET_VARIABLE is not set",
            "downstream[0].url: \"ftp://x\" is not an http(s) URL",
            "channels.web.sources[0].secret: missing",
            "channels.email.mailboxes[0].imap.password: missing",
            "channels.email.mailboxes[0].smtp.security: \"smoke-signals\" is not one of tls, starttls, plain",
        ] {
            assert!(problems.iter().any(|p| p == want), "missing {want:?} in {problems:#?}");
        }
        assert_eq!(problems.len(), 6, "{problems:#?}");
    }

    #[test]
    fn intake_writers_default_to_one_and_only_postgres_takes_more() {
        assert_eq!(check("").expect("defaults").writers, 1);
        let sqlite = check("[intake]\nwriters = 2\n").expect_err("SQLite has one writer");
        assert!(sqlite.iter().any(|p| p.starts_with("intake.writers: SQLite")), "{sqlite:?}");
        let pg = check("[database]\nurl = \"postgres://db.internal/earshot\"\n[intake]\nwriters = 3\n");
        assert_eq!(pg.expect("PostgreSQL").writers, 3);
        assert!(check("[intake]\nwriters = 0\n").is_err());
    }

    #[test]
    fn a_lease_not_longer_than_the_longest_send_deadline_is_refused_naming_both_keys() {
        let toml = |lease: &str| {
            format!(
                "[outbox]\nlease = \"{lease}\"\n[[downstream]]\nname = \"t\"\nurl = \"http://127.0.0.1:9/e\"\n\
                 secret = \"whsec_c2VjcmV0LWZvci10aWNrZXRzLWV4YW1wbGU=\"\ntimeout_secs = 20\n"
            )
        };
        let problems = check(&toml("20s")).expect_err("lease = timeout");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("outbox.lease: 20s is not longer than downstream[0].timeout_secs (20 s)"),
            "{problems:?}"
        );
        assert!(check(&toml("10s")).is_err());
        assert!(check(&toml("21s")).is_ok());
    }

    #[test]
    fn the_record_window_defaults_by_store_is_at_most_a_second_and_counts_against_the_lease() {
        let pg = "[database]\nurl = \"postgres://earshot@127.0.0.1/earshot\"\n";
        let sqlite = "[database]\nurl = \"sqlite://earshot.db\"\n";
        let window = |toml: &str| check(toml).expect("valid").outbox.record_window;
        assert_eq!(window(pg), Duration::from_millis(5));
        assert_eq!(window(sqlite), Duration::ZERO);
        assert_eq!(window(&format!("{pg}[outbox]\nrecord_window = \"0ms\"\n")), Duration::ZERO);
        assert_eq!(window(&format!("{sqlite}[outbox]\nrecord_window = \"20ms\"\n")), Duration::from_millis(20));

        let long = check(&format!("{sqlite}[outbox]\nrecord_window = \"2s\"\n")).expect_err("over a second");
        assert_eq!(long.len(), 1, "{long:?}");
        assert!(long[0].starts_with("outbox.record_window: 2s is longer than 1s"), "{long:?}");
        let bad = check(&format!("{sqlite}[outbox]\nrecord_window = \"soon\"\n")).expect_err("not a duration");
        assert!(bad[0].starts_with("outbox.record_window: \"soon\" is not a duration"), "{bad:?}");

        // A lease one second over the send deadline leaves no room for a window of a second.
        let with = |window: &str| {
            format!(
                "{sqlite}[outbox]\nlease = \"21s\"\nrecord_window = \"{window}\"\n[[downstream]]\nname = \"t\"\n\
                 url = \"http://127.0.0.1:9/e\"\nsecret = \"whsec_c2VjcmV0LWZvci10aWNrZXRzLWV4YW1wbGU=\"\n\
                 timeout_secs = 20\n"
            )
        };
        assert!(check(&with("999ms")).is_ok());
        let problems = check(&with("1s")).expect_err("lease = timeout + window");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "outbox.lease: 21s is not longer than downstream[0].timeout_secs (20 s) plus outbox.record_window (1000 ms)"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn secrets_take_a_list_and_refuse_both_forms_or_an_empty_list() {
        let ok = check(
            "[[downstream]]\nname = \"t\"\nurl = \"http://127.0.0.1:9/e\"\n\
             secrets = [\"whsec_c2VjcmV0LWZvci10aWNrZXRzLWV4YW1wbGU=\", \"whsec_b2xkLXNlY3JldC1mb3ItdGlja2V0cw==\"]\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
        let both = check(
            "[[downstream]]\nname = \"t\"\nurl = \"http://127.0.0.1:9/e\"\n\
             secret = \"whsec_c2VjcmV0LWZvci10aWNrZXRzLWV4YW1wbGU=\"\nsecrets = [\"whsec_c2VjcmV0LWZvci10aWNrZXRzLWV4YW1wbGU=\"]\n",
        )
        .expect_err("both forms");
        assert_eq!(both, vec!["downstream[0].secrets: set either secret or secrets, not both".to_owned()]);
        let empty = check("[channels.web]\n[[channels.web.sources]]\nname = \"s\"\nsecrets = []\n").expect_err("empty");
        assert_eq!(empty, vec!["channels.web.sources[0].secrets: list at least one secret".to_owned()]);
        let bad = check("[channels.web]\n[[channels.web.sources]]\nname = \"s\"\nsecrets = [\"whsec_c2VjcmV0LWZvci10aWNrZXRzLWV4YW1wbGU=\", \"nope\"]\n")
            .expect_err("bad second");
        assert!(bad[0].starts_with("channels.web.sources[0].secrets[1]: "), "{bad:?}");
        assert!(!bad[0].contains("nope"), "the value is not repeated: {bad:?}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = check("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").expect_err("unknown key");
        assert!(err[0].starts_with("server"), "{err:?}");
    }

    #[test]
    fn email_defaults() {
        let s = check(
            r#"
            [channels.email]
            [[channels.email.mailboxes]]
            name = "support"
            address = "Support@Example.com"
            imap = { host = "imap.example.com", username = "u", password = "p" }
            smtp = { host = "smtp.example.com", security = "starttls" }
            "#,
        )
        .expect("valid");
        let e = s.email.expect("email on");
        let mb = &e.mailboxes[0];
        assert_eq!((mb.address.as_str(), mb.imap.port, mb.smtp.port), ("support@example.com", 993, 587));
        assert_eq!(mb.imap.folder, "INBOX");
        assert_eq!(s.ack_window, Duration::from_secs(600));
    }
}
