//! The only registry of channels: config section → `Arc<dyn Channel>`.

use std::collections::HashMap;
use std::sync::Arc;

use earshot_channel::{Channel, ChannelError, ChannelKind};

use crate::config::Settings;

pub struct Channels {
    map: HashMap<ChannelKind, Arc<dyn Channel>>,
}

impl Channels {
    /// Builds every channel the settings enable.
    pub fn from_settings(settings: &Settings, client: &reqwest::Client) -> Result<Channels, ChannelError> {
        let mut map: HashMap<ChannelKind, Arc<dyn Channel>> = HashMap::new();
        #[cfg(feature = "web")]
        if let Some(web) = &settings.web {
            map.insert(ChannelKind::Web, Arc::new(earshot_channel_web::WebChannel::new(web.clone(), client.clone())));
        }
        #[cfg(feature = "email")]
        if let Some(email) = &settings.email {
            map.insert(ChannelKind::Email, Arc::new(earshot_channel_email::EmailChannel::new(email.clone())?));
        }
        let _ = (settings, client);
        Ok(Channels { map })
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
