//! SFU benchmarks on loopback. By default in one process with two runtimes: the SFU's
//! (threads named `sfu`) and the load's (threads named `load`), so the SFU's CPU time is
//! read from its own threads in /proc. With `--sfu-bin`, the SFU is a separate `sfu`
//! process driven over its control websocket, as signalling drives it; its CPU time and
//! resident memory are then read from /proc/<pid>, and `--sfu-cpus` pins it (taskset).
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
use protocol::control::{ControlOp, ControlOutcome};
use protocol::{ConsultationId, ParticipantId, ServerMsg};
use sfu::engine::synthetic::{Participant, Publish, Signal};
use sfu::engine::{Engine, EngineConfig, EngineError};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Debug, Parser)]
#[command(about = "SFU benchmarks on loopback")]
struct Cli {
    /// Run the SFU as this separate `sfu` binary instead of in this process.
    #[arg(long, global = true)]
    sfu_bin: Option<std::path::PathBuf>,
    /// With --sfu-bin: the CPUs the SFU process may use (taskset list, e.g. `0`).
    #[arg(long, global = true)]
    sfu_cpus: Option<String>,
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

/// Resident memory of a process (`self` or a pid), in MiB.
fn rss_mib_of(proc: &str) -> anyhow::Result<f64> {
    let statm = std::fs::read_to_string(format!("/proc/{proc}/statm"))?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages as f64 * 4096.0 / (1024.0 * 1024.0))
}

/// CPU seconds (user + system) a whole process used so far.
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// The SFU under test: in this process, or a separate `sfu` process.
enum Sfu {
    InProcess(Arc<Engine>),
    Process(Remote),
}

struct Remote {
    child: std::process::Child,
    link: Arc<signalling::media::Link>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A separate SFU's control link as a synthetic participant's signal path.
struct ControlSignal {
    link: Arc<signalling::media::Link>,
    participant: ParticipantId,
}

fn refused(e: impl std::fmt::Display) -> EngineError {
    EngineError::WebRtc(e.to_string())
}

#[async_trait::async_trait]
impl Signal for ControlSignal {
    async fn publish(&self, offer: String) -> Result<String, EngineError> {
        let op = ControlOp::Publish {
            participant: self.participant,
            sdp: offer,
        };
        match self.link.request(op).await.map_err(refused)? {
            ControlOutcome::Answer { sdp } => Ok(sdp),
            other => Err(refused(format!("{other:?}"))),
        }
    }

    async fn subscriber_answer(&self, answer: String) -> Result<(), EngineError> {
        let op = ControlOp::SubscriberAnswer {
            participant: self.participant,
            sdp: answer,
        };
        self.link.request(op).await.map(|_| ()).map_err(refused)
    }
}

const BENCH_SECRET: &str = "sfu-bench-control-secret";

impl Sfu {
    /// Starts a separate `sfu` process (pinned to `cpus` if given) and links to it.
    async fn start(bin: &std::path::Path, cpus: Option<&str>) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut cmd = match cpus {
            Some(c) => {
                let mut t = std::process::Command::new("taskset");
                t.arg("-c").arg(c).arg(bin);
                t
            }
            None => std::process::Command::new(bin),
        };
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--media-ip", "127.0.0.1"])
            .args(["--secret", BENCH_SECRET])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("sfu stdout")?;
        let line = std::io::BufReader::new(stdout)
            .lines()
            .next()
            .context("sfu said nothing")??;
        let addr = line
            .strip_prefix("sfu: listening on ")
            .with_context(|| format!("unexpected first line from sfu: {line}"))?;
        let link = signalling::media::connect_node(&format!("ws://{addr}/control"), BENCH_SECRET)
            .await
            .map_err(|e| anyhow::anyhow!("control link: {e}"))?;
        Ok(Sfu::Process(Remote { child, link }))
    }

    async fn join(
        &self,
        room: u128,
        key: u128,
        publish: Option<Publish>,
    ) -> anyhow::Result<Participant> {
        match self {
            Sfu::InProcess(engine) => {
                Ok(Participant::join(engine, LOOPBACK, room, key, publish).await?)
            }
            Sfu::Process(r) => {
                let participant = ParticipantId(uuid::Uuid::from_u128(key));
                let (tx, mut rx) = tokio::sync::mpsc::channel(16);
                r.link.route(participant, tx);
                let (offers_tx, offers) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        if let ServerMsg::SubscriberOffer { sdp } = m
                            && offers_tx.send(sdp).is_err()
                        {
                            return;
                        }
                    }
                });
                let op = ControlOp::Join {
                    consultation: ConsultationId(uuid::Uuid::from_u128(room)),
                    participant,
                    visit: None,
                };
                r.link
                    .request(op)
                    .await
                    .map_err(|e| anyhow::anyhow!("join: {e}"))?;
                let signal = Arc::new(ControlSignal {
                    link: r.link.clone(),
                    participant,
                });
                Ok(Participant::connect(signal, offers, LOOPBACK, key, publish).await?)
            }
        }
    }

    async fn leave(&self, p: Participant) {
        match self {
            Sfu::InProcess(engine) => p.leave(engine).await,
            Sfu::Process(r) => {
                let participant = ParticipantId(uuid::Uuid::from_u128(p.key));
                let _ = r.link.request(ControlOp::Leave { participant }).await;
                r.link.unroute(participant);
                p.close().await;
            }
        }
    }

    /// The SFU's CPU seconds so far.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        match self {
            Sfu::InProcess(_) => cpu_seconds("sfu"),
            Sfu::Process(r) => process_cpu_seconds(r.child.id()),
        }
    }

    /// The SFU's resident memory (the whole process when in process).
    fn rss_mib(&self) -> anyhow::Result<f64> {
        match self {
            Sfu::InProcess(_) => rss_mib_of("self"),
            Sfu::Process(r) => rss_mib_of(&r.child.id().to_string()),
        }
    }

    /// Participants on the SFU, where the bench can see them (in process).
    fn participant_count(&self) -> Option<usize> {
        match self {
            Sfu::InProcess(engine) => Some(engine.participant_count()),
            Sfu::Process(_) => None,
        }
    }
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
    let in_process = cli
        .sfu_bin
        .is_none()
        .then(|| sfu_rt.block_on(async { Engine::new(EngineConfig::new(LOOPBACK)) }));
    let result = load_rt.block_on(async {
        let sfu = match (in_process, &cli.sfu_bin) {
            (Some(engine), _) => Sfu::InProcess(engine),
            (None, Some(bin)) => Sfu::start(bin, cli.sfu_cpus.as_deref()).await?,
            (None, None) => bail!("no SFU"),
        };
        match cli.cmd {
            Cmd::Fanout {
                subscribers,
                video_kbps,
                seconds,
            } => fanout(&sfu, subscribers, video_kbps, seconds).await,
            Cmd::Churn {
                joins,
                joiner_publishes,
            } => churn(&sfu, joins, joiner_publishes).await,
        }
    });
    load_rt.shutdown_timeout(Duration::from_secs(2));
    sfu_rt.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn fanout(sfu: &Sfu, n: u32, video_kbps: u32, seconds: u64) -> anyhow::Result<()> {
    if !(1..=200).contains(&n) || !(1..=120).contains(&seconds) {
        bail!("--subscribers must be 1..=200 and --seconds 1..=120");
    }
    let room = 1;
    let publisher = sfu
        .join(
            room,
            1_000_000,
            Some(Publish {
                video_kbps,
                audio: false,
            }),
        )
        .await?;
    let mut subs = Vec::new();
    for i in 0..n {
        subs.push(sfu.join(room, u128::from(i) + 1, None).await?);
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
    let (p0, c0, t0) = (count(&subs), sfu.cpu_seconds()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (p1, c1, elapsed) = (count(&subs), sfu.cpu_seconds()?, t0.elapsed().as_secs_f64());
    let (load_cpu, all_cpu) = (cpu_seconds("load")? - l0, cpu_seconds("")? - all0);
    let pps = (p1 - p0) as f64 / elapsed;
    let cpu = c1 - c0;
    // In process, the SFU's threads are part of this process's total; separately, not.
    let other = match sfu {
        Sfu::InProcess(_) => all_cpu - cpu - load_cpu,
        Sfu::Process(_) => all_cpu - load_cpu,
    };
    println!(
        "fanout subscribers={n} video_kbps={video_kbps} seconds={elapsed:.1} forwarded_pps={pps:.0} sfu_cpu_s={cpu:.2} sfu_cpu_share={:.2} pkts_per_cpu_s={:.0} rss_mib={:.1} load_cpu_s={load_cpu:.2} other_cpu_s={:.2}",
        cpu / elapsed,
        (p1 - p0) as f64 / cpu.max(0.01),
        sfu.rss_mib()?,
        other
    );
    for s in subs {
        sfu.leave(s).await;
    }
    sfu.leave(publisher).await;
    Ok(())
}

async fn churn(sfu: &Sfu, joins: u32, joiner_publishes: bool) -> anyhow::Result<()> {
    if !(20..=2000).contains(&joins) {
        bail!("--joins must be 20..=2000");
    }
    let room = 2;
    let media = Publish {
        video_kbps: 300,
        audio: true,
    };
    let steady = sfu.join(room, 1_000_000, Some(media)).await?;
    let mut after_20 = 0.0;
    let start = Instant::now();
    for i in 1..=joins {
        let p = sfu
            .join(room, u128::from(i), joiner_publishes.then_some(media))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.stats.sources_with_both(5) < 1 {
            if Instant::now() > deadline {
                bail!("join {i} received nothing within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sfu.leave(p).await;
        if i == 20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            after_20 = sfu.rss_mib()?;
        }
        if i % 50 == 0 {
            let (connections, participants) = sfu::engine::live_objects();
            println!(
                "churn join={i} sfu_rss_mib={:.1} bench_rss_mib={:.1} live_connections={connections} live_engine_participants={participants} live_track_tasks={}",
                sfu.rss_mib()?,
                rss_mib_of("self")?,
                sfu::engine::live_track_tasks()
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = sfu.rss_mib()?;
    let left = sfu
        .participant_count()
        .map(|n| format!(" participants_left={n}"))
        .unwrap_or_default();
    println!(
        "churn joins={joins} seconds={:.0} rss_after_20_mib={after_20:.1} rss_end_mib={end:.1} growth_pct={:.1}{left}",
        start.elapsed().as_secs_f64(),
        (end - after_20) / after_20 * 100.0,
    );
    sfu.leave(steady).await;
    Ok(())
}
