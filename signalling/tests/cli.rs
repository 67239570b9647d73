//! The `consult` binary as an operator uses it: admin commands before, during and after
//! the server runs, on the single-node store (SQLite file under --data-dir).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::{EnterRequest, Entry, SignInRequest};

const BIN: &str = env!("CARGO_BIN_EXE_consult");

fn consult(data: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("CONSULT_REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "consult {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `consult serve` on a free port; returns the child and its address.
fn serve(data: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        assert!(Instant::now() < deadline, "server did not start");
        let line = lines.next().expect("server output").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn stop(mut child: Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "server exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn sign_in(http: &reqwest::Client, addr: &str, user: &str, password: &str) -> u16 {
    let req = SignInRequest {
        username: user.into(),
        password: password.into(),
    };
    http.post(format!("http://{addr}/api/staff/sign-in"))
        .json(&req)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_work_with_and_without_the_server_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let http = reqwest::Client::new();

    // Before the server ever ran.
    let out = consult(
        data,
        &[
            "clinic",
            "add",
            "derm",
            "--name",
            "Dermatology",
            "--open-link",
        ],
        None,
    );
    assert!(
        out.contains("patient link: http://127.0.0.1:8080/c/derm"),
        "{out}"
    );
    consult(
        data,
        &[
            "staff",
            "add",
            "alice",
            "--name",
            "Alice",
            "--role",
            "reception",
            "--clinic",
            "derm",
            "--password-stdin",
        ],
        Some("alice's long password\n"),
    );
    let generated = consult(
        data,
        &[
            "staff",
            "add",
            "dr.jones",
            "--name",
            "Dr Jones",
            "--role",
            "clinician",
            "--clinic",
            "derm",
        ],
        None,
    );
    let jones_password = generated
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap()
        .to_owned();
    assert_eq!(jones_password.len(), 16);

    let (server, addr) = serve(data);
    assert_eq!(
        sign_in(&http, &addr, "alice", "alice's long password").await,
        200
    );
    assert_eq!(
        sign_in(&http, &addr, "dr.jones", &jones_password).await,
        200
    );
    assert_eq!(
        sign_in(&http, &addr, "alice", "not her password").await,
        401
    );

    // While it runs: a new member of staff can sign in at once; an invite link works.
    consult(
        data,
        &[
            "staff",
            "add",
            "bob",
            "--name",
            "Bob",
            "--role",
            "reception",
            "--clinic",
            "derm",
            "--password-stdin",
        ],
        Some("bob's long password"),
    );
    assert_eq!(
        sign_in(&http, &addr, "bob", "bob's long password").await,
        200
    );
    let link = consult(
        data,
        &[
            "invite",
            "derm",
            "--appointment",
            "APT-9",
            "--valid-hours",
            "2",
        ],
        None,
    );
    let token = link.trim().rsplit('#').next().unwrap().to_owned();
    let enter = EnterRequest {
        entry: Entry::Invite {
            token,
            previous: None,
        },
        name: "Pat Cli".into(),
        details: None,
    };
    let r = http
        .post(format!("http://{addr}/api/visits"))
        .json(&enter)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop(server);

    // After a restart, clinics and staff are still there.
    let listing = consult(data, &["staff", "list"], None);
    assert!(
        listing.contains("alice") && listing.contains("bob") && listing.contains("dr.jones"),
        "{listing}"
    );
    assert!(consult(data, &["clinic", "list"], None).contains("derm\tDermatology\topen link on"));
    let (server, addr) = serve(data);
    assert_eq!(
        sign_in(&http, &addr, "bob", "bob's long password").await,
        200
    );
    stop(server);

    // The audit log has the command line's changes, attributed, and the sign-ins.
    let audit = consult(data, &["audit", "--limit", "100"], None);
    for action in [
        "\"put_clinic\"",
        "\"put_staff\"",
        "\"issue_invite\"",
        "\"sign_in\"",
        "\"sign_in_failed\"",
        "\"arrive\"",
    ] {
        assert!(audit.contains(action), "{action} missing from {audit}");
    }
    assert!(audit.contains("\"actor\":\"cli:"), "{audit}");
    assert!(!audit.contains("password"), "no password in the audit log");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["clinic", "add", "Bad Id", "--name", "X"],
        vec!["staff", "add", "carol", "--name", "C", "--role", "surgeon"],
        vec![
            "staff",
            "add",
            "carol",
            "--name",
            "C",
            "--role",
            "reception",
            "--clinic",
            "nowhere",
        ],
        vec!["invite", "nowhere"],
    ] {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!out.stderr.is_empty(), "{args:?} said nothing");
    }
}
