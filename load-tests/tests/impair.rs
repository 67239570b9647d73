//! The `impair` link, for real: the relay in a network namespace of its own (the servers'
//! side, 198.18.0.1), its client device moved into a second one (198.18.0.2), and UDP
//! between sockets opened in each (setns on a thread of this process). Needs root, as the
//! browser tests do; every namespace ends with the processes that hold it.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

const IMPAIR: &str = env!("CARGO_BIN_EXE_impair");
const SERVER_IP: &str = "198.18.0.1";
const CLIENT_IP: &str = "198.18.0.2";

static MADE: AtomicUsize = AtomicUsize::new(0);

fn ip(ns: &str, args: &str) {
    let out = Command::new("nsenter")
        .arg(format!("--net={ns}"))
        .args(["--", "ip"])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The relay and the two namespaces, killed when dropped.
struct Rig {
    relay: Child,
    holder: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    server_ns: String,
    client_ns: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.relay.kill();
        let _ = self.holder.kill();
        let _ = self.relay.wait();
        let _ = self.holder.wait();
    }
}

/// The path of `pid`'s network namespace, once it differs from ours.
fn ns_of(pid: u32) -> String {
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let path = format!("/proc/{pid}/ns/net");
    for _ in 0..500 {
        if std::fs::read_link(&path).is_ok_and(|p| p != ours) {
            return path;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no namespace of its own for {pid}");
}

impl Rig {
    fn start(max_seconds: u32) -> Rig {
        let n = MADE.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let (ctun, stun) = (format!("ic{tag}"), format!("is{tag}"));
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "300"])
            .spawn()
            .unwrap();
        let mut relay = Command::new("unshare")
            .args([
                "--net",
                "--",
                IMPAIR,
                "--client-tun",
                &ctun,
                "--server-tun",
                &stun,
            ])
            .args(["--seed", "42", "--max-seconds", &max_seconds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(relay.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert!(ready.starts_with("ready "), "relay said {ready:?}");
        let server_ns = ns_of(relay.id());
        let client_ns = ns_of(holder.id());
        ip(
            &server_ns,
            &format!("link set {ctun} netns {}", holder.id()),
        );
        ip(&server_ns, "link set lo up");
        ip(&server_ns, &format!("addr add {SERVER_IP}/24 dev {stun}"));
        ip(&server_ns, &format!("link set {stun} up"));
        ip(&client_ns, "link set lo up");
        ip(&client_ns, &format!("addr add {CLIENT_IP}/24 dev {ctun}"));
        ip(&client_ns, &format!("link set {ctun} up"));
        ip(&client_ns, &format!("route add default dev {ctun}"));
        let stdin = relay.stdin.take();
        Rig {
            relay,
            holder,
            stdin,
            stdout,
            server_ns,
            client_ns,
        }
    }

    /// Sends one command; the first line of its answer.
    fn say(&mut self, line: &str) -> String {
        writeln!(self.stdin.as_mut().unwrap(), "{line}").unwrap();
        self.line()
    }

    fn line(&mut self) -> String {
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    }

    /// `counters up …` and `counters down …` as two lines.
    fn counters(&mut self) -> (String, String) {
        let up = self.say("counters");
        (up, self.line())
    }

    /// A UDP socket bound in `ns` on `ip` (any port), with a read timeout.
    fn socket(ns: &str, ip: &str) -> UdpSocket {
        let ns = ns.to_string();
        let ip = ip.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
            let s = UdpSocket::bind((ip.as_str(), 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .join()
        .unwrap()
    }

    fn client(&self) -> UdpSocket {
        Self::socket(&self.client_ns, CLIENT_IP)
    }

    fn server(&self) -> UdpSocket {
        Self::socket(&self.server_ns, SERVER_IP)
    }
}

/// The value of `key=` in a counters line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

/// Echoes every datagram `server` gets until none comes for 2 s.
fn echo(server: UdpSocket) -> std::thread::JoinHandle<()> {
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    })
}

/// Round trips of `n` pings from `client` to an echo at the server, in ms, sorted.
fn pings(client: &UdpSocket, n: u32) -> Vec<f64> {
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..n {
        let t = Instant::now();
        client
            .send_to(&i.to_be_bytes(), (SERVER_IP, server_port(client)))
            .unwrap();
        while let Ok(len) = client.recv(&mut buf) {
            if len == 4 && buf[..4] == i.to_be_bytes() {
                rtts.push(t.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    rtts.sort_by(f64::total_cmp);
    rtts
}

/// The echo's port: the tests connect the client to it first.
fn server_port(client: &UdpSocket) -> u16 {
    client.peer_addr().unwrap().port()
}

#[test]
fn a_clear_link_adds_under_a_millisecond_and_delay_adds_what_is_set() {
    let mut rig = Rig::start(60);
    let server = rig.server();
    let client = rig.client();
    client.connect(server.local_addr().unwrap()).unwrap();
    let _echo = echo(server);
    let clean = pings(&client, 30);
    assert!(clean.len() >= 29, "{clean:?}");
    // The median round trip crosses the relay twice: under 1 ms each way.
    assert!(clean[clean.len() / 2] < 2.0, "clean RTTs {clean:?}");

    assert_eq!(rig.say("both delay=50"), "ok");
    let delayed = pings(&client, 20);
    assert!(delayed.len() >= 19, "{delayed:?}");
    // 100 ms plus the timer's tick each way; on a busy 2-core machine the scheduler adds
    // a tail, so the lower quartile is the link's figure.
    let quartile = delayed[delayed.len() / 4];
    assert!((99.0..=106.0).contains(&quartile), "RTTs {delayed:?}");
    assert!(delayed[0] >= 99.0, "no ping beat the delay: {delayed:?}");
}

#[test]
fn loss_over_thousands_of_packets_is_within_its_binomial_bound() {
    let mut rig = Rig::start(60);
    let server = rig.server();
    let client = rig.client();
    assert_eq!(rig.say("up loss=20"), "ok");
    let (before, _) = rig.counters();
    let to = server.local_addr().unwrap();
    let n = 5000u32;
    let counter = std::thread::spawn(move || {
        let mut got = 0u32;
        let mut buf = [0u8; 2048];
        while server.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    for i in 0..n {
        client.send_to(&[0u8; 200], to).unwrap();
        if i % 25 == 24 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let got = counter.join().unwrap();
    let (after, _) = rig.counters();
    let lost = n - got;
    // Binomial(5000, 0.2): mean 1000, sd 28.3; 5 sd either side.
    assert!((859..=1141).contains(&lost), "lost {lost} of {n}");
    // The relay counted them all (none was lost before it) and dropped just those.
    assert_eq!(
        field(&after, "lost") - field(&before, "lost"),
        u64::from(lost),
        "{after}"
    );
    assert!(field(&after, "packets") - field(&before, "packets") >= u64::from(n));
}

#[test]
fn a_rate_cap_holds_goodput_to_it() {
    let mut rig = Rig::start(60);
    let server = rig.server();
    let client = rig.client();
    let to = client.local_addr().unwrap();
    assert_eq!(rig.say("down rate=500 queue=200"), "ok");
    // 1 Mbit/s offered for 4 s, server to client: 1000-byte datagrams (1028 IP bytes).
    let receiver = std::thread::spawn(move || {
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 2048];
        while client.recv(&mut buf).is_ok() {
            arrivals.push(Instant::now());
        }
        arrivals
    });
    let start = Instant::now();
    let mut i = 0u32;
    while start.elapsed() < Duration::from_secs(4) {
        server.send_to(&[0u8; 1000], to).unwrap();
        i += 1;
        let next = start + Duration::from_micros(8224) * i;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let arrivals = receiver.join().unwrap();
    assert!(arrivals.len() > 100, "{} arrived", arrivals.len());
    // Goodput from the first arrival to the last, in IP bytes.
    let span = (*arrivals.last().unwrap() - arrivals[0]).as_secs_f64();
    let kbps = (arrivals.len() - 1) as f64 * 1028.0 * 8.0 / span / 1000.0;
    assert!(
        (475.0..=525.0).contains(&kbps),
        "{kbps:.1} kbit/s over {span:.2} s"
    );
    let (_, down) = rig.counters();
    assert!(field(&down, "queue_dropped") > 100, "{down}");
}

#[test]
fn a_change_mid_run_takes_effect_within_100_ms() {
    let mut rig = Rig::start(60);
    let server = rig.server();
    let client = rig.client();
    client.connect(server.local_addr().unwrap()).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // A packet every 5 ms for 3 s; the sink notes when each arrives.
    let sink = std::thread::spawn(move || {
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 64];
        while server.recv(&mut buf).is_ok() {
            arrivals.push(Instant::now());
        }
        arrivals
    });
    let sender = std::thread::spawn(move || {
        let start = Instant::now();
        let mut i = 0u32;
        while start.elapsed() < Duration::from_secs(3) {
            client.send(&[1u8; 32]).unwrap();
            i += 1;
            std::thread::sleep(
                (start + Duration::from_millis(5) * i).saturating_duration_since(Instant::now()),
            );
        }
    });
    std::thread::sleep(Duration::from_millis(1000));
    let cut = Instant::now();
    assert_eq!(rig.say("up loss=100"), "ok");
    let cut_done = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let restore = Instant::now();
    assert_eq!(rig.say("up loss=0"), "ok");
    sender.join().unwrap();
    let arrivals = sink.join().unwrap();
    // Packets flowed up to the cut, none arrived 100 ms after it, and they flowed again
    // within 100 ms of the restore.
    assert!(
        arrivals
            .iter()
            .any(|t| *t < cut && cut - *t < Duration::from_millis(20))
    );
    let during: Vec<_> = arrivals
        .iter()
        .filter(|t| **t > cut_done + Duration::from_millis(100) && **t < restore)
        .collect();
    assert!(during.is_empty(), "{} arrived while cut", during.len());
    let first_after = arrivals
        .iter()
        .find(|t| **t > restore)
        .expect("flowing again");
    assert!(*first_after - restore < Duration::from_millis(100));
}

#[test]
fn garbage_is_refused_and_changes_nothing_and_the_relay_stops_by_itself() {
    let mut rig = Rig::start(60);
    assert_eq!(rig.say("up delay=20"), "ok");
    let shown = (rig.say("show"), rig.line());
    for bad in [
        "up loss=500",
        "sideways",
        "down delay=abc",
        "clear please",
        "up rate=fast",
        "up",
    ] {
        let answer = rig.say(bad);
        assert!(answer.starts_with("error: "), "`{bad}` answered {answer:?}");
    }
    assert_eq!((rig.say("show"), rig.line()), shown);
    // Standard input closed: it prints its counters and exits.
    rig.stdin = None;
    let (up, down) = (rig.line(), rig.line());
    assert!(
        up.starts_with("counters up packets=") && down.starts_with("counters down "),
        "{up} / {down}"
    );
    assert!(rig.relay.wait().unwrap().success());

    // --max-seconds: it exits by itself, stdin still open.
    let mut short = Rig::start(1);
    let t = Instant::now();
    assert!(short.line().starts_with("counters up "));
    assert!(short.relay.wait().unwrap().success());
    assert!(t.elapsed() < Duration::from_secs(5));
}
