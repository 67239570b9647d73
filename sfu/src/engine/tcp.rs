//! ICE over TCP (RFC 6544, passive candidates): an accepted stream carries RFC 4571
//! frames, each packet preceded by its 16-bit length. One task per stream passes the
//! frames it reads to its media loop, which routes them like datagrams, and writes the
//! frames the loop sends back. Not a hot path: ICE-TCP is the fallback for networks that
//! block UDP.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Frames queued towards one stream before further ones are dropped (as a full UDP
/// socket buffer would drop them).
pub(super) const STREAM_QUEUE: usize = 256;
/// A stream that sends nothing for this long is closed (ICE consent checks come every
/// few seconds on a live one).
const IDLE: Duration = Duration::from_secs(30);

/// What a stream task tells its loop.
#[derive(Debug)]
pub(super) enum TcpIn {
    /// One packet from `peer`.
    Frame { peer: SocketAddr, data: BytesMut },
    /// The stream from `peer` ended.
    Closed { peer: SocketAddr },
}

/// Reads and writes one accepted stream until either side ends it.
pub(super) async fn serve_stream(
    stream: TcpStream,
    peer: SocketAddr,
    to_loop: mpsc::Sender<TcpIn>,
    mut from_loop: mpsc::Receiver<Bytes>,
) {
    let _ = stream.set_nodelay(true);
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(usize::from(u16::MAX))
        .new_codec();
    let mut framed = Framed::new(stream, codec);
    loop {
        tokio::select! {
            read = tokio::time::timeout(IDLE, framed.next()) => match read {
                Ok(Some(Ok(data))) => {
                    if to_loop.send(TcpIn::Frame { peer, data }).await.is_err() {
                        return;
                    }
                }
                // Closed, a framing error, or idle: the stream is done.
                _ => break,
            },
            out = from_loop.recv() => match out {
                Some(frame) => {
                    if framed.send(frame).await.is_err() {
                        break;
                    }
                }
                None => return,
            },
        }
    }
    let _ = to_loop.send(TcpIn::Closed { peer }).await;
}
