//! Waiting rooms through a rush and through failures (issue 16): one Redis (started here,
//! with its append-only file), one or more `consult serve` instances on it, and N patients
//! that are websocket clients speaking the real protocol the way the patient page does
//! (enter, `hello`, wait; on a lost connection back with the page's backoff, to a live
//! instance, as a load balancer would send them). One member of reception watches the
//! clinic on instance 0, as the staff page does (snapshot, `visit_updated`,
//! `visit_presence`, `visit_closed`).
//!
//! Every case starts with the rush (N patients entering within `--seconds`, spread over
//! the instances) and ends with every page closed, after which reception must see nobody
//! online. Cases:
//! - `rush`: only that.
//! - `kill`: `kill -9` of the last instance; its patients come back on the others, except
//!   `--gone-pct` of them who stay away (their tabs closed), whom reception must see go
//!   offline.
//! - `term`: SIGTERM of the last instance: every socket closed with 1012 within the drain
//!   limit, every patient back.
//! - `redis-down`: Redis stopped (SIGTERM, its append-only file written) for
//!   `--redis-down-secs`, then started again from that file; meanwhile a tenth of the
//!   patients reload their page and a prober tries to enter every 250 ms, every answer timed.
//!
//! Prints one line per phase (`key=value`); with `--check` fails unless the issue's
//! bounds hold. Everything runs on 127.0.0.1 and a unix socket, bounded in time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use load_tests::{ScratchDir, percentile};
use protocol::{
    ClientMsg, ClinicId, EnterRequest, EnterResponse, Entry, PatientState, ServerMsg,
    SignInRequest, SignInResponse, VisitId,
};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Case {
    Rush,
    Kill,
    Term,
    RedisDown,
}

#[derive(Debug, Parser)]
#[command(about = "Waiting rooms through a rush, a killed or stopped instance, and Redis away")]
struct Args {
    /// The `consult` binary to run.
    #[arg(long, default_value = "target/debug/consult")]
    consult_bin: PathBuf,
    #[arg(long, value_enum, default_value = "rush")]
    case: Case,
    /// Signalling instances on the one Redis (1..=4).
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Patients (1..=10000).
    #[arg(long, default_value_t = 100)]
    patients: usize,
    /// The rush: every patient enters within this many seconds, evenly spread.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Clinics the patients are spread over (1: everyone in one waiting room).
    #[arg(long, default_value_t = 1)]
    clinics: usize,
    /// `kill`: the share of the killed instance's patients who do not come back (%).
    #[arg(long, default_value_t = 10)]
    gone_pct: u32,
    /// `redis-down`: how long Redis is away.
    #[arg(long, default_value_t = 30)]
    redis_down_secs: u64,
    /// Fail unless the bounds hold (0 refused, entry p99 under `--entry-p99-ms`,
    /// 0 lost, back within 5 s, ...).
    #[arg(long)]
    check: bool,
    /// `--check`'s bound on the entries' p99 (the issue's: 100 ms, for release builds).
    #[arg(long, default_value_t = 100.0)]
    entry_p99_ms: f64,
}

const PASSWORD: &str = "rush password, long enough to pass";
/// No phase waits longer than this for what it expects.
const PHASE_LIMIT: Duration = Duration::from_secs(90);
/// The whole run's watchdog.
const WATCHDOG: Duration = Duration::from_secs(15 * 60);

/// A process killed when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()?
            .success();
        if !ok {
            bail!("kill -{sig} {} failed", self.child.id());
        }
        Ok(())
    }
}

fn start_redis(dir: &Path) -> anyhow::Result<Proc> {
    let sock = dir.join("redis.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new("redis-server")
        .arg(infra_redis_conf()?)
        .args(["--port", "0", "--unixsocket"])
        .arg(&sock)
        .args(["--unixsocketperm", "700", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Proc { child })
}

/// The Redis settings a hospital runs with (`infra/redis/redis.conf`: append-only file).
fn infra_redis_conf() -> anyhow::Result<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/redis/redis.conf");
    p.canonicalize().with_context(|| format!("{}", p.display()))
}

fn consult(args: &Args, dir: &Path, redis_url: &str) -> Command {
    let mut c = Command::new(&args.consult_bin);
    c.env("CONSULT_DATA_DIR", dir)
        .env("CONSULT_LOG", "warn")
        .env("CONSULT_REDIS_URL", redis_url)
        // One client address makes every entry: the per-address limits are not under test.
        .env("CONSULT_ENTRIES_PER_MINUTE", "100000000")
        .env("CONSULT_SIGN_INS_PER_MINUTE", "100000000")
        .env(
            "CONSULT_MAX_CONNECTIONS",
            (args.patients + 1000).to_string(),
        );
    c
}

fn run_cli(
    args: &Args,
    dir: &Path,
    url: &str,
    a: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<()> {
    let mut c = consult(args, dir, url);
    c.args(a).stdout(Stdio::null()).stdin(Stdio::piped());
    let mut child = c.spawn().context("consult")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!("consult {a:?} failed");
    }
    Ok(())
}

struct Instance {
    proc: Proc,
    base: String,
}

fn start_instance(args: &Args, dir: &Path, url: &str, i: usize) -> anyhow::Result<Instance> {
    let log = std::fs::File::create(dir.join(format!("consult-{i}.log")))?;
    let mut child = consult(args, dir, url)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("consult: listening on ")
        .with_context(|| format!("unexpected first line: {line}"))?
        .to_owned();
    Ok(Instance {
        proc: Proc { child },
        base: format!("http://{addr}"),
    })
}

/// Which instances a load balancer would send a new connection to.
#[derive(Debug)]
struct Balancer {
    bases: Vec<String>,
    alive: Mutex<Vec<bool>>,
}

impl Balancer {
    /// A live instance, starting from `home` and trying the next on each `attempt`.
    fn pick(&self, home: usize, attempt: usize) -> String {
        let alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.bases.len();
        (0..n)
            .map(|k| (home + attempt + k) % n)
            .find(|i| alive[*i])
            .map_or_else(|| self.bases[home].clone(), |i| self.bases[i].clone())
    }
    fn down(&self, i: usize) {
        self.alive.lock().unwrap_or_else(|p| p.into_inner())[i] = false;
    }
}

/// What one patient went through, shared with the phases that measure it.
#[derive(Debug, Default)]
struct PatientLog {
    visit: Option<VisitId>,
    /// The instance its open connection is on.
    instance: Option<usize>,
    /// When it last heard its status (welcome and `patient_status`).
    status_at: Option<Instant>,
    /// Close codes of its connections, in order, with when.
    closes: Vec<(u16, Instant)>,
    /// The server said the visit ended.
    told_ended: bool,
    /// Each websocket attempt: how long until the server answered (status or a close).
    answers_ms: Vec<f64>,
}

#[derive(Debug)]
struct Patient {
    log: Mutex<PatientLog>,
    /// Close the page (for good).
    close: Notify,
    closed: AtomicBool,
    /// Reload the page: close this connection and open a new one.
    reload: Notify,
}

fn log(p: &Patient) -> std::sync::MutexGuard<'_, PatientLog> {
    p.log.lock().unwrap_or_else(|e| e.into_inner())
}

struct Entered {
    ms: f64,
    status: u16,
}

/// One patient: enters, then keeps a connection open as the page does until closed.
async fn patient(
    http: reqwest::Client,
    lb: Arc<Balancer>,
    home: usize,
    clinic: ClinicId,
    name: String,
    me: Arc<Patient>,
) -> Entered {
    let base = lb.pick(home, 0);
    let t0 = Instant::now();
    let answer = http
        .post(format!("{base}/api/visits"))
        .json(&EnterRequest {
            entry: Entry::OpenLink { clinic },
            name,
            details: None,
        })
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let entered: EnterResponse = match answer {
        Ok(r) if r.status().is_success() => match r.json().await {
            Ok(e) => e,
            Err(_) => return Entered { ms, status: 0 },
        },
        Ok(r) => {
            return Entered {
                ms,
                status: r.status().as_u16(),
            };
        }
        Err(_) => return Entered { ms, status: 0 },
    };
    log(&me).visit = Some(entered.visit);
    let token = entered.visit_token;
    tokio::spawn(async move {
        let mut retry: u32 = 0;
        let mut attempt = 0;
        while !me.closed.load(Ordering::Relaxed) {
            let i = pick_index(&lb, home, attempt);
            attempt += 1;
            let end = connection(&lb.bases[i], i, &token, &me).await;
            if me.closed.load(Ordering::Relaxed) || matches!(end, End::Fatal) {
                return;
            }
            match end {
                End::Reloaded => {
                    retry = 0;
                    continue;
                }
                // The page's backoff starts again after a connection that was welcomed.
                End::Lost { welcomed: true, .. } => retry = 0,
                _ => {}
            }
            // The page's backoff (`reconnectDelay` in signalling.js): a dropped connection
            // is tried again within 250 ms, a restarting server (1012) after 0.5 s; then
            // 1 s, 2 s ... at most 10 s (2 s while the store is away: 1013), with jitter.
            let code = match end {
                End::Lost { code, .. } => code,
                _ => 1006,
            };
            let delay_ms = if retry == 0 && code != 1012 {
                rand::random::<f64>() * 250.0
            } else {
                let cap = if code == 1013 { 2_000 } else { 10_000 };
                let jitter = 0.75 + rand::random::<f64>() / 2.0;
                (500u64 << retry.min(5)).min(cap) as f64 * jitter
            };
            retry += 1;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(delay_ms / 1000.0)) => {}
                () = me.close.notified() => return,
            }
        }
    });
    Entered { ms, status: 200 }
}

/// How a connection of the page ended.
enum End {
    /// Closed by the page, for good.
    Closed,
    /// The page reloads: at once, on a new connection.
    Reloaded,
    /// The credential or the visit is over (4001, 4002): the page stops.
    Fatal,
    /// Anything else (`code`: its close code, 1006 for none): the page comes back after
    /// its backoff.
    Lost { welcomed: bool, code: u16 },
}

fn pick_index(lb: &Balancer, home: usize, attempt: usize) -> usize {
    let base = lb.pick(home, attempt);
    lb.bases.iter().position(|b| *b == base).unwrap_or(home)
}

/// One websocket connection of the page, until it closes.
async fn connection(base: &str, instance: usize, token: &str, me: &Patient) -> End {
    let t0 = Instant::now();
    let url = format!("{}/ws", base.replacen("http", "ws", 1));
    let answered = |me: &Patient| {
        log(me).answers_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    };
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    else {
        answered(me);
        return End::Lost {
            welcomed: false,
            code: 1006,
        };
    };
    let hello = serde_json::to_string(&ClientMsg::Hello {
        token: token.to_owned(),
    })
    .unwrap_or_default();
    if ws.send(Message::text(hello)).await.is_err() {
        answered(me);
        return End::Lost {
            welcomed: false,
            code: 1006,
        };
    }
    let mut welcomed = false;
    let mut first = true;
    loop {
        let frame = tokio::select! {
            () = me.close.notified() => {
                me.closed.store(true, Ordering::Relaxed);
                let _ = ws.close(None).await;
                return End::Closed;
            }
            () = me.reload.notified() => {
                let _ = ws.close(None).await;
                return End::Reloaded;
            }
            f = ws.next() => f,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                let code = c.map_or(1005, |c| u16::from(c.code));
                if first {
                    answered(me);
                }
                let mut l = log(me);
                l.closes.push((code, Instant::now()));
                l.instance = None;
                if code == 4002 {
                    l.told_ended = true;
                }
                drop(l);
                return if matches!(code, 4001 | 4002) {
                    End::Fatal
                } else {
                    End::Lost { welcomed, code }
                };
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                if first {
                    answered(me);
                }
                let mut l = log(me);
                l.closes.push((1006, Instant::now()));
                l.instance = None;
                return End::Lost {
                    welcomed,
                    code: 1006,
                };
            }
        };
        let Ok(msg) = serde_json::from_str::<ServerMsg>(&text) else {
            continue;
        };
        match msg {
            ServerMsg::Welcome { .. } => welcomed = true,
            ServerMsg::PatientStatus { status } => {
                if first {
                    answered(me);
                    first = false;
                }
                let mut l = log(me);
                l.status_at = Some(Instant::now());
                l.instance = Some(instance);
                if matches!(status, PatientState::Ended { .. }) {
                    l.told_ended = true;
                }
            }
            ServerMsg::Error { code, .. } => {
                if first {
                    answered(me);
                    first = false;
                }
                if code == protocol::ErrorCode::VisitEnded {
                    log(me).told_ended = true;
                }
            }
            _ => {}
        }
    }
}

/// What reception sees: every visit of its clinics, and who is online.
#[derive(Debug, Default)]
struct StaffView {
    /// Visit -> (arrived_at, online).
    visits: BTreeMap<VisitId, (u64, bool)>,
    snapshots: usize,
}

impl StaffView {
    fn online(&self) -> usize {
        self.visits.values().filter(|(_, o)| *o).count()
    }
    fn order(&self) -> Vec<VisitId> {
        let mut v: Vec<(u64, VisitId)> =
            self.visits.iter().map(|(id, (at, _))| (*at, *id)).collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }
}

/// Reception's page on instance 0, reconnecting as the page does.
async fn reception(
    base: String,
    token: String,
    view: Arc<Mutex<StaffView>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let url = format!("{}/ws", base.replacen("http", "ws", 1));
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
            let hello = serde_json::to_string(&ClientMsg::Hello {
                token: token.clone(),
            })
            .unwrap_or_default();
            let _ = ws.send(Message::text(hello)).await;
            loop {
                let frame = tokio::select! {
                    () = stop.cancelled() => return,
                    f = ws.next() => f,
                };
                let Some(Ok(frame)) = frame else { break };
                let Message::Text(t) = frame else { continue };
                let Ok(msg) = serde_json::from_str::<ServerMsg>(&t) else {
                    continue;
                };
                let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
                match msg {
                    ServerMsg::ClinicSnapshot { visits, .. } => {
                        v.snapshots += 1;
                        v.visits = visits
                            .into_iter()
                            .map(|x| (x.id, (x.arrived_at.0, x.online)))
                            .collect();
                    }
                    ServerMsg::VisitUpdated { visit, .. } => {
                        v.visits
                            .insert(visit.id, (visit.arrived_at.0, visit.online));
                    }
                    ServerMsg::VisitPresence {
                        online, offline, ..
                    } => {
                        for (ids, is_online) in [(online, true), (offline, false)] {
                            for id in ids {
                                if let Some(x) = v.visits.get_mut(&id) {
                                    x.1 = is_online;
                                }
                            }
                        }
                    }
                    ServerMsg::VisitClosed { visit, .. } => {
                        v.visits.remove(&visit);
                    }
                    _ => {}
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn summary(name: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "{name}_n={} {name}_p50_ms={:.1} {name}_p99_ms={:.1} {name}_max_ms={:.1}",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    )
}

/// Waits until `done` holds (checked every 20 ms) or `limit` after `since`; how long
/// after `since` it held. Phases measured one after another from one moment (a kill,
/// Redis back) each pass that moment.
async fn until(
    since: Instant,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if done() {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_owned(), |d| format!("{:.2}", d.as_secs_f64()))
}

/// Failures of `--check`, said at the end.
#[derive(Default)]
struct Verdict(Vec<String>);

impl Verdict {
    fn require(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=4).contains(&args.instances)
        || !(1..=10_000).contains(&args.patients)
        || !(1..=100).contains(&args.clinics)
        || !(0.0..=600.0).contains(&args.seconds)
        || args.gone_pct > 100
        || args.redis_down_secs > 300
    {
        bail!(
            "--instances 1..=4, --patients 1..=10000, --clinics 1..=100, --seconds 0..=600, --gone-pct 0..=100, --redis-down-secs 0..=300"
        );
    }
    if matches!(args.case, Case::Kill | Case::Term) && args.instances < 2 {
        bail!("--case kill and term need --instances 2 or more");
    }
    // A hung run must not hang CI.
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("rush: watchdog: no result in {WATCHDOG:?}");
        std::process::exit(2);
    });
    let dir = ScratchDir::new("rush")?;
    let mut redis = start_redis(&dir.0)?;
    let url = format!("redis+unix://{}", dir.0.join("redis.sock").display());
    let mut clinic_args = Vec::new();
    for c in 0..args.clinics {
        let id = format!("c{c}");
        run_cli(
            &args,
            &dir.0,
            &url,
            &[
                "clinic",
                "add",
                &id,
                "--name",
                &format!("Clinic {c}"),
                "--open-link",
            ],
            None,
        )?;
        clinic_args.push("--clinic".to_owned());
        clinic_args.push(id);
    }
    let mut a: Vec<&str> = vec![
        "staff",
        "add",
        "rita",
        "--name",
        "Rita",
        "--role",
        "reception",
        "--password-stdin",
    ];
    a.extend(clinic_args.iter().map(String::as_str));
    run_cli(&args, &dir.0, &url, &a, Some(&format!("{PASSWORD}\n")))?;
    let mut instances = Vec::new();
    for i in 0..args.instances {
        instances.push(Some(start_instance(&args, &dir.0, &url, i)?));
    }
    let lb = Arc::new(Balancer {
        bases: instances.iter().flatten().map(|i| i.base.clone()).collect(),
        alive: Mutex::new(vec![true; args.instances]),
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let signed: SignInResponse = http
        .post(format!("{}/api/staff/sign-in", lb.bases[0]))
        .json(&SignInRequest {
            username: "rita".into(),
            password: PASSWORD.into(),
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let view = Arc::new(Mutex::new(StaffView::default()));
    // Not a Notify: a stop must reach the task whatever it is doing at that moment.
    let stop_staff = tokio_util::sync::CancellationToken::new();
    let staff_task = tokio::spawn(reception(
        lb.bases[0].clone(),
        signed.token.clone(),
        view.clone(),
        stop_staff.clone(),
    ));
    until(Instant::now(), Duration::from_secs(10), || {
        view.lock()
            .map(|v| v.snapshots >= args.clinics)
            .unwrap_or(false)
    })
    .await
    .context("reception never got its snapshot")?;
    let mut verdict = Verdict::default();

    // The rush.
    let load = load_tests::procfs::loadavg().unwrap_or_default();
    let patients: Vec<Arc<Patient>> = (0..args.patients)
        .map(|_| {
            Arc::new(Patient {
                log: Mutex::default(),
                close: Notify::new(),
                closed: AtomicBool::new(false),
                reload: Notify::new(),
            })
        })
        .collect();
    let start = Instant::now();
    let interval = if args.patients > 1 {
        args.seconds / (args.patients - 1) as f64
    } else {
        0.0
    };
    let mut entries = Vec::new();
    for (i, p) in patients.iter().enumerate() {
        let due = start + Duration::from_secs_f64(interval * i as f64);
        tokio::time::sleep_until(due.into()).await;
        let clinic = ClinicId::parse(format!("c{}", i % args.clinics))?;
        entries.push(tokio::spawn(patient(
            http.clone(),
            lb.clone(),
            i % args.instances,
            clinic,
            format!("Patient {i}"),
            p.clone(),
        )));
    }
    let mut entry_ms = Vec::new();
    let mut refused: HashMap<u16, usize> = HashMap::new();
    for e in entries {
        let e = e.await?;
        if e.status == 200 {
            entry_ms.push(e.ms);
        } else {
            *refused.entry(e.status).or_default() += 1;
        }
    }
    let entered = entry_ms.len();
    let all_waiting = until(Instant::now(), PHASE_LIMIT, || {
        patients
            .iter()
            .filter(|p| log(p).status_at.is_some())
            .count()
            == entered
    })
    .await;
    let rush_seconds = start.elapsed().as_secs_f64();
    let staff_online = until(Instant::now(), Duration::from_secs(10), || {
        view.lock().map(|v| v.online() == entered).unwrap_or(false)
    })
    .await;
    let n_refused: usize = refused.values().sum();
    let p99 = {
        let mut s = entry_ms.clone();
        s.sort_by(f64::total_cmp);
        percentile(&s, 99.0)
    };
    println!(
        "rush instances={} patients={} seconds={} clinics={} load1={load:.2} refused={n_refused} refused_by_status={refused:?} {} all_waiting_s={} rush_s={rush_seconds:.1} staff_online={}/{entered} staff_all_online_s={}",
        args.instances,
        args.patients,
        args.seconds,
        args.clinics,
        summary("entry", entry_ms.clone()),
        secs(all_waiting),
        view.lock().map(|v| v.online()).unwrap_or(0),
        secs(staff_online),
    );
    verdict.require(n_refused == 0, format!("{n_refused} entries refused"));
    verdict.require(
        p99 < args.entry_p99_ms,
        format!("entry p99 {p99:.1} ms (bound {} ms)", args.entry_p99_ms),
    );
    verdict.require(all_waiting.is_some(), "not every patient got their status");
    verdict.require(
        staff_online.is_some(),
        "reception did not see everyone online",
    );
    let order_before = view.lock().map(|v| v.order()).unwrap_or_default();

    match args.case {
        Case::Rush => {}
        Case::Kill | Case::Term => {
            let victim = args.instances - 1;
            let on_victim: Vec<Arc<Patient>> = patients
                .iter()
                .filter(|p| log(p).instance == Some(victim))
                .cloned()
                .collect();
            // Some of the victim's patients do not come back (closed tabs): staff must see
            // them go offline.
            let gone_n = if args.case == Case::Kill {
                on_victim.len() * args.gone_pct as usize / 100
            } else {
                0
            };
            let (gone, back) = on_victim.split_at(gone_n);
            let t0 = Instant::now();
            let proc = instances[victim].take().context("victim")?;
            lb.down(victim);
            let mut drained = None;
            if args.case == Case::Kill {
                for p in gone {
                    p.closed.store(true, Ordering::Relaxed);
                }
                proc.proc.signal("KILL")?;
                drop(proc);
            } else {
                proc.proc.signal("TERM")?;
                let mut proc = proc;
                let exited = until(t0, Duration::from_secs(30), || {
                    matches!(proc.proc.child.try_wait(), Ok(Some(_)))
                })
                .await;
                drained = Some(exited);
            }
            let back_n = back.len();
            let resumed = until(t0, PHASE_LIMIT, || {
                back.iter()
                    .filter(|p| {
                        let l = log(p);
                        l.status_at.is_some_and(|s| s > t0) && l.instance.is_some()
                    })
                    .count()
                    == back_n
            })
            .await;
            let resume_ms: Vec<f64> = back
                .iter()
                .filter_map(|p| log(p).status_at.filter(|s| *s > t0))
                .map(|s| (s - t0).as_secs_f64() * 1000.0)
                .collect();
            // When each page saw its connection drop: the part of coming back that is the
            // network's and the killed process's, not the survivor's.
            let dropped_ms: Vec<f64> = back
                .iter()
                .filter_map(|p| log(p).closes.iter().map(|(_, at)| *at).find(|at| *at > t0))
                .map(|at| (at - t0).as_secs_f64() * 1000.0)
                .collect();
            let gone_ids: BTreeSet<VisitId> = gone.iter().filter_map(|p| log(p).visit).collect();
            let presence_right = until(t0, Duration::from_secs(30), || {
                view.lock()
                    .map(|v| {
                        v.visits
                            .iter()
                            .all(|(id, (_, online))| *online != gone_ids.contains(id))
                    })
                    .unwrap_or(false)
            })
            .await;
            let closes_1012 = on_victim
                .iter()
                .filter(|p| log(p).closes.iter().any(|(c, at)| *c == 1012 && *at > t0))
                .count();
            let ended = patients.iter().filter(|p| log(p).told_ended).count();
            let order_after = view.lock().map(|v| v.order()).unwrap_or_default();
            let lost = order_before
                .iter()
                .filter(|id| !order_after.contains(id))
                .count();
            let name = if args.case == Case::Kill {
                "kill"
            } else {
                "term"
            };
            println!(
                "{name} on_victim={} gone={} {} {} all_back_s={} staff_presence_right_s={} closed_1012={closes_1012}/{} drain_s={} lost={lost} order_kept={} told_ended={ended}",
                on_victim.len(),
                gone.len(),
                summary("dropped", dropped_ms),
                summary("back", resume_ms.clone()),
                secs(resumed),
                secs(presence_right),
                on_victim.len(),
                drained.map_or_else(|| "-".to_owned(), secs),
                order_before == order_after,
            );
            let mut sorted = resume_ms;
            sorted.sort_by(f64::total_cmp);
            let back_p99 = percentile(&sorted, 99.0);
            verdict.require(resumed.is_some(), "not every patient came back");
            verdict.require(
                back_p99 < 5000.0,
                format!("back p99 {back_p99:.0} ms (bound 5 s)"),
            );
            verdict.require(lost == 0, format!("{lost} visits lost"));
            verdict.require(order_before == order_after, "queue order changed");
            verdict.require(
                ended == 0,
                format!("{ended} patients told their visit ended"),
            );
            if args.case == Case::Kill {
                verdict.require(
                    presence_right.is_some_and(|d| d < Duration::from_secs(10)),
                    "staff presence not right within 10 s",
                );
            } else {
                verdict.require(
                    closes_1012 == on_victim.len(),
                    "not every socket closed with 1012",
                );
                verdict.require(
                    drained
                        .flatten()
                        .is_some_and(|d| d < Duration::from_secs(10)),
                    "drain over its 10 s limit",
                );
            }
        }
        Case::RedisDown => {
            // A tenth of the patients reload during the outage; a prober enters every 250 ms.
            let reloaders: Vec<Arc<Patient>> = patients.iter().step_by(10).cloned().collect();
            for p in &reloaders {
                log(p).answers_ms.clear();
            }
            let t0 = Instant::now();
            redis.signal("TERM")?;
            let _ = redis.child.wait();
            let probe_ms = Arc::new(Mutex::new(Vec::<(f64, bool)>::new()));
            let probing = Arc::new(AtomicBool::new(true));
            let prober = {
                let (http, lb, probe_ms, probing) =
                    (http.clone(), lb.clone(), probe_ms.clone(), probing.clone());
                tokio::spawn(async move {
                    let mut k = 0usize;
                    while probing.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let ok = http
                            .post(format!("{}/api/visits", lb.pick(k, 0)))
                            .json(&EnterRequest {
                                entry: Entry::OpenLink {
                                    clinic: ClinicId::parse("c0")
                                        .unwrap_or_else(|_| unreachable!()),
                                },
                                name: format!("Probe {k}"),
                                details: None,
                            })
                            .timeout(Duration::from_secs(30))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        probe_ms
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((t.elapsed().as_secs_f64() * 1000.0, ok));
                        k += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                })
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            for p in &reloaders {
                p.reload.notify_one();
            }
            tokio::time::sleep(
                Duration::from_secs(args.redis_down_secs).saturating_sub(t0.elapsed()),
            )
            .await;
            redis = start_redis(&dir.0)?;
            let back_at = Instant::now();
            let probes_before = probe_ms.lock().map(|p| p.len()).unwrap_or(0);
            let entry_ok = until(back_at, PHASE_LIMIT, || {
                probe_ms
                    .lock()
                    .map(|p| p[probes_before.min(p.len())..].iter().any(|(_, ok)| *ok))
                    .unwrap_or(false)
            })
            .await;
            let reloaded_back = until(back_at, PHASE_LIMIT, || {
                reloaders
                    .iter()
                    .all(|p| log(p).status_at.is_some_and(|s| s > t0))
            })
            .await;
            let staff_back = until(back_at, PHASE_LIMIT, || {
                view.lock().map(|v| v.online() == entered).unwrap_or(false)
            })
            .await;
            let recovery = [entry_ok, reloaded_back]
                .into_iter()
                .map(|d| d.map(|d| d.as_secs_f64()))
                .try_fold(0.0_f64, |m, d| d.map(|d| m.max(d)));
            probing.store(false, Ordering::Relaxed);
            let _ = prober.await;
            let during: Vec<f64> = probe_ms
                .lock()
                .map(|p| {
                    p[..probes_before.min(p.len())]
                        .iter()
                        .map(|(ms, _)| *ms)
                        .collect()
                })
                .unwrap_or_default();
            let ws_answers: Vec<f64> = reloaders
                .iter()
                .flat_map(|p| log(p).answers_ms.clone())
                .collect();
            let slowest = during
                .iter()
                .chain(ws_answers.iter())
                .copied()
                .fold(0.0, f64::max);
            let ended = patients.iter().filter(|p| log(p).told_ended).count();
            let order_after = view.lock().map(|v| v.order()).unwrap_or_default();
            let lost = order_before
                .iter()
                .filter(|id| !order_after.contains(id))
                .count();
            println!(
                "redis_down seconds={} reloaders={} {} {} slowest_answer_ms={slowest:.0} recovery_s={} entry_ok_after_s={} reloaded_back_s={} staff_all_online_s={} lost={lost} told_ended={ended}",
                args.redis_down_secs,
                reloaders.len(),
                summary("probe_during", during),
                summary("ws_answer", ws_answers),
                recovery.map_or_else(|| "never".into(), |r| format!("{r:.2}")),
                secs(entry_ok),
                secs(reloaded_back),
                secs(staff_back),
            );
            verdict.require(
                ended == 0,
                format!("{ended} patients told their visit ended"),
            );
            verdict.require(
                slowest < 3000.0,
                format!("an answer took {slowest:.0} ms (bound 3 s)"),
            );
            verdict.require(
                recovery.is_some_and(|r| r < 5.0),
                "no full recovery within 5 s",
            );
            verdict.require(lost == 0, format!("{lost} visits lost"));
        }
    }

    // Every page closes: nobody may be shown online.
    let t0 = Instant::now();
    for p in &patients {
        p.closed.store(true, Ordering::Relaxed);
        p.close.notify_one();
    }
    let nobody = until(t0, Duration::from_secs(30), || {
        view.lock().map(|v| v.online() == 0).unwrap_or(false)
    })
    .await;
    let still = view.lock().map(|v| v.online()).unwrap_or(0);
    println!(
        "presence_after_close pages={} online_after={still} nobody_online_s={}",
        patients.len(),
        secs(nobody),
    );
    verdict.require(
        nobody.is_some(),
        format!("{still} still shown online after every page closed"),
    );
    stop_staff.cancel();
    let _ = staff_task.await;
    drop(instances);
    drop(redis);
    if args.check && !verdict.0.is_empty() {
        bail!("bounds not met: {}", verdict.0.join("; "));
    }
    Ok(())
}
