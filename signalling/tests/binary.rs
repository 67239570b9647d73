//! The `consult` binary as a hospital installs it: started from an empty directory with no
//! `web_root` and nothing beside it, it serves every page of the web client (each HTML
//! file, and every script and stylesheet they load, transitively) from the copy built
//! into it, with the right status, content type and headers; and `serve --demo` prints
//! links with the port it really listens on (or the configured `public_url`).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_consult");
/// How long the server may take to start and print its links.
const START: Duration = Duration::from_secs(30);

fn public_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-client/public")
}

/// A `consult serve` child and the lines it printed before it listened.
struct Server {
    child: Child,
    base: String,
    printed: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `consult serve ARGS` with `cwd` as its working directory and none of our `CONSULT_*`
/// variables, only `env`; returns once it says where it listens.
fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("CONSULT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    // Killed when dropped, whatever happens below.
    let mut server = Server {
        child: cmd.spawn().unwrap(),
        base: String::new(),
        printed: Vec::new(),
    };
    let (tx, rx) = mpsc::channel();
    let stdout = server.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    loop {
        let Ok(line) = rx.recv_timeout(START) else {
            panic!(
                "consult did not say where it listens; it printed {:#?}",
                server.printed
            );
        };
        if let Some(addr) = line.strip_prefix("consult: listening on ") {
            server.base = format!("http://{addr}");
            return server;
        }
        server.printed.push(line);
    }
}

/// Every `http(s)://` link in `lines`, up to the first character that cannot be in one.
fn links_in(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines {
        for (at, _) in line.match_indices("http") {
            let rest = &line[at..];
            if rest.starts_with("http://") || rest.starts_with("https://") {
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                    .unwrap_or(rest.len());
                out.push(rest[..end].to_owned());
            }
        }
    }
    out
}

/// What a page or module refers to on the same server: `src=` and `href=` in HTML,
/// `import ... from '...'`, `import '...'` and `import('...')` in JavaScript, resolved
/// against `url_path` (the path it was served at).
fn references(url_path: &str, body: &str) -> Vec<String> {
    let mut found = Vec::new();
    let quoted_after = |marker: &str, found: &mut Vec<String>| {
        for (at, _) in body.match_indices(marker) {
            let rest = &body[at + marker.len()..];
            let rest = rest.trim_start();
            let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            if let Some(end) = rest[1..].find(q) {
                found.push(rest[1..1 + end].to_owned());
            }
        }
    };
    if url_path.ends_with(".js") {
        for marker in [" from", "import", "import("] {
            quoted_after(marker, &mut found);
        }
    } else {
        for marker in ["src=", "href="] {
            quoted_after(marker, &mut found);
        }
    }
    let dir = &url_path[..url_path.rfind('/').unwrap() + 1];
    found
        .into_iter()
        // The API is not part of the pages (the sign-in page links to the identity
        // provider's start, which only a configured server answers).
        .filter(|r| {
            !r.is_empty() && !r.contains(':') && !r.starts_with('#') && !r.starts_with("/api/")
        })
        .map(|r| {
            let r = r.split(['?', '#']).next().unwrap().to_owned();
            let joined = if r.starts_with('/') {
                r
            } else {
                format!("{dir}{r}")
            };
            normalise(&joined)
        })
        .collect()
}

fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn content_type_of(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap() {
        "html" => "text/html",
        "js" => "text/javascript",
        "css" => "text/css",
        other => panic!("the web client has a .{other} file this test does not know"),
    }
}

/// Every file under `dir`, as its URL path.
fn files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), &format!("{prefix}{name}/"), out);
        } else {
            out.push(format!("{prefix}{name}"));
        }
    }
}

/// GETs `path`, checks status 200, the content type and the page headers, and that the
/// body is the file of web-client/public it stands for; returns the body.
async fn page(http: &reqwest::Client, base: &str, path: &str, file: &str) -> String {
    let r = http.get(format!("{base}{path}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    let h = r.headers().clone();
    let ctype = h["content-type"].to_str().unwrap();
    assert!(
        ctype.starts_with(content_type_of(file)),
        "GET {path}: content-type {ctype}, expected {}",
        content_type_of(file)
    );
    assert_eq!(h["cache-control"], "no-cache", "GET {path}");
    assert_eq!(h["x-content-type-options"], "nosniff", "GET {path}");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"),
        "GET {path}"
    );
    assert!(h.contains_key("etag"), "GET {path}: no ETag");
    let body = r.text().await.unwrap();
    let on_disk = std::fs::read_to_string(public_dir().join(&file[1..])).unwrap();
    assert!(
        body == on_disk,
        "GET {path}: not the current {file} (the binary was built from other files)"
    );
    body
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn from_an_empty_directory_it_serves_every_page_and_its_scripts() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cwd = tempdir();
        let server = start(cwd.path(), &["--demo", "--listen", "127.0.0.1:0"], &[]);
        let base = server.base.clone();
        let http = reqwest::Client::new();

        // The demo's links carry the port it really listens on.
        let links = links_in(&server.printed);
        assert!(
            links.len() >= 5,
            "the demo printed too few links: {:#?}",
            server.printed
        );
        for l in &links {
            assert!(
                l.starts_with(&format!("{base}/")),
                "demo link {l} is not on {base}"
            );
        }
        assert!(links.contains(&format!("{base}/c/demo")), "{links:?}");
        assert!(links.contains(&format!("{base}/staff")), "{links:?}");
        assert!(
            links.iter().any(|l| l.starts_with(&format!("{base}/i#"))),
            "{links:?}"
        );

        // The links people are given, then every HTML file, then what each loads.
        let mut queue = VecDeque::new();
        for (route, file) in [
            ("/", "/index.html"),
            ("/c/demo", "/patient.html"),
            ("/i", "/patient.html"),
            ("/staff", "/staff.html"),
            ("/admin", "/admin.html"),
        ] {
            queue.push_back((route.to_owned(), file.to_owned()));
        }
        let mut all = Vec::new();
        files(&public_dir(), "/", &mut all);
        for f in all.iter().filter(|f| f.ends_with(".html")) {
            queue.push_back((f.clone(), f.clone()));
        }
        let mut seen = BTreeSet::new();
        while let Some((route, file)) = queue.pop_front() {
            if !seen.insert(route.clone()) {
                continue;
            }
            let body = page(&http, &base, &route, &file).await;
            for r in references(&file, &body) {
                queue.push_back((r.clone(), r));
            }
        }
        let loaded: BTreeSet<_> = seen.iter().filter(|p| p.contains('.')).collect();
        assert!(
            loaded.iter().any(|p| p.ends_with(".css")) && loaded.len() >= 20,
            "the pages referred to too little: {loaded:?}"
        );
        // Whatever no page refers to is served all the same.
        for f in &all {
            if !seen.contains(f) {
                page(&http, &base, f, f).await;
            }
        }

        // An unchanged file costs a 304; a browser that takes brotli gets it compressed.
        let r = http
            .get(format!("{base}/js/patient.js"))
            .send()
            .await
            .unwrap();
        let etag = r.headers()["etag"].clone();
        let r = http
            .get(format!("{base}/js/patient.js"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        let r = http
            .get(format!("{base}/js/patient.js"))
            .header("accept-encoding", "br")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-encoding"], "br");
        let compressed = r.bytes().await.unwrap().len();
        let plain = std::fs::metadata(public_dir().join("js/patient.js"))
            .unwrap()
            .len();
        assert!(
            (compressed as u64) < plain / 2,
            "{compressed} of {plain} bytes"
        );

        // No such page: the API's error, not a page.
        let r = http
            .get(format!("{base}/no-such-page.html"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.text().await.unwrap().contains("not_found"));
        // Over plain HTTP with an http public_url, no HSTS.
        let r = http.get(format!("{base}/")).send().await.unwrap();
        assert!(!r.headers().contains_key("strict-transport-security"));
        // The API still answers beside the pages.
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);

        // It wrote nothing but its database in its working directory.
        let mut left = Vec::new();
        files(cwd.path(), "/", &mut left);
        assert!(
            left.iter().all(|f| f.starts_with("/.data/")),
            "wrote {left:?}"
        );
    })
    .await
    .expect("the test took over 120 s");
}

#[tokio::test]
async fn the_demo_prints_the_configured_public_url_and_follows_consult_listen() {
    tokio::time::timeout(Duration::from_secs(60), async {
        // CONSULT_LISTEN, no public_url: the links follow the port given.
        let cwd = tempdir();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let listen = format!("127.0.0.1:{port}");
        let server = start(cwd.path(), &["--demo"], &[("CONSULT_LISTEN", &listen)]);
        assert_eq!(server.base, format!("http://{listen}"));
        let links = links_in(&server.printed);
        assert!(links.len() >= 5, "{:#?}", server.printed);
        assert!(
            links
                .iter()
                .all(|l| l.starts_with(&format!("http://{listen}/"))),
            "{links:?}"
        );
        drop(server);

        // An https public_url: the links are on it, and pages carry HSTS.
        let cwd = tempdir();
        let server = start(
            cwd.path(),
            &[
                "--demo",
                "--listen",
                "127.0.0.1:0",
                "--public-url",
                "https://video.example-hospital.org",
            ],
            &[],
        );
        let links = links_in(&server.printed);
        assert!(links.len() >= 5, "{:#?}", server.printed);
        assert!(
            links
                .iter()
                .all(|l| l.starts_with("https://video.example-hospital.org/")),
            "{links:?}"
        );
        let r = reqwest::get(format!("{}/staff", server.base))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    })
    .await
    .expect("the test took over 60 s");
}

#[tokio::test]
async fn web_root_serves_the_pages_from_disk_instead() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let cwd = tempdir();
        let root = cwd.path().join("pages");
        std::fs::create_dir_all(root.join("js")).unwrap();
        std::fs::write(root.join("index.html"), "<!doctype html><p>edited</p>\n").unwrap();
        std::fs::write(root.join("js/extra.js"), "export const x = 1;\n").unwrap();
        let server = start(
            cwd.path(),
            &["--listen", "127.0.0.1:0"],
            &[("CONSULT_WEB_ROOT", "pages")],
        );
        let r = reqwest::get(format!("{}/", server.base)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(r.headers()["cache-control"], "no-cache");
        assert!(r.text().await.unwrap().contains("edited"));
        let r = reqwest::get(format!("{}/js/extra.js", server.base))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        // What the directory lacks is not found, not taken from the embedded copy.
        let r = reqwest::get(format!("{}/staff", server.base))
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        drop(server);

        // A web_root that is not a directory stops the server at start, naming it.
        let out = Command::new(BIN)
            .current_dir(cwd.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("CONSULT_WEB_ROOT", "no-such-dir")
            .env("CONSULT_DATA_DIR", cwd.path().join("data2"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("web_root"), "{err}");
    })
    .await
    .expect("the test took over 60 s");
}
