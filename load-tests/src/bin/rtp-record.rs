//! Records the video RTP a real browser sends, as a fixture for the SFU's codec tests
//! (`sfu/tests/fixtures/rtp/`). It serves a page that sends its fake camera in one codec
//! over a peer connection to this process (the SFU's own codec policy and connection
//! recipe, on the `webrtc` crate), asks for two more keyframes while it records, and
//! writes every packet it received with what the browser says it encoded (its
//! `keyFramesEncoded`, which Firefox does not report, `framesEncoded`, `packetsSent` and
//! `pliCount`): the tests' ground truth.
//!
//! Run by `load-tests/record-rtp`, which drives Chromium and Firefox at it inside a
//! private network namespace. One recording per run; it exits when the page reports.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::{get, post};
use base64::Engine as _;
use clap::Parser;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use tokio::sync::{Notify, mpsc};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};

#[derive(Parser, Debug)]
#[command(about = "Records a browser's video RTP as a codec test fixture")]
struct Args {
    /// Where to write the fixture (JSON).
    #[arg(long)]
    out: std::path::PathBuf,
    /// The address to serve the page on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// One received packet.
#[derive(Debug, Clone)]
struct Packet {
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Recording {
    codec: Option<String>,
    packets: Vec<Packet>,
}

struct App {
    recording: Arc<Mutex<Recording>>,
    pc: tokio::sync::Mutex<Option<Arc<dyn PeerConnection>>>,
    gathered: Arc<Notify>,
    done: mpsc::Sender<serde_json::Value>,
}

struct Handler {
    recording: Arc<Mutex<Recording>>,
    gathered: Arc<Notify>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            self.gathered.notify_waiters();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let recording = self.recording.clone();
        tokio::spawn(async move {
            let mut asked = 0u32;
            let mut first: Option<tokio::time::Instant> = None;
            while let Some(ev) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(p) = ev else {
                    continue;
                };
                let now = tokio::time::Instant::now();
                let start = *first.get_or_insert(now);
                // Two more keyframes, 1 s and 2 s in: requested ones, as subscribers ask.
                if asked < 2
                    && now.duration_since(start) >= Duration::from_secs(u64::from(asked) + 1)
                {
                    asked += 1;
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: p.header.ssrc,
                    };
                    let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                }
                let codec = track
                    .codec(p.header.ssrc)
                    .await
                    .map(|c| c.mime_type.clone());
                let mut r = recording.lock().unwrap_or_else(|e| e.into_inner());
                if r.codec.is_none() {
                    r.codec = codec;
                }
                r.packets.push(Packet {
                    seq: p.header.sequence_number,
                    timestamp: p.header.timestamp,
                    marker: p.header.marker,
                    payload: p.payload.to_vec(),
                });
            }
        });
    }
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>rtp-record</title>
<script type="module">
const want = 'video/' + new URLSearchParams(location.search).get('codec');
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
const step = (s) => { window.step = s; };
try {
  step('camera');
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 180, frameRate: 15 } });
  const pc = new RTCPeerConnection();
  const t = pc.addTransceiver(stream.getVideoTracks()[0], {
    direction: 'sendonly',
    sendEncodings: [{ maxBitrate: 150_000 }],
  });
  t.setCodecPreferences(RTCRtpSender.getCapabilities('video').codecs.filter((c) => c.mimeType === want));
  step('offer');
  await pc.setLocalDescription(await pc.createOffer());
  step('gathering');
  // Firefox may not finish gathering on a loopback-only host: its host candidates are
  // in the description within a moment.
  for (let i = 0; i < 30 && pc.iceGatheringState !== 'complete'; i++) await wait(50);
  step(`answer (${pc.localDescription.sdp.split('a=candidate').length - 1} candidates, gathering ${pc.iceGatheringState})`);
  const answer = await (await fetch('/offer', { method: 'POST', body: pc.localDescription.sdp })).text();
  await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  step('sending');
  await wait(3500);
  await t.sender.replaceTrack(null);
  await wait(700);
  const out = [...(await pc.getStats()).values()].find((r) => r.type === 'outbound-rtp' && r.kind === 'video');
  await fetch('/done', {
    method: 'POST',
    body: JSON.stringify({
      user_agent: navigator.userAgent,
      keyframes_encoded: out.keyFramesEncoded,
      frames_encoded: out.framesEncoded,
      packets_sent: out.packetsSent,
      pli_count: out.pliCount,
    }),
  });
  window.recorded = 'done';
} catch (e) {
  window.recorded = `failed at ${window.step}: ${e}`;
}
</script>
"#;

async fn offer(State(app): State<Arc<App>>, sdp: String) -> Result<String, String> {
    let pc = sfu_synthetic::peer_connection(
        "127.0.0.1".parse().map_err(|e| format!("{e}"))?,
        Arc::new(Handler {
            recording: app.recording.clone(),
            gathered: app.gathered.clone(),
        }),
    )
    .await
    .map_err(|e| e.to_string())?;
    let desc = RTCSessionDescription::offer(sdp).map_err(|e| e.to_string())?;
    pc.set_remote_description(desc)
        .await
        .map_err(|e| e.to_string())?;
    let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
    let gathered = app.gathered.notified();
    tokio::pin!(gathered);
    gathered.as_mut().enable();
    pc.set_local_description(answer)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(2), gathered).await;
    let sdp = pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .ok_or("no local description")?;
    *app.pc.lock().await = Some(pc);
    Ok(sdp)
}

async fn done(State(app): State<Arc<App>>, body: String) -> Result<(), String> {
    let said: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    app.done.send(said).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (done_tx, mut done_rx) = mpsc::channel(1);
    let app = Arc::new(App {
        recording: Arc::default(),
        pc: tokio::sync::Mutex::new(None),
        gathered: Arc::new(Notify::new()),
        done: done_tx,
    });
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/offer", post(offer))
        .route("/done", post(done))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("rtp-record: listening on {}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let said = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
        .await
        .context("the page did not report within 60 s")?
        .context("the page's report channel closed")?;
    if let Some(pc) = app.pc.lock().await.take() {
        let _ = pc.close().await;
    }
    let r = app.recording.lock().unwrap_or_else(|e| e.into_inner());
    let b64 = base64::engine::general_purpose::STANDARD;
    let packets: Vec<serde_json::Value> = r
        .packets
        .iter()
        .map(|p| {
            serde_json::json!({
                "seq": p.seq,
                "timestamp": p.timestamp,
                "marker": p.marker,
                "payload": b64.encode(&p.payload),
            })
        })
        .collect();
    let fixture = serde_json::json!({
        "recorded_with": "load-tests/record-rtp (rtp-record)",
        "user_agent": said["user_agent"],
        "codec": r.codec,
        "keyframes_encoded": said["keyframes_encoded"],
        "frames_encoded": said["frames_encoded"],
        "packets_sent": said["packets_sent"],
        "pli_count": said["pli_count"],
        "packets": packets,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&fixture)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "rtp-record: {} packets of {} written to {}",
        r.packets.len(),
        r.codec.as_deref().unwrap_or("?"),
        args.out.display()
    );
    server.abort();
    Ok(())
}
