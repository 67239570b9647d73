//! A Redis Sentinel group on loopback, run from the platform's own files
//! (`infra/redis/redis.conf`, `infra/redis/sentinel.conf`) with ports of its own: a
//! primary, one replica and three sentinels, each in its own directory, killed when
//! dropped. For `rush --case failover`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::free_port;

/// The name the sentinels know the primary by (as in infra/redis/sentinel.conf).
pub const PRIMARY_NAME: &str = "consult";

#[derive(Debug)]
pub struct SentinelGroup {
    /// The primary first, then the replica.
    servers: Vec<(u16, Child)>,
    sentinels: Vec<(u16, Child)>,
}

fn infra(file: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/redis")
        .join(file);
    p.canonicalize().with_context(|| format!("{}", p.display()))
}

/// `redis-cli -p PORT ARGS...`'s answer.
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn spawn_server(dir: &Path, port: u16, replica_of: Option<u16>) -> anyhow::Result<Child> {
    std::fs::create_dir_all(dir)?;
    // A copy: Sentinel has the servers rewrite their configuration file (CONFIG REWRITE)
    // when it reconfigures them, and the repository's must stay as it is.
    let conf = dir.join("redis.conf");
    std::fs::copy(infra("redis.conf")?, &conf)?;
    let mut c = Command::new("redis-server");
    c.arg(&conf)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir);
    if let Some(p) = replica_of {
        c.args(["--replicaof", "127.0.0.1", &p.to_string()]);
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server")?;
    wait_for("redis-server starts", Duration::from_secs(10), || {
        cli(port, &["PING"]).trim() == "PONG"
    })?;
    Ok(child)
}

impl SentinelGroup {
    /// Starts the group in `dir` and returns once the sentinels know the primary, its
    /// replica (in sync) and each other.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let (p0, p1) = (free_port()?, free_port()?);
        let mut group = Self {
            servers: Vec::new(),
            sentinels: Vec::new(),
        };
        group
            .servers
            .push((p0, spawn_server(&dir.join("primary"), p0, None)?));
        group
            .servers
            .push((p1, spawn_server(&dir.join("replica"), p1, Some(p0))?));
        wait_for("the replica syncs", Duration::from_secs(20), || {
            cli(p1, &["INFO", "replication"]).contains("master_link_status:up")
        })?;
        let template = std::fs::read_to_string(infra("sentinel.conf")?)?;
        for k in 0..3 {
            let port = free_port()?;
            let sdir = dir.join(format!("sentinel-{k}"));
            std::fs::create_dir_all(&sdir)?;
            let conf: String = template
                .lines()
                .map(|l| {
                    if l.starts_with("port ") {
                        format!("port {port}\nbind 127.0.0.1\ndir {}", sdir.display())
                    } else if l.starts_with("sentinel monitor ") {
                        format!("sentinel monitor {PRIMARY_NAME} 127.0.0.1 {p0} 2")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let file = sdir.join("sentinel.conf");
            std::fs::write(&file, conf + "\n")?;
            let child = Command::new("redis-server")
                .arg(&file)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("redis-server --sentinel")?;
            group.sentinels.push((port, child));
        }
        for (port, _) in &group.sentinels {
            wait_for(
                "the sentinels know the replica and each other",
                Duration::from_secs(30),
                || {
                    let info = cli(*port, &["SENTINEL", "MASTER", PRIMARY_NAME]);
                    let num = |key: &str| {
                        let lines: Vec<&str> = info.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == key)
                            .and_then(|i| lines.get(i + 1))
                            .and_then(|v| v.parse::<u32>().ok())
                    };
                    num("num-slaves") == Some(1) && num("num-other-sentinels") == Some(2)
                },
            )?;
        }
        Ok(group)
    }

    /// The URL that signalling and the SFU nodes are given.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-sentinel://{}#{PRIMARY_NAME}", hosts.join(","))
    }

    /// Where the sentinels say the primary is (port).
    pub fn primary_port(&self) -> Option<u16> {
        primary_port_at(&self.sentinel_ports())
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|(p, _)| *p).collect()
    }

    /// `kill -9` of the primary.
    pub fn kill_primary(&mut self) -> anyhow::Result<u16> {
        let port = self.primary_port().context("no primary")?;
        let (_, child) = self
            .servers
            .iter_mut()
            .find(|(p, _)| *p == port)
            .context("the primary is not ours")?;
        child.kill()?;
        let _ = child.wait();
        Ok(port)
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for (_, c) in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where the first sentinel of `ports` that answers says the primary is (port).
pub fn primary_port_at(ports: &[u16]) -> Option<u16> {
    ports.iter().find_map(|port| {
        let answer = cli(
            *port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY_NAME],
        );
        answer.lines().nth(1)?.trim().parse().ok()
    })
}
