//! Turning a parsed [`Config`] into checked [`Settings`], collecting every problem with its key path.
//!
//! A problem message never contains a secret's value: only the key path and what is wrong with it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use earshot_channel::webhooks::{SigningKey, SigningKeys};
use secrecy::SecretString;

use super::Config;

/// One problem in a config file, e.g. `channels.web.sources[0].secret: missing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A downstream ticket-store endpoint, checked.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
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

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { key: key.into(), message: message.into() });
    }

    fn required<'a>(&mut self, key: &str, value: Option<&'a str>) -> Option<&'a str> {
        match value.map(str::trim) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                self.problem(key, "missing");
                None
            }
        }
    }

    /// `env:NAME` is read from the environment; anything else is the secret itself.
    fn secret(&mut self, key: &str, value: &str) -> Option<String> {
        match value.strip_prefix("env:") {
            Some(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => {
                    self.problem(key, format!("environment variable {name} is not set"));
                    None
                }
            },
            None => Some(value.to_owned()),
        }
    }

    fn whsec(&mut self, key: &str, value: Option<&str>) -> Option<SigningKey> {
        let raw = self.required(key, value)?;
        let secret = self.secret(key, raw)?;
        match SigningKey::from_whsec(&secret) {
            Ok(k) => Some(k),
            Err(e) => {
                self.problem(key, e.to_string());
                None
            }
        }
    }

    /// `secret = "whsec_…"` or, during a rotation, `secrets = ["whsec_new", "whsec_old"]` under
    /// `prefix`; every problem with its key path.
    fn whsec_keys(&mut self, prefix: &str, secret: Option<&str>, secrets: Option<&[String]>) -> Option<SigningKeys> {
        match (secret, secrets) {
            (Some(_), Some(_)) => {
                self.problem(format!("{prefix}.secrets"), "set either secret or secrets, not both");
                None
            }
            (_, Some([])) => {
                self.problem(format!("{prefix}.secrets"), "list at least one secret");
                None
            }
            (_, Some(list)) => {
                let keys: Vec<Option<SigningKey>> = list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.whsec(&format!("{prefix}.secrets[{i}]"), Some(s)))
                    .collect();
                keys.into_iter().collect::<Option<Vec<_>>>().and_then(SigningKeys::new)
            }
            (secret, None) => self.whsec(&format!("{prefix}.secret"), secret).map(SigningKeys::from),
        }
    }

    fn duration(&mut self, key: &str, value: &str) -> Option<Duration> {
        match humantime::parse_duration(value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(key, format!("{value:?} is not a duration like \"30s\" or \"5m\" ({e})"));
                None
            }
        }
    }

    fn http_url(&mut self, key: &str, value: &str) -> Option<String> {
        match reqwest::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(value.to_owned()),
            Ok(_) => {
                self.problem(key, format!("{value:?} is not an http(s) URL"));
                None
            }
            Err(e) => {
                self.problem(key, format!("{value:?} is not a URL ({e})"));
                None
            }
        }
    }

    fn positive(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.problem(key, "must be greater than 0");
        }
    }
}

/// Checks `cfg`; `base` is the folder of the config file, against which `templates` is resolved.
pub fn resolve(cfg: &Config, base: &Path) -> Result<Settings, Vec<Problem>> {
    let mut c = Checker { problems: Vec::new() };

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
    if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
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
        let url = c.required(&format!("{p}.url"), d.url.as_deref()).and_then(|u| c.http_url(&format!("{p}.url"), u));
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

    let web = cfg
        .channels
        .web
        .as_ref()
        .and_then(|w| resolve_web(&mut c, w, body_read_timeout.unwrap_or(Duration::from_secs(30))));
    let email = cfg.channels.email.as_ref().and_then(|e| resolve_email(&mut c, e));
    let ack_window = cfg
        .channels
        .email
        .as_ref()
        .map_or(Some(Duration::from_secs(600)), |e| c.duration("channels.email.ack_window", &e.ack_window));
    let undeliverable_for = cfg.channels.email.as_ref().map_or(Some(Duration::from_secs(7 * 86400)), |e| {
        c.duration("channels.email.undeliverable_for", &e.undeliverable_for)
    });
    for (key, section) in [("channels.telegram", &cfg.channels.telegram), ("channels.phone", &cfg.channels.phone)] {
        if section.is_some() {
            c.problem(key, "this version of Earshot has no such channel yet; remove the section");
        }
    }

    // Each batch is one multi-row statement per table; past ~1000 items SQLite's bind-parameter limit
    // (32,766) comes into reach once outbox jobs are counted.
    if !(1..=1000).contains(&cfg.intake.max_batch) {
        c.problem("intake.max_batch", "must be between 1 and 1000");
    }
    let postgres = cfg.database.url.starts_with("postgres:") || cfg.database.url.starts_with("postgresql:");
    let writers = match cfg.intake.writers {
        None => 1,
        Some(n) if !(1..=32).contains(&n) => {
            c.problem("intake.writers", "must be between 1 and 32");
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
    if let (Some(lease), Some((key, deadline))) = (lease, longest_send_deadline(cfg)) {
        // A send still running when its lease ends would be leased again and sent twice.
        if lease <= deadline {
            c.problem(
                "outbox.lease",
                format!(
                    "{} is not longer than {key} ({} s), the longest send deadline: a send still running when \
                     its lease ends would be sent twice; make outbox.lease longer or {key} shorter",
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
        },
        sla_first_response: first.ok_or_else(missing)?,
        sla_resolution: resolution.ok_or_else(missing)?,
        sla_check_every: sla_check_every.ok_or_else(missing)?.max(Duration::from_millis(100)),
        survey_window: survey_window.ok_or_else(missing)?,
        notify,
    })
}

/// The longest deadline of any one send, with the key that sets it: every downstream endpoint's
/// `timeout_secs`, the web callbacks' and each mailbox's SMTP timeout.
fn longest_send_deadline(cfg: &Config) -> Option<(String, Duration)> {
    let mut all: Vec<(String, u64)> = Vec::new();
    for (i, d) in cfg.downstream.iter().enumerate() {
        all.push((format!("downstream[{i}].timeout_secs"), d.timeout_secs));
    }
    if let Some(w) = &cfg.channels.web
        && w.sources.iter().any(|s| s.callback_url.is_some())
    {
        all.push(("channels.web.callback_timeout_secs".into(), w.callback_timeout_secs));
    }
    if let Some(e) = &cfg.channels.email {
        for (i, m) in e.mailboxes.iter().enumerate() {
            if let Some(smtp) = &m.smtp {
                all.push((format!("channels.email.mailboxes[{i}].smtp.timeout_secs"), smtp.timeout_secs));
            }
        }
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

/// The web channel's settings, or nothing when the channel is not compiled in.
#[cfg(feature = "web")]
pub type WebOut = earshot_channel_web::WebSettings;
#[cfg(not(feature = "web"))]
pub type WebOut = std::convert::Infallible;

fn resolve_web(c: &mut Checker, w: &super::WebConfig, body_read_timeout: Duration) -> Option<WebOut> {
    if w.max_body_bytes < 256 {
        c.problem("channels.web.max_body_bytes", "must be at least 256");
    }
    c.positive("channels.web.callback_timeout_secs", w.callback_timeout_secs);
    let mut sources = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, s) in w.sources.iter().enumerate() {
        let p = format!("channels.web.sources[{i}]");
        let name = c.required(&format!("{p}.name"), s.name.as_deref()).map(str::to_owned);
        if let Some(n) = &name {
            if !n.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                c.problem(format!("{p}.name"), "use letters, digits, - and _ only (it is part of a URL)");
            } else if !names.insert(n.clone()) {
                c.problem(format!("{p}.name"), format!("{n:?} is used by another source"));
            }
        }
        let keys = c.whsec_keys(&p, s.secret.as_deref(), s.secrets.as_deref());
        let callback = s.callback_url.as_deref().and_then(|u| c.http_url(&format!("{p}.callback_url"), u));
        let rate = NonZeroU32::new(s.rate_limit_per_sec);
        let burst = NonZeroU32::new(s.rate_limit_burst);
        if rate.is_none() {
            c.problem(format!("{p}.rate_limit_per_sec"), "must be greater than 0");
        }
        if burst.is_none() {
            c.problem(format!("{p}.rate_limit_burst"), "must be greater than 0");
        }
        #[cfg(feature = "web")]
        if let (Some(name), Some(keys), Some(rate_per_sec), Some(burst)) = (name, keys, rate, burst) {
            sources.push(earshot_channel_web::SourceSettings {
                name,
                keys,
                callback_url: callback,
                rate_per_sec,
                burst,
            });
        }
        #[cfg(not(feature = "web"))]
        let _ = (name, keys, callback, rate, burst, &mut sources);
    }
    #[cfg(feature = "web")]
    {
        Some(earshot_channel_web::WebSettings {
            max_body_bytes: w.max_body_bytes,
            body_read_timeout,
            callback_timeout: Duration::from_secs(w.callback_timeout_secs),
            sources,
        })
    }
    #[cfg(not(feature = "web"))]
    {
        let _ = (sources, body_read_timeout);
        c.problem("channels.web", "this build has no web channel (cargo feature `web`)");
        None
    }
}

/// The email channel's settings, or nothing when the channel is not compiled in.
#[cfg(feature = "email")]
pub type EmailOut = earshot_channel_email::settings::EmailSettings;
#[cfg(not(feature = "email"))]
pub type EmailOut = std::convert::Infallible;

#[cfg(feature = "email")]
fn security(c: &mut Checker, key: &str, v: &str) -> Option<earshot_channel_email::settings::Security> {
    use earshot_channel_email::settings::Security;
    match v {
        "tls" => Some(Security::Tls),
        "starttls" => Some(Security::Starttls),
        "plain" => Some(Security::Plain),
        _ => {
            c.problem(key, format!("{v:?} is not one of tls, starttls, plain"));
            None
        }
    }
}

/// Reads and checks a `ca_file`: `Some(None)` when unset, `Some(Some(pem))` when it holds
/// certificates, `None` (with the problem reported) when it cannot be used.
#[cfg(feature = "email")]
fn ca_file(c: &mut Checker, key: &str, path: Option<&str>) -> Option<Option<Vec<u8>>> {
    let Some(path) = path else { return Some(None) };
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => {
            c.problem(key, format!("cannot read {path}: {e}"));
            return None;
        }
    };
    match earshot_channel_email::tls::pem_certificates(&pem) {
        Ok(_) => Some(Some(pem)),
        Err(e) => {
            c.problem(key, format!("{path}: {e}"));
            None
        }
    }
}

#[cfg(feature = "email")]
fn resolve_email(c: &mut Checker, e: &super::EmailConfig) -> Option<EmailOut> {
    use earshot_channel_email::settings::{EmailSettings, ImapSettings, MailboxSettings, Security, SmtpSettings};
    let mut mailboxes = Vec::new();
    let mut names = std::collections::HashSet::new();
    if e.mailboxes.is_empty() {
        c.problem("channels.email.mailboxes", "configure at least one [[channels.email.mailboxes]]");
    }
    for (i, m) in e.mailboxes.iter().enumerate() {
        let p = format!("channels.email.mailboxes[{i}]");
        let name = c.required(&format!("{p}.name"), m.name.as_deref()).map(str::to_owned);
        if let Some(n) = &name
            && !names.insert(n.clone())
        {
            c.problem(format!("{p}.name"), format!("{n:?} is used by another mailbox"));
        }
        let address = c.required(&format!("{p}.address"), m.address.as_deref()).map(str::to_lowercase);
        if let Some(a) = &address
            && !a.contains('@')
        {
            c.problem(format!("{p}.address"), format!("{a:?} is not an email address"));
        }
        let imap = match &m.imap {
            None => {
                c.problem(format!("{p}.imap"), "missing");
                None
            }
            Some(im) => {
                let k = format!("{p}.imap");
                let host = c.required(&format!("{k}.host"), im.host.as_deref()).map(str::to_owned);
                let sec = security(c, &format!("{k}.security"), &im.security);
                let user = c.required(&format!("{k}.username"), im.username.as_deref()).map(str::to_owned);
                let pass = c
                    .required(&format!("{k}.password"), im.password.as_deref())
                    .and_then(|v| c.secret(&format!("{k}.password"), v));
                c.positive(&format!("{k}.poll_secs"), im.poll_secs);
                c.positive(&format!("{k}.batch"), u64::from(im.batch));
                let ca_pem = ca_file(c, &format!("{k}.ca_file"), im.ca_file.as_deref());
                match (host, sec, user, pass, ca_pem) {
                    (Some(host), Some(security), Some(username), Some(password), Some(ca_pem)) => Some(ImapSettings {
                        port: im.port.unwrap_or(if security == Security::Tls { 993 } else { 143 }),
                        host,
                        security,
                        username,
                        password: password.into(),
                        folder: im.folder.clone(),
                        idle: im.idle,
                        poll: Duration::from_secs(im.poll_secs.max(1)),
                        move_to: im.move_to.clone(),
                        batch: im.batch.max(1),
                        ca_pem,
                    }),
                    _ => None,
                }
            }
        };
        let smtp = match &m.smtp {
            None => {
                c.problem(format!("{p}.smtp"), "missing");
                None
            }
            Some(sm) => {
                let k = format!("{p}.smtp");
                let host = c.required(&format!("{k}.host"), sm.host.as_deref()).map(str::to_owned);
                let sec = security(c, &format!("{k}.security"), &sm.security);
                let pass = sm.password.as_deref().and_then(|v| c.secret(&format!("{k}.password"), v));
                if sm.username.is_some() != sm.password.is_some() {
                    c.problem(format!("{k}.password"), "username and password go together");
                }
                c.positive(&format!("{k}.timeout_secs"), sm.timeout_secs);
                let ca_pem = ca_file(c, &format!("{k}.ca_file"), sm.ca_file.as_deref());
                match (host, sec, ca_pem) {
                    (Some(host), Some(security), Some(ca_pem)) => Some(SmtpSettings {
                        port: sm.port.unwrap_or(match security {
                            Security::Tls => 465,
                            Security::Starttls => 587,
                            Security::Plain => 25,
                        }),
                        host,
                        security,
                        username: sm.username.clone(),
                        password: pass.map(Into::into),
                        timeout: Duration::from_secs(sm.timeout_secs.max(1)),
                        ca_pem,
                    }),
                    _ => None,
                }
            }
        };
        if let (Some(name), Some(address), Some(imap), Some(smtp)) = (name, address, imap, smtp) {
            mailboxes.push(MailboxSettings { name, address, display_name: m.display_name.clone(), imap, smtp });
        }
    }
    c.positive("channels.email.max_acks_per_recipient_per_hour", u64::from(e.max_acks_per_recipient_per_hour));
    Some(EmailSettings {
        mailboxes,
        max_attachment_bytes: e.max_attachment_bytes,
        max_message_bytes: e.max_message_bytes.max(1024),
        max_acks_per_recipient_per_hour: e.max_acks_per_recipient_per_hour,
        // Host and pid say where a lease holder runs; the random part keeps two gateways in one
        // process (or a pid reused after a restart) from passing for the same holder.
        instance: format!("{}-{}-{}", hostname(), std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
    })
}

#[cfg(not(feature = "email"))]
fn resolve_email(c: &mut Checker, _: &super::EmailConfig) -> Option<EmailOut> {
    c.problem("channels.email", "this build has no email channel (cargo feature `email`)");
    None
}

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
