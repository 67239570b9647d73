//! SDP text the crate does not handle itself.
//!
//! - Its NAT 1:1 setting is read nowhere in 0.21 (see `WEBRTC-0.21-NOTES.md`), so a server
//!   behind 1:1 NAT rewrites the address of its own candidates to the public one before
//!   sending them ([`announce`]). ICE still matches: a browser's checks arrive at the
//!   private socket, which the SFU finds by socket address.
//! - Which codecs of the SFU's policy a browser's offer or answer holds, per media
//!   section and in its order ([`media_codecs`]): a publisher's offer says what its
//!   browser supports; a subscriber's answer, what it accepted of each track.

use std::net::IpAddr;

use crate::codec::Codec;

/// One media section of an SDP: its `mid`, and the formats of the SFU's codec policy it
/// lists, as (payload type, codec) in the section's order. A rejected section (port 0)
/// lists none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionCodecs {
    pub mid: String,
    pub video: bool,
    pub codecs: Vec<(u8, Codec)>,
}

/// The codecs of each media section of `sdp`. Formats the policy does not hold (VP9, AV1,
/// H264 of another profile, RTX, RED, FEC) are left out, and so is a codec of the other
/// kind than its section's (a video codec in an audio section).
pub fn media_codecs(sdp: &str) -> Result<Vec<SectionCodecs>, String> {
    let parsed = rtc::sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp))
        .map_err(|e| e.to_string())?;
    Ok(parsed
        .media_descriptions
        .iter()
        .map(|m| {
            let formats = m.codecs();
            let video = m.media_name.media == "video";
            let codecs = if m.media_name.port.value == 0 {
                Vec::new()
            } else {
                m.media_name
                    .formats
                    .iter()
                    .filter_map(|f| f.parse::<u8>().ok())
                    .filter_map(|pt| {
                        let f = formats.get(&pt)?;
                        Some((pt, Codec::from_sdp(&f.name, &f.fmtp)?))
                    })
                    .filter(|(_, c)| c.is_video() == video)
                    .fold(Vec::new(), |mut codecs: Vec<(u8, Codec)>, (pt, c)| {
                        // A payload type the m= line lists twice is one format.
                        if !codecs.iter().any(|(seen, _)| *seen == pt) {
                            codecs.push((pt, c));
                        }
                        codecs
                    })
            };
            SectionCodecs {
                mid: m.attribute("mid").flatten().unwrap_or_default().to_owned(),
                video,
                codecs,
            }
        })
        .collect())
}

/// The ICE username fragment a description carries (the first; a bundled description
/// gives every section the same one).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
        .filter(|u| !u.is_empty())
}

/// `sdp` with every candidate (and connection line) on `private` moved to `public`.
/// Lines are kept byte for byte otherwise, including their `\r\n` endings.
pub fn announce(sdp: &str, private: IpAddr, public: IpAddr) -> String {
    let private = private.to_string();
    let public = public.to_string();
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in sdp.split_inclusive('\n') {
        if let Some(candidate) = line.strip_prefix("a=") {
            if candidate.starts_with("candidate:") {
                out.push_str("a=");
                out.push_str(&announce_candidate(candidate, &private, &public));
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("c=IN IP") {
            let (family, addr) = rest.split_at(rest.find(' ').unwrap_or(rest.len()));
            // Exactly " <address>" and the line ending: any other spacing stays as it is.
            if addr.trim_end_matches(['\r', '\n']).strip_prefix(' ') == Some(private.as_str()) {
                let family = if public.contains(':') { "6" } else { family };
                out.push_str("c=IN IP");
                out.push_str(family);
                out.push(' ');
                out.push_str(&public);
                out.push_str(line_ending(line));
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

/// One `candidate:...` attribute with its address (the fifth field) moved from `private`
/// to `public`; any other candidate is returned as it is.
pub fn announce_candidate(candidate: &str, private: &str, public: &str) -> String {
    let body = candidate.trim_end_matches(['\r', '\n']);
    let ending = &candidate[body.len()..];
    let mut fields: Vec<&str> = body.split(' ').collect();
    if fields.len() > 4 && fields[4] == private {
        fields[4] = public;
    }
    let mut out = fields.join(" ");
    out.push_str(ending);
    out
}

/// `sdp` with `a=rtcp-xr:rcvr-rtt=all` (RFC 3611) in each audio and video section, after
/// its `a=mid:` line: the SFU's offers to a subscriber ask its browser for receiver
/// reference times, which the SFU answers (`engine/xr.rs`), so that a browser that only
/// receives on that connection learns its round trip; without it, its retransmission
/// requests and its jitter buffer go on a default.
pub fn with_receiver_rtt(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 96);
    let mut media = false;
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") {
            media = line.starts_with("m=audio") || line.starts_with("m=video");
        }
        out.push_str(line);
        if media && line.starts_with("a=mid:") {
            out.push_str("a=rtcp-xr:rcvr-rtt=all");
            out.push_str(line_ending(line));
        }
    }
    out
}

fn line_ending(line: &str) -> &str {
    let body = line.trim_end_matches(['\r', '\n']);
    &line[body.len()..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_rtt_is_asked_for_in_each_media_section() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        assert_eq!(
            with_receiver_rtt(sdp),
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtcp-xr:rcvr-rtt=all\r\n\
             a=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
             a=rtcp-xr:rcvr-rtt=all\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
             a=mid:2\r\n"
        );
    }

    const SDP: &str = "v=0\r\n\
        o=- 1 2 IN IP4 0.0.0.0\r\n\
        c=IN IP4 10.0.0.5\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host\r\n\
        a=candidate:2 1 tcp 1671430143 10.0.0.5 50000 typ host tcptype passive\r\n\
        a=candidate:3 1 udp 1694498815 192.0.2.7 40000 typ srflx raddr 10.0.0.5 rport 50000\r\n\
        a=mid:0\r\n";

    #[test]
    fn candidates_on_the_private_address_are_announced_as_public() {
        let out = announce(
            SDP,
            "10.0.0.5".parse().unwrap(),
            "203.0.113.9".parse().unwrap(),
        );
        assert!(out.contains("a=candidate:1 1 udp 2130706431 203.0.113.9 50000 typ host\r\n"));
        assert!(out.contains(
            "a=candidate:2 1 tcp 1671430143 203.0.113.9 50000 typ host tcptype passive\r\n"
        ));
        // Another address in the address field stays; raddr is informational.
        assert!(out.contains("a=candidate:3 1 udp 1694498815 192.0.2.7 40000"));
        assert!(out.contains("c=IN IP4 203.0.113.9\r\n"));
        assert!(!out.contains(" 10.0.0.5 50000 typ host"));
        assert_eq!(out.lines().count(), SDP.lines().count());
    }

    /// A video section as Firefox offers it (its own payload types), and one as Chrome
    /// offers it with H264 first (the constrained baseline format among others).
    const OFFER: &str = "v=0\r\n\
        o=- 1 2 IN IP4 0.0.0.0\r\n\
        s=-\r\n\
        t=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0\r\n\
        a=mid:0\r\n\
        a=rtpmap:109 opus/48000/2\r\n\
        a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1\r\n\
        a=rtpmap:9 G722/8000/1\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 120 124 121 99\r\n\
        a=mid:1\r\n\
        a=rtpmap:120 VP8/90000\r\n\
        a=fmtp:120 max-fs=12288;max-fr=60\r\n\
        a=rtpmap:124 rtx/90000\r\n\
        a=fmtp:124 apt=120\r\n\
        a=rtpmap:121 VP9/90000\r\n\
        a=rtpmap:99 AV1/90000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 102 127 125 96\r\n\
        a=mid:2\r\n\
        a=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
        a=rtpmap:127 H264/90000\r\n\
        a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
        a=rtpmap:125 H264/90000\r\n\
        a=fmtp:125 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:3\r\n\
        a=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn media_codecs_lists_the_policys_formats_in_the_sections_order() {
        let sections = media_codecs(OFFER).unwrap();
        let mids: Vec<&str> = sections.iter().map(|s| s.mid.as_str()).collect();
        assert_eq!(mids, ["0", "1", "2", "3"]);
        assert_eq!(sections[0].codecs, [(109, Codec::Opus)]);
        assert!(!sections[0].video && sections[1].video);
        assert_eq!(
            sections[1].codecs,
            [(120, Codec::Vp8)],
            "no VP9, AV1 or RTX"
        );
        assert_eq!(
            sections[2].codecs,
            [(125, Codec::H264), (96, Codec::Vp8)],
            "only constrained baseline, packetization-mode 1"
        );
        assert!(sections[3].codecs.is_empty(), "a rejected section");
    }

    /// Chrome's audio RED (redundant Opus) is a codec of the policy; its video RED (around
    /// ULPFEC) is not.
    #[test]
    fn audio_red_is_listed_and_video_red_is_not() {
        let chrome = "v=0\r\n\
            o=- 1 2 IN IP4 0.0.0.0\r\n\
            s=-\r\n\
            t=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9\r\n\
            a=mid:0\r\n\
            a=rtpmap:111 opus/48000/2\r\n\
            a=fmtp:111 minptime=10;useinbandfec=1\r\n\
            a=rtpmap:63 red/48000/2\r\n\
            a=fmtp:63 111/111\r\n\
            a=rtpmap:9 G722/8000\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 116 117\r\n\
            a=mid:1\r\n\
            a=rtpmap:96 VP8/90000\r\n\
            a=rtpmap:116 red/90000\r\n\
            a=rtpmap:117 ulpfec/90000\r\n";
        let sections = media_codecs(chrome).unwrap();
        assert_eq!(sections[0].codecs, [(111, Codec::Opus), (63, Codec::Red)]);
        assert_eq!(sections[1].codecs, [(96, Codec::Vp8)]);
    }

    /// Found by the `sdp` fuzz target: a video codec's rtpmap in an audio section was
    /// listed as that section's codec (and an audio codec in a video section would be).
    #[test]
    fn a_codec_of_the_other_kind_than_its_section_is_left_out() {
        let mixed = "v=0\r\n\
            o=- 1 2 IN IP4 0.0.0.0\r\n\
            s=-\r\n\
            t=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111 102\r\n\
            a=mid:0\r\n\
            a=rtpmap:111 opus/48000/2\r\n\
            a=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 111\r\n\
            a=mid:1\r\n\
            a=rtpmap:96 VP8/90000\r\n\
            a=rtpmap:111 opus/48000/2\r\n";
        let sections = media_codecs(mixed).unwrap();
        assert_eq!(sections[0].codecs, [(111, Codec::Opus)]);
        assert_eq!(sections[1].codecs, [(96, Codec::Vp8)]);
    }

    /// Found by the `sdp` fuzz target in CI: an `m=` line listing a payload type twice
    /// had its codec listed twice.
    #[test]
    fn a_payload_type_listed_twice_is_one_codec() {
        let twice = "v=0\r\n\
            o=- 1 2 IN IP4 0.0.0.0\r\n\
            s=-\r\n\
            t=0 0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 102 96\r\n\
            a=mid:1\r\n\
            a=rtpmap:96 VP8/90000\r\n\
            a=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";
        let sections = media_codecs(twice).unwrap();
        assert_eq!(sections[0].codecs, [(96, Codec::Vp8), (102, Codec::H264)]);
    }

    #[test]
    fn media_codecs_refuses_what_is_not_sdp() {
        assert!(media_codecs("not sdp at all").is_err());
    }

    #[test]
    fn other_text_is_kept_byte_for_byte() {
        let out = announce(
            SDP,
            "10.9.9.9".parse().unwrap(),
            "203.0.113.9".parse().unwrap(),
        );
        assert_eq!(out, SDP);
        assert_eq!(announce_candidate("candidate:x", "a", "b"), "candidate:x");
    }

    /// Found by the `sdp` fuzz target: a connection line whose address had other white
    /// space around it (a vertical tab) was rewritten, and so lost that space, even when
    /// announced to the same address.
    #[test]
    fn only_a_connection_line_of_exactly_the_private_address_is_rewritten() {
        let private: IpAddr = "10.0.0.5".parse().unwrap();
        let odd = "v=0\r\nc=IN IP4 \u{b}10.0.0.5\r\nc=IN IP4  10.0.0.5\r\n";
        assert_eq!(announce(odd, private, private), odd);
        assert_eq!(announce(odd, private, "203.0.113.9".parse().unwrap()), odd);
        let plain = "c=IN IP4 10.0.0.5\n";
        assert_eq!(announce(plain, private, private), plain);
        assert_eq!(
            announce(plain, private, "203.0.113.9".parse().unwrap()),
            "c=IN IP4 203.0.113.9\n"
        );
    }
}
