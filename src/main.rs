//! The `earshot` command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use earshot::config::{Config, Settings};
use earshot::store;
use tokio_util::sync::CancellationToken;

// Buffers of a complaint are allocated on a request worker and freed on another thread (the intake
// writer, the SQLite writer), which glibc's malloc pays for in arena locks and consolidation: about
// 12% of the request workers' profile under load. mimalloc frees them into the owning thread's
// heap. Measured in alternating pairs (closed loop, SQLite): 3-6% more complaints/s and 5% less
// CPU per complaint.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "earshot", version, about = "Omnichannel complaint intake gateway")]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "config/earshot.toml", env = "EARSHOT_CONFIG")]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Serve,
    /// Check the configuration and print every problem with its key path.
    CheckConfig,
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect and replay outbox jobs.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Inspect stored cases.
    Cases {
        #[command(subcommand)]
        command: CasesCommand,
    },
    /// Sign and send a sample complaint to the running gateway through the web channel.
    SendTest {
        /// The complaint text.
        #[arg(long)]
        text: String,
        /// The web source to sign for (default: the first one configured).
        #[arg(long)]
        source: Option<String>,
        /// The customer's email address.
        #[arg(long, default_value = "customer@example.com")]
        email: String,
        /// The customer's language tag (default: detected from the text).
        #[arg(long)]
        language: Option<String>,
        /// The gateway's base URL (default: server.public_url).
        #[arg(long)]
        url: Option<String>,
    },
    /// Normalize stored raw messages again (after an upgrade of the parser).
    Reparse,
    /// Talk to the Telegram Bot API for the configured bot.
    #[cfg(feature = "telegram")]
    Telegram {
        #[command(subcommand)]
        command: TelegramCommand,
    },
    /// Print a published JSON Schema.
    Schema {
        #[arg(value_enum, default_value_t = SchemaName::Case)]
        name: SchemaName,
    },
}

#[cfg(feature = "telegram")]
#[derive(Subcommand)]
enum TelegramCommand {
    /// Check the token (`getMe`) and print the bot's name.
    Me,
    /// Register the webhook (`setWebhook`) with the configured secret and the updates Earshot uses.
    SetWebhook {
        /// The public URL (default: channels.telegram.webhook_url, else server.public_url +
        /// /v1/inbound/telegram).
        #[arg(long)]
        url: Option<String>,
    },
    /// Remove the webhook (`deleteWebhook`), for long polling.
    DeleteWebhook,
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemaName {
    Case,
    Event,
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// List jobs, newest first.
    List {
        /// Only dead-lettered jobs.
        #[arg(long)]
        dead: bool,
        /// Only jobs in this state (pending, held, leased, done, dead, discarded). A held job is
        /// pending behind an earlier unfinished job of its case to the same destination.
        #[arg(long, conflicts_with = "dead")]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Make a dead job pending again (the running gateway delivers it within `outbox.poll_interval`).
    Replay {
        /// The job id, as `outbox list` shows it.
        #[arg(required_unless_present = "all_dead")]
        id: Option<i64>,
        /// Replay every dead job.
        #[arg(long, conflicts_with = "id")]
        all_dead: bool,
    },
    /// Give up on a dead job on purpose: it is never sent, and the later jobs of its case to the
    /// same destination, which it held back, go out.
    Discard {
        /// The job id, as `outbox list` shows it.
        id: i64,
    },
}

#[derive(Subcommand)]
enum CasesCommand {
    /// List the newest cases, filtered as `GET /v1/cases` filters them.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        source: Option<String>,
        /// RFC 3339: created at or after.
        #[arg(long)]
        created_from: Option<String>,
        /// RFC 3339: created before.
        #[arg(long)]
        created_to: Option<String>,
        /// Only cases with (`true`) or without (`false`) a breached SLA target.
        #[arg(long)]
        breached: Option<bool>,
        /// Text the case or one of its messages contains.
        #[arg(long)]
        text: Option<String>,
        /// The cursor printed after the previous page.
        #[arg(long)]
        cursor: Option<i64>,
    },
    /// Print one case as JSON, with its timeline.
    Show { id: String },
}

/// Log targets that would print credentials at trace level, capped at debug.
const NO_CREDENTIAL_TRACES: &str = "async_imap::imap_stream=debug";

/// Lines waiting for the log thread; past this, new lines are dropped (and counted in
/// `earshot_log_lines_dropped_total`) rather than making a request or a delivery wait.
const LOG_BUFFER_LINES: usize = 128_000;

/// Bytes the log thread gathers before it writes them to stderr.
const LOG_WRITE_BYTES: usize = 64 * 1024;

/// Logs go to stderr from a thread of their own: a slow terminal or log collector must never hold
/// up intake or delivery. The guard flushes what is buffered when `main` returns.
fn init_logs(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let stderr = std::io::stderr();
    // Colours only for a person at a terminal: in a file or a log collector the escape codes are
    // noise that breaks grep (`case_id=...` would not match). NO_COLOR (no-color.org) turns them off
    // at a terminal too.
    let ansi = stderr.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // The log thread writes each line it takes off the queue, then flushes once the queue is empty
    // (tracing-appender's worker does both). Buffered, a burst of lines under load is one write(2)
    // instead of one per line, and no line waits in the buffer while the queue is empty.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("earshot-log")
        .finish(std::io::BufWriter::with_capacity(LOG_WRITE_BYTES, stderr));
    earshot::set_log_drop_counter(writer.error_counter());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
        // async-imap traces every command it sends, `LOGIN user password` included: never below
        // debug for it, whatever RUST_LOG asks.
        .add_directive(NO_CREDENTIAL_TRACES.parse().unwrap_or_else(|e| unreachable!("a valid directive: {e}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// Loads and checks the config; prints every problem and fails if there is any.
fn settings(path: &Path) -> anyhow::Result<Settings> {
    let cfg = Config::load(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    match earshot::config::resolve(&cfg, base) {
        Ok(s) => Ok(s),
        Err(problems) => {
            for p in &problems {
                eprintln!("{}: {p}", path.display());
            }
            bail!("{} has {} problem(s)", path.display(), problems.len())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logs(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig => {
            let cfg = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    println!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let base = cli.config.parent().unwrap_or(Path::new("."));
            match earshot::config::resolve(&cfg, base) {
                Ok(s) => {
                    println!(
                        "{}: OK (listen {}, database {}, {} downstream endpoint(s), web sources: {})",
                        cli.config.display(),
                        s.listen,
                        if s.database.url.starts_with("sqlite") { "sqlite" } else { "postgres" },
                        s.downstream.len(),
                        web_sources(&s).join(", ")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    for p in problems {
                        println!("{p}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Serve => {
            let s = settings(&cli.config)?;
            let listener = tokio::net::TcpListener::bind(s.listen)
                .await
                .with_context(|| format!("cannot listen on {}", s.listen))?;
            let shutdown = CancellationToken::new();
            let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(signals(shutdown.clone(), cli.config.clone(), reload_tx));
            earshot::run_full(s, listener, shutdown, Vec::new(), reload_rx).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let s = settings(&cli.config)?;
            let st = store::open(&s.database.url, 1).await?;
            st.ready().await?;
            println!("migrations applied ({})", st.backend());
            st.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox { command } => {
            let s = settings(&cli.config)?;
            let st = store::open(&s.database.url, 1).await?;
            let code = outbox(&*st, command).await;
            st.close().await;
            code
        }
        Command::Cases { command } => {
            let s = settings(&cli.config)?;
            let st = store::open(&s.database.url, 1).await?;
            let r = cases(&*st, command).await;
            st.close().await;
            r
        }
        Command::SendTest { text, source, email, language, url } => {
            send_test(&settings(&cli.config)?, text, source, email, language, url).await
        }
        Command::Reparse => {
            let s = settings(&cli.config)?;
            let max = {
                #[cfg(feature = "email")]
                {
                    s.email.as_ref().map_or(10 * 1024 * 1024, |e| e.max_attachment_bytes)
                }
                #[cfg(not(feature = "email"))]
                {
                    0
                }
            };
            let st = store::open(&s.database.url, 1).await?;
            let r = earshot::reparse::reparse(&*st, max).await?;
            println!("reparsed: {} updated, {} unchanged, {} no longer parse", r.updated, r.unchanged, r.failed);
            st.close().await;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "telegram")]
        Command::Telegram { command } => telegram(&settings(&cli.config)?, command).await,
        Command::Schema { name } => {
            let schema = match name {
                SchemaName::Case => earshot::schema::case_json_schema(),
                SchemaName::Event => earshot::schema::event_json_schema(),
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// SIGTERM and SIGINT stop the gateway; SIGHUP reads and checks the config file again and, when
/// it has no problem, hands it to the running gateway (`earshot::reload`). A file with problems
/// changes nothing: each problem is logged with its key path.
async fn signals(token: CancellationToken, config: PathBuf, reload: tokio::sync::mpsc::Sender<Settings>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("Cannot install signal handlers; stop with SIGKILL.");
        return;
    };
    let name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => match reread(&config) {
                Ok(s) => {
                    tracing::info!(config = %config.display(), "SIGHUP: the config file is valid; reloading.");
                    let _ = reload.send(s).await;
                }
                Err(problems) => {
                    for p in &problems {
                        tracing::error!(key = %p.key, problem = %p.message, "Config reload refused: the file has a problem; the running config stays.");
                    }
                }
            },
        }
    };
    tracing::info!(signal = name, "Shutting down: finishing in-flight requests and deliveries.");
    token.cancel();
}

/// The config file read and checked again, or its problems.
fn reread(path: &Path) -> Result<Settings, Vec<earshot::config::Problem>> {
    let cfg = Config::load(path).map_err(|e| {
        let (key, message) = match &e {
            earshot::config::LoadError::Parse { key, message, .. } => (key.clone(), message.clone()),
            other => ("(file)".to_owned(), other.to_string()),
        };
        vec![earshot::config::Problem { key, message }]
    })?;
    earshot::config::resolve(&cfg, path.parent().unwrap_or(Path::new(".")))
}

fn web_sources(s: &Settings) -> Vec<String> {
    #[cfg(feature = "web")]
    return s.web.as_ref().map(|w| w.sources.iter().map(|x| x.name.clone()).collect()).unwrap_or_default();
    #[cfg(not(feature = "web"))]
    {
        let _ = s;
        Vec::new()
    }
}

async fn outbox(st: &dyn store::Store, command: OutboxCommand) -> anyhow::Result<ExitCode> {
    match command {
        OutboxCommand::List { dead, state, limit } => {
            let state = if dead { Some("dead".to_owned()) } else { state };
            let jobs = st.list_jobs(state.as_deref(), limit).await?;
            println!(
                "{:>8}  {:<9} {:>8}  {:<24} {:<34} {:<38} LAST ERROR",
                "ID", "STATE", "ATTEMPTS", "DESTINATION", "EVENT ID", "CASE"
            );
            for j in &jobs {
                let note = match j.held_by {
                    Some(by) => format!("held by job {by}"),
                    None => j.last_error.clone().unwrap_or_default(),
                };
                println!(
                    "{:>8}  {:<9} {:>4}/{:<3}  {:<24} {:<34} {:<38} {}",
                    j.id, j.state, j.attempts, j.max_attempts, j.destination, j.event_id, j.case_id, note
                );
            }
            println!("{} job(s)", jobs.len());
            Ok(ExitCode::SUCCESS)
        }
        OutboxCommand::Replay { id: Some(id), .. } => {
            if st.replay_job(earshot::store::JobId(id), earshot::now_ms()).await? {
                println!("job {id} is pending again");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("job {id} does not exist or is not dead");
                Ok(ExitCode::FAILURE)
            }
        }
        OutboxCommand::Discard { id } => {
            if st.discard_job(earshot::store::JobId(id), earshot::now_ms()).await? {
                println!("job {id} is discarded; the jobs it held go out");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("job {id} does not exist or is not dead");
                Ok(ExitCode::FAILURE)
            }
        }
        OutboxCommand::Replay { id: None, .. } => {
            let n = st.replay_all_dead(earshot::now_ms()).await?;
            println!("{n} dead job(s) are pending again");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn cases(st: &dyn store::Store, command: CasesCommand) -> anyhow::Result<ExitCode> {
    match command {
        CasesCommand::List { limit, status, channel, source, created_from, created_to, breached, text, cursor } => {
            let query = earshot::cases::CaseQuery {
                limit: Some(limit),
                status,
                channel,
                source,
                created_from,
                created_to,
                breached,
                q: text,
                cursor,
            };
            let filter =
                query.filter().map_err(|e| anyhow::anyhow!("{}: {}", e.field.unwrap_or_default(), e.detail))?;
            let rows = st.search_cases(&filter).await?;
            for c in &rows {
                println!(
                    "{}  {}  {:<17} {:<8} {:<12} {}{}",
                    c.case_ref,
                    c.id,
                    c.status,
                    c.channel,
                    c.source,
                    c.ticket_id.clone().unwrap_or_default(),
                    if c.breached { "  SLA breached" } else { "" }
                );
            }
            if rows.len() as i64 == filter.limit
                && let Some(last) = rows.last()
            {
                println!("more: --cursor {}", last.seq);
            }
            Ok(ExitCode::SUCCESS)
        }
        CasesCommand::Show { id } => {
            match earshot::cases::with_timeline(st, &earshot::schema::CaseId(id.clone())).await? {
                Some(case) => {
                    println!("{}", serde_json::to_string_pretty(&case)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    println!("no case {id}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

#[cfg(feature = "web")]
async fn send_test(
    s: &Settings,
    text: String,
    source: Option<String>,
    email: String,
    language: Option<String>,
    url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let web = s.web.as_ref().context("channels.web is not configured")?;
    let src = match &source {
        Some(name) => {
            web.sources.iter().find(|x| &x.name == name).with_context(|| format!("no web source {name:?}"))?
        }
        None => web.sources.first().context("channels.web has no sources")?,
    };
    let base = url.unwrap_or_else(|| s.public_url.clone());
    let endpoint = format!("{}/v1/inbound/web/{}", base.trim_end_matches('/'), src.name);
    let mut customer = serde_json::json!({ "name": "Test Customer", "email": email });
    if let Some(l) = language {
        customer["language"] = l.into();
    }
    let body =
        serde_json::to_vec(&serde_json::json!({ "customer": customer, "subject": "earshot send-test", "text": text }))?;
    let id = format!("msg_test_{}", uuid::Uuid::new_v4().simple());
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = src.keys.sign(&id, ts, &body);
    println!("POST {endpoint} (webhook-id {id})");
    let resp = reqwest::Client::new()
        .post(&endpoint)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {base}; is `earshot serve` running?"))?;
    let status = resp.status();
    let answer = resp.text().await.unwrap_or_default();
    let pretty = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(answer);
    println!("{status}\n{pretty}");
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(not(feature = "web"))]
async fn send_test(
    _: &Settings,
    _: String,
    _: Option<String>,
    _: String,
    _: Option<String>,
    _: Option<String>,
) -> anyhow::Result<ExitCode> {
    bail!("this build has no web channel")
}

#[cfg(feature = "telegram")]
async fn telegram(s: &earshot::config::Settings, command: TelegramCommand) -> anyhow::Result<ExitCode> {
    let Some(t) = &s.telegram else {
        println!("no [channels.telegram] section in the configuration");
        return Ok(ExitCode::FAILURE);
    };
    let bot = earshot_channel_telegram::TelegramChannel::new(t.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The outcome's text never holds the token (see the channel crate).
    let outcome = match command {
        TelegramCommand::Me => bot.me().await.map(|name| format!("the token works: the bot is @{name}")),
        TelegramCommand::SetWebhook { url } => {
            let url = url
                .or_else(|| t.webhook_url.clone())
                .unwrap_or_else(|| format!("{}/v1/inbound/telegram", s.public_url.trim_end_matches('/')));
            if t.webhook_secret.is_none() {
                println!("channels.telegram.webhook_secret is not set: the webhook would take updates from anyone");
                return Ok(ExitCode::FAILURE);
            }
            bot.set_webhook(&url).await.map(|()| format!("webhook set to {url}"))
        }
        TelegramCommand::DeleteWebhook => bot.delete_webhook().await.map(|()| "webhook deleted".to_owned()),
    };
    match outcome {
        Ok(text) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("Telegram refused: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
