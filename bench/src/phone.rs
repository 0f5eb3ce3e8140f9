//! The phone channel's figures (`bench/phone.sh`). This process is the provider: it signs callbacks
//! as it does (`X-Twilio-Signature`), serves its Messages API (`201` for every SMS) and is the
//! ticket store (`POST /events`, `200`).
//!
//! - `voice`: the TwiML answer time of the incoming-call callback, open loop at `rate` calls/s,
//!   measured from each request's scheduled start (a slow gateway cannot hide its queue).
//! - `sms`: signed SMS callbacks committed per second (each 200 means committed), closed loop with
//!   `concurrency` senders, each SMS from its own number (a new case, an SMS acknowledgement); then
//!   the time until every case reached the ticket store and every acknowledgement the Messages API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Figure {
    Voice,
    Sms,
}

#[derive(Args)]
pub struct PhoneArgs {
    #[arg(long, value_enum)]
    figure: Figure,
    /// The gateway's base URL.
    #[arg(long)]
    url: String,
    /// The public URL the gateway's `[channels.phone] public_url` names (what is signed).
    #[arg(long)]
    public_url: String,
    /// The auth token of `[channels.phone]`.
    #[arg(long)]
    token: String,
    /// Where this process serves the Messages API and the ticket store.
    #[arg(long)]
    listen: String,
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    #[arg(long, default_value = "phone")]
    label: String,
}

#[derive(Default)]
struct Counts {
    sms_sent: AtomicU64,
    events: AtomicU64,
}

async fn messages(State(c): State<Arc<Counts>>) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let n = c.sms_sent.fetch_add(1, Ordering::SeqCst);
    (
        axum::http::StatusCode::CREATED,
        axum::Json(serde_json::json!({ "sid": format!("SM{n:032}"), "status": "queued" })),
    )
}

async fn events(State(c): State<Arc<Counts>>) -> axum::Json<serde_json::Value> {
    c.events.fetch_add(1, Ordering::SeqCst);
    axum::Json(serde_json::json!({}))
}

fn signed(client: &reqwest::Client, a: &PhoneArgs, path: &str, params: &[(String, String)]) -> reqwest::RequestBuilder {
    let signature = earshot_channel_phone::signature::sign(&a.token, &format!("{}{path}", a.public_url), params);
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    client
        .post(format!("{}{path}", a.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(body)
}

fn pairs(p: &[(&str, String)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn run(a: PhoneArgs) -> anyhow::Result<()> {
    let counts = Arc::new(Counts::default());
    let app = Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
        .route("/events", post(events))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    match a.figure {
        Figure::Voice => {
            let total = (a.rate * a.duration) as u64;
            let start = Instant::now() + Duration::from_millis(200);
            let mut tasks = Vec::with_capacity(total as usize);
            for i in 0..total {
                let at = start + Duration::from_secs_f64(i as f64 / a.rate);
                let params = pairs(&[
                    ("CallSid", format!("CA{i:032}")),
                    ("From", format!("+86139{:08}", i % 100_000_000)),
                    ("To", "+8610085000000".to_owned()),
                    ("CallStatus", "ringing".to_owned()),
                    ("Direction", "inbound".to_owned()),
                ]);
                let req = signed(&client, &a, "/v1/inbound/phone/voice", &params);
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    let ok = req.send().await.is_ok_and(|r| r.status() == 200);
                    (ok, at.elapsed().as_secs_f64() * 1000.0)
                }));
            }
            let mut lat = Vec::with_capacity(tasks.len());
            let mut failed = 0;
            for t in tasks {
                let (ok, ms) = t.await?;
                if ok {
                    lat.push(ms);
                } else {
                    failed += 1;
                }
            }
            lat.sort_by(f64::total_cmp);
            println!(
                "{}: figure=voice rate={} calls={} failed={failed} twiml_ms_p50={:.2} twiml_ms_p99={:.2} twiml_ms_max={:.2}",
                a.label,
                a.rate,
                total,
                percentile(&lat, 50.0),
                percentile(&lat, 99.0),
                lat.last().copied().unwrap_or(f64::NAN)
            );
        }
        Figure::Sms => {
            let next = Arc::new(AtomicU64::new(0));
            let stop = Instant::now() + Duration::from_secs_f64(a.duration);
            let t0 = Instant::now();
            let mut workers = Vec::new();
            for _ in 0..a.concurrency {
                let (client, next) = (client.clone(), next.clone());
                let a2 = PhoneArgs { label: String::new(), ..a.clone_args() };
                workers.push(tokio::spawn(async move {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while Instant::now() < stop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let params = pairs(&[
                            ("MessageSid", format!("SM{i:032}")),
                            ("From", format!("+86138{:08}", i % 100_000_000)),
                            ("To", "+8610085000000".to_owned()),
                            ("Body", format!("订单 {i} 的商品到货时已损坏，请尽快处理。")),
                            ("NumMedia", "0".to_owned()),
                        ]);
                        match signed(&client, &a2, "/v1/inbound/phone/sms", &params).send().await {
                            Ok(r) if r.status() == 200 => ok += 1,
                            _ => failed += 1,
                        }
                    }
                    (ok, failed)
                }));
            }
            let (mut ok, mut failed) = (0, 0);
            for w in workers {
                let (o, f) = w.await?;
                ok += o;
                failed += f;
            }
            let secs = t0.elapsed().as_secs_f64();
            let deadline = Instant::now() + Duration::from_secs(120);
            while counts.events.load(Ordering::SeqCst) < ok || counts.sms_sent.load(Ordering::SeqCst) < ok {
                if Instant::now() > deadline {
                    bail!(
                        "after 120 s only {} of {ok} cases delivered and {} SMS acknowledgements sent",
                        counts.events.load(Ordering::SeqCst),
                        counts.sms_sent.load(Ordering::SeqCst)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!(
                "{}: figure=sms concurrency={} committed={ok} failed={failed} secs={secs:.2} committed_per_sec={:.0} all_delivered_and_acknowledged_secs={:.2}",
                a.label,
                a.concurrency,
                ok as f64 / secs,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

impl PhoneArgs {
    fn clone_args(&self) -> PhoneArgs {
        PhoneArgs {
            figure: self.figure,
            url: self.url.clone(),
            public_url: self.public_url.clone(),
            token: self.token.clone(),
            listen: self.listen.clone(),
            rate: self.rate,
            concurrency: self.concurrency,
            duration: self.duration,
            label: self.label.clone(),
        }
    }
}
