//! Janus (Debian's `janus`, VideoRoom plugin) as the peer SFU the load tests measure ours
//! against: a process started from a configuration written here, and a client of its
//! plain-HTTP JSON API (sessions, handles, plugin messages, long-polled events).
//!
//! Janus will not gather ICE candidates on `lo`: it is given an interface (a veth end in
//! the bench's network namespace) holding a loopback-range address, 127.0.0.2, so every
//! packet stays on 127.0.0.0/8. `load-tests/compare-janus` sets that up.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::ScratchDir;

/// Where Debian installs the plugins and transports.
const LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";

/// How Janus is run.
#[derive(Debug, Clone)]
pub struct JanusConfig {
    /// The `janus` binary.
    pub bin: std::path::PathBuf,
    /// CPUs it may use (taskset list), if pinned.
    pub cpus: Option<String>,
    /// Its event loops: the cores it may use (Janus's best configuration; its default of
    /// one thread per handle costs it about a third of its throughput).
    pub event_loops: u32,
    /// The interface it gathers candidates on.
    pub iface: String,
    /// Where its log goes (by default a scratch directory removed when it stops).
    pub log: Option<std::path::PathBuf>,
}

/// A running Janus; killed when dropped.
#[derive(Debug)]
pub struct Janus {
    child: Child,
    /// Base URL of its HTTP API (`http://127.0.0.1:PORT/janus`).
    pub url: String,
    http: reqwest::Client,
    _dir: ScratchDir,
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `.so` in `folder` but `keep`, as Janus's `disable` list.
fn all_but(folder: &str, keep: &str) -> String {
    let mut names: Vec<String> = std::fs::read_dir(format!("{LIB}/{folder}"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".so") && n != keep)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}

fn write_config(dir: &Path, config: &JanusConfig, port: u16) -> anyhow::Result<()> {
    // Only what the run needs: the VideoRoom plugin, the HTTP transport, no event
    // handlers or loggers, warnings only (a log line per packet would measure the log).
    let janus = format!(
        r#"general: {{
	configs_folder = "{dir}"
	plugins_folder = "{LIB}/plugins"
	transports_folder = "{LIB}/transports"
	events_folder = "{LIB}/events"
	loggers_folder = "{LIB}/loggers"
	debug_level = 3
	event_loops = {loops}
	session_timeout = 120
}}
media: {{
}}
nat: {{
	ice_enforce_list = "{iface}"
	ignore_mdns = true
}}
plugins: {{
	disable = "{plugins}"
}}
transports: {{
	disable = "{transports}"
}}
loggers: {{
	disable = "libjanus_jsonlog.so"
}}
events: {{
	broadcast = false
}}
"#,
        dir = dir.display(),
        loops = config.event_loops,
        iface = config.iface,
        plugins = all_but("plugins", "libjanus_videoroom.so"),
        transports = all_but("transports", "libjanus_http.so"),
    );
    std::fs::write(dir.join("janus.jcfg"), janus)?;
    let http = format!(
        r#"general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	port = {port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
"#
    );
    std::fs::write(dir.join("janus.transport.http.jcfg"), http)?;
    std::fs::write(
        dir.join("janus.plugin.videoroom.jcfg"),
        "general: {\n\tstring_ids = false\n}\n",
    )?;
    Ok(())
}

impl Janus {
    /// Writes a configuration, starts Janus (pinned if asked) and waits for its API.
    pub async fn start(config: &JanusConfig) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("janus-bench")?;
        let port = crate::free_port()?;
        write_config(&dir.0, config, port)?;
        let mut cmd = match &config.cpus {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.arg("-c").arg(c).arg(&config.bin);
                t
            }
            None => Command::new(&config.bin),
        };
        let log_path = config
            .log
            .clone()
            .unwrap_or_else(|| dir.0.join("janus.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = cmd
            .arg("-F")
            .arg(&dir.0)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", config.bin.display()))?;
        let url = format!("http://127.0.0.1:{port}/janus");
        let mut janus = Self {
            child,
            url,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        for _ in 0..100 {
            if let Some(status) = janus.child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("janus exited ({status}): {}", tail(&log));
            }
            if let Ok(r) = janus.http.get(format!("{}/info", janus.url)).send().await
                && r.status().is_success()
            {
                return Ok(janus);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("janus did not answer on {} within 10 s", janus.url)
    }

    /// The Janus process's id (for its CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Opens a session with its event poller.
    pub async fn session(&self) -> anyhow::Result<Session> {
        let created = post(&self.http, &self.url, json!({"janus": "create"})).await?;
        let id = created["data"]["id"].as_u64().context("session id")?;
        let url = format!("{}/{id}", self.url);
        let routes = Routes::default();
        let poller = tokio::spawn(poll(self.http.clone(), url.clone(), routes.clone()));
        Ok(Session {
            http: self.http.clone(),
            url,
            routes,
            poller,
        })
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// POSTs a Janus request with a fresh transaction; returns the synchronous reply, an
/// error if Janus said `error`.
async fn post(http: &reqwest::Client, url: &str, mut body: Value) -> anyhow::Result<Value> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let tx = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    body["transaction"] = json!(format!("t{tx}"));
    let reply: Value = http.post(url).json(&body).send().await?.json().await?;
    if reply["janus"] == "error" {
        bail!("janus: {}", reply["error"]);
    }
    Ok(reply)
}

/// Each handle's event queue, by handle id.
type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>;

/// Long-polls a session's events and hands each to its handle, until the session ends.
async fn poll(http: reqwest::Client, url: String, routes: Routes) {
    loop {
        let events: Value = match http.get(format!("{url}?maxev=10")).send().await {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(v) => v,
                Err(_) => return,
            },
            _ => return,
        };
        let events = match events {
            Value::Array(a) => a,
            one => vec![one],
        };
        for e in events {
            if e["janus"] == "error" {
                return; // the session is gone
            }
            let Some(sender) = e["sender"].as_u64() else {
                continue; // keepalive
            };
            let routes = routes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = routes.get(&sender) {
                let _ = tx.send(e);
            }
        }
    }
}

/// A Janus session; destroyed by [`Session::destroy`].
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    url: String,
    routes: Routes,
    poller: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Attaches a handle to the VideoRoom plugin.
    pub async fn attach(&self) -> anyhow::Result<Handle> {
        let body = json!({"janus": "attach", "plugin": "janus.plugin.videoroom"});
        let reply = post(&self.http, &self.url, body).await?;
        let id = reply["data"]["id"].as_u64().context("handle id")?;
        let (tx, events) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        Ok(Handle {
            http: self.http.clone(),
            url: format!("{}/{id}", self.url),
            events: tokio::sync::Mutex::new(events),
        })
    }

    /// Destroys the session (Janus hangs up its handles' connections).
    pub async fn destroy(self) {
        let _ = post(&self.http, &self.url, json!({"janus": "destroy"})).await;
        self.poller.abort();
    }
}

/// A handle attached to the VideoRoom plugin.
#[derive(Debug)]
pub struct Handle {
    http: reqwest::Client,
    url: String,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
}

impl Handle {
    /// Sends a plugin request (with a JSEP if given); returns Janus's synchronous reply:
    /// the plugin's answer for synchronous requests, an `ack` for asynchronous ones.
    pub async fn message(&self, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        let mut msg = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            msg["jsep"] = jsep;
        }
        let reply = post(&self.http, &self.url, msg).await?;
        if let Some(e) = reply["plugindata"]["data"]["error"].as_str() {
            bail!("videoroom: {e}");
        }
        Ok(reply)
    }

    /// The next plugin event on this handle (errors from the plugin as `Err`), skipping
    /// Janus's own notices (webrtcup, media, slowlink).
    pub async fn event(&self, within: Duration) -> anyhow::Result<Value> {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let e = tokio::time::timeout_at(deadline, events.recv())
                .await
                .context("no event from janus in time")?
                .context("session ended")?;
            if e["janus"] != "event" {
                continue;
            }
            let data = &e["plugindata"]["data"];
            if let Some(err) = data["error"].as_str() {
                bail!(
                    "videoroom error {}: {err}",
                    data["error_code"].as_u64().unwrap_or(0)
                );
            }
            return Ok(e);
        }
    }

    /// Tells Janus that the candidates in the SDP sent are all there are (the load
    /// client gathers before it sends; Janus otherwise waits for trickled ones).
    pub async fn candidates_done(&self) -> anyhow::Result<()> {
        let body = json!({"janus": "trickle", "candidate": {"completed": true}});
        post(&self.http, &self.url, body).await.map(|_| ())
    }

    /// Sends an asynchronous request and waits for the event that carries a JSEP.
    pub async fn negotiate(&self, body: Value, jsep: Option<Value>) -> anyhow::Result<String> {
        let sends_sdp = jsep.is_some();
        self.message(body, jsep).await?;
        if sends_sdp {
            self.candidates_done().await?;
        }
        loop {
            let e = self.event(Duration::from_secs(10)).await?;
            if let Some(sdp) = e["jsep"]["sdp"].as_str() {
                return Ok(sdp.to_owned());
            }
        }
    }
}

/// A VideoRoom room for `publishers` publishers, VP8 and Opus, NACK kept for
/// subscribers; no recording.
pub async fn create_room(handle: &Handle, room: u64, publishers: u32) -> anyhow::Result<()> {
    handle
        .message(
            json!({
                "request": "create",
                "room": room,
                "publishers": publishers,
                "videocodec": "vp8",
                "audiocodec": "opus",
                "notify_joining": false,
                "record": false,
            }),
            None,
        )
        .await
        .map(|_| ())
}
