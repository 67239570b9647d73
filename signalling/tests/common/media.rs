//! A synthetic participant that joins media the way a browser does: over the websocket,
//! through signalling, to whichever SFU node carries the consultation.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ClientMsg, ConsultationId, ServerMsg};
use sfu::engine::EngineError;
use sfu_synthetic::{Participant, Publish, Signal};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::server::Ws;

pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Where the answer to the publish offer in flight goes (or the error refusing it).
type PendingAnswer = Arc<Mutex<Option<oneshot::Sender<Result<String, String>>>>>;

/// The websocket of one browser-like client, split: what it sends, and every server
/// message other than the publish answer and subscriber offers (which the synthetic
/// participant consumes).
#[derive(Debug)]
pub struct MediaWs {
    out: mpsc::UnboundedSender<ClientMsg>,
    pub inbox: mpsc::UnboundedReceiver<ServerMsg>,
    answer: PendingAnswer,
    /// Where subscriber offers go: the current synthetic participant's answering task.
    offers: OfferSink,
}

/// The sender of subscriber offers to the synthetic participant of the current session.
type OfferSink = Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>;

/// The [`Signal`] of a [`MediaWs`].
#[derive(Debug)]
struct WsSignal {
    out: mpsc::UnboundedSender<ClientMsg>,
    answer: PendingAnswer,
}

#[async_trait::async_trait]
impl Signal for WsSignal {
    async fn publish(&self, offer: String) -> Result<String, EngineError> {
        let (tx, rx) = oneshot::channel();
        *self.answer.lock().unwrap() = Some(tx);
        self.out
            .send(ClientMsg::PublishOffer { sdp: offer })
            .map_err(|_| EngineError::WebRtc("websocket closed".into()))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(Ok(sdp))) => Ok(sdp),
            Ok(Ok(Err(e))) => Err(EngineError::BadSdp(e)),
            _ => Err(EngineError::WebRtc("no publish answer".into())),
        }
    }

    async fn subscriber_answer(&self, answer: String) -> Result<(), EngineError> {
        self.out
            .send(ClientMsg::SubscriberAnswer { sdp: answer })
            .map_err(|_| EngineError::WebRtc("websocket closed".into()))
    }
}

impl MediaWs {
    /// Takes over a connected websocket: subscriber offers go to the current session's
    /// participant, the publish answer to its publish, the rest to `inbox`.
    pub fn open(ws: Ws) -> Self {
        let (stream, pending) = ws.into_parts();
        let (mut sink, mut stream) = stream.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<ClientMsg>();
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let offers: OfferSink = Arc::default();
        let offers_tx = offers.clone();
        let answer: PendingAnswer = Arc::default();
        for m in pending {
            let _ = inbox_tx.send(m);
        }
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let text = serde_json::to_string(&m).unwrap();
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let waiting = answer.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Text(t) = frame else { continue };
                let msg: ServerMsg = serde_json::from_str(&t).unwrap();
                match msg {
                    ServerMsg::PublishAnswer { sdp } => {
                        if let Some(tx) = waiting.lock().unwrap().take() {
                            let _ = tx.send(Ok(sdp));
                        }
                    }
                    ServerMsg::SubscriberOffer { sdp } => {
                        if let Some(tx) = offers_tx.lock().unwrap().as_ref() {
                            let _ = tx.send(sdp);
                        }
                    }
                    ServerMsg::Error {
                        req: None,
                        ref message,
                        ..
                    } if waiting.lock().unwrap().is_some() => {
                        if let Some(tx) = waiting.lock().unwrap().take() {
                            let _ = tx.send(Err(message.clone()));
                        }
                        let _ = inbox_tx.send(msg);
                    }
                    other => {
                        let _ = inbox_tx.send(other);
                    }
                }
            }
        });
        Self {
            out,
            inbox,
            answer,
            offers,
        }
    }

    pub fn send(&self, msg: ClientMsg) {
        self.out.send(msg).unwrap();
    }

    /// The next inbox message matching `pred` (others are dropped), within `secs`.
    pub async fn until(&mut self, secs: u64, pred: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(m)) if pred(&m) => return m,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("websocket closed"),
                Err(_) => panic!("timed out"),
            }
        }
    }
}

/// Joins `consultation`'s media over `ws` (asserting `media_joined`), then connects a
/// synthetic participant through it that publishes 300 kbit/s of video and audio.
pub async fn join(ws: Ws, consultation: ConsultationId) -> (MediaWs, Participant) {
    let mut media = MediaWs::open(ws);
    let p = join_media(&mut media, consultation, 300).await;
    (media, p)
}

/// Joins (again) over an open websocket, publishing `video_kbps` of video and audio; the
/// previous session's participant gets no more offers.
pub async fn join_media(
    media: &mut MediaWs,
    consultation: ConsultationId,
    video_kbps: u32,
) -> Participant {
    let (offers_tx, offers) = mpsc::unbounded_channel();
    *media.offers.lock().unwrap() = Some(offers_tx);
    media.send(ClientMsg::JoinMedia { consultation });
    let joined = media
        .until(5, |m| {
            matches!(m, ServerMsg::MediaJoined { .. } | ServerMsg::Error { .. })
        })
        .await;
    assert!(
        matches!(joined, ServerMsg::MediaJoined { consultation: c, .. } if c == consultation),
        "{joined:?}"
    );
    let signal = Arc::new(WsSignal {
        out: media.out.clone(),
        answer: media.answer.clone(),
    });
    Participant::connect(
        signal,
        offers,
        LOOPBACK,
        0,
        Some(Publish {
            video_kbps,
            audio: true,
        }),
    )
    .await
    .unwrap()
}

/// Waits until `p` receives audio and video from `sources` publishers.
pub async fn receives_from(p: &Participant, sources: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while p.stats.sources_with_both(10) < sources {
        assert!(
            tokio::time::Instant::now() < deadline,
            "received only {:?}",
            p.stats.received()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
