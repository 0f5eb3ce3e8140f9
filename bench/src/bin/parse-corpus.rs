//! Parse throughput of the email normalizer over a folder of real MIME messages.
//!
//! `parse-corpus --dir ../shared/corpus/email --seconds 10` reads every file once, then normalizes
//! them round-robin for the given time and prints messages/s and MB/s. A panic would abort the run;
//! parse errors (messages that would be quarantined) are counted, not fatal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use earshot_channel_email::{ParseOptions, normalize};

#[derive(Parser)]
struct Args {
    /// Folder of messages (read recursively; SOURCES.md and README files are skipped).
    #[arg(long, default_value = "../shared/corpus/email")]
    dir: PathBuf,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn collect(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if !path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".md")) {
            out.push((path.clone(), std::fs::read(&path)?));
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut files = Vec::new();
    collect(&args.dir, &mut files)?;
    if files.is_empty() {
        bail!("no messages under {}", args.dir.display());
    }
    let opts = ParseOptions { max_attachment_bytes: 10 * 1024 * 1024 };
    let total_bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let errors_once = files.iter().filter(|(_, raw)| normalize(raw, &opts).is_err()).count();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let (mut messages, mut bytes, mut rounds) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        for (_, raw) in &files {
            let parsed = normalize(raw, &opts);
            std::hint::black_box(&parsed);
            messages += 1;
            bytes += raw.len() as u64;
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "parse-corpus: files={} corpus_bytes={} quarantined_per_round={} rounds={} messages={} secs={:.2} rate={:.0} msg/s throughput={:.1} MB/s panics=0",
        files.len(),
        total_bytes,
        errors_once,
        rounds,
        messages,
        secs,
        messages as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
