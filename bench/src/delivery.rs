//! The downstream side of a whole-path run: a ticket-store receiver inside the load generator.
//!
//! The gateway forwards each accepted complaint as a signed `case.created` to `POST /events` here;
//! the receiver answers `200 {"ticket_id": …}` at once. Living in the same process as the load, it
//! can join each case's 202 (seen by the load) with its delivery (seen here) by case id, on one
//! clock: that gives the 202 → received latency and how many accepted complaints were delivered.
//! A delivery may arrive before its 202 has been read; whichever side comes second does the join.
//!
//! `--hung ADDR` also runs an endpoint that accepts connections and never answers, for the figure
//! "one hung destination does not slow the others".

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

/// One side of a case seen, waiting for the other.
enum Seen {
    Accepted(Instant),
    Received(Instant),
}

#[derive(Default)]
struct Joined {
    waiting: HashMap<String, Seen>,
    /// 202 → received, of every joined case, in µs.
    latencies_us: Vec<u32>,
    matched: u64,
}

/// Joins 202s and deliveries by case id.
#[derive(Default)]
pub struct Tracker {
    joined: Mutex<Joined>,
    accepted: AtomicU64,
    /// Deliveries received (a repeat of a case counts again).
    received: AtomicU64,
}

impl Tracker {
    /// The load saw a 202 for `case_id`.
    pub fn accepted(&self, case_id: &str, at: Instant) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.join(case_id, Seen::Accepted(at));
    }

    fn received(&self, case_id: &str, at: Instant) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.join(case_id, Seen::Received(at));
    }

    fn join(&self, case_id: &str, seen: Seen) {
        let Ok(mut j) = self.joined.lock() else { return };
        match (j.waiting.remove(case_id), seen) {
            (Some(Seen::Accepted(a)), Seen::Received(r)) | (Some(Seen::Received(r)), Seen::Accepted(a)) => {
                j.matched += 1;
                j.latencies_us.push(super::micros(r.saturating_duration_since(a)));
            }
            (None, seen) => {
                j.waiting.insert(case_id.to_owned(), seen);
            }
            // The same side twice (a repeated delivery): keep the first.
            (Some(first), _) => {
                j.waiting.insert(case_id.to_owned(), first);
            }
        }
    }

    /// Accepted complaints delivered so far.
    pub fn matched(&self) -> u64 {
        self.joined.lock().map(|j| j.matched).unwrap_or(0)
    }

    /// After the load: waits up to `drain` for the rest to be delivered, then prints the
    /// `delivery:` line. `in_load` is what had been delivered when the load stopped, over `secs`.
    pub async fn report(&self, prefix: &str, in_load: u64, secs: f64, drain: Duration) {
        let started = Instant::now();
        let accepted = self.accepted.load(Ordering::Relaxed);
        let mut drained_ms = None;
        while started.elapsed() < drain {
            if self.matched() >= accepted {
                drained_ms = Some(started.elapsed().as_millis());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (matched, mut lat) = match self.joined.lock() {
            Ok(j) => (j.matched, j.latencies_us.clone()),
            Err(_) => (0, Vec::new()),
        };
        lat.sort_unstable();
        let pct = |p| super::percentile_ms(&lat, p);
        println!(
            "{prefix}-delivery: accepted={accepted} delivered_in_load={in_load} delivered_rate={:.1}/s \
             delivered_after_drain={matched} backlog={} delivered_share={:.4} drain_secs={} all_delivered_after_ms={} \
             received={} p50_ms={} p90_ms={} p99_ms={} max_ms={}",
            in_load as f64 / secs,
            accepted.saturating_sub(matched),
            if accepted == 0 { 0.0 } else { matched as f64 / accepted as f64 },
            drain.as_secs_f64(),
            drained_ms.map_or("never".to_owned(), |ms| ms.to_string()),
            self.received.load(Ordering::Relaxed),
            pct(50.0),
            pct(90.0),
            pct(99.0),
            pct(100.0),
        );
    }
}

/// The one field of an event the receiver reads, `data.case.id`; the rest is skipped, not built
/// (building the whole event as a `serde_json::Value` was the receiver's largest cost).
#[derive(serde::Deserialize)]
struct EventCaseId {
    data: EventData,
}

#[derive(serde::Deserialize)]
struct EventData {
    case: CaseIdField,
}

#[derive(serde::Deserialize)]
struct CaseIdField {
    id: String,
}

async fn events(State(tracker): State<Arc<Tracker>>, body: Bytes) -> impl axum::response::IntoResponse {
    let at = Instant::now();
    let id = serde_json::from_slice::<EventCaseId>(&body).map(|e| e.data.case.id).unwrap_or_default();
    tracker.received(&id, at);
    // The ticket id is the case id with a prefix: no escaping needed.
    (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "application/json")], format!(r#"{{"ticket_id":"T-{id}"}}"#))
}

/// Serves the receiver on `listen` (`POST /events`) until the process ends.
pub async fn serve_receiver(listen: &str, tracker: Arc<Tracker>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let app = axum::Router::new().route("/events", post(events)).with_state(tracker);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("note: the receiver stopped: {e}");
        }
    });
    Ok(())
}

/// An endpoint on `listen` that accepts every connection and never answers; connections stay
/// open until the process ends.
pub async fn serve_hung(listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    Ok(())
}
