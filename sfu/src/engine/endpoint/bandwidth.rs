//! Each publisher's limit from its subscribers' downlinks ([`crate::bwe`]), checked every
//! tick: what each publisher's browser sends (bytes on its publisher leg), each
//! subscriber's share of its estimate, and a REMB to a publisher whose subscribers cannot
//! take what it sends.

use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;

use super::*;
use crate::bwe::{self, AUDIO_ALLOWANCE, UplinkLimit};

/// How often what a publisher sends is measured.
const RATE_WINDOW: Duration = Duration::from_millis(1_000);

/// What a participant's browser sends and the limit its subscribers set it.
#[derive(Debug, Default)]
pub(super) struct Uplink {
    /// The publisher leg's received bytes at the start of the current window.
    sample: Option<(Instant, u64)>,
    /// Bits per second over the last whole window.
    sending: u64,
    limit: UplinkLimit,
}

impl Endpoint {
    /// Measures what each publisher sends and tells those its subscribers cannot keep up
    /// with the most they may send (REMB), or lifts that limit.
    pub(super) fn limit_uplinks(&mut self, now: Instant) {
        let Self {
            rooms,
            members,
            conns,
            touched,
            ..
        } = self;
        for room in rooms.values() {
            for &key in &room.members {
                let Some(m) = members.get(&key) else {
                    continue;
                };
                // The lowest share of its video among those who receive it.
                let mut lowest: Option<u64> = None;
                for &other in &room.members {
                    let Some(o) = members.get(&other).filter(|_| other != key) else {
                        continue;
                    };
                    let receives_its_video = !o.video_off
                        && o.subscribed.iter().any(|(t, s)| {
                            s.kind == MediaKind::Video
                                && room.tracks.get(t).is_some_and(|p| p.publisher == m.id)
                        });
                    let estimate = conns
                        .get(&o.subscriber)
                        .and_then(|c| c.estimate.as_ref())
                        .map_or(0, |e| e.bitrate.load(Ordering::Relaxed));
                    if !receives_its_video || estimate == 0 {
                        continue;
                    }
                    let count = |kind| o.subscribed.values().filter(|s| s.kind == kind).count();
                    if let Some(share) =
                        bwe::share(estimate, count(MediaKind::Video), count(MediaKind::Audio))
                    {
                        lowest = Some(lowest.map_or(share, |l| l.min(share)));
                    }
                }
                let publishes_audio = room
                    .tracks
                    .values()
                    .any(|t| t.publisher == m.id && t.kind == MediaKind::Audio);
                let audio = if publishes_audio { AUDIO_ALLOWANCE } else { 0 };
                let Some(m) = members.get_mut(&key) else {
                    continue;
                };
                let received = conns.get(&m.publisher).map_or(0, |c| c.received_bytes);
                let u = &mut m.uplink;
                match u.sample {
                    Some((at, bytes)) if now.saturating_duration_since(at) >= RATE_WINDOW => {
                        let secs = now.saturating_duration_since(at).as_secs_f64();
                        u.sending = ((received.saturating_sub(bytes) * 8) as f64 / secs) as u64;
                        u.sample = Some((now, received));
                    }
                    Some(_) => {}
                    None => u.sample = Some((now, received)),
                }
                let Some(remb) = u.limit.update(now, lowest.map(|l| l + audio), u.sending) else {
                    continue;
                };
                tracing::debug!(
                    participant = key,
                    remb,
                    sending = u.sending,
                    "publisher limit"
                );
                let ssrcs: Vec<u32> = room
                    .tracks
                    .values()
                    .filter(|t| t.publisher == m.id)
                    .map(|t| t.media_ssrc)
                    .collect();
                let Some(t) = room.tracks.values().find(|t| t.publisher == m.id) else {
                    continue;
                };
                if let Some(mut receiver) = conns
                    .get_mut(&t.conn)
                    .and_then(|c| c.pc.rtp_receiver(t.receiver))
                {
                    let remb = ReceiverEstimatedMaximumBitrate {
                        sender_ssrc: 0,
                        bitrate: remb as f32,
                        ssrcs,
                    };
                    let _ = receiver.write_rtcp(now, vec![Box::new(remb)]);
                }
                touch(conns, touched, t.conn);
            }
        }
    }
}
