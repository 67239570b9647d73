//! Smoke runs of the benchmarks, so the tools keep working: tiny sizes, short times.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_sfu-bench");

fn run(args: &[&str]) -> String {
    let out = Command::new(BENCH)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "sfu-bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of `key=` in a report line.
fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

#[test]
fn fanout_smoke_forwards_to_every_subscriber() {
    let out = run(&[
        "fanout",
        "--subscribers",
        "2",
        "--video-kbps",
        "300",
        "--seconds",
        "1",
    ]);
    let line = out.lines().find(|l| l.starts_with("fanout ")).unwrap();
    // 300 kbit/s in 1000-byte packets at 30 frames/s is 60 packets/s per subscriber.
    let pps = field(line, "forwarded_pps");
    assert!((80.0..=160.0).contains(&pps), "{line}");
    // CPU is read at a 10 ms resolution, so 1 s of a light load may read 0; what must hold
    // is that every CPU-second is attributed to the SFU's or the load's threads.
    assert!(field(line, "sfu_cpu_s") >= 0.0, "{line}");
    assert!(field(line, "other_cpu_s").abs() <= 0.05, "{line}");
}

#[test]
fn churn_smoke_reports_memory() {
    let out = run(&["churn", "--joins", "20"]);
    let line = out.lines().find(|l| l.starts_with("churn joins=")).unwrap();
    assert_eq!(
        field(line, "participants_left"),
        1.0,
        "only the steady publisher stays: {line}"
    );
    assert!(field(line, "rss_end_mib") > 0.0);
}

/// The `consult` binary next to these tests. It belongs to another package, which cargo
/// builds for its own tests: `cargo test --workspace` (scripts/test) has it.
fn consult_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/smoke-… -> target/<profile>/consult
    let bin = exe.parent().unwrap().parent().unwrap().join("consult");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p signalling --bin consult` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

#[test]
fn room_bench_smoke_admits_and_reports_latency() {
    let consult = consult_bin();
    let out = Command::new(env!("CARGO_BIN_EXE_room-bench"))
        .args(["--consult-bin", consult.to_str().unwrap()])
        .args([
            "--patients",
            "40",
            "--clinics",
            "4",
            "--rate",
            "200",
            "--admits",
            "8",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "room-bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("rooms ")).unwrap();
    assert_eq!(field(line, "join_n"), 40.0, "{line}");
    assert_eq!(field(line, "admit_notified_n"), 8.0, "{line}");
    assert!(field(line, "admit_notified_p50_ms") > 0.0, "{line}");
    assert!(
        field(line, "rss_joined_mib") > field(line, "rss_idle_mib") * 0.5,
        "{line}"
    );
}
