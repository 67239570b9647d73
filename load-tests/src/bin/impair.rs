//! A userspace link with impairment, over two TUN devices (issue 15: this kernel has no
//! netem). It creates `--client-tun` (to be moved into the impaired side's network
//! namespace, e.g. a browser's) and `--server-tun` (left on the servers' side), and
//! relays IP packets between them: `up` is client → server, `down` server → client. Each
//! direction has random loss (seeded), a rate cap with a bounded queue, and a one-way delay
//! with jitter (`load_tests::impair`), all changeable while it runs, one command a line on
//! standard input:
//!
//! ```text
//! up loss=5 delay=75 jitter=10 rate=350      down rate=off      both queue=300
//! clear      counters      show
//! ```
//!
//! answered `ok`, the counters or settings, or `error: …` (and nothing changes). It prints
//! `ready client=… server=…` once both devices exist (up, without addresses: the caller
//! sets those), and the counters when it exits: when its standard input closes, after
//! `--max-seconds`, or if a device goes away. Needs root (or CAP_NET_ADMIN) and
//! /dev/net/tun.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use load_tests::impair::{Direction, Link};
use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, DeviceBuilder};

#[derive(Parser, Debug)]
#[command(about = "An impaired IP link between two TUN devices")]
struct Args {
    /// The impaired side's device.
    #[arg(long, default_value = "imp-c")]
    client_tun: String,
    /// The servers' side's device.
    #[arg(long, default_value = "imp-s")]
    server_tun: String,
    /// The seed of the random loss and jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exits by itself after this long.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

/// Room for one packet: the devices' MTU is 1500 and they do no offload.
const BUF: usize = 2048;

/// What woke the loop.
enum Event {
    Deadline,
    FromClient(std::io::Result<usize>),
    FromServer(std::io::Result<usize>),
    Line(std::io::Result<Option<String>>),
    Timer,
}

fn device(name: &str) -> anyhow::Result<AsyncDevice> {
    DeviceBuilder::new()
        .name(name)
        .mtu(1500)
        .enable(true)
        .build_async()
        .with_context(|| format!("creating TUN device {name} (root and /dev/net/tun needed)"))
}

/// A buffer from the pool (a new one only when the pool is empty), ready to read into.
fn take(pool: &mut Vec<Vec<u8>>) -> Vec<u8> {
    let mut b = pool.pop().unwrap_or_else(|| Vec::with_capacity(BUF));
    b.resize(BUF, 0);
    b
}

/// Hands every packet due at `now` to `to`; buffers go back to the pool.
async fn flush(
    dir: &mut Direction<Vec<u8>>,
    now: Instant,
    to: &AsyncDevice,
    pool: &mut Vec<Vec<u8>>,
) {
    while let Some(packet) = dir.poll(now) {
        // A device that is down (moved and not yet set up) refuses: the packet is lost, as
        // on a link without carrier.
        let _ = to.send(&packet).await;
        pool.push(packet);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = device(&args.client_tun)?;
    let server = device(&args.server_tun)?;
    println!(
        "ready client={} server={}",
        args.client_tun, args.server_tun
    );

    let mut link: Link<Vec<u8>> = Link::new(args.seed);
    // Buffers are reused: a packet's buffer goes back to the pool once it has been sent
    // or dropped, so the pool grows only to the most packets ever held at once.
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut from_client = take(&mut pool);
    let mut from_server = take(&mut pool);
    // Standard input on a thread of its own: tokio's would keep the runtime from shutting
    // down while a read is pending. `None` once it closes.
    let (line_tx, mut lines) = mpsc::unbounded_channel::<std::io::Result<Option<String>>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let end = line.is_err();
            if line_tx.send(line.map(Some)).is_err() || end {
                return;
            }
        }
        let _ = line_tx.send(Ok(None));
    });
    let deadline = tokio::time::sleep(Duration::from_secs(args.max_seconds));
    tokio::pin!(deadline);
    let reason = loop {
        let next = match (link.up.next_release(), link.down.next_release()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            biased;
            () = &mut deadline => Event::Deadline,
            r = client.recv(&mut from_client) => Event::FromClient(r),
            r = server.recv(&mut from_server) => Event::FromServer(r),
            () = timer => Event::Timer,
            l = lines.recv() => Event::Line(l.unwrap_or(Ok(None))),
        };
        match event {
            Event::Deadline => break format!("--max-seconds {} reached", args.max_seconds),
            Event::FromClient(r) => {
                let n = match r {
                    Ok(n) => n,
                    Err(e) => break format!("{} went away: {e}", args.client_tun),
                };
                from_client.truncate(n);
                let packet = std::mem::replace(&mut from_client, take(&mut pool));
                if let Err((_, p)) = link.up.offer(Instant::now(), packet, n) {
                    pool.push(p);
                }
            }
            Event::FromServer(r) => {
                let n = match r {
                    Ok(n) => n,
                    Err(e) => break format!("{} went away: {e}", args.server_tun),
                };
                from_server.truncate(n);
                let packet = std::mem::replace(&mut from_server, take(&mut pool));
                if let Err((_, p)) = link.down.offer(Instant::now(), packet, n) {
                    pool.push(p);
                }
            }
            Event::Line(Ok(Some(line))) => match link.command(&line) {
                Ok(answer) => println!("{answer}"),
                Err(e) => println!("error: {e}"),
            },
            Event::Line(Ok(None)) => break "standard input closed".to_string(),
            Event::Line(Err(e)) => break format!("standard input: {e}"),
            Event::Timer => {}
        }
        let now = Instant::now();
        flush(&mut link.up, now, &server, &mut pool).await;
        flush(&mut link.down, now, &client, &mut pool).await;
    };
    println!("{}", link.counters_text());
    eprintln!("impair: exiting: {reason}");
    Ok(())
}
