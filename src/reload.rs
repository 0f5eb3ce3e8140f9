//! `SIGHUP`: new secrets, admin token and templates, without dropping in-flight requests or jobs.
//!
//! `earshot serve` reads and checks the file again first; a file with problems changes nothing
//! (each problem is logged with its key path there). Here, templates are loaded before anything is
//! put in force, so a broken template keeps the running config too. What is swapped: the web
//! sources' and downstream endpoints' secrets (and the endpoints' URLs and timeouts), the admin
//! token, the templates. Every request or send already running finishes with what it began with.
//! Keys whose change takes a restart (the listen address, the database, which endpoints, sources
//! and mailboxes exist) are named in the log, and keep their running value.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, Settings};
use crate::live::Live;
use crate::notify::Templates;

pub struct Reloader {
    pub running: Settings,
    pub templates: Arc<Live<Templates>>,
    pub endpoints: Arc<Live<Vec<Endpoint>>>,
    pub admin_token: Arc<Live<Option<SecretString>>>,
    #[cfg(feature = "web")]
    pub web: Option<earshot_channel_web::WebChannel>,
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = it.collect();
    v.sort_unstable();
    v
}

impl Reloader {
    pub async fn run(mut self, mut reloads: mpsc::Receiver<Settings>, shutdown: CancellationToken) {
        loop {
            let new = tokio::select! {
                n = reloads.recv() => match n { Some(n) => n, None => return },
                _ = shutdown.cancelled() => return,
            };
            self.apply(new);
        }
    }

    /// The keys whose new value takes a restart.
    fn restart_keys(&self, new: &Settings) -> Vec<&'static str> {
        let old = &self.running;
        let mut keys = Vec::new();
        if old.listen != new.listen {
            keys.push("server.listen");
        }
        if old.database.url != new.database.url {
            keys.push("database.url");
        }
        if old.public_url != new.public_url {
            keys.push("server.public_url");
        }
        if names(old.downstream.iter().map(|e| e.name.as_str()))
            != names(new.downstream.iter().map(|e| e.name.as_str()))
        {
            keys.push("downstream (endpoints added or removed)");
        }
        #[cfg(feature = "email")]
        {
            let mb = |s: &Settings| -> Vec<String> {
                s.email
                    .as_ref()
                    .map(|e| e.mailboxes.iter().map(|m| format!("{}={}", m.name, m.address)).collect())
                    .unwrap_or_default()
            };
            if mb(old) != mb(new) {
                keys.push("channels.email.mailboxes");
            }
        }
        keys
    }

    fn apply(&mut self, new: Settings) {
        let templates = match Templates::load(&new.templates_dir) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "Config reload refused: a template does not load; the running config stays.");
                return;
            }
        };
        for key in self.restart_keys(&new) {
            tracing::warn!(key, "Changed in the config file; takes effect after a restart (the running value stays).");
        }
        self.templates.set(templates);
        let token_changed = match (self.running.admin_token.as_ref(), new.admin_token.as_ref()) {
            (Some(a), Some(b)) => a.expose_secret() != b.expose_secret(),
            (None, None) => false,
            _ => true,
        };
        self.admin_token.set(new.admin_token.clone());
        // The endpoints running (their delivery loops exist) take their new secrets, URL and timeout.
        let running: Vec<Endpoint> = self
            .running
            .downstream
            .iter()
            .map(|old| new.downstream.iter().find(|n| n.name == old.name).cloned().unwrap_or_else(|| old.clone()))
            .collect();
        self.endpoints.set(running.clone());
        #[cfg(feature = "web")]
        if let (Some(web), Some(w)) = (&self.web, &new.web) {
            for name in web.rotate(&w.sources) {
                tracing::warn!(key = "channels.web.sources", source = %name, "Web source added or removed; takes effect after a restart.");
            }
        }
        tracing::info!(
            admin_token_changed = token_changed,
            downstream = running.len(),
            "Config reloaded: secrets, admin token and templates in force."
        );
        let keep = std::mem::replace(&mut self.running, new);
        // What takes a restart keeps its running value, so the next reload compares with it.
        self.running.listen = keep.listen;
        self.running.database = keep.database;
        self.running.public_url = keep.public_url;
        self.running.downstream = running;
        #[cfg(feature = "email")]
        {
            self.running.email = keep.email;
        }
    }
}
