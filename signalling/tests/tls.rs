//! HTTPS served by `consult` itself (`tls_cert`, `tls_key`): pages with HSTS, a secure
//! websocket, and on SIGHUP a new certificate for new connections while an open
//! websocket goes on; a pair that does not load is refused and the last good one kept.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_consult");

/// A test CA, and leaf certificates for 127.0.0.1 it signs.
struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for 127.0.0.1: (certificate PEM, key PEM, certificate DER).
    fn leaf(&self) -> (String, String, Vec<u8>) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// Writes a certificate and key where consult reads them (renamed into place, as a
/// renewal tool would).
fn install(dir: &Path, cert: &str, key: &str) {
    for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

struct Server {
    child: Child,
    addr: String,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `what`; panics with what came instead.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains(what) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {what:?}; saw {seen:#?}"),
        }
    }
}

fn start(dir: &Path) -> Server {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("CONSULT_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .current_dir(dir)
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .env("CONSULT_TLS_CERT", dir.join("cert.pem"))
        .env("CONSULT_TLS_KEY", dir.join("key.pem"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    let mut server = Server {
        child,
        addr: String::new(),
        stdout,
        stderr,
    };
    let line = wait_line(&server.stdout, "consult: listening on ");
    let rest = line.strip_prefix("consult: listening on ").unwrap();
    assert!(rest.ends_with(" (https)"), "{line}");
    server.addr = rest.trim_end_matches(" (https)").to_owned();
    server
}

/// A TLS connection to the server: the stream and the certificate it presented.
async fn connect(ca: &Ca, addr: &str) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = ca.connector().connect(name, tcp).await.unwrap();
    let presented: Vec<u8> = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, presented)
}

/// One HTTP/1.1 request over its own TLS connection: (status line and headers, body).
async fn request(ca: &Ca, addr: &str, method: &str, path: &str, body: &str) -> (String, String) {
    let (mut tls, _) = connect(ca, addr).await;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // The server may end TLS without a close_notify once it answered: keep what came.
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn https_with_hsts_and_sighup_reloads_the_certificate_without_dropping_a_websocket() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (cert_a, key_a, der_a) = ca.leaf();
        let (cert_b, key_b, der_b) = ca.leaf();
        install(dir.path(), &cert_a, &key_a);
        let server = start(dir.path());
        let addr = server.addr.clone();

        // Pages over HTTPS carry HSTS; the demo's links are https on the real port.
        let (head, body) = request(&ca, &addr, "GET", "/staff", "").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("strict-transport-security: max-age=31536000"),
            "{head}"
        );
        assert!(body.contains("<html"), "{body}");
        let (_, presented) = connect(&ca, &addr).await;
        assert_eq!(presented, der_a, "the first certificate is served");

        // A patient enters and opens the secure websocket.
        let (head, body) = request(
            &ca,
            &addr,
            "POST",
            "/api/visits",
            r#"{"entry":{"kind":"open_link","clinic":"demo"},"name":"Pat Secure"}"#,
        )
        .await;
        assert!(head.starts_with("http/1.1 200"), "{head}\n{body}");
        let entered: protocol::EnterResponse = serde_json::from_str(&body).unwrap();
        let (tls, _) = connect(&ca, &addr).await;
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("wss://{addr}/ws"),
            )
            .unwrap();
        req.headers_mut()
            .insert("origin", format!("https://{addr}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();

        // SIGHUP with a new certificate in place: new connections get it.
        install(dir.path(), &cert_b, &key_b);
        let pid = server.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
        wait_line(&server.stdout, "consult: certificate reloaded");
        let (_, presented) = connect(&ca, &addr).await;
        assert_eq!(presented, der_b, "the reloaded certificate is served");

        // The websocket opened before goes on: its hello is answered after the reload.
        let hello = serde_json::json!({"type": "hello", "token": entered.visit_token});
        ws.send(Message::text(hello.to_string())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return t.to_string(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("the websocket ended after the reload: {other:?}"),
                }
            }
        })
        .await
        .expect("no answer on the websocket after the reload");
        assert!(reply.contains("\"welcome\""), "{reply}");

        // A pair that does not load is refused; the last good certificate stays.
        install(dir.path(), "not a certificate", "not a key");
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
        wait_line(&server.stderr, "still serving the previous one");
        let (_, presented) = connect(&ca, &addr).await;
        assert_eq!(presented, der_b, "a bad reload changes nothing");
        let (head, _) = request(&ca, &addr, "GET", "/healthz", "").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    })
    .await
    .expect("the test took over 90 s");
}

#[test]
fn only_one_of_certificate_and_key_stops_the_server_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("CONSULT_TLS_KEY")
        .env("CONSULT_TLS_CERT", dir.path().join("cert.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_cert and tls_key"), "{err}");

    // Both named but unreadable: a clear error naming them, before serving anything.
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CONSULT_TLS_CERT", dir.path().join("missing-cert.pem"))
        .env("CONSULT_TLS_KEY", dir.path().join("missing-key.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls_cert") && err.contains("missing-cert.pem"),
        "{err}"
    );
}
