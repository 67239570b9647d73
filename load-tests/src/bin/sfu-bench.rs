//! SFU benchmarks on loopback, in one process with two runtimes: the SFU's (threads named
//! `sfu`) and the load's (threads named `load`), so the SFU's CPU time is read from its
//! own threads in /proc.
//!
//! - `fanout`: one publisher (synthetic VP8 at --video-kbps, no audio) to N subscribers;
//!   reports forwarded packets per second and SFU CPU seconds.
//! - `churn`: one participant joins, publishes, receives and leaves, again and again, in a
//!   room with a steady publisher; reports resident memory after the first 20 and at the end.
//!
//! Bounded in count and time; every socket is on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sfu::engine::synthetic::{Participant, Publish};
use sfu::engine::{Engine, EngineConfig};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Debug, Parser)]
#[command(about = "SFU benchmarks on loopback")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One publisher to N subscribers.
    Fanout {
        #[arg(long, default_value_t = 10)]
        subscribers: u32,
        #[arg(long, default_value_t = 1000)]
        video_kbps: u32,
        /// Seconds measured, after everyone is receiving.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Joins and leaves of one participant; resident memory over time.
    Churn {
        #[arg(long, default_value_t = 200)]
        joins: u32,
        /// Whether each joiner publishes too (so the steady participant's subscriber
        /// connection gains and loses tracks on every join).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        joiner_publishes: bool,
    },
}

/// CPU seconds (user + system) used so far by this process's threads whose name starts
/// with `prefix`.
fn cpu_seconds(prefix: &str) -> anyhow::Result<f64> {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the ")" that closes the thread name: utime is the 12th, stime 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields.get(11).context("utime")?.parse::<u64>()?
            + fields.get(12).context("stime")?.parse::<u64>()?;
    }
    Ok(ticks as f64 / ticks_per_second)
}

/// Resident memory of the whole process, in MiB.
fn rss_mib() -> anyhow::Result<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages as f64 * 4096.0 / (1024.0 * 1024.0))
}

fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sfu_rt = runtime("sfu")?;
    let load_rt = runtime("load")?;
    let engine = sfu_rt.block_on(async { Engine::new(EngineConfig::new(LOOPBACK)) });
    let result = load_rt.block_on(async {
        match cli.cmd {
            Cmd::Fanout {
                subscribers,
                video_kbps,
                seconds,
            } => fanout(&engine, subscribers, video_kbps, seconds).await,
            Cmd::Churn {
                joins,
                joiner_publishes,
            } => churn(&engine, joins, joiner_publishes).await,
        }
    });
    load_rt.shutdown_timeout(Duration::from_secs(2));
    sfu_rt.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn fanout(engine: &Arc<Engine>, n: u32, video_kbps: u32, seconds: u64) -> anyhow::Result<()> {
    if !(1..=200).contains(&n) || !(1..=120).contains(&seconds) {
        bail!("--subscribers must be 1..=200 and --seconds 1..=120");
    }
    let room = 1;
    let publisher = Participant::join(
        engine,
        LOOPBACK,
        room,
        0,
        Some(Publish {
            video_kbps,
            audio: false,
        }),
    )
    .await?;
    let mut subs = Vec::new();
    for i in 0..n {
        subs.push(Participant::join(engine, LOOPBACK, room, u128::from(i) + 1, None).await?);
    }
    // Wait until every subscriber receives video.
    let deadline = Instant::now() + Duration::from_secs(30 + u64::from(n) / 2);
    while subs
        .iter()
        .any(|s| s.stats.packets.load(Ordering::Relaxed) < 30)
    {
        if Instant::now() > deadline {
            bail!("not every subscriber received video within the deadline");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = |subs: &[Participant]| {
        subs.iter()
            .map(|s| s.stats.packets.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let (l0, all0) = (cpu_seconds("load")?, cpu_seconds("")?);
    let (p0, c0, t0) = (count(&subs), cpu_seconds("sfu")?, Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (p1, c1, elapsed) = (
        count(&subs),
        cpu_seconds("sfu")?,
        t0.elapsed().as_secs_f64(),
    );
    let (load_cpu, all_cpu) = (cpu_seconds("load")? - l0, cpu_seconds("")? - all0);
    let pps = (p1 - p0) as f64 / elapsed;
    let cpu = c1 - c0;
    println!(
        "fanout subscribers={n} video_kbps={video_kbps} seconds={elapsed:.1} forwarded_pps={pps:.0} sfu_cpu_s={cpu:.2} sfu_cpu_share={:.2} pkts_per_cpu_s={:.0} rss_mib={:.1} load_cpu_s={load_cpu:.2} other_cpu_s={:.2}",
        cpu / elapsed,
        (p1 - p0) as f64 / cpu.max(0.01),
        rss_mib()?,
        all_cpu - cpu - load_cpu
    );
    for s in subs {
        s.leave(engine).await;
    }
    publisher.leave(engine).await;
    Ok(())
}

async fn churn(engine: &Arc<Engine>, joins: u32, joiner_publishes: bool) -> anyhow::Result<()> {
    if !(20..=2000).contains(&joins) {
        bail!("--joins must be 20..=2000");
    }
    let room = 2;
    let media = Publish {
        video_kbps: 300,
        audio: true,
    };
    let steady = Participant::join(engine, LOOPBACK, room, 0, Some(media)).await?;
    let mut after_20 = 0.0;
    let start = Instant::now();
    for i in 1..=joins {
        let p = Participant::join(
            engine,
            LOOPBACK,
            room,
            u128::from(i),
            joiner_publishes.then_some(media),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.stats.sources_with_both(5) < 1 {
            if Instant::now() > deadline {
                bail!("join {i} received nothing within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.leave(engine).await;
        if i == 20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            after_20 = rss_mib()?;
        }
        if i % 50 == 0 {
            let (connections, participants) = sfu::engine::live_objects();
            println!(
                "churn join={i} rss_mib={:.1} participants={} live_connections={connections} live_engine_participants={participants} live_track_tasks={}",
                rss_mib()?,
                engine.participant_count(),
                sfu::engine::live_track_tasks()
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = rss_mib()?;
    println!(
        "churn joins={joins} seconds={:.0} rss_after_20_mib={after_20:.1} rss_end_mib={end:.1} growth_pct={:.1} participants_left={}",
        start.elapsed().as_secs_f64(),
        (end - after_20) / after_20 * 100.0,
        engine.participant_count()
    );
    steady.leave(engine).await;
    Ok(())
}
