//! The HTTP surface: channel routes, operations routes, admin routes, schemas.

mod admin;
pub mod error;
pub mod events;
mod ops;
pub mod server;

use std::sync::Arc;

use earshot_channel::Intake;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use tokio::sync::Notify;

use crate::channels::Channels;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub metrics: Option<PrometheusHandle>,
    /// Swapped on SIGHUP.
    pub admin_token: Arc<crate::live::Live<Option<SecretString>>>,
    pub outbox_wake: Arc<Notify>,
    /// Destinations that had a backlog at the last `/metrics` scrape.
    pub backlog_destinations: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Every route of the gateway.
pub fn router(
    state: AppState,
    channels: &Channels,
    intake: Arc<dyn Intake>,
    events: events::EventsState,
) -> axum::Router {
    let mut app = axum::Router::new()
        .merge(ops::routes(channels))
        .merge(admin::routes())
        .with_state(state)
        .merge(events::routes(events));
    for (_, channel) in channels.all() {
        if let Some(routes) = channel.routes(intake.clone()) {
            app = app.merge(routes);
        }
    }
    app
}
