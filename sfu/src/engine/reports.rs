//! Receiver reports to a publisher's browser about its audio only.
//!
//! A browser names each simulcast layer of its video (the rid and mid RTP header
//! extensions) in every packet only until a receiver report acknowledges that stream. The
//! `rtc` crate maps a layer's SSRC to its rid from those extensions, and forgets the
//! mapping at every new offer (an ICE restart, a codec switch: `start_rtp` makes the rid
//! codings again), so once a layer was acknowledged its packets were dropped after the
//! next offer. This interceptor, between the report generator and the wire, takes the
//! video streams' blocks out of the publisher leg's receiver reports: the browser keeps
//! naming its layers (about 10 bytes a packet), and its audio is still reported, which
//! the pre-call check reads as the proof that its media reached the SFU. The browser's
//! congestion control runs on the transport-wide feedback, which is not touched.
//!
//! It also tells the publisher of the loss *after* the SFU: each audio block's fraction
//! lost is raised to the worst of the publisher's subscribers' downlinks
//! ([`DownstreamLoss`], set by the endpoint every tick). A browser's Opus encoder adds
//! in-band FEC by the fraction lost its receiver reports give (libwebrtc's `ChannelSend`),
//! and the SFU's own reports speak only of the publisher's uplink, so a subscriber on a
//! lossy link got no FEC at all (mediasoup does the same for Opus, its issue 234). Only
//! the fraction changes, not the cumulative counts the browser's congestion control reads.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rtc::interceptor::{Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;

use super::tap::{Hook, Tap};

/// Where it sits: below the receiver report generator (9_000), so its reports pass it on
/// their way to the wire.
pub(super) const SLOT: usize = 1_500;

/// The worst fraction lost (in 256ths, as RTCP gives it) on the downlinks of a
/// publisher's subscribers, shared between the endpoint and its publisher leg's reports.
pub(crate) type DownstreamLoss = Arc<AtomicU8>;

/// The interceptor, raising audio's fraction lost to what `downstream` holds.
pub(super) fn interceptor(downstream: DownstreamLoss) -> Tap<PublisherReports> {
    Tap::new(PublisherReports {
        video: HashSet::new(),
        downstream,
    })
}

pub(super) struct PublisherReports {
    /// The SSRCs of the video streams received.
    video: HashSet<u32>,
    downstream: DownstreamLoss,
}

impl std::fmt::Debug for PublisherReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherReports")
            .field("video", &self.video.len())
            .finish()
    }
}

impl PublisherReports {
    /// Raises each report block's fraction lost to the downstream loss (after
    /// [`Self::filter`], only audio's are left).
    fn raise_loss(&self, packets: &mut [Box<dyn rtc::rtcp::Packet>]) {
        let downstream = self.downstream.load(Ordering::Relaxed);
        if downstream == 0 {
            return;
        }
        for p in packets.iter_mut() {
            let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() else {
                continue;
            };
            if rr.reports.iter().all(|r| r.fraction_lost >= downstream) {
                continue;
            }
            let mut rr = rr.clone();
            for r in &mut rr.reports {
                r.fraction_lost = r.fraction_lost.max(downstream);
            }
            *p = Box::new(rr);
        }
    }

    /// `packets` without the video streams' report blocks; a receiver report left with
    /// none is dropped.
    fn filter(&self, packets: &mut Vec<Box<dyn rtc::rtcp::Packet>>) {
        if self.video.is_empty() {
            return;
        }
        packets.retain_mut(|p| {
            let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() else {
                return true;
            };
            if !rr.reports.iter().any(|r| self.video.contains(&r.ssrc)) {
                return true;
            }
            let reports: Vec<_> = rr
                .reports
                .iter()
                .filter(|r| !self.video.contains(&r.ssrc))
                .cloned()
                .collect();
            if reports.is_empty() {
                return false;
            }
            *p = Box::new(ReceiverReport {
                ssrc: rr.ssrc,
                reports,
                profile_extensions: rr.profile_extensions.clone(),
            });
            true
        });
    }
}

impl Hook for PublisherReports {
    fn write(&mut self, msg: &mut TaggedPacket) -> bool {
        if let Packet::Rtcp(packets) = &mut msg.message.packet {
            self.filter(packets);
            self.raise_loss(packets);
            return !packets.is_empty();
        }
        true
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        if info.mime_type.to_ascii_lowercase().starts_with("video/") {
            self.video.insert(info.ssrc);
        }
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.video.remove(&info.ssrc);
    }
}

#[cfg(test)]
mod tests {
    use rtc::rtcp::reception_report::ReceptionReport;

    use super::*;

    fn rr(ssrcs: &[u32]) -> Box<dyn rtc::rtcp::Packet> {
        Box::new(ReceiverReport {
            ssrc: 1,
            reports: ssrcs
                .iter()
                .map(|&ssrc| ReceptionReport {
                    ssrc,
                    ..Default::default()
                })
                .collect(),
            profile_extensions: Default::default(),
        })
    }

    fn blocks(packets: &[Box<dyn rtc::rtcp::Packet>]) -> Vec<Vec<u32>> {
        packets
            .iter()
            .map(|p| {
                p.as_any()
                    .downcast_ref::<ReceiverReport>()
                    .map(|r| r.reports.iter().map(|b| b.ssrc).collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn reports() -> PublisherReports {
        PublisherReports {
            video: HashSet::new(),
            downstream: DownstreamLoss::default(),
        }
    }

    #[test]
    fn only_the_audio_streams_are_reported() {
        let mut f = reports();
        for (ssrc, mime) in [(10, "audio/opus"), (20, "video/VP8"), (30, "video/H264")] {
            f.bind_remote_stream(&StreamInfo {
                ssrc,
                mime_type: mime.to_owned(),
                ..Default::default()
            });
        }
        let mut packets = vec![rr(&[10, 20]), rr(&[20, 30]), rr(&[10])];
        f.filter(&mut packets);
        assert_eq!(
            blocks(&packets),
            [vec![10], vec![10]],
            "video blocks gone; an empty report dropped"
        );
        f.unbind_remote_stream(&StreamInfo {
            ssrc: 20,
            mime_type: "video/VP8".to_owned(),
            ..Default::default()
        });
        let mut packets = vec![rr(&[20, 30])];
        f.filter(&mut packets);
        assert_eq!(
            blocks(&packets),
            [vec![20]],
            "an unbound stream is reported again"
        );
    }

    /// The audio's fraction lost is raised to the worst downstream loss, never lowered,
    /// and left alone without one.
    #[test]
    fn audio_reports_carry_the_loss_after_the_sfu() {
        let f = reports();
        let lossy = |fraction_lost| -> Box<dyn rtc::rtcp::Packet> {
            Box::new(ReceiverReport {
                ssrc: 1,
                reports: vec![ReceptionReport {
                    ssrc: 10,
                    fraction_lost,
                    total_lost: 3,
                    ..Default::default()
                }],
                profile_extensions: Default::default(),
            })
        };
        let fractions = |packets: &[Box<dyn rtc::rtcp::Packet>]| -> Vec<(u8, u32)> {
            packets
                .iter()
                .flat_map(|p| {
                    p.as_any()
                        .downcast_ref::<ReceiverReport>()
                        .unwrap()
                        .reports
                        .iter()
                        .map(|r| (r.fraction_lost, r.total_lost))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut packets = vec![lossy(5), lossy(100)];
        f.raise_loss(&mut packets);
        assert_eq!(
            fractions(&packets),
            [(5, 3), (100, 3)],
            "no downstream loss yet"
        );
        f.downstream.store(51, Ordering::Relaxed);
        f.raise_loss(&mut packets);
        assert_eq!(
            fractions(&packets),
            [(51, 3), (100, 3)],
            "raised to 20 %, cumulative counts untouched"
        );
    }
}
