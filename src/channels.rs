//! The only registry of channels: config section → `Arc<dyn Channel>`, one exhaustive `match` over
//! [`ChannelKind`]. Adding a channel adds one arm here (and its crate, config section, templates).

use std::collections::HashMap;
use std::sync::Arc;

use earshot_channel::{Channel, ChannelError, ChannelKind};

use crate::config::Settings;

pub struct Channels {
    map: HashMap<ChannelKind, Arc<dyn Channel>>,
    /// The web channel itself, for what only it has: its secrets rotated on SIGHUP.
    #[cfg(feature = "web")]
    pub web: Option<earshot_channel_web::WebChannel>,
}

impl Channels {
    /// Builds every channel the settings enable.
    /// `public_url` is where the gateway is reached (the configured one, else the bound address).
    pub fn from_settings(
        settings: &Settings,
        client: &reqwest::Client,
        webhooks: &earshot_channel::webhooks::WebhookClient,
        public_url: &str,
    ) -> Result<Channels, ChannelError> {
        let mut map: HashMap<ChannelKind, Arc<dyn Channel>> = HashMap::new();
        #[cfg(feature = "web")]
        let web = settings.web.as_ref().map(|w| earshot_channel_web::WebChannel::new(w.clone(), webhooks.clone()));
        for kind in ChannelKind::ALL {
            let channel: Option<Arc<dyn Channel>> = match kind {
                #[cfg(feature = "web")]
                ChannelKind::Web => web.clone().map(|w| Arc::new(w) as _),
                #[cfg(feature = "email")]
                ChannelKind::Email => match &settings.email {
                    Some(email) => Some(Arc::new(earshot_channel_email::EmailChannel::new(email.clone())?) as _),
                    None => None,
                },
                #[cfg(feature = "telegram")]
                ChannelKind::Telegram => match &settings.telegram {
                    Some(t) => Some(Arc::new(earshot_channel_telegram::TelegramChannel::new(t.clone())?) as _),
                    None => None,
                },
                #[cfg(feature = "phone")]
                ChannelKind::Phone => settings.phone.as_ref().map(|p| {
                    let mut p = p.clone();
                    if !p.public_url_set {
                        p.public_url = public_url.trim_end_matches('/').to_owned();
                    }
                    Arc::new(earshot_channel_phone::PhoneChannel::new(p, client.clone())) as _
                }),
                #[allow(unreachable_patterns)]
                _ => None,
            };
            if let Some(c) = channel {
                map.insert(kind, c);
            }
        }
        let _ = (settings, client, webhooks, public_url);
        Ok(Channels {
            map,
            #[cfg(feature = "web")]
            web,
        })
    }

    /// Adds a channel built outside the config (an embedding program's, or a test's). Refused when
    /// its kind is already configured.
    pub fn with(mut self, channel: Arc<dyn Channel>) -> Result<Channels, ChannelError> {
        let kind = channel.kind();
        if self.map.contains_key(&kind) {
            return Err(ChannelError(format!("channel {kind} is configured twice")));
        }
        self.map.insert(kind, channel);
        Ok(self)
    }

    pub fn get(&self, kind: ChannelKind) -> Option<Arc<dyn Channel>> {
        self.map.get(&kind).cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = (ChannelKind, &Arc<dyn Channel>)> {
        self.map.iter().map(|(k, c)| (*k, c))
    }

    /// Names of enabled channels, for the start-up log.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.map.keys().map(|k| k.as_str()).collect();
        v.sort_unstable();
        v
    }
}
