//! Earshot: an omnichannel complaint intake gateway.
//!
//! [`run`] is the whole gateway: what `earshot serve` runs and what tests start in-process on an
//! ephemeral port. Data flows one way at a time: channel → intake (one transaction per batch) →
//! outbox → channel send / downstream webhook. See DESIGN.md.

pub mod cases;
pub mod channels;
pub mod config;
pub mod downstream;
pub mod http;
pub mod intake;
pub mod lifecycle;
pub mod live;
pub mod notify;
pub mod outbox;
pub mod reload;
pub mod reparse;
pub mod schema;
pub mod store;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::intake::{Builder, IntakeService, WriterContext};
use crate::outbox::Deliverer;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("templates: {0}")]
    Templates(#[from] notify::TemplateError),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("channel: {0}")]
    Channel(#[from] earshot_channel::ChannelError),
    #[error("HTTP server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Unix time in milliseconds, the store's time unit.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

static LOG_DROPS: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Where `/metrics` reads how many log lines the non-blocking log writer dropped.
pub fn set_log_drop_counter(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = LOG_DROPS.set(counter);
}

/// Log lines dropped because the log thread fell behind (0 without the non-blocking writer).
pub fn log_lines_dropped() -> u64 {
    LOG_DROPS.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            // Commit to delivered: milliseconds when all is well, hours when a destination was down.
            let delivery = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("earshot_delivery_latency_seconds".into()), &delivery)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("earshot_ingest_latency_seconds".into()), &latency)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("earshot_batch_size".into()), &sizes))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency))
                .and_then(|b| b.install_recorder())
                .map_err(|e| tracing::warn!(error = %e, "Metrics recorder not installed; /metrics answers 404."))
                .ok()
        })
        .clone()
}

/// Runs the gateway on `listener` until `shutdown` is cancelled, then stops in order: the HTTP server
/// finishes in-flight requests, the intake writer commits what is queued, outbox workers record the
/// deliveries they started. Returns when all of that is done (or `shutdown_grace` has passed).
pub async fn run(settings: Settings, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RunError> {
    run_with_channels(settings, listener, shutdown, Vec::new()).await
}

/// [`run`], with channels built outside the config beside the configured ones: a channel written
/// against `earshot-channel` alone plugs in here (the integration tests' contract channel does).
pub async fn run_with_channels(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    extra: Vec<Arc<dyn earshot_channel::Channel>>,
) -> Result<(), RunError> {
    run_full(settings, listener, shutdown, extra, tokio::sync::mpsc::channel(1).1).await
}

/// [`run_with_channels`], taking new settings from `reloads` while it runs (what `earshot serve`
/// does on SIGHUP): secrets, the admin token and templates are put in force (see [`reload`]).
pub async fn run_full(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    extra: Vec<Arc<dyn earshot_channel::Channel>>,
    reloads: tokio::sync::mpsc::Receiver<Settings>,
) -> Result<(), RunError> {
    let store = store::open(&settings.database.url, settings.database.max_connections).await?;
    let templates = Arc::new(live::Live::new(notify::Templates::load(&settings.templates_dir)?));
    let client = reqwest::Client::builder()
        .user_agent(concat!("Earshot/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        // A 3xx is a failed delivery, never followed: reqwest would follow a 301/302 as a GET, and
        // a 200 from wherever it leads would count as delivered.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // Signed webhooks (downstream deliveries, web callbacks) go out on hyper's client instead; it
    // never follows a redirect either.
    let webhooks = earshot_channel::webhooks::WebhookClient::new(
        concat!("Earshot/", env!("CARGO_PKG_VERSION")),
        Duration::from_secs(10),
    );
    // Survey links and the phone provider's callbacks point here: the configured public URL, else
    // the address actually bound (which differs from `server.listen` when that asks for port 0).
    let public_url = match (settings.public_url_set, listener.local_addr()) {
        (false, Ok(addr)) => format!("http://{addr}"),
        _ => settings.public_url.clone(),
    };
    let mut channels = channels::Channels::from_settings(&settings, &client, &webhooks, &public_url)?;
    for c in extra {
        channels = channels.with(c)?;
    }
    let channels = Arc::new(channels);
    let wake = Arc::new(Notify::new());
    let lifecycle = Arc::new(lifecycle::Lifecycle::new(
        store.clone(),
        templates.clone(),
        settings.downstream.clone().into(),
        lifecycle::LifecycleSettings {
            notify: settings.notify.clone(),
            survey_window: settings.survey_window,
            public_url,
            channel_max_attempts: i64::from(settings.outbox.max_attempts),
            sla_scan_every: settings.sla_check_every,
        },
        wake.clone(),
    ));
    let sla = tokio::spawn(lifecycle.clone().run_sla(shutdown.clone()));
    let builder = Builder {
        templates: templates.clone(),
        // Every channel's own identities: never acknowledged, so two gateways cannot loop.
        own_identities: channels.all().flat_map(|(_, c)| c.own_identities()).map(|r| r.key()).collect(),
        ack_window: settings.ack_window,
        loop_free: channels.all().filter(|(_, c)| c.loop_free()).map(|(k, _)| k).collect(),
        downstream: settings.downstream.clone().into(),
        channel_max_attempts: i64::from(settings.outbox.max_attempts),
        sla_first_response: settings.sla_first_response,
        sla_resolution: settings.sla_resolution,
    };
    let dispatch = Arc::new(outbox::Dispatch::new(settings.outbox.lease));
    let (intake, writer) = IntakeService::start(WriterContext {
        store: store.clone(),
        builder: Arc::new(builder),
        max_batch: settings.max_batch,
        writers: settings.writers,
        outbox_wake: wake.clone(),
        dispatch: dispatch.clone(),
        suppress_for: settings.undeliverable_for,
        lifecycle: lifecycle.clone(),
    });

    let endpoints = Arc::new(live::Live::new(settings.downstream.clone()));
    let admin_token = Arc::new(live::Live::new(settings.admin_token.clone()));
    let reloader = reload::Reloader {
        running: settings.clone(),
        templates: templates.clone(),
        endpoints: endpoints.clone(),
        admin_token: admin_token.clone(),
        #[cfg(feature = "web")]
        web: channels.web.clone(),
    };
    let reloading = tokio::spawn(reloader.run(reloads, shutdown.clone()));
    let deliverer = Arc::new(Deliverer {
        endpoints: endpoints.clone(),
        channels: channels.clone(),
        client: webhooks,
        lifecycle: lifecycle.clone(),
    });
    let workers = tokio::spawn(outbox::run_workers(
        store.clone(),
        deliverer,
        settings.outbox.clone(),
        wake.clone(),
        dispatch,
        shutdown.clone(),
    ));
    let mut pulls = tokio::task::JoinSet::new();
    for (kind, channel) in channels.all() {
        let (channel, intake, token) = (channel.clone(), intake.clone(), shutdown.clone());
        pulls.spawn(async move {
            if let Err(e) = channel.run(intake, token).await {
                tracing::error!(channel = %kind, error = %e, "Channel stopped with an error.");
            }
        });
    }

    let state = http::AppState {
        store: store.clone(),
        metrics: metrics_handle(),
        admin_token: admin_token.clone(),
        outbox_wake: wake,
        backlog_destinations: Default::default(),
    };
    let events = http::events::EventsState { lifecycle: lifecycle.clone(), endpoints: endpoints.clone() };
    let app = http::router(state, &channels, intake.clone(), events);
    let addr = listener.local_addr()?;
    tracing::info!(
        listen = %addr, database = store.backend(), channels = ?channels.names(),
        downstream = ?settings.downstream.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        "Earshot is listening on http://{addr}."
    );
    if settings.admin_token.is_none() {
        tracing::warn!("server.admin_token is not set: admin routes answer 401.");
    }

    let token = shutdown.clone();
    let limits = http::server::Limits {
        header_read_timeout: settings.header_read_timeout,
        max_connections: settings.max_connections,
    };
    let mut server = tokio::spawn(async move { http::server::serve(listener, app, limits, token).await });
    let grace = settings.shutdown_grace;
    let served = tokio::select! {
        r = &mut server => r,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "Requests still open after the grace period; closing them.");
            server.abort();
            server.await
        }
    };
    tracing::info!("HTTP server stopped; committing queued complaints and finishing deliveries.");
    intake.close();
    let _ = writer.await;
    // Pull channels stop at their next await point; one stuck in a slow server command is not
    // waited for longer than the grace period (its lease then simply expires).
    if tokio::time::timeout(grace, async { while pulls.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(grace_secs = grace.as_secs(), "A channel did not stop within the grace period; stopping it.");
        pulls.abort_all();
    }
    let _ = tokio::time::timeout(grace, workers).await;
    let _ = sla.await;
    reloading.abort();
    store.close().await;
    tracing::info!("Earshot stopped.");
    match served {
        Ok(r) => r.map_err(RunError::Serve),
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(RunError::Serve(std::io::Error::other(e))),
    }
}
