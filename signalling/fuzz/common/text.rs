//! What `signalling::text::clean` promises of the text it keeps, checked by the targets
//! that parse messages carrying text typed by people.

use signalling::text::clean;

/// The Bidi_Control characters (Unicode: a fixed set of twelve).
const BIDI: [char; 12] = [
    '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}',
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
];
/// Invisible characters that are never needed between letters.
const INVISIBLE: [char; 6] = [
    '\u{200B}', '\u{2060}', '\u{FEFF}', '\u{00AD}', '\u{180E}', '\u{034F}',
];
const JOINERS: [char; 2] = ['\u{200C}', '\u{200D}'];

/// Cleans `s` as names (`newlines == false`) and messages are cleaned, and checks what is
/// kept: trimmed, stable when cleaned again (so one name is stored one way), free of
/// direction controls, invisible characters and control characters, joiners only between
/// two letters that are not ASCII. Printable ASCII is never refused.
pub fn check(s: &str, newlines: bool) {
    let Ok(out) = clean(s, newlines) else {
        let trimmed = s.trim();
        assert!(
            !trimmed.chars().all(|c| (' '..='~').contains(&c)),
            "printable ASCII refused: {s:?}"
        );
        return;
    };
    assert_eq!(out.trim(), out, "kept text is trimmed");
    assert_eq!(
        clean(&out, newlines).as_deref(),
        Ok(out.as_str()),
        "cleaning again changed {out:?}"
    );
    let chars: Vec<char> = out.chars().collect();
    for (i, c) in chars.iter().copied().enumerate() {
        assert!(!BIDI.contains(&c), "a direction control kept: {out:?}");
        assert!(
            !INVISIBLE.contains(&c),
            "an invisible character kept: {out:?}"
        );
        assert!(
            !c.is_control() || (newlines && c == '\n'),
            "a control character kept: {out:?}"
        );
        if JOINERS.contains(&c) {
            let letter = |x: Option<&char>| x.is_some_and(|x| !x.is_ascii() && !x.is_whitespace());
            assert!(
                letter(i.checked_sub(1).and_then(|j| chars.get(j))) && letter(chars.get(i + 1)),
                "a joiner not between two letters: {out:?}"
            );
        }
    }
    if s.trim().chars().all(|c| (' '..='~').contains(&c)) {
        assert_eq!(out, s.trim(), "printable ASCII changed");
    }
}
