//! How many packets a subscriber's browser says it lost, from its congestion feedback.
//!
//! The `rtc` crate's congestion controller turns transport-wide feedback into one report
//! per packet sent, and counts as lost every packet no feedback mentioned: when a feedback
//! message is itself lost on the way back, each packet it covered reads as lost. On a link
//! that loses 5 % each way that doubles the loss the estimate sees (about 10 %, the point
//! where GCC's loss half cuts the rate). libwebrtc counts only what feedback says; so does
//! this interceptor, wire-side of the congestion controller on a subscriber leg: each
//! feedback message's packets, and of those the ones not received, go into the leg's
//! [`Downlink`] cell, where its estimator reads them ([`crate::bwe::LossLimit`]).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use rtc::interceptor::{Packet, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;

use super::Estimate;
use super::tap::{Hook, Tap};

/// Where it sits: wire-side of the congestion controller (1_000), so a feedback message's
/// counts are in the cell before the estimator reads the reports it gives.
pub(super) const SLOT: usize = 500;

/// The interceptor, for the leg whose estimate is kept in `cell`.
pub(super) fn interceptor(cell: Estimate) -> Tap<FeedbackLoss> {
    Tap::new(FeedbackLoss { cell })
}

pub(super) struct FeedbackLoss {
    cell: Estimate,
}

impl std::fmt::Debug for FeedbackLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedbackLoss")
    }
}

impl Hook for FeedbackLoss {
    fn read(&mut self, msg: &mut TaggedPacket, _: &mut VecDeque<TaggedPacket>) -> bool {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for p in packets {
                if let Some(cc) = p.as_any().downcast_ref::<TransportLayerCc>() {
                    // One receive delta per packet received.
                    let total = u64::from(cc.packet_status_count);
                    let received = (cc.recv_deltas.len() as u64).min(total);
                    self.cell.feedback_total.fetch_add(total, Ordering::Relaxed);
                    self.cell
                        .feedback_lost
                        .fetch_add(total - received, Ordering::Relaxed);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rtc::interceptor::AttributedPacket;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{RecvDelta, SymbolTypeTcc};
    use rtc::sansio::Protocol;
    use rtc::shared::TransportContext;

    use super::*;

    fn feedback(count: u16, received: usize) -> Box<dyn rtc::rtcp::Packet> {
        Box::new(TransportLayerCc {
            packet_status_count: count,
            recv_deltas: vec![
                RecvDelta {
                    type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                    delta: 1_000,
                };
                received
            ],
            ..Default::default()
        })
    }

    /// Each feedback message's packets and losses are added to the cell, and the message
    /// goes on unchanged; other RTCP counts nothing.
    #[test]
    fn feedback_counts_what_it_reports_and_passes_on() {
        let cell = Estimate::default();
        let mut f = interceptor(cell.clone());
        let now = Instant::now();
        let msg = |packets| TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(packets)),
        };
        f.handle_read(msg(vec![feedback(14, 13), feedback(10, 10)]))
            .unwrap();
        f.handle_read(msg(vec![Box::new(
            rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication::default(),
        )]))
        .unwrap();
        assert_eq!(cell.feedback_total.load(Ordering::Relaxed), 24);
        assert_eq!(cell.feedback_lost.load(Ordering::Relaxed), 1);
        assert_eq!(std::iter::from_fn(|| f.poll_read()).count(), 2);
    }
}
