//! The satisfaction survey: its question and choices, and its answers from a reply's first line or
//! from a feedback link. Pure, apart from making tokens.

use earshot_channel::{Lang, SurveyChoice};

/// An answer, in part or whole: a link may carry only the rating, another click only "solved".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub rating: Option<u8>,
    pub solved: Option<bool>,
    pub comment: Option<String>,
}

impl Answer {
    pub fn is_empty(&self) -> bool {
        self.rating.is_none() && self.solved.is_none() && self.comment.is_none()
    }
}

/// The survey's question, in the case's language.
pub fn question(lang: Lang) -> &'static str {
    match lang {
        Lang::Zh => "您对我们的处理满意吗（1 = 很不满意，5 = 非常满意）？您的问题解决了吗？",
        Lang::En => {
            "How satisfied are you with how we handled your case (1 = poor, 5 = excellent)? Was your problem solved?"
        }
    }
}

/// The answers a survey offers, each with its one-click link under `link` (the survey's feedback
/// URL; an empty one gives links relative to the survey page): ratings 5 to 1, then solved, not solved.
pub fn choices(lang: Lang, link: &str) -> Vec<SurveyChoice> {
    let (solved, unsolved) = match lang {
        Lang::Zh => ("已解决", "未解决"),
        Lang::En => ("Solved", "Not solved"),
    };
    let choice =
        |value: String, label: &str| SurveyChoice { url: format!("{link}?{value}"), value, label: label.to_owned() };
    let mut all: Vec<SurveyChoice> = (1..=5).rev().map(|n| choice(format!("rating={n}"), &n.to_string())).collect();
    all.push(choice("solved=yes".into(), solved));
    all.push(choice("solved=no".into(), unsolved));
    all
}

/// Longest comment kept.
const MAX_COMMENT: usize = 2_000;

/// A new unguessable survey token: 128 random bits, URL-safe.
pub fn new_token() -> String {
    use rand::Rng as _;
    let bytes: [u8; 16] = rand::rng().random();
    let mut s = String::with_capacity(40);
    s.push_str("sv_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// "yes"/"no" and their Chinese forms, as a customer writes them.
fn solved_word(word: &str) -> Option<bool> {
    let w = word.trim_matches(|c: char| c.is_ascii_punctuation() || "，。！、".contains(c)).to_lowercase();
    match w.as_str() {
        "yes" | "y" | "solved" | "是" | "已解决" | "解决了" | "解决" => Some(true),
        "no" | "n" | "not" | "unsolved" | "否" | "未解决" | "没解决" | "没有解决" | "不是" => Some(false),
        _ => None,
    }
}

/// The answer in a reply to the survey: its first non-quoted, non-empty line must start with a
/// rating digit 1–5, optionally followed by yes/no (是/否) and a comment: `5`, `4 yes`, `2 否 太慢了`.
/// A line that starts otherwise is no answer (the message is an ordinary follow-up).
pub fn parse_reply(text: &str) -> Option<Answer> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('>'))?;
    let mut chars = line.chars();
    let first = chars.next()?;
    let digit = first.to_digit(10).filter(|d| (1..=5).contains(d))?;
    let rest = chars.as_str();
    // "5" but not "55" or "4.5": the digit stands alone.
    let mut after = rest.chars();
    match (after.next(), after.next()) {
        (Some(c), _) if c.is_ascii_digit() => return None,
        (Some('.' | ','), Some(d)) if d.is_ascii_digit() => return None,
        _ => {}
    }
    let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || "/-:,，、".contains(c));
    let mut answer = Answer { rating: Some(digit as u8), ..Answer::default() };
    let (word, after) = match rest.split_once(char::is_whitespace) {
        Some((w, a)) => (w, a.trim()),
        None => (rest, ""),
    };
    let comment = match solved_word(word) {
        Some(s) => {
            answer.solved = Some(s);
            after
        }
        None => rest.trim(),
    };
    if !comment.is_empty() {
        answer.comment = Some(comment.chars().take(MAX_COMMENT).collect());
    }
    Some(answer)
}

/// The answer a feedback link carries: `rating=1..5`, `solved=yes|no|true|false|1|0`, `comment=…`.
pub fn parse_link(rating: Option<&str>, solved: Option<&str>, comment: Option<&str>) -> Result<Answer, String> {
    let rating = match rating.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(r) => match r.parse::<u8>() {
            Ok(n @ 1..=5) => Some(n),
            _ => return Err(format!("rating must be a whole number from 1 to 5, not {r:?}")),
        },
    };
    let solved = match solved.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some("yes" | "true" | "1") => Some(true),
        Some("no" | "false" | "0") => Some(false),
        Some(s) => return Err(format!("solved must be yes or no, not {s:?}")),
    };
    let comment = comment.map(str::trim).filter(|s| !s.is_empty()).map(|c| c.chars().take(MAX_COMMENT).collect());
    Ok(Answer { rating, solved, comment })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(rating: Option<u8>, solved: Option<bool>, comment: Option<&str>) -> Option<Answer> {
        Some(Answer { rating, solved, comment: comment.map(str::to_owned) })
    }

    #[test]
    fn reads_replies() {
        let table: &[(&str, Option<Answer>)] = &[
            ("5", a(Some(5), None, None)),
            ("4 yes", a(Some(4), Some(true), None)),
            ("2 否 太慢了", a(Some(2), Some(false), Some("太慢了"))),
            ("3, no, the parcel is still missing", a(Some(3), Some(false), Some("the parcel is still missing"))),
            ("1 terrible", a(Some(1), None, Some("terrible"))),
            ("\n\n  5\n> On Monday you wrote:\n> 1 to 5", a(Some(5), None, None)),
            ("> quoted 3\n4", a(Some(4), None, None)),
            ("5是", a(Some(5), Some(true), None)),
            ("5 是", a(Some(5), Some(true), None)),
            ("6", None),
            ("0", None),
            ("55", None),
            ("4.5 stars", None),
            ("Thanks, but the order 12345 is still missing", None),
            ("", None),
            ("> 5", None),
        ];
        for (text, want) in table {
            assert_eq!(&parse_reply(text), want, "{text:?}");
        }
    }

    #[test]
    fn reads_links() {
        assert_eq!(parse_link(Some("5"), None, None), Ok(Answer { rating: Some(5), ..Answer::default() }));
        assert_eq!(parse_link(None, Some("no"), None), Ok(Answer { solved: Some(false), ..Answer::default() }));
        assert!(parse_link(Some("6"), None, None).is_err());
        assert!(parse_link(Some("x"), None, None).is_err());
        assert!(parse_link(None, Some("maybe"), None).is_err());
        assert!(parse_link(None, None, None).is_ok_and(|a| a.is_empty()));
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 35);
    }
}
