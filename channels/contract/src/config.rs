//! What every config section reports its problems into: a key path and a message each, all of a
//! file's problems at once (`check-config` prints them). The core and each channel crate check their
//! own sections with the same [`Checker`].

use std::time::Duration;

use crate::webhooks::{SigningKey, SigningKeys};

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

/// Collects every problem of a config file with its key path, so that all are reported at once.
#[derive(Debug, Default)]
pub struct Checker {
    pub problems: Vec<Problem>,
}

impl Checker {
    pub fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { key: key.into(), message: message.into() });
    }

    pub fn required<'a>(&mut self, key: &str, value: Option<&'a str>) -> Option<&'a str> {
        match value.map(str::trim) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                self.problem(key, "missing");
                None
            }
        }
    }

    /// `env:NAME` is read from the environment; anything else is the secret itself.
    pub fn secret(&mut self, key: &str, value: &str) -> Option<String> {
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

    pub fn whsec(&mut self, key: &str, value: Option<&str>) -> Option<SigningKey> {
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
    pub fn whsec_keys(
        &mut self,
        prefix: &str,
        secret: Option<&str>,
        secrets: Option<&[String]>,
    ) -> Option<SigningKeys> {
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

    pub fn duration(&mut self, key: &str, value: &str) -> Option<Duration> {
        match humantime::parse_duration(value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(key, format!("{value:?} is not a duration like \"30s\" or \"5m\" ({e})"));
                None
            }
        }
    }

    pub fn http_url(&mut self, key: &str, value: &str) -> Option<String> {
        self.parsed(key, parse_http_url(value).map(|_| value.to_owned()))
    }

    /// The value of a check, or its problem under `key`.
    pub fn parsed<T>(&mut self, key: &str, value: Result<T, String>) -> Option<T> {
        value.map_err(|message| self.problem(key, message)).ok()
    }

    pub fn positive(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.problem(key, "must be greater than 0");
        }
    }
}

/// An http(s) URL with a host, read with the WHATWG rules; the error says what it is not.
pub fn parse_http_url(value: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        Ok(_) => Err(format!("{value:?} is not an http(s) URL")),
        Err(e) => Err(format!("{value:?} is not a URL ({e})")),
    }
}
