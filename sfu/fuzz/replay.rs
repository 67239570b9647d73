//! Replays a cargo-fuzz crate's committed inputs through its targets' bodies, on stable, in
//! `cargo test` (`sfu/tests/fuzz_corpus.rs` and `signalling/tests/fuzz_corpus.rs` include
//! this file): for a target, every file of `<package>/fuzz/corpus/<target>/` and the
//! regression inputs `<package>/fuzz/found/<target>-*` (inputs that once failed, kept
//! after their fix). The bodies are the files in `<package>/fuzz/bodies/`, the same ones
//! the fuzz targets run; fuzzing proper (new inputs) is `scripts/fuzz`, on nightly.

use std::any::Any;
use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

/// The fuzz crate of the package that includes this file.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// A path as the repository names it (`sfu/fuzz/corpus/sdp/...`).
fn shown(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the package is in the workspace");
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The files of `dir` whose names `keep` accepts, in name order.
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz inputs in {}: {e}", shown(dir)));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    files.sort();
    files
}

/// A regression input's target: the part of its name before the first `-` (target names
/// have none).
fn found_target(name: &str) -> &str {
    name.split_once('-').map_or(name, |(target, _)| target)
}

fn message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

/// Runs `check` (the target's body) on every committed input of `target`, and fails
/// naming each input that panicked, with its message. Fails as well when the target has
/// no corpus, so that a moved or emptied directory cannot pass on nothing.
pub fn replay(target: &str, check: fn(&[u8])) {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    let mut inputs = files(&corpus, |_| true);
    assert!(
        !inputs.is_empty(),
        "the fuzz target {target} has no committed corpus in {}",
        shown(&corpus)
    );
    let found = dir.join("found");
    if found.is_dir() {
        inputs.extend(files(&found, |name| found_target(name) == target));
    }
    let mut failed = Vec::new();
    for input in &inputs {
        let data = fs::read(input)
            .unwrap_or_else(|e| panic!("cannot read the fuzz input {}: {e}", shown(input)));
        if let Err(panic) = panic::catch_unwind(|| check(&data)) {
            failed.push(format!("  {}: {}", shown(input), message(&*panic)));
        }
    }
    // Shown with `--nocapture`.
    println!("{target}: {} committed inputs replayed", inputs.len());
    assert!(
        failed.is_empty(),
        "the fuzz target {target} failed on {} of its {} committed inputs (after a first \
         failure, a target with state of its own, such as sdp_offer's engine, may fail \
         later inputs because of it):\n{}\nreplay one under the fuzzer with: cargo +nightly \
         fuzz run --fuzz-dir {} --sanitizer none {target} <file>",
        failed.len(),
        inputs.len(),
        failed.join("\n"),
        shown(&dir),
    );
}

/// The fuzz crate's targets (its `[[bin]]` names in `fuzz/Cargo.toml`) are `targets`,
/// those the including test replays, and each regression input in `fuzz/found/` names
/// one of them: a target added to the crate, or an input kept under a misspelt name, is
/// not left out of the replay unnoticed.
pub fn replays_every_target(targets: &[&str]) {
    let dir = fuzz_dir();
    let manifest = fs::read_to_string(dir.join("Cargo.toml")).expect("the fuzz crate's manifest");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            bin.lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|name| name.trim_matches('"'))
        })
        .collect();
    bins.sort_unstable();
    let mut replayed = targets.to_vec();
    replayed.sort_unstable();
    assert_eq!(
        bins,
        replayed,
        "the targets of {} and those its corpus replay covers",
        shown(&dir.join("Cargo.toml"))
    );
    let found = dir.join("found");
    if found.is_dir() {
        for input in files(&found, |_| true) {
            let name = input.file_name().and_then(|n| n.to_str()).unwrap_or("");
            assert!(
                targets.contains(&found_target(name)),
                "{} names no fuzz target (found/<target>-<what it found>)",
                shown(&input)
            );
        }
    }
}
