//! The font the screens are drawn with. Korean needs a font with Hangul,
//! which iced does not ship: the app loads one from the system (Debian's
//! `fonts-noto-cjk`, or Nanum) and says clearly when there is none, rather
//! than drawing every Korean word as boxes.

use std::path::{Path, PathBuf};

/// A font file that has Hangul, and the family name to ask for. Noto Sans
/// CJK first: it also has clean Latin letters and digits for prices.
pub const HANGUL_FONTS: [(&str, &str); 4] = [
    (
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
        "Noto Sans CJK KR",
    ),
    (
        "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
        "Noto Sans CJK KR",
    ),
    (
        "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
        "Noto Sans CJK KR",
    ),
    (
        "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
        "NanumGothic",
    ),
];

/// What to tell the operator when no Hangul font is installed.
pub const NO_HANGUL_FONT: &str = "no font with Hangul found (install Debian's fonts-noto-cjk: \
     apt-get install fonts-noto-cjk); the screens show English until one is installed";

/// A font found on this system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HangulFont {
    pub path: PathBuf,
    pub family: &'static str,
}

/// The first of `candidates` that exists.
pub fn find_hangul_font(candidates: &[(&str, &'static str)]) -> Option<HangulFont> {
    candidates
        .iter()
        .find(|(path, _)| Path::new(path).is_file())
        .map(|(path, family)| HangulFont {
            path: PathBuf::from(path),
            family,
        })
}

/// Reads the font; `None` (with the reason logged) when it cannot be read.
pub fn load(font: &HangulFont) -> Option<Vec<u8>> {
    match std::fs::read(&font.path) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::warn!(path = %font.path.display(), %error, "cannot read the Hangul font");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_font_that_exists_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("Nanum.ttf");
        std::fs::write(&present, b"font").unwrap();
        let missing = dir.path().join("Noto.ttc");
        let (missing, present) = (
            missing.to_str().unwrap().to_owned(),
            present.to_str().unwrap().to_owned(),
        );
        let found = find_hangul_font(&[(&missing, "Noto"), (&present, "Nanum")]).unwrap();
        assert_eq!(found.family, "Nanum");
        assert_eq!(load(&found), Some(b"font".to_vec()));
        assert_eq!(find_hangul_font(&[(&missing, "Noto")]), None);
    }
}
