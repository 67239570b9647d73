use super::*;

fn b(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

#[test]
fn h264_is_recognised_only_as_constrained_baseline_with_packetization_mode_1() {
    let chrome = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
    let safari = "profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1";
    assert_eq!(Codec::from_sdp("H264", chrome), Some(Codec::H264));
    assert_eq!(Codec::from_sdp("h264", safari), Some(Codec::H264));
    // Main profile with both constraint flags is constrained baseline too.
    assert_eq!(
        Codec::from_sdp("H264", "packetization-mode=1;profile-level-id=4de01f"),
        Some(Codec::H264)
    );
    for (fmtp, why) in [
        (
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
            "packetization-mode 0 has no FU-A",
        ),
        ("packetization-mode=1;profile-level-id=42001f", "baseline"),
        ("packetization-mode=1;profile-level-id=640c1f", "high"),
        ("packetization-mode=1;profile-level-id=4d001f", "main"),
        ("packetization-mode=1", "no profile"),
        (
            "packetization-mode=1;profile-level-id=42e0",
            "short profile",
        ),
        ("packetization-mode=1;profile-level-id=zze01f", "not hex"),
        ("", "nothing"),
    ] {
        assert_eq!(Codec::from_sdp("H264", fmtp), None, "{why}: {fmtp}");
    }
    assert_eq!(Codec::from_sdp("VP8", ""), Some(Codec::Vp8));
    assert_eq!(
        Codec::from_sdp("opus", "minptime=10;useinbandfec=1"),
        Some(Codec::Opus)
    );
    for other in ["VP9", "AV1", "rtx", "red", "ulpfec", "G722", "PCMU"] {
        assert_eq!(Codec::from_sdp(other, ""), None, "{other}");
    }
}

#[test]
fn red_is_recognised_only_as_redundant_audio_of_one_encoding() {
    assert_eq!(Codec::from_sdp("red", "111/111"), Some(Codec::Red));
    assert_eq!(Codec::from_sdp("RED", "109/109/109"), Some(Codec::Red));
    assert_eq!(Codec::from_sdp("red", "111"), Some(Codec::Red));
    // The RED that wraps video FEC names no encodings; mixed or garbled lists are refused.
    for fmtp in ["", "111/0", "opus/opus", "111/", "1111/1111"] {
        assert_eq!(Codec::from_sdp("red", fmtp), None, "{fmtp:?}");
    }
    assert!(!Codec::Red.is_video());
}

/// A RED payload: `redundant` blocks (payload type 111, each `len` bytes of `fill`) then
/// the primary block.
fn red(redundant: &[(u8, usize)], primary: &[u8]) -> Bytes {
    let mut out = Vec::new();
    for (i, (_, len)) in redundant.iter().enumerate() {
        let offset = 960 * (redundant.len() - i) as u16;
        let word = (u32::from(offset) << 10) | *len as u32;
        out.push(0x80 | 111);
        out.extend_from_slice(&word.to_be_bytes()[1..]);
    }
    out.push(111);
    for (fill, len) in redundant {
        out.extend(std::iter::repeat_n(*fill, *len));
    }
    out.extend_from_slice(primary);
    Bytes::from(out)
}

#[test]
fn a_red_payloads_primary_block_is_its_last() {
    let primary = [0xfc, 1, 2, 3, 4];
    for redundant in [&[][..], &[(7, 40)][..], &[(7, 40), (9, 1023)][..]] {
        let payload = red(redundant, &primary);
        assert_eq!(
            red_primary(&payload).as_deref(),
            Some(&primary[..]),
            "{redundant:?}"
        );
    }
    // A primary block of no bytes (DTX) is a primary all the same.
    assert_eq!(red_primary(&red(&[(7, 3)], &[])).as_deref(), Some(&[][..]));
}

#[test]
fn a_cut_or_lying_red_payload_gives_nothing() {
    let payload = red(&[(7, 40), (9, 30)], &[0xfc, 1]);
    // Cut inside the headers: no primary header.
    for cut in [0, 1, 3, 5, 8] {
        assert_eq!(red_primary(&payload.slice(..cut)), None, "cut at {cut}");
    }
    // Headers whose lengths run past the payload.
    let short = payload.slice(..9 + 40 + 10);
    assert_eq!(red_primary(&short), None);
    // Every header with the F bit set: runs off the end.
    assert_eq!(red_primary(&Bytes::from_static(&[0xff; 16])), None);
}

#[test]
fn mime_types_round_trip() {
    for c in Codec::ALL {
        assert_eq!(Codec::from_mime(c.mime()), Some(c));
        assert_eq!(Codec::from_mime(&c.mime().to_uppercase()), Some(c));
    }
    assert_eq!(Codec::from_mime("video/VP9"), None);
}

#[test]
fn a_publisher_sends_its_own_first_choice_when_everyone_can_receive_it() {
    let safari = [Codec::H264, Codec::Vp8];
    assert_eq!(
        publish_codecs(&safari, CodecSet::all_video()),
        vec![Codec::H264, Codec::Vp8]
    );
    let chrome = [Codec::Vp8, Codec::H264];
    assert_eq!(
        publish_codecs(&chrome, CodecSet::all_video()),
        vec![Codec::Vp8, Codec::H264]
    );
}

#[test]
fn a_publisher_falls_back_to_a_codec_every_other_participant_can_receive() {
    let firefox_without_h264: CodecSet = [Codec::Vp8].into_iter().collect();
    assert_eq!(
        publish_codecs(&[Codec::H264, Codec::Vp8], firefox_without_h264),
        vec![Codec::Vp8]
    );
    let h264_only: CodecSet = [Codec::H264].into_iter().collect();
    assert_eq!(
        publish_codecs(&[Codec::Vp8, Codec::H264], h264_only),
        vec![Codec::H264]
    );
}

#[test]
fn with_nothing_in_common_a_publisher_still_publishes_what_it_offered() {
    let vp8_only: CodecSet = [Codec::Vp8].into_iter().collect();
    assert_eq!(publish_codecs(&[Codec::H264], vp8_only), vec![Codec::H264]);
    assert_eq!(publish_codecs(&[], vp8_only), Vec::<Codec>::new());
}

#[test]
fn codec_sets() {
    let mut s = CodecSet::EMPTY;
    assert!(s.is_empty());
    s.insert(Codec::H264);
    assert!(s.contains(Codec::H264) && !s.contains(Codec::Vp8));
    assert_eq!(
        CodecSet::all_video().intersect(s),
        s,
        "all video holds H264"
    );
    assert!(!CodecSet::all_video().contains(Codec::Opus));
}

// --- keyframes (handmade payloads; tests/codec_fixtures.rs checks recorded ones) ---------

/// A VP8 payload descriptor with S=1, PID=0 and a one-byte picture id, then the frame's
/// first byte (P bit = `inter`).
fn vp8(start: bool, partition: u8, inter: bool) -> Bytes {
    let first = 0x80 | if start { 0x10 } else { 0 } | partition;
    b(&[first, 0x80, 0x05, u8::from(inter), 0x00, 0x9d])
}

#[test]
fn vp8_keyframes_start_partition_0_with_the_p_bit_clear() {
    assert!(Codec::Vp8.is_keyframe(&vp8(true, 0, false)));
    assert!(!Codec::Vp8.is_keyframe(&vp8(true, 0, true)), "inter frame");
    assert!(
        !Codec::Vp8.is_keyframe(&vp8(false, 0, false)),
        "not the start of a partition"
    );
    assert!(!Codec::Vp8.is_keyframe(&vp8(true, 1, false)), "partition 1");
    assert!(!Codec::Vp8.is_keyframe(&b(&[])));
    assert!(!Codec::Vp8.is_keyframe(&b(&[0x90])));
}

#[test]
fn h264_keyframes_as_single_nal_units() {
    assert!(Codec::H264.is_keyframe(&b(&[0x65, 0x88, 0x84])), "IDR");
    assert!(
        Codec::H264.is_keyframe(&b(&[0x67, 0x42, 0xc0, 0x1f])),
        "SPS"
    );
    assert!(!Codec::H264.is_keyframe(&b(&[0x68, 0xce])), "PPS alone");
    assert!(!Codec::H264.is_keyframe(&b(&[0x41, 0x9a])), "non-IDR slice");
    assert!(!Codec::H264.is_keyframe(&b(&[0x06, 0x05])), "SEI");
    assert!(!Codec::H264.is_keyframe(&b(&[])));
}

#[test]
fn h264_keyframes_in_a_stap_a() {
    // STAP-A: [SPS (4 bytes)] [PPS (2 bytes)] [IDR (3 bytes)], as Chrome sends them.
    let stap = [
        0x78, 0x00, 0x04, 0x67, 0x42, 0xc0, 0x1f, 0x00, 0x02, 0x68, 0xce, 0x00, 0x03, 0x65, 0x88,
        0x84,
    ];
    assert!(Codec::H264.is_keyframe(&b(&stap)));
    // SPS and PPS only: still the start of a keyframe.
    assert!(Codec::H264.is_keyframe(&b(&stap[..11])));
    // PPS then a non-IDR slice: not a keyframe.
    assert!(!Codec::H264.is_keyframe(&b(&[0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x41, 0x9a])));
    // A size that runs past the end is refused, whatever follows.
    assert!(!Codec::H264.is_keyframe(&b(&[0x78, 0x00, 0x09, 0x67, 0x42])));
    assert!(!Codec::H264.is_keyframe(&b(&[0x78])));
    assert!(!Codec::H264.is_keyframe(&b(&[0x78, 0x00])));
}

#[test]
fn h264_keyframes_as_fu_a_fragments_only_at_the_start() {
    // FU indicator (NRI 3, type 28), FU header: S bit, type 5 (IDR).
    assert!(
        Codec::H264.is_keyframe(&b(&[0x7c, 0x85, 0xb8])),
        "first fragment"
    );
    assert!(
        !Codec::H264.is_keyframe(&b(&[0x7c, 0x05, 0xb8])),
        "middle fragment"
    );
    assert!(
        !Codec::H264.is_keyframe(&b(&[0x7c, 0x45, 0xb8])),
        "last fragment"
    );
    assert!(
        !Codec::H264.is_keyframe(&b(&[0x7c, 0x81, 0xb8])),
        "non-IDR slice"
    );
    assert!(!Codec::H264.is_keyframe(&b(&[0x7c])), "no FU header");
}

#[test]
fn audio_is_never_a_keyframe() {
    assert!(!Codec::Opus.is_keyframe(&b(&[0x65, 0x88])));
}

#[test]
fn vp8_picture_ids_are_read_and_rewritten_at_their_own_width() {
    // X=1 S=1; I=1 L=1 T=1; 15-bit picture ID 0x1234; TL0PICIDX 7; TID byte; payload.
    let wide = [0x90, 0xe0, 0x80 | 0x12, 0x34, 7, 0x20, 0xaa, 0xbb];
    let ids = vp8_ids(&wide).expect("a whole descriptor");
    assert_eq!(
        ids,
        Vp8Ids {
            picture_id: Some(PictureId {
                value: 0x1234,
                wide: true
            }),
            tl0: Some(7)
        }
    );
    let moved = Vp8Ids {
        picture_id: ids.picture_id.map(|p| p.plus(0x7000)),
        tl0: Some(255),
    };
    assert_eq!(
        moved.picture_id.map(|p| p.value),
        Some(0x0234),
        "wraps at 15 bits"
    );
    let out = rewrite_vp8_ids(&wide, moved).expect("rewritten");
    assert_eq!(&out[..], &[0x90, 0xe0, 0x82, 0x34, 255, 0x20, 0xaa, 0xbb]);
    assert_eq!(vp8_ids(&out), Some(moved));
    assert!(
        vp8_keyframe(&b(&wide)) == vp8_keyframe(&out),
        "the frame is untouched"
    );

    // A 7-bit picture ID, no TL0PICIDX.
    let narrow = [0x80, 0x80, 0x7f, 0x00];
    let ids = vp8_ids(&narrow).expect("whole");
    assert_eq!(
        ids.picture_id,
        Some(PictureId {
            value: 0x7f,
            wide: false
        })
    );
    assert_eq!(ids.tl0, None);
    let next = Vp8Ids {
        picture_id: ids.picture_id.map(|p| p.plus(1)),
        tl0: Some(9),
    };
    let out = rewrite_vp8_ids(&narrow, next).expect("rewritten");
    assert_eq!(
        &out[..],
        &[0x80, 0x80, 0x00, 0x00],
        "wraps at 7 bits; no TL0 byte added"
    );

    // No extension: nothing to read or write. Cut short: refused.
    assert_eq!(vp8_ids(&[0x10, 0x00]), Some(Vp8Ids::default()));
    assert_eq!(vp8_ids(&[0x90, 0x80, 0x80]), None);
    assert_eq!(vp8_ids(&[0x90, 0x40]), None);
    assert_eq!(vp8_ids(&[]), None);
    assert_eq!(
        rewrite_vp8_ids(&[0x90, 0xc0, 0x81], Vp8Ids::default()),
        None
    );
}
