//! SDP text edits the crate does not do itself. Its NAT 1:1 setting is read nowhere in
//! 0.21 (see `WEBRTC-0.21-NOTES.md`), so a server behind 1:1 NAT rewrites the address of
//! its own candidates to the public one before sending them. ICE still matches: a
//! browser's checks arrive at the private socket, which the SFU finds by socket address.

use std::net::IpAddr;

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
            if addr.trim() == private {
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

fn line_ending(line: &str) -> &str {
    let body = line.trim_end_matches(['\r', '\n']);
    &line[body.len()..]
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
