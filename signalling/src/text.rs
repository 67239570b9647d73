//! Free text typed by people (names, details, staff messages): trimmed, normalised to NFC
//! (so the same name is stored the same way however it was typed), and refused when it
//! carries characters that change how the text around them is shown without being seen
//! themselves: bidirectional controls (which can make "Pat" display as "taP"), zero-width
//! and other invisible characters (which make two identical-looking names differ), control
//! characters, and unassigned or private code points.
//!
//! Real scripts and emoji are kept: the joiners (ZWJ, ZWNJ) that Persian, the Indic
//! scripts and emoji sequences need are allowed between two characters that are neither
//! ASCII nor spaces; emoji variation selectors after a visible character; tag characters
//! only inside a flag's tag sequence (🏴 + tags + cancel tag). Unicode data comes from
//! ICU4X (`icu_properties`, `icu_normalizer`).

use icu_normalizer::ComposingNormalizerBorrowed;
use icu_properties::props::{BidiControl, DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData};

/// Why a piece of text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not contain characters that change the direction of text")]
    Bidi,
    #[error("must not contain invisible characters")]
    Invisible,
    #[error("must not contain control characters")]
    Control,
    #[error("must not contain unassigned or private-use characters")]
    Unassigned,
}

const ZWNJ: char = '\u{200C}';
const ZWJ: char = '\u{200D}';
const BLACK_FLAG: char = '\u{1F3F4}';
const CANCEL_TAG: char = '\u{E007F}';

fn is_tag(c: char) -> bool {
    ('\u{E0020}'..=CANCEL_TAG).contains(&c)
}

fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{FE0E}' | '\u{FE0F}')
}

/// Whether `c` is a character that shows (not a space, not an invisible one).
fn visible(c: char) -> bool {
    !c.is_whitespace() && !CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// `s` trimmed and in NFC, or why it is refused. `newlines`: whether line breaks may stay
/// (messages; not names).
pub fn clean(s: &str, newlines: bool) -> Result<String, TextError> {
    let nfc = ComposingNormalizerBorrowed::new_nfc().normalize(s.trim());
    let chars: Vec<char> = nfc.chars().collect();
    let bidi = CodePointSetData::new::<BidiControl>();
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let category = CodePointMapData::<GeneralCategory>::new();
    let mut in_flag = false;
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1).copied();
        if bidi.contains(c) {
            return Err(TextError::Bidi);
        }
        if c == '\n' && newlines {
            in_flag = false;
            continue;
        }
        match category.get(c) {
            GeneralCategory::Control
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator => return Err(TextError::Control),
            GeneralCategory::Unassigned
            | GeneralCategory::PrivateUse
            | GeneralCategory::Surrogate => return Err(TextError::Unassigned),
            _ => {}
        }
        if c == BLACK_FLAG {
            in_flag = true;
            continue;
        }
        if is_tag(c) {
            if !in_flag {
                return Err(TextError::Invisible);
            }
            if c == CANCEL_TAG {
                in_flag = false;
            }
            continue;
        }
        in_flag = false;
        let invisible = ignorable.contains(c) || category.get(c) == GeneralCategory::Format;
        if !invisible {
            continue;
        }
        let allowed = match c {
            // Joiners between two characters of a script (or emoji) that needs them.
            ZWJ | ZWNJ => {
                let joins = |x: Option<char>| x.is_some_and(|x| !x.is_ascii() && visible(x));
                joins(prev) && joins(next)
            }
            // Text or emoji presentation of the character before.
            c if is_variation_selector(c) => prev.is_some_and(visible),
            _ => false,
        };
        if !allowed {
            return Err(TextError::Invisible);
        }
    }
    Ok(nfc.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_and_normalised_to_nfc() {
        // "é" typed as e + combining acute becomes the one precomposed character.
        assert_eq!(clean("  Rene\u{301}e ", false).unwrap(), "Ren\u{e9}e");
        assert_eq!(
            clean("Ren\u{e9}e", false).unwrap(),
            clean("Rene\u{301}e", false).unwrap()
        );
    }

    #[test]
    fn real_scripts_and_emoji_are_kept() {
        for name in [
            "Siobhán Ó Briain",
            "Zoë Łukasz-Øster",
            "Ngọc Trần",
            "محمد الأحمد",
            "שרה כהן",
            "می\u{200C}خواهم", // Persian with a zero-width non-joiner
            "क्\u{200D}ष",      // Devanagari with a zero-width joiner
            "张伟",
            "佐藤 さくら",
            "김민준",
            "Αλέξανδρος",
            "Дмитрий",
            "ஸ்ரீ",
            "Pat 👋🏽",
            "👨\u{200D}👩\u{200D}👧 family",
            "❤\u{FE0F}",
            "🇬🇧 🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        ] {
            assert!(
                clean(name, false).is_ok(),
                "{name:?}: {:?}",
                clean(name, false)
            );
        }
        assert_eq!(
            clean("Line one\nline two", true).unwrap(),
            "Line one\nline two"
        );
    }

    #[test]
    fn direction_controls_and_invisible_characters_are_refused() {
        for (text, why) in [
            ("Pat\u{202E}kcab", TextError::Bidi), // right-to-left override
            ("\u{2066}Pat\u{2069}", TextError::Bidi), // isolates
            ("Pat\u{200F}", TextError::Bidi),     // right-to-left mark
            ("Pat\u{061C}", TextError::Bidi),     // Arabic letter mark
            ("ad\u{200B}min", TextError::Invisible), // zero-width space
            ("ad\u{200D}min", TextError::Invisible), // a joiner between Latin letters
            ("Pat\u{2060}", TextError::Invisible), // word joiner
            ("\u{FEFF}Pat", TextError::Invisible), // byte order mark
            ("Pa\u{AD}t", TextError::Invisible),  // soft hyphen
            ("Pat\u{E0041}", TextError::Invisible), // a tag outside a flag
            ("\u{3164}", TextError::Invisible),   // Hangul filler
            ("Pat\u{0007}", TextError::Control),
            ("Pat\nEvans", TextError::Control),
            ("Pat\u{2028}Evans", TextError::Control),
            ("Pat\u{E000}", TextError::Unassigned),
        ] {
            assert_eq!(clean(text, false), Err(why), "{text:?}");
        }
    }
}
