//! Round trips for browsers that only receive: RTCP extended reports (RFC 3611).
//!
//! A browser learns a connection's round trip from the receiver reports on what it sends.
//! On its subscriber connection it sends nothing, so it had none: its retransmission
//! requests and its video jitter buffer went on a default, and on a 150 ms path a
//! retransmission came after the buffer had given its frame up (a frozen, then skipped,
//! picture). The SFU's offers ask for receiver reference times (`a=rtcp-xr:rcvr-rtt=all`,
//! `crate::sdp::with_receiver_rtt`, which Chrome offers itself); this interceptor, on the
//! subscriber leg, answers each reference time block at once with a DLRR block (the
//! block's middle 32 NTP bits, and the delay since it came, in 1/65536 s), from which the
//! browser computes its round trip.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{AttributedPacket, Packet, TaggedPacket};
use rtc::rtcp::extended_report::ExtendedReport;
use rtc::rtcp::extended_report::dlrr::{DLRRReport, DLRRReportBlock};
use rtc::rtcp::extended_report::rrt::ReceiverReferenceTimeReportBlock;
use rtc::shared::TransportContext;

use super::tap::{Hook, Tap};

/// Where it sits: among the generators, above the pacer (it writes packets), below the
/// layer that hands RTCP to the application and drops the rest (14_000).
pub(super) const SLOT: usize = 12_500;

/// The interceptor.
pub(super) fn interceptor() -> Tap<RttResponder> {
    Tap::new(RttResponder)
}

#[derive(Debug, Default)]
pub(super) struct RttResponder;

/// The answer to one extended report, if it carries a receiver reference time.
fn answer(xr: &ExtendedReport, arrived: Instant, now: Instant) -> Option<ExtendedReport> {
    let rrt = xr.reports.iter().find_map(|b| {
        b.as_any()
            .downcast_ref::<ReceiverReferenceTimeReportBlock>()
    })?;
    let waited = now.saturating_duration_since(arrived);
    let dlrr = (waited.as_micros() * 65_536 / 1_000_000).min(u128::from(u32::MAX)) as u32;
    Some(ExtendedReport {
        sender_ssrc: 0,
        reports: vec![Box::new(DLRRReportBlock {
            reports: vec![DLRRReport {
                ssrc: xr.sender_ssrc,
                last_rr: (rrt.ntp_timestamp >> 16) as u32,
                dlrr,
            }],
        })],
    })
}

impl Hook for RttResponder {
    fn read(&mut self, msg: &mut TaggedPacket, send: &mut VecDeque<TaggedPacket>) -> bool {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for p in packets {
                let Some(xr) = p.as_any().downcast_ref::<ExtendedReport>() else {
                    continue;
                };
                if let Some(reply) = answer(xr, msg.now, msg.now) {
                    tracing::trace!(ssrc = xr.sender_ssrc, "receiver reference time answered");
                    send.push_back(TaggedPacket {
                        now: msg.now,
                        transport: TransportContext::default(),
                        message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(reply)])),
                    });
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rtc::sansio::Protocol;

    use super::*;

    fn rrtr(sender_ssrc: u32, ntp_timestamp: u64) -> ExtendedReport {
        ExtendedReport {
            sender_ssrc,
            reports: vec![Box::new(ReceiverReferenceTimeReportBlock { ntp_timestamp })],
        }
    }

    /// A reference time is answered for its sender with the middle of its NTP time and the
    /// delay in 1/65536 s; an extended report without one is not answered.
    #[test]
    fn a_reference_time_is_answered_with_its_delay() {
        let t = Instant::now();
        let reply = answer(
            &rrtr(7, 0x1122_3344_5566_7788),
            t,
            t + Duration::from_millis(500),
        )
        .expect("answered");
        let block = reply.reports[0]
            .as_any()
            .downcast_ref::<DLRRReportBlock>()
            .expect("a DLRR block");
        assert_eq!(
            block.reports,
            [DLRRReport {
                ssrc: 7,
                last_rr: 0x3344_5566,
                dlrr: 32_768,
            }]
        );
        let other = ExtendedReport {
            sender_ssrc: 7,
            reports: vec![Box::new(DLRRReportBlock::default())],
        };
        assert!(answer(&other, t, t).is_none());
    }

    /// Through the interceptor: the answer goes out, the report goes on up.
    #[test]
    fn the_answer_is_written_and_the_report_read_on() {
        let mut r = interceptor();
        let now = Instant::now();
        r.handle_read(TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(rrtr(9, 1 << 40))])),
        })
        .unwrap();
        assert!(r.poll_read().is_some());
        let out = r.poll_write().expect("a DLRR goes out");
        let Packet::Rtcp(packets) = out.message.packet else {
            panic!("RTCP expected");
        };
        let xr = packets[0]
            .as_any()
            .downcast_ref::<ExtendedReport>()
            .unwrap();
        assert_eq!(xr.reports.len(), 1);
        assert!(r.poll_write().is_none());
    }
}
