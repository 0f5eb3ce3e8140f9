//! One HTTP/1.1 keep-alive connection per closed-loop worker, on hyper's client connection API.
//!
//! The load shares the two cores with the gateway, so every microsecond it spends per request is
//! taken from what it measures. A closed-loop worker has at most one request in flight, so it needs
//! no pool: it owns one connection, as reqwest's pool would give it, and sends on it directly. That
//! skips what reqwest adds around hyper for each request (the redirect and retry layers, a copy of
//! its default headers, and parsing the URL again from the answer), which `perf` put at about a
//! third of the generator's CPU per request. The requests on the wire are the same.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// What went wrong with one request, by the kinds the summary counts.
pub type Failed = &'static str;

/// A worker's connection to `addr`, opened on first use and again after any failure.
pub struct Conn {
    addr: String,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: String, timeout: Duration) -> Conn {
        Conn { addr, timeout, sender: None }
    }

    /// Sends `req` and reads the whole answer, within the timeout. On any failure the connection
    /// is dropped, and the next request opens a new one.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), Failed> {
        let answer = tokio::time::timeout(self.timeout, self.exchange(req)).await.unwrap_or(Err("timeout"));
        if answer.is_err() {
            self.sender = None;
        }
        answer
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), Failed> {
        // A kept connection the server has closed (or that failed) is not ready: open another.
        if let Some(sender) = self.sender.as_mut()
            && sender.ready().await.is_err()
        {
            self.sender = None;
        }
        let sender = match self.sender.as_mut() {
            Some(sender) => sender,
            None => self.sender.insert(self.connect().await?),
        };
        let resp = sender.send_request(req).await.map_err(|_| "other")?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|_| "body")?.to_bytes();
        Ok((status, body))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failed> {
        let stream = tokio::net::TcpStream::connect(&self.addr).await.map_err(|_| "connect")?;
        stream.set_nodelay(true).map_err(|_| "connect")?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|_| "connect")?;
        // The connection's I/O runs in a task of its own, until the sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}
