//! Languages customers write in, and a small detector for the two shipped first.

use serde::{Deserialize, Serialize};

/// A language Earshot has templates for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }

    /// Parses a BCP 47 tag loosely: `zh`, `zh-CN`, `zh_Hant`, `EN-us` … Unknown languages give `None`.
    pub fn from_tag(tag: &str) -> Option<Lang> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "zh" | "cmn" | "yue" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// Chinese when Han characters carry a fair share of the text, English otherwise.
    ///
    /// Written by hand: the general detectors (whatlang, lingua) are large and still guess on short
    /// mixed texts like "订单12345还没有送到 please help"; for a choice between two scripts a count is
    /// exact. A Han character carries about a word, so one Han character weighs as four Latin letters.
    pub fn detect(text: &str) -> Lang {
        let (mut han, mut latin) = (0usize, 0usize);
        for c in text.chars() {
            if is_han(c) {
                han += 1;
            } else if c.is_ascii_alphabetic() {
                latin += 1;
            }
        }
        if han > 0 && han * 4 >= latin { Lang::Zh } else { Lang::En }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_han(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0xF900..=0xFAFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_script() {
        for (text, want) in [
            ("我的订单三天了还没有到", Lang::Zh),
            ("My order has not arrived after three days", Lang::En),
            ("订单12345还没有送到 please help", Lang::Zh),
            ("订单 12345 still not delivered", Lang::En),
            ("The item 坏了 and support never answered my many emails", Lang::En),
            ("", Lang::En),
            ("12345 !!!", Lang::En),
        ] {
            assert_eq!(Lang::detect(text), want, "{text}");
        }
    }

    #[test]
    fn parses_tags() {
        assert_eq!(Lang::from_tag("zh-CN"), Some(Lang::Zh));
        assert_eq!(Lang::from_tag("zh_Hant"), Some(Lang::Zh));
        assert_eq!(Lang::from_tag("EN-us"), Some(Lang::En));
        assert_eq!(Lang::from_tag("fr"), None);
        assert_eq!(Lang::from_tag(""), None);
    }
}
