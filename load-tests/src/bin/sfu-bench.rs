//! SFU benchmarks on loopback: ours, and Janus's VideoRoom under the same load from the
//! same client.
//!
//! The load is synthetic participants on the `webrtc` crate (`sfu_synthetic`):
//! VP8-shaped video at `--video-kbps` (30 frames/s, keyframes every 3 s and on request,
//! packets of at most 1,100 bytes) and 32 kbit/s of Opus-sized audio, every payload
//! stamped with its send time and index, so each receiver measures latency and loss.
//!
//! The SFU under test (`--target`):
//! - `ours` in this process (threads named `sfu`, so its CPU time is read from them), or,
//!   with `--sfu-bin`, a separate `sfu` process driven over its control websocket as
//!   signalling drives it (CPU and memory from /proc/<pid>; `--sfu-cpus` pins it);
//! - `janus`: Debian's Janus, started here with a configuration written here (VideoRoom
//!   and HTTP only, `event_loops` = its cores), pinned with `--sfu-cpus` too. It must run
//!   where an interface holds 127.0.0.2 (`load-tests/compare-janus` makes one).
//!
//! Commands:
//! - `fanout`: one publisher to N subscribers; `rooms`: R rooms of S participants who all
//!   publish and receive everyone else. One measurement each.
//! - `compare`: fan-out to each N, ours and Janus alternately, fresh processes for each
//!   measurement; medians and the ratio of forwarded packets per CPU-second.
//! - `ramp`: a workload at rising sizes until loss passes 1 % or a core saturates.
//! - `chart`: the PNG of SFU CPU against load from the rows `--csv` collected.
//! - `churn`: joins and leaves; resident memory over time (a leak check).
//!
//! Bounded in count and time; every socket is on 127.0.0.0/8.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use load_tests::janus::{self, Janus, JanusConfig};
use load_tests::{chart, median, procfs};
use protocol::control::{ControlOp, ControlOutcome};
use protocol::{ConsultationId, ParticipantId, ServerMsg};
use serde_json::json;
use sfu::engine::{Engine, EngineConfig, EngineError};
use sfu_synthetic::{Delivery, Participant, Publish, Signal};
use tokio::sync::mpsc;

/// The address the load's sockets (and our SFU's) bind to: 127.0.0.1, or 127.0.0.2 when
/// Janus is measured, whose sockets are tied to the interface holding 127.0.0.2 and so
/// reach only addresses local to it. Set once, before any participant joins.
static BENCH_IP: std::sync::OnceLock<IpAddr> = std::sync::OnceLock::new();

fn bench_ip() -> IpAddr {
    *BENCH_IP.get_or_init(|| IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[derive(Debug, Parser)]
#[command(about = "SFU benchmarks on loopback, ours and Janus's")]
struct Cli {
    /// Our SFU as this separate `sfu` binary instead of in this process.
    #[arg(long, global = true)]
    sfu_bin: Option<PathBuf>,
    /// The CPUs the SFU process (ours or Janus) may use (taskset list, e.g. `0`).
    #[arg(long, global = true)]
    sfu_cpus: Option<String>,
    /// Which SFU `fanout`, `rooms` and `ramp` measure.
    #[arg(long, global = true, value_enum, default_value_t = Kind::Ours)]
    target: Kind,
    /// The `janus` binary.
    #[arg(long, global = true, default_value = "/usr/bin/janus")]
    janus_bin: PathBuf,
    /// The interface Janus gathers candidates on (holding 127.0.0.2).
    #[arg(long, global = true, default_value = "v0")]
    janus_iface: String,
    /// Janus's log file (by default discarded).
    #[arg(long, global = true)]
    janus_log: Option<PathBuf>,
    /// Append each measurement as a row to this CSV file.
    #[arg(long, global = true)]
    csv: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Ours,
    Janus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkloadKind {
    /// One publisher to N subscribers.
    Fanout,
    /// R consultations of two, each publishing to the other.
    OneToOne,
    /// R consultations of four, each publishing to the three others.
    FourParty,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One publisher to N subscribers.
    Fanout {
        #[arg(long, default_value_t = 10)]
        subscribers: u32,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// R rooms of S participants, everyone publishing and receiving the others.
    Rooms {
        #[arg(long, default_value_t = 2)]
        size: u32,
        #[arg(long, default_value_t = 10)]
        rooms: u32,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Fan-out at each size, ours and Janus alternately, `--runs` times; medians.
    Compare {
        #[arg(long, value_delimiter = ',', default_value = "10,25,50")]
        subscribers: Vec<u32>,
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// A workload at rising sizes (subscribers, or rooms) until loss passes 1 % or the
    /// SFU's core (or the load generator's) saturates.
    Ramp {
        #[arg(long, value_enum, default_value_t = WorkloadKind::OneToOne)]
        workload: WorkloadKind,
        #[arg(long, value_delimiter = ',', default_value = "10,20,40,60,80,100")]
        steps: Vec<u32>,
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Draws SFU CPU against forwarded packets from `--csv`'s rows (medians per size).
    Chart {
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = chart::DEFAULT_FONT)]
        font: PathBuf,
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

#[derive(Debug, Clone, Copy, clap::Args)]
struct MediaArgs {
    /// Each publisher's video bitrate.
    #[arg(long, default_value_t = 1000)]
    video_kbps: u32,
    /// Seconds measured, after everyone receives and 2 s of warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// An SFU under test.
enum Target {
    InProcess(Arc<Engine>),
    Process(Remote),
    Janus(Box<JanusTarget>),
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

/// Janus with the participants' sessions.
struct JanusTarget {
    janus: Janus,
    /// The session that creates rooms.
    admin: (janus::Session, janus::Handle),
    rooms: Mutex<std::collections::HashSet<u64>>,
    peers: tokio::sync::Mutex<HashMap<u128, JanusPeer>>,
}

struct JanusPeer {
    session: janus::Session,
    subscriber: Arc<janus::Handle>,
    offers: mpsc::UnboundedSender<String>,
    room: u64,
}

/// A participant's publisher and subscriber handles as its signal path.
struct JanusSignal {
    publisher: janus::Handle,
    subscriber: Arc<janus::Handle>,
    room: u64,
    feed: u64,
}

#[async_trait::async_trait]
impl Signal for JanusSignal {
    async fn publish(&self, offer: String) -> Result<String, EngineError> {
        let body = json!({
            "request": "joinandconfigure", "room": self.room, "ptype": "publisher",
            "id": self.feed, "display": format!("p{}", self.feed), "audio": true, "video": true,
        });
        let jsep = json!({"type": "offer", "sdp": offer});
        self.publisher
            .negotiate(body, Some(jsep))
            .await
            .map_err(refused)
    }

    async fn subscriber_answer(&self, answer: String) -> Result<(), EngineError> {
        let jsep = json!({"type": "answer", "sdp": answer});
        self.subscriber
            .message(json!({"request": "start"}), Some(jsep))
            .await
            .map_err(refused)?;
        self.subscriber.candidates_done().await.map_err(refused)
    }
}

const BENCH_SECRET: &str = "sfu-bench-control-secret";

/// How to start the SFU under test.
#[derive(Debug, Clone)]
enum Spec {
    Ours { bin: PathBuf, cpus: Option<String> },
    Janus(JanusConfig),
}

impl Spec {
    fn name(&self) -> &'static str {
        match self {
            Spec::Ours { .. } => "ours",
            Spec::Janus(_) => "janus",
        }
    }
}

/// How many CPUs a taskset list names (`0`, `0,1`, `0-3`).
fn cpu_count(list: &str) -> u32 {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum()
}

impl Target {
    async fn start(spec: &Spec) -> anyhow::Result<Self> {
        match spec {
            Spec::Ours { bin, cpus } => Self::start_ours(bin, cpus.as_deref()).await,
            Spec::Janus(config) => {
                let janus = Janus::start(config).await?;
                let session = janus.session().await?;
                let handle = session.attach().await?;
                Ok(Target::Janus(Box::new(JanusTarget {
                    janus,
                    admin: (session, handle),
                    rooms: Mutex::default(),
                    peers: tokio::sync::Mutex::default(),
                })))
            }
        }
    }

    /// Starts a separate `sfu` process (pinned to `cpus` if given) and links to it.
    async fn start_ours(bin: &Path, cpus: Option<&str>) -> anyhow::Result<Self> {
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
            .args(["--listen", "127.0.0.1:0", "--media-ip"])
            .arg(bench_ip().to_string())
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
        Ok(Target::Process(Remote { child, link }))
    }

    fn name(&self) -> &'static str {
        match self {
            Target::InProcess(_) => "ours-in-process",
            Target::Process(_) => "ours",
            Target::Janus(_) => "janus",
        }
    }

    /// Joins `room` as `key`, publishing if asked. On our SFU the participant then
    /// receives everyone else by itself; on Janus, once [`Target::subscribe`] says whom.
    /// `capacity` is the most publishers the room will have.
    async fn join(
        &self,
        room: u128,
        key: u128,
        publish: Option<Publish>,
        capacity: u32,
    ) -> anyhow::Result<Participant> {
        match self {
            Target::InProcess(engine) => {
                Ok(Participant::join(engine, bench_ip(), room, key, publish).await?)
            }
            Target::Process(r) => {
                let participant = ParticipantId(uuid::Uuid::from_u128(key));
                let (tx, mut rx) = mpsc::channel(16);
                r.link.route(participant, tx);
                let (offers_tx, offers) = mpsc::unbounded_channel();
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
                Ok(Participant::connect(signal, offers, bench_ip(), key, publish).await?)
            }
            Target::Janus(j) => {
                let room = u64::try_from(room)?;
                let fresh = j
                    .rooms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(room);
                if fresh {
                    janus::create_room(&j.admin.1, room, capacity.max(1)).await?;
                }
                let session = j.janus.session().await?;
                let subscriber = Arc::new(session.attach().await?);
                let signal = Arc::new(JanusSignal {
                    publisher: session.attach().await?,
                    subscriber: subscriber.clone(),
                    room,
                    feed: u64::try_from(key)?,
                });
                let (offers, offers_rx) = mpsc::unbounded_channel();
                let p = Participant::connect(signal, offers_rx, bench_ip(), key, publish).await?;
                let peer = JanusPeer {
                    session,
                    subscriber,
                    offers,
                    room,
                };
                j.peers.lock().await.insert(key, peer);
                Ok(p)
            }
        }
    }

    /// On Janus, subscribes `key` to the feeds of `publishers` (our SFU does this itself).
    async fn subscribe(&self, key: u128, publishers: &[u128]) -> anyhow::Result<()> {
        let Target::Janus(j) = self else {
            return Ok(());
        };
        let (subscriber, offers, room) = {
            let peers = j.peers.lock().await;
            let p = peers.get(&key).context("no such participant")?;
            (p.subscriber.clone(), p.offers.clone(), p.room)
        };
        let streams = publishers
            .iter()
            .map(|f| Ok(json!({"feed": u64::try_from(*f)?})))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let body =
            json!({"request": "join", "room": room, "ptype": "subscriber", "streams": streams});
        // VideoRoom refuses a subscription until the publisher's connection is up.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match subscriber.negotiate(body.clone(), None).await {
                Ok(sdp) => {
                    offers.send(sdp).ok().context("participant gone")?;
                    return Ok(());
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context("subscribing on janus")),
            }
        }
    }

    async fn leave(&self, p: Participant) {
        match self {
            Target::InProcess(engine) => p.leave(engine).await,
            Target::Process(r) => {
                let participant = ParticipantId(uuid::Uuid::from_u128(p.key));
                let _ = r.link.request(ControlOp::Leave { participant }).await;
                r.link.unroute(participant);
                p.close().await;
            }
            Target::Janus(j) => {
                if let Some(peer) = j.peers.lock().await.remove(&p.key) {
                    peer.session.destroy().await;
                }
                p.close().await;
            }
        }
    }

    /// The SFU's CPU seconds so far.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        match self {
            Target::InProcess(_) => procfs::thread_cpu_seconds("sfu"),
            Target::Process(r) => procfs::process_cpu_seconds(r.child.id()),
            Target::Janus(j) => procfs::process_cpu_seconds(j.janus.pid()),
        }
    }

    /// The SFU's resident memory (the whole process when in process).
    fn rss_mib(&self) -> anyhow::Result<f64> {
        match self {
            Target::InProcess(_) => procfs::rss_mib("self"),
            Target::Process(r) => procfs::rss_mib(&r.child.id().to_string()),
            Target::Janus(j) => procfs::rss_mib(&j.janus.pid().to_string()),
        }
    }

    /// Participants on the SFU, where the bench can see them (in process).
    fn participant_count(&self) -> Option<usize> {
        match self {
            Target::InProcess(engine) => Some(engine.participant_count()),
            _ => None,
        }
    }

    /// The load generator's CPU seconds so far: this process, less the SFU's threads
    /// when it runs here (the webrtc crate runs some work on threads of its own).
    fn load_cpu_seconds(&self) -> anyhow::Result<f64> {
        let all = procfs::process_cpu_seconds(std::process::id())?;
        match self {
            Target::InProcess(_) => Ok(all - self.cpu_seconds()?),
            _ => Ok(all),
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
    let with_janus = cli.target == Kind::Janus || matches!(cli.cmd, Cmd::Compare { .. });
    if with_janus {
        let _ = BENCH_IP.set(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    }
    if let Cmd::Chart { out, font } = &cli.cmd {
        let csv = cli.csv.as_deref().context("chart needs --csv")?;
        return draw_chart(csv, out, font);
    }
    let sfu_rt = runtime("sfu")?;
    let load_rt = runtime("load")?;
    let in_process = (cli.sfu_bin.is_none() && cli.target == Kind::Ours)
        .then(|| sfu_rt.block_on(async { Engine::new(EngineConfig::new(bench_ip())) }))
        .transpose()?;
    let result = load_rt.block_on(run(&cli, in_process));
    load_rt.shutdown_timeout(Duration::from_secs(2));
    sfu_rt.shutdown_timeout(Duration::from_secs(2));
    result
}

fn janus_config(cli: &Cli) -> JanusConfig {
    JanusConfig {
        bin: cli.janus_bin.clone(),
        cpus: cli.sfu_cpus.clone(),
        event_loops: cli.sfu_cpus.as_deref().map_or_else(
            || {
                u32::try_from(std::thread::available_parallelism().map_or(1, |n| n.get()))
                    .unwrap_or(1)
            },
            cpu_count,
        ),
        iface: cli.janus_iface.clone(),
        log: cli.janus_log.clone(),
    }
}

fn ours_spec(cli: &Cli) -> Option<Spec> {
    cli.sfu_bin.as_ref().map(|bin| Spec::Ours {
        bin: bin.clone(),
        cpus: cli.sfu_cpus.clone(),
    })
}

async fn run(cli: &Cli, in_process: Option<Arc<Engine>>) -> anyhow::Result<()> {
    let chosen = || async {
        match (cli.target, &in_process) {
            (Kind::Ours, Some(engine)) => Ok(Target::InProcess(engine.clone())),
            (Kind::Ours, None) => Target::start(&ours_spec(cli).context("no sfu")?).await,
            (Kind::Janus, _) => Target::start(&Spec::Janus(janus_config(cli))).await,
        }
    };
    let spec = || -> anyhow::Result<Spec> {
        match cli.target {
            Kind::Ours => ours_spec(cli).context("ramp needs --sfu-bin (a fresh SFU per step)"),
            Kind::Janus => Ok(Spec::Janus(janus_config(cli))),
        }
    };
    match &cli.cmd {
        Cmd::Fanout { subscribers, media } => {
            let target = chosen().await?;
            let m = measure(&target, Workload::Fanout(*subscribers), *media).await?;
            report(cli, &m)
        }
        Cmd::Rooms { size, rooms, media } => {
            let target = chosen().await?;
            let w = Workload::Rooms {
                size: *size,
                rooms: *rooms,
            };
            let m = measure(&target, w, *media).await?;
            report(cli, &m)
        }
        Cmd::Compare {
            subscribers,
            runs,
            media,
        } => {
            let ours = ours_spec(cli).context("compare needs --sfu-bin")?;
            compare(
                cli,
                &ours,
                &Spec::Janus(janus_config(cli)),
                subscribers,
                *runs,
                *media,
            )
            .await
        }
        Cmd::Ramp {
            workload,
            steps,
            runs,
            media,
        } => ramp(cli, &spec()?, *workload, steps, *runs, *media).await,
        Cmd::Churn {
            joins,
            joiner_publishes,
        } => churn(&chosen().await?, *joins, *joiner_publishes).await,
        Cmd::Chart { .. } => Ok(()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Workload {
    Fanout(u32),
    Rooms { size: u32, rooms: u32 },
}

impl Workload {
    fn label(self) -> String {
        match self {
            Workload::Fanout(_) => "fanout".into(),
            Workload::Rooms { size: 2, .. } => "one-to-one".into(),
            Workload::Rooms { size: 4, .. } => "four-party".into(),
            Workload::Rooms { size, .. } => format!("rooms-of-{size}"),
        }
    }

    /// Subscribers, or rooms.
    fn load(self) -> u32 {
        match self {
            Workload::Fanout(n) => n,
            Workload::Rooms { rooms, .. } => rooms,
        }
    }

    fn of(kind: WorkloadKind, load: u32) -> Self {
        match kind {
            WorkloadKind::Fanout => Workload::Fanout(load),
            WorkloadKind::OneToOne => Workload::Rooms {
                size: 2,
                rooms: load,
            },
            WorkloadKind::FourParty => Workload::Rooms {
                size: 4,
                rooms: load,
            },
        }
    }
}

/// One measurement of one workload on one SFU.
#[derive(Debug, Clone, Default)]
struct Measurement {
    target: &'static str,
    workload: String,
    load: u32,
    participants: usize,
    seconds: f64,
    forwarded_pps: f64,
    sfu_cpu_share: f64,
    loss_pct: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    rss_mib: f64,
    rss_per_participant_kib: f64,
    load_cpu_share: f64,
}

impl Measurement {
    fn pkts_per_cpu_s(&self) -> f64 {
        self.forwarded_pps / self.sfu_cpu_share.max(1e-6)
    }

    fn cpu_s_per_million(&self) -> f64 {
        1e6 / self.pkts_per_cpu_s().max(1e-6)
    }

    /// Each figure's name and formatted value, in report order.
    fn fields(&self) -> [(&'static str, String); 15] {
        [
            ("target", self.target.to_owned()),
            ("workload", self.workload.clone()),
            ("load", self.load.to_string()),
            ("participants", self.participants.to_string()),
            ("seconds", format!("{:.1}", self.seconds)),
            ("forwarded_pps", format!("{:.0}", self.forwarded_pps)),
            ("sfu_cpu_share", format!("{:.4}", self.sfu_cpu_share)),
            ("pkts_per_cpu_s", format!("{:.0}", self.pkts_per_cpu_s())),
            (
                "cpu_s_per_million",
                format!("{:.3}", self.cpu_s_per_million()),
            ),
            ("loss_pct", format!("{:.3}", self.loss_pct)),
            ("latency_p50_ms", format!("{:.3}", self.latency_p50_ms)),
            ("latency_p99_ms", format!("{:.3}", self.latency_p99_ms)),
            ("rss_mib", format!("{:.1}", self.rss_mib)),
            (
                "rss_per_participant_kib",
                format!("{:.0}", self.rss_per_participant_kib),
            ),
            ("load_cpu_share", format!("{:.3}", self.load_cpu_share)),
        ]
    }

    /// `workload key=value …`, for the terminal and the smoke tests.
    fn line(&self) -> String {
        let pairs: Vec<String> = self
            .fields()
            .into_iter()
            .filter(|(k, _)| *k != "workload")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{} {}", self.workload, pairs.join(" "))
    }

    fn csv_header() -> String {
        let names: Vec<&str> = Measurement::default()
            .fields()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        names.join(",")
    }

    fn csv(&self) -> String {
        let values: Vec<String> = self.fields().into_iter().map(|(_, v)| v).collect();
        values.join(",")
    }

    /// The median of each figure over several runs of the same workload.
    fn median_of(runs: &[Measurement]) -> Option<Measurement> {
        let first = runs.first()?;
        let m = |f: fn(&Measurement) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        Some(Measurement {
            seconds: m(|r| r.seconds),
            forwarded_pps: m(|r| r.forwarded_pps),
            sfu_cpu_share: m(|r| r.sfu_cpu_share),
            loss_pct: m(|r| r.loss_pct),
            latency_p50_ms: m(|r| r.latency_p50_ms),
            latency_p99_ms: m(|r| r.latency_p99_ms),
            rss_mib: m(|r| r.rss_mib),
            rss_per_participant_kib: m(|r| r.rss_per_participant_kib),
            load_cpu_share: m(|r| r.load_cpu_share),
            ..first.clone()
        })
    }
}

fn report(cli: &Cli, m: &Measurement) -> anyhow::Result<()> {
    println!("{}", m.line());
    if let Some(path) = &cli.csv {
        use std::io::Write;
        let fresh = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        if fresh {
            writeln!(f, "{}", Measurement::csv_header())?;
        }
        writeln!(f, "{}", m.csv())?;
    }
    Ok(())
}

/// Joins `members` (room, key, publishes) a few at a time.
async fn join_all(
    target: &Target,
    members: Vec<(u128, u128, Option<Publish>)>,
    capacity: u32,
) -> anyhow::Result<Vec<Participant>> {
    let joined: Vec<anyhow::Result<Participant>> = futures::stream::iter(members)
        .map(|(room, key, publish)| target.join(room, key, publish, capacity))
        .buffered(8)
        .collect()
        .await;
    joined.into_iter().collect()
}

async fn measure(target: &Target, w: Workload, media: MediaArgs) -> anyhow::Result<Measurement> {
    let size_ok = match w {
        Workload::Fanout(_) => true,
        Workload::Rooms { size, .. } => (2..=16).contains(&size),
    };
    if !size_ok || !(1..=400).contains(&w.load()) || !(1..=120).contains(&media.seconds) {
        bail!("rooms must be of 2..=16, counts 1..=400 and --seconds 1..=120");
    }
    let publish = Publish {
        video_kbps: media.video_kbps,
        audio: true,
    };
    let base_rss = target.rss_mib()?;
    // Each participant with the publishers it must receive from.
    let (members, sources, capacity): (Vec<_>, Vec<Vec<u128>>, u32) = match w {
        Workload::Fanout(n) => {
            let publisher = 1_000_000;
            let mut members = vec![(1, publisher, Some(publish))];
            let mut sources = vec![vec![]];
            for i in 0..n {
                members.push((1, u128::from(i) + 1, None));
                sources.push(vec![publisher]);
            }
            (members, sources, 1)
        }
        Workload::Rooms { size, rooms } => {
            let mut members = Vec::new();
            let mut sources = Vec::new();
            for r in 0..rooms {
                let keys: Vec<u128> = (0..size).map(|k| u128::from(r * 100 + k + 1)).collect();
                for &k in &keys {
                    members.push((u128::from(r) + 1, k, Some(publish)));
                    sources.push(keys.iter().copied().filter(|o| *o != k).collect());
                }
            }
            (members, sources, size)
        }
    };
    let keys: Vec<u128> = members.iter().map(|m| m.1).collect();
    let people = join_all(target, members, capacity).await?;
    let subscribed: Vec<anyhow::Result<()>> = futures::stream::iter(keys.iter().zip(&sources))
        .map(|(k, s)| async move {
            if s.is_empty() {
                Ok(())
            } else {
                target.subscribe(*k, s).await
            }
        })
        .buffered(8)
        .collect()
        .await;
    subscribed.into_iter().collect::<anyhow::Result<()>>()?;
    let deadline = Instant::now() + Duration::from_secs(30 + people.len() as u64 / 2);
    while people
        .iter()
        .zip(&sources)
        .any(|(p, s)| p.stats.sources_with_both(30) < s.len())
    {
        if Instant::now() > deadline {
            let short: Vec<String> = people
                .iter()
                .zip(&sources)
                .filter(|(p, s)| p.stats.sources_with_both(30) < s.len())
                .map(|(p, s)| {
                    let mut got: Vec<_> = p.stats.received().into_iter().collect();
                    got.sort();
                    format!(
                        "expected {} sources, got (stream, video) packets {got:?}",
                        s.len()
                    )
                })
                .collect();
            bail!(
                "{} participants did not receive everyone within the deadline: {}",
                short.len(),
                short.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
    let delivery = |people: &[Participant]| {
        people.iter().fold(Delivery::default(), |d, p| {
            let x = p.stats.delivery();
            Delivery {
                received: d.received + x.received,
                expected: d.expected + x.expected,
            }
        })
    };
    for p in &people {
        p.stats.take_latency();
    }
    let (d0, c0, l0, t0) = (
        delivery(&people),
        target.cpu_seconds()?,
        target.load_cpu_seconds()?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(media.seconds)).await;
    let (d1, c1, l1, elapsed) = (
        delivery(&people),
        target.cpu_seconds()?,
        target.load_cpu_seconds()?,
        t0.elapsed().as_secs_f64(),
    );
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    for p in &people {
        latency.add(p.stats.take_latency())?;
    }
    let rss = target.rss_mib()?;
    let (received, expected) = (d1.received - d0.received, d1.expected - d0.expected);
    let m = Measurement {
        target: target.name(),
        workload: w.label(),
        load: w.load(),
        participants: people.len(),
        seconds: elapsed,
        forwarded_pps: received as f64 / elapsed,
        sfu_cpu_share: (c1 - c0) / elapsed,
        loss_pct: if expected == 0 {
            100.0
        } else {
            expected.saturating_sub(received) as f64 * 100.0 / expected as f64
        },
        latency_p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency_p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        rss_mib: rss,
        rss_per_participant_kib: (rss - base_rss) * 1024.0 / people.len() as f64,
        load_cpu_share: (l1 - l0) / elapsed,
    };
    futures::stream::iter(people)
        .for_each_concurrent(16, |p| target.leave(p))
        .await;
    Ok(m)
}

/// Measures `w` on a fresh SFU started from `spec`.
async fn measure_fresh(spec: &Spec, w: Workload, media: MediaArgs) -> anyhow::Result<Measurement> {
    let target = Target::start(spec).await?;
    let m = measure(&target, w, media).await;
    drop(target);
    // Let the machine settle (sockets, the stopped process) before the next.
    tokio::time::sleep(Duration::from_millis(500)).await;
    m
}

async fn compare(
    cli: &Cli,
    ours: &Spec,
    janus: &Spec,
    sizes: &[u32],
    runs: u32,
    media: MediaArgs,
) -> anyhow::Result<()> {
    println!("machine: {}", procfs::machine());
    let mut summary = Vec::new();
    for &n in sizes {
        let mut rows: HashMap<&str, Vec<Measurement>> = HashMap::new();
        for run in 0..runs {
            // Alternate which goes first, so drift in the machine falls on both.
            let order = if run % 2 == 0 {
                [ours, janus]
            } else {
                [janus, ours]
            };
            for spec in order {
                let m = measure_fresh(spec, Workload::Fanout(n), media).await?;
                report(cli, &m)?;
                rows.entry(spec.name()).or_default().push(m);
            }
        }
        let med = |name| rows.get(name).and_then(|r| Measurement::median_of(r));
        if let (Some(o), Some(j)) = (med("ours"), med("janus")) {
            summary.push(format!(
                "compare subscribers={n} runs={runs} ours_pkts_per_cpu_s={:.0} janus_pkts_per_cpu_s={:.0} ratio={:.2} ours_cpu_share={:.3} janus_cpu_share={:.3} ours_p99_ms={:.2} janus_p99_ms={:.2} ours_loss_pct={:.3} janus_loss_pct={:.3} ours_rss_mib={:.1} janus_rss_mib={:.1}",
                o.pkts_per_cpu_s(),
                j.pkts_per_cpu_s(),
                o.pkts_per_cpu_s() / j.pkts_per_cpu_s(),
                o.sfu_cpu_share,
                j.sfu_cpu_share,
                o.latency_p99_ms,
                j.latency_p99_ms,
                o.loss_pct,
                j.loss_pct,
                o.rss_mib,
                j.rss_mib
            ));
        }
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

async fn ramp(
    cli: &Cli,
    spec: &Spec,
    kind: WorkloadKind,
    steps: &[u32],
    runs: u32,
    media: MediaArgs,
) -> anyhow::Result<()> {
    println!("machine: {}", procfs::machine());
    let mut held = None;
    let mut stop = "the last step";
    for &step in steps {
        let mut rows = Vec::new();
        for _ in 0..runs.max(1) {
            let m = measure_fresh(spec, Workload::of(kind, step), media).await?;
            report(cli, &m)?;
            rows.push(m);
        }
        let Some(m) = Measurement::median_of(&rows) else {
            continue;
        };
        println!("median {}", m.line());
        if m.loss_pct > 1.0 {
            stop = "loss over 1 %";
            break;
        }
        held = Some(m.clone());
        if m.sfu_cpu_share >= 0.95 {
            stop = "the SFU's core saturated";
            break;
        }
        if m.load_cpu_share >= 0.95 {
            stop = "the load generator's core saturated";
            break;
        }
    }
    match held {
        Some(m) => println!(
            "ramp workload={} target={} held={} stopped_by=\"{stop}\" sfu_cpu_share={:.3} per_core_extrapolated={:.0} loss_pct={:.3} latency_p99_ms={:.2}",
            m.workload,
            m.target,
            m.load,
            m.sfu_cpu_share,
            f64::from(m.load) / m.sfu_cpu_share.max(1e-6),
            m.loss_pct,
            m.latency_p99_ms
        ),
        None => println!("ramp held nothing: the first step lost over 1 %"),
    }
    Ok(())
}

/// (forwarded thousands of packets/s, SFU CPU %) of each run, by size.
type PointsBySize = HashMap<u32, Vec<(f64, f64)>>;

/// SFU CPU (% of one core) against forwarded packets per second: one line per SFU and
/// workload, medians per size, from the CSV rows.
fn draw_chart(csv: &Path, out: &Path, font: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut groups: HashMap<(String, String), PointsBySize> = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 7 {
            continue;
        }
        let (Ok(load), Ok(pps), Ok(share)) = (
            f[2].parse::<u32>(),
            f[5].parse::<f64>(),
            f[6].parse::<f64>(),
        ) else {
            continue;
        };
        groups
            .entry((f[0].to_owned(), f[1].to_owned()))
            .or_default()
            .entry(load)
            .or_default()
            .push((pps / 1000.0, share * 100.0));
    }
    let mut series: Vec<chart::Series> = groups
        .into_iter()
        .map(|((target, workload), by_load)| {
            let name = format!(
                "{}, {}",
                if target == "janus" {
                    "Janus VideoRoom"
                } else {
                    "ours"
                },
                match workload.as_str() {
                    "fanout" => "1 publisher to N",
                    "one-to-one" => "1:1 consultations",
                    "four-party" => "four-party consultations",
                    w => w,
                }
            );
            let points = by_load
                .into_values()
                .map(|v| {
                    let xs: Vec<f64> = v.iter().map(|p| p.0).collect();
                    let ys: Vec<f64> = v.iter().map(|p| p.1).collect();
                    (median(&xs), median(&ys))
                })
                .collect();
            chart::Series { name, points }
        })
        .collect();
    series.sort_by(|a, b| a.name.cmp(&b.name));
    let labels = chart::Labels {
        title: "SFU CPU against load (one core each, median of runs)",
        x: "forwarded packets per second (thousands)",
        y: "SFU CPU, % of one core",
    };
    chart::draw(out, font, &labels, &series)?;
    println!("chart {} series={}", out.display(), series.len());
    Ok(())
}

async fn churn(sfu: &Target, joins: u32, joiner_publishes: bool) -> anyhow::Result<()> {
    if !(20..=2000).contains(&joins) {
        bail!("--joins must be 20..=2000");
    }
    if matches!(sfu, Target::Janus(_)) {
        bail!("churn measures our SFU");
    }
    let room = 2;
    let media = Publish {
        video_kbps: 300,
        audio: true,
    };
    let steady = sfu.join(room, 1_000_000, Some(media), 2).await?;
    let mut after_20 = 0.0;
    let start = Instant::now();
    for i in 1..=joins {
        let p = sfu
            .join(room, u128::from(i), joiner_publishes.then_some(media), 2)
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
                procfs::rss_mib("self")?,
                sfu_synthetic::live_track_tasks()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_count("0"), 1);
        assert_eq!(cpu_count("0,1"), 2);
        assert_eq!(cpu_count("0-3"), 4);
        assert_eq!(cpu_count("0-1,4"), 3);
    }
}
