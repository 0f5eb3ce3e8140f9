//! The web channel's config section, `[channels.web]`: plain serde with documented defaults, and
//! its check into [`WebSettings`] (every problem with its key path).

use std::num::NonZeroU32;
use std::time::Duration;

use earshot_channel::config::Checker;
use serde::Deserialize;

use crate::{SourceSettings, WebSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Largest accepted body. Default 65536.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Timeout of one acknowledgement POST to a `callback_url`. Default 10.
    #[serde(default = "default_callback_timeout_secs")]
    pub callback_timeout_secs: u64,
    #[serde(default)]
    pub sources: Vec<WebSourceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSourceConfig {
    pub name: Option<String>,
    /// `whsec_…` secret shared with the web site's backend; `env:NAME` allowed.
    pub secret: Option<String>,
    /// Several secrets, during a rotation (instead of `secret`): a request signed with any is
    /// accepted, and callbacks carry one signature per secret.
    pub secrets: Option<Vec<String>>,
    /// Where acknowledgements are POSTed, signed with `secret`. Optional.
    pub callback_url: Option<String>,
    /// Sustained requests per second from this source. Default 50.
    #[serde(default = "default_rate")]
    pub rate_limit_per_sec: u32,
    /// Requests allowed at once above the sustained rate. Default 100.
    #[serde(default = "default_burst")]
    pub rate_limit_burst: u32,
}

fn default_max_body_bytes() -> usize {
    65536
}
fn default_callback_timeout_secs() -> u64 {
    10
}
fn default_rate() -> u32 {
    50
}
fn default_burst() -> u32 {
    100
}

impl WebConfig {
    /// Checks the section (`channels.web`) into `c`; the settings when nothing is wrong with it.
    /// `body_read_timeout` is the server's (`server.body_read_timeout`).
    pub fn resolve(&self, c: &mut Checker, body_read_timeout: Duration) -> Option<WebSettings> {
        let w = self;
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
            if let (Some(name), Some(keys), Some(rate_per_sec), Some(burst)) = (name, keys, rate, burst) {
                sources.push(SourceSettings { name, keys, callback_url: callback, rate_per_sec, burst });
            }
        }
        Some(WebSettings {
            max_body_bytes: w.max_body_bytes,
            body_read_timeout,
            callback_timeout: Duration::from_secs(w.callback_timeout_secs),
            sources,
        })
    }
}
