//! Waiting rooms under load (signalling only): simulated patients enter waiting rooms
//! across many clinics at a set rate and stay connected; simulated reception admits some
//! of them. Reports the join latency (from the patient's `POST /api/visits` to their
//! websocket saying `waiting`) and the admit → patient-notified latency (from reception's
//! `POST /api/commands` to the patient's websocket saying `admitted`), p50/p99/p99.9, and
//! the server's CPU time and resident memory per connection, read from /proc/<pid>.
//!
//! The server is a real `consult serve` process started here, single node or on a Redis
//! (`--redis-url`); clinics and staff are made with its command line. Everything is on
//! 127.0.0.1, bounded in count and time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use load_tests::ScratchDir;
use load_tests::percentile;
use load_tests::procfs::{process_cpu_seconds, rss_mib};
use protocol::{
    ClientMsg, ClinicId, Command as Cmd, EnterRequest, EnterResponse, Entry, PatientState,
    ServerMsg, SignInRequest, SignInResponse, StaffId, VisitId,
};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(about = "Waiting rooms under load: join and admit latency, server CPU and memory")]
struct Args {
    /// The `consult` binary to run.
    #[arg(long, default_value = "target/release/consult")]
    consult_bin: PathBuf,
    /// Run the server on this Redis instead of single node.
    #[arg(long)]
    redis_url: Option<String>,
    /// Patients connected and waiting at once.
    #[arg(long, default_value_t = 1000)]
    patients: u32,
    /// Clinics the patients are spread over.
    #[arg(long, default_value_t = 100)]
    clinics: u32,
    /// Patients entering per second.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// The CPUs the server may use (taskset list, e.g. `0`).
    #[arg(long)]
    server_cpus: Option<String>,
    /// Patients admitted (one at a time, each measured).
    #[arg(long, default_value_t = 200)]
    admits: u32,
    /// Instead of waiting rooms: this many wrong sign-ins at once (unknown user names,
    /// each needing a password check), while `/healthz` is timed every 10 ms and the
    /// server's memory sampled; fails unless memory stays under 200 MB above its idle
    /// figure and `/healthz` answers within 100 ms throughout.
    #[arg(long)]
    sign_in_flood: Option<u32>,
}

/// The sign-in flood: see `--sign-in-flood`.
async fn sign_in_flood(base: &str, pid: u32, n: u32) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let rss_idle = rss_mib(&pid.to_string())?;
    let stop = tokio_util::sync::CancellationToken::new();
    let health = {
        let (http, base, stop) = (http.clone(), base.to_owned(), stop.clone());
        tokio::spawn(async move {
            let mut ms = Vec::new();
            while !stop.is_cancelled() {
                let t0 = Instant::now();
                let ok = http
                    .get(format!("{base}/healthz"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                ms.push(if ok {
                    t0.elapsed().as_secs_f64() * 1000.0
                } else {
                    f64::INFINITY
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ms
        })
    };
    let memory = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !stop.is_cancelled() {
                peak = peak.max(rss_mib(&pid.to_string()).unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let start = Instant::now();
    let attempts = (0..n).map(|i| {
        let (http, base) = (http.clone(), base.to_owned());
        async move {
            http.post(format!("{base}/api/staff/sign-in"))
                .json(&SignInRequest {
                    username: format!("nobody{i}"),
                    password: "a wrong password".into(),
                })
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    let took = start.elapsed().as_secs_f64();
    stop.cancel();
    let health = health.await?;
    let peak = memory.await?;
    let count = |s: u16| statuses.iter().filter(|x| **x == s).count();
    let rss_delta = peak - rss_idle;
    println!(
        "sign_in_flood n={n} seconds={took:.1} wrong_401={} busy_429={} other={} rss_idle_mib={rss_idle:.1} rss_peak_mib={peak:.1} rss_delta_mib={rss_delta:.1} {}",
        count(401),
        count(429),
        statuses.len() - count(401) - count(429),
        summary("healthz", health.clone()),
    );
    let worst = health.iter().copied().fold(0.0, f64::max);
    if rss_delta >= 200.0 || worst >= 100.0 || count(401) + count(429) != statuses.len() {
        bail!("the flood broke a limit: memory +{rss_delta:.1} MiB, /healthz worst {worst:.1} ms");
    }
    Ok(())
}

const PASSWORD: &str = "room-bench password, long enough";

fn summary(name: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    format!(
        "{name}_n={} {name}_p50_ms={:.2} {name}_p99_ms={:.2} {name}_p999_ms={:.2} {name}_max_ms={:.2}",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        percentile(&ms, 99.9),
        ms.last().copied().unwrap_or(f64::NAN)
    )
}

/// The server process; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    _dir: ScratchDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn consult(args: &Args, dir: &std::path::Path) -> Command {
    with_env(Command::new(&args.consult_bin), args, dir)
}

/// The server's settings, in its environment.
fn with_env(mut c: Command, args: &Args, dir: &std::path::Path) -> Command {
    c.env("CONSULT_DATA_DIR", dir)
        .env("CONSULT_LOG", "warn")
        // One client address makes every entry and sign-in: the per-address limits are
        // not under test.
        .env("CONSULT_ENTRIES_PER_MINUTE", "100000000")
        .env("CONSULT_SIGN_INS_PER_MINUTE", "100000000")
        .env(
            "CONSULT_MAX_CONNECTIONS",
            (args.patients + 1000).to_string(),
        );
    if let Some(url) = &args.redis_url {
        c.env("CONSULT_REDIS_URL", url);
    }
    c
}

/// Clinics `c0..`, a receptionist and a clinician for all of them, then the server.
fn start_server(args: &Args) -> anyhow::Result<Server> {
    let dir = ScratchDir::new("room-bench")?;
    let run = |extra: &[&str], stdin: Option<&str>| -> anyhow::Result<()> {
        let mut c = consult(args, &dir.0);
        c.args(extra).stdout(Stdio::null()).stdin(Stdio::piped());
        let mut child = c
            .spawn()
            .with_context(|| format!("running {}", args.consult_bin.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(input.as_bytes())?;
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("consult {extra:?} failed");
        }
        Ok(())
    };
    let mut clinic_args = Vec::new();
    for i in 0..args.clinics {
        run(
            &[
                "clinic",
                "add",
                &format!("c{i}"),
                "--name",
                &format!("Clinic {i}"),
                "--open-link",
            ],
            None,
        )?;
        clinic_args.push("--clinic".to_owned());
        clinic_args.push(format!("c{i}"));
    }
    for (user, role) in [("rita", "reception"), ("dr.bench", "clinician")] {
        let mut a: Vec<&str> = vec![
            "staff",
            "add",
            user,
            "--name",
            user,
            "--role",
            role,
            "--password-stdin",
        ];
        a.extend(clinic_args.iter().map(String::as_str));
        run(&a, Some(&format!("{PASSWORD}\n")))?;
    }
    let mut serve = consult(args, &dir.0);
    if let Some(cpus) = &args.server_cpus {
        // taskset execs the server: the child's pid is the server's.
        let program = serve.get_program().to_owned();
        serve = Command::new("taskset");
        serve.arg("-c").arg(cpus).arg(program);
        serve = with_env(serve, args, &dir.0);
    }
    let mut child = serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
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
    Ok(Server {
        child,
        addr,
        _dir: dir,
    })
}

/// When reception sent each admit, for the patient's task to measure against.
type AdmitSent = Arc<Mutex<HashMap<VisitId, Instant>>>;

struct Patient {
    visit: VisitId,
    clinic: ClinicId,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=20_000).contains(&args.patients) || !(1..=1_000).contains(&args.clinics) {
        bail!("--patients must be 1..=20000 and --clinics 1..=1000");
    }
    let admits = args.admits.min(args.patients);
    let server = start_server(&args)?;
    let pid = server.child.id();
    let base = format!("http://{}", server.addr);
    if let Some(n) = args.sign_in_flood {
        if !(1..=5_000).contains(&n) {
            bail!("--sign-in-flood must be 1..=5000");
        }
        return sign_in_flood(&base, pid, n).await;
    }
    let http = reqwest::Client::new();
    let rss_idle = rss_mib(&pid.to_string())?;
    let cpu_idle = process_cpu_seconds(pid)?;

    let (join_tx, mut join_rx) = tokio::sync::mpsc::unbounded_channel::<(f64, Patient)>();
    let (admit_tx, mut admit_rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let sent: AdmitSent = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let in_flight = Arc::new(Semaphore::new(512));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    for i in 0..args.patients {
        let due = start + interval * i;
        tokio::time::sleep_until(due.into()).await;
        // Bounds entries in flight (not connections): let go once the patient waits.
        let mut permit = Some(in_flight.clone().acquire_owned().await?);
        let (http, base, join_tx, admit_tx, sent, stop) = (
            http.clone(),
            base.clone(),
            join_tx.clone(),
            admit_tx.clone(),
            sent.clone(),
            stop.clone(),
        );
        let clinic = ClinicId::parse(format!("c{}", i % args.clinics))?;
        tokio::spawn(async move {
            let t0 = Instant::now();
            let entered: EnterResponse = match async {
                http.post(format!("{base}/api/visits"))
                    .json(&EnterRequest {
                        entry: Entry::OpenLink {
                            clinic: clinic.clone(),
                        },
                        name: format!("Patient {i}"),
                        details: None,
                    })
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await
            }
            .await
            {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("patient {i}: entry failed: {e}");
                    return;
                }
            };
            let ws_url = format!("{}/ws", base.replacen("http", "ws", 1));
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ws_url).await else {
                eprintln!("patient {i}: websocket failed");
                return;
            };
            let hello = serde_json::to_string(&ClientMsg::Hello {
                token: entered.visit_token,
            })
            .unwrap_or_default();
            if ws.send(Message::text(hello)).await.is_err() {
                return;
            }
            let mut joined = false;
            loop {
                let frame = tokio::select! {
                    () = stop.cancelled() => break,
                    f = ws.next() => f,
                };
                let Some(Ok(Message::Text(t))) = frame else {
                    if matches!(frame, Some(Ok(_))) {
                        continue;
                    }
                    break;
                };
                let Ok(ServerMsg::PatientStatus { status }) = serde_json::from_str(&t) else {
                    continue;
                };
                match status {
                    PatientState::Waiting { .. } if !joined => {
                        joined = true;
                        permit.take();
                        let _ = join_tx.send((
                            t0.elapsed().as_secs_f64() * 1000.0,
                            Patient {
                                visit: entered.visit,
                                clinic: clinic.clone(),
                            },
                        ));
                    }
                    PatientState::Admitted { .. } => {
                        let at = sent.lock().map(|m| m.get(&entered.visit).copied());
                        if let Ok(Some(at)) = at {
                            let _ = admit_tx.send(at.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    _ => {}
                }
            }
            let _ = ws.close(None).await;
        });
    }
    drop(join_tx);
    let mut joins = Vec::new();
    let mut waiting = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while joins.len() < args.patients as usize {
        match tokio::time::timeout_at(deadline.into(), join_rx.recv()).await {
            Ok(Some((ms, p))) => {
                joins.push(ms);
                waiting.push(p);
            }
            _ => break,
        }
    }
    let join_seconds = start.elapsed().as_secs_f64();
    let cpu_joined = process_cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_joined = rss_mib(&pid.to_string())?;
    if joins.len() < args.patients as usize {
        bail!(
            "only {} of {} patients reached the waiting room",
            joins.len(),
            args.patients
        );
    }

    // Reception admits patients one at a time, spread over the clinics.
    let signed: SignInResponse = http
        .post(format!("{base}/api/staff/sign-in"))
        .json(&SignInRequest {
            username: "rita".into(),
            password: PASSWORD.into(),
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let clinician = StaffId::parse("dr.bench")?;
    let step = (waiting.len() / admits.max(1) as usize).max(1);
    let cpu_before_admits = process_cpu_seconds(pid)?;
    for p in waiting.iter().step_by(step).take(admits as usize) {
        if let Ok(mut m) = sent.lock() {
            m.insert(p.visit, Instant::now());
        }
        http.post(format!("{base}/api/commands"))
            .bearer_auth(&signed.token)
            .json(&Cmd::Admit {
                clinic: p.clinic.clone(),
                visit: p.visit,
                clinician: clinician.clone(),
                consultation: None,
            })
            .send()
            .await?
            .error_for_status()?;
    }
    let mut notified = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while notified.len() < admits as usize {
        match tokio::time::timeout_at(deadline.into(), admit_rx.recv()).await {
            Ok(Some(ms)) => notified.push(ms),
            _ => break,
        }
    }
    let cpu_admits = process_cpu_seconds(pid)? - cpu_before_admits;
    stop.cancel();
    let mode = if args.redis_url.is_some() {
        "redis"
    } else {
        "single"
    };
    println!(
        "rooms mode={mode} patients={} clinics={} rate={} join_seconds={join_seconds:.1} {} {} server_cpu_joins_s={:.2} server_cpu_admits_s={cpu_admits:.2} rss_idle_mib={rss_idle:.1} rss_joined_mib={rss_joined:.1} rss_per_patient_kib={:.1}",
        args.patients,
        args.clinics,
        args.rate,
        summary("join", joins),
        summary("admit_notified", notified.clone()),
        cpu_joined - cpu_idle,
        (rss_joined - rss_idle) * 1024.0 / f64::from(args.patients),
    );
    if notified.len() < admits as usize {
        bail!(
            "only {} of {admits} admitted patients were told",
            notified.len()
        );
    }
    Ok(())
}
