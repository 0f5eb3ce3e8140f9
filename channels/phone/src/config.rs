//! The phone channel's config section, `[channels.phone]`: plain serde with documented defaults, and
//! its check into [`PhoneSettings`] (every problem with its key path).

use std::time::Duration;

use earshot_channel::config::Checker;
use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneConfig {
    /// The provider account's auth token: signs its callbacks, authenticates our API calls.
    /// `env:NAME` allowed. Required.
    pub auth_token: Option<String>,
    /// The provider account's SID (`AC…`), the user of the Messages API's basic auth. Required.
    pub account_sid: Option<String>,
    /// The number SMS answers come from, E.164 (`+8610…`). Required.
    pub from_number: Option<String>,
    /// The provider's REST API. Default `https://api.twilio.com`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The region numbers without a country code are read in (ISO 3166, e.g. `CN`). Default `CN`.
    #[serde(default = "default_region")]
    pub default_region: String,
    /// The public base URL the provider calls (and signs), when it is not `server.public_url` (a
    /// proxy in front of the gateway). Default `server.public_url`.
    pub public_url: Option<String>,
    /// The hotline's name in Earshot: the cases' source and the outbox's sender. Default `hotline`.
    #[serde(default = "default_name")]
    pub name: String,
    /// A number's next SMS joins its open case if that case changed within this window. Default `24h`.
    #[serde(default = "default_follow_up_window")]
    pub follow_up_window: String,
    /// Largest callback body accepted. Default 16384.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Deadline of one SMS sent through the API. Default 15.
    #[serde(default = "default_send_timeout_secs")]
    pub send_timeout_secs: u64,
    /// The language calls are answered in: `zh` (default) or `en`.
    #[serde(default = "default_language")]
    pub language: String,
    /// Longest recorded complaint, in seconds. Default 120.
    #[serde(default = "default_record_max_secs")]
    pub record_max_secs: u64,
    /// Call-centre systems that POST signed JSON events to `/v1/inbound/phone/events/{name}`.
    #[serde(default)]
    pub pbx_sources: Vec<PbxSourceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbxSourceConfig {
    pub name: Option<String>,
    /// `whsec_…` secret shared with the PBX (Standard Webhooks); `env:NAME` allowed.
    pub secret: Option<String>,
    /// Several secrets, during a rotation (instead of `secret`).
    pub secrets: Option<Vec<String>>,
}

fn default_language() -> String {
    "zh".into()
}
fn default_record_max_secs() -> u64 {
    120
}

fn default_api_url() -> String {
    "https://api.twilio.com".into()
}
fn default_region() -> String {
    "CN".into()
}
fn default_name() -> String {
    "hotline".into()
}
fn default_follow_up_window() -> String {
    "24h".into()
}
fn default_max_body_bytes() -> usize {
    16_384
}
fn default_send_timeout_secs() -> u64 {
    15
}

/// The checked section.
#[derive(Debug, Clone)]
pub struct PhoneSettings {
    pub auth_token: SecretString,
    pub account_sid: String,
    /// E.164.
    pub from_number: String,
    pub api_url: String,
    pub region: phonenumber::country::Id,
    /// Without a trailing slash.
    pub public_url: String,
    /// `public_url` was configured (here or as `server.public_url`); without it the gateway uses the
    /// address it actually listens on.
    pub public_url_set: bool,
    pub name: String,
    pub follow_up_window: Duration,
    pub max_body_bytes: usize,
    pub send_timeout: Duration,
    pub language: earshot_channel::Lang,
    pub record_max_secs: u64,
    /// PBX sources by name, with their secrets.
    pub pbx_sources: std::collections::HashMap<String, earshot_channel::webhooks::SigningKeys>,
}

impl PhoneConfig {
    /// Checks the section (`channels.phone`) into `c`; `server_public_url` is `server.public_url`
    /// (or its default), `server_public_url_set` whether it was configured.
    pub fn resolve(
        &self,
        c: &mut Checker,
        server_public_url: &str,
        server_public_url_set: bool,
    ) -> Option<PhoneSettings> {
        const P: &str = "channels.phone";
        let token = c
            .required(&format!("{P}.auth_token"), self.auth_token.as_deref())
            .and_then(|t| c.secret(&format!("{P}.auth_token"), t));
        let sid = c.required(&format!("{P}.account_sid"), self.account_sid.as_deref()).map(str::to_owned);
        let region: Option<phonenumber::country::Id> = match self.default_region.parse() {
            Ok(r) => Some(r),
            Err(_) => {
                c.problem(
                    format!("{P}.default_region"),
                    format!("{:?} is not a region code like \"CN\" or \"US\"", self.default_region),
                );
                None
            }
        };
        let from =
            c.required(&format!("{P}.from_number"), self.from_number.as_deref()).and_then(
                |n| match crate::number::e164(n, region.unwrap_or(phonenumber::country::Id::CN)) {
                    Some(e) => Some(e),
                    None => {
                        c.problem(format!("{P}.from_number"), format!("{n:?} is not a phone number"));
                        None
                    }
                },
            );
        let api_url = c.http_url(&format!("{P}.api_url"), &self.api_url).map(|u| u.trim_end_matches('/').to_owned());
        let public_url_set = self.public_url.is_some() || server_public_url_set;
        let public_url = match &self.public_url {
            Some(u) => c.http_url(&format!("{P}.public_url"), u),
            None => Some(server_public_url.to_owned()),
        }
        .map(|u| u.trim_end_matches('/').to_owned());
        if self.name.is_empty() || !self.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
            c.problem(format!("{P}.name"), "use letters, digits, - and _ only");
        }
        let window = c.duration(&format!("{P}.follow_up_window"), &self.follow_up_window);
        if self.max_body_bytes < 1024 {
            c.problem(format!("{P}.max_body_bytes"), "must be at least 1024");
        }
        c.positive(&format!("{P}.send_timeout_secs"), self.send_timeout_secs);
        let language = earshot_channel::Lang::from_tag(&self.language);
        if language.is_none() {
            c.problem(format!("{P}.language"), format!("{:?} is not one of \"zh\", \"en\"", self.language));
        }
        if !(5..=3600).contains(&self.record_max_secs) {
            c.problem(format!("{P}.record_max_secs"), "must be between 5 and 3600");
        }
        let mut pbx_sources = std::collections::HashMap::new();
        for (i, src) in self.pbx_sources.iter().enumerate() {
            let p = format!("{P}.pbx_sources[{i}]");
            let name = c.required(&format!("{p}.name"), src.name.as_deref()).map(str::to_owned);
            if let Some(n) = &name
                && (!n.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                    || pbx_sources.contains_key(n))
            {
                c.problem(format!("{p}.name"), "use letters, digits, - and _ only, once each (it is part of a URL)");
            }
            let keys = c.whsec_keys(&p, src.secret.as_deref(), src.secrets.as_deref());
            if let (Some(n), Some(k)) = (name, keys) {
                pbx_sources.insert(n, k);
            }
        }
        Some(PhoneSettings {
            auth_token: SecretString::from(token?),
            account_sid: sid?,
            from_number: from?,
            api_url: api_url?,
            region: region?,
            public_url: public_url?,
            public_url_set,
            name: self.name.clone(),
            follow_up_window: window?,
            max_body_bytes: self.max_body_bytes,
            send_timeout: Duration::from_secs(self.send_timeout_secs.max(1)),
            language: language?,
            record_max_secs: self.record_max_secs,
            pbx_sources,
        })
    }
}
