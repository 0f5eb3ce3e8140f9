//! The HTTP server: the router on hyper's HTTP/1 connections, with the limits a public endpoint
//! needs and `axum::serve` does not offer.
//!
//! - A deadline for a request's headers (`server.header_read_timeout`): a client that sends a
//!   header byte a second, or opens a connection and says nothing, is cut off and holds nothing.
//! - A cap on open connections (`server.max_connections`): past it, new connections wait in the
//!   kernel's backlog until one closes, instead of each taking memory and a task.
//!
//! Shutdown is graceful, as with `axum::serve`: the listener closes, requests in flight finish,
//! idle connections close, and `serve` returns when the last connection has.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the server allows a client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown`, then drains the open connections.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let mut at_cap_logged = false;
    loop {
        if permits.available_permits() == 0 && !at_cap_logged {
            tracing::warn!(
                max_connections = limits.max_connections,
                "Connection cap reached; new connections wait until one closes."
            );
            at_cap_logged = true;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    tracing::trace!(%peer, "Connection accepted.");
                    stream
                }
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "Could not accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        at_cap_logged = false;
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Connection closed with an error.");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
