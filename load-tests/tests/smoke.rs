//! Smoke runs of the benchmarks, so the tools keep working: tiny sizes, short times.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const SFU_BENCH: &str = env!("CARGO_BIN_EXE_sfu-bench");
const ROOM_BENCH: &str = env!("CARGO_BIN_EXE_room-bench");

/// Runs a bench to the end; its standard output, once it succeeded.
fn bench(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn run(args: &[&str]) -> String {
    bench(SFU_BENCH, args)
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
    // 300 kbit/s of video (about 55 packets/s) and 50 audio packets/s, to each of two.
    let pps = field(line, "forwarded_pps");
    assert!((150.0..=300.0).contains(&pps), "{line}");
    assert!(field(line, "loss_pct") <= 1.0, "{line}");
    let (p50, p99) = (field(line, "latency_p50_ms"), field(line, "latency_p99_ms"));
    assert!(p50 > 0.0 && p99 >= p50 && p99 < 100.0, "{line}");
    // CPU is read at a 10 ms resolution, so 1 s of a light load may read 0.
    assert!(field(line, "sfu_cpu_share") >= 0.0, "{line}");
}

#[test]
fn rooms_smoke_measures_one_to_one_and_draws_the_chart() {
    let dir = std::env::temp_dir().join(format!("sfu-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("rows.csv");
    let csv_arg = csv.to_str().unwrap();
    let out = run(&[
        "--csv",
        csv_arg,
        "rooms",
        "--size",
        "2",
        "--rooms",
        "2",
        "--video-kbps",
        "300",
        "--seconds",
        "1",
    ]);
    let line = out.lines().find(|l| l.starts_with("one-to-one ")).unwrap();
    assert_eq!(field(line, "participants"), 4.0, "{line}");
    // Four receivers of about 105 packets/s each.
    let pps = field(line, "forwarded_pps");
    assert!((300.0..=600.0).contains(&pps), "{line}");
    assert!(field(line, "loss_pct") <= 1.0, "{line}");
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 2, "a header and one row: {rows}");
    assert!(
        rows.lines()
            .nth(1)
            .unwrap()
            .starts_with("ours-in-process,one-to-one,2,4,")
    );

    let png = dir.join("chart.png");
    let out = run(&["--csv", csv_arg, "chart", "--out", png.to_str().unwrap()]);
    assert!(out.contains("series=1"), "{out}");
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        bytes.len() > 10_000,
        "an empty picture: {} bytes",
        bytes.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
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
    let stdout = bench(
        ROOM_BENCH,
        &[
            "--consult-bin",
            consult.to_str().unwrap(),
            "--patients",
            "40",
            "--clinics",
            "4",
            "--rate",
            "200",
            "--admits",
            "8",
        ],
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
