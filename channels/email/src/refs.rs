//! Case references in subjects: `[Case 4827-1936-5]`, `投诉 4827 1936 5`, `Re: 回复：[Case …]`.
//!
//! Invariant: a reference is returned as valid only when [`CaseRef::parse`] accepts it, check digit
//! included. A candidate with a wrong check digit links nothing; it is reported separately so the
//! caller can tell the customer the reference was mistyped instead of silently opening a new case.
//!
//! A candidate is recognised in two shapes only, because a bare 9-digit number in a subject is more
//! often an order or phone number than a case (and one in ten of those would pass the check digit):
//! after the word `Case` or `投诉` (bracketed or not, with `#`, `:` or `：` allowed between), where
//! people type loosely (spaces, dots, full-width digits); or in the printed shape `DDDD-DDDD-D`, which
//! only our own acknowledgements produce.

use earshot_channel::{CaseRef, CaseRefError};

/// Words after which a case reference is expected. Matched case-insensitively.
const KEYWORDS: [&str; 2] = ["case", "投诉"];

/// Reply and forward prefixes, compared case-insensitively; the colon may be ASCII or full-width.
const PREFIXES: [&str; 11] = ["re", "fw", "fwd", "aw", "sv", "vs", "wg", "回复", "答复", "转发", "回覆"];

/// What a subject says about case references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectRefs {
    /// References that passed the check digit, in order of appearance, without repeats.
    pub valid: Vec<CaseRef>,
    /// Candidates as typed that have nine digits but a wrong check digit.
    pub mistyped: Vec<String>,
}

/// Finds case references in a subject line.
pub fn find_case_refs(subject: &str) -> SubjectRefs {
    let mut out = SubjectRefs::default();
    let chars: Vec<(usize, char)> = subject.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let candidate = keyword_candidate(subject, &chars, i).or_else(|| printed_candidate(&chars, i));
        let Some((start, end)) = candidate else {
            i += 1;
            continue;
        };
        let typed = subject[chars[start].0..chars.get(end).map_or(subject.len(), |c| c.0)].trim();
        match CaseRef::parse(typed) {
            Ok(r) => {
                if !out.valid.contains(&r) {
                    out.valid.push(r);
                }
            }
            Err(CaseRefError::CheckDigit) => {
                if !out.mistyped.iter().any(|m| m == typed) {
                    out.mistyped.push(typed.to_string());
                }
            }
            Err(CaseRefError::Length) => {}
        }
        i = end.max(i + 1);
    }
    out
}

/// `Case 4827-1936-5` at char index `i`: returns the char range of the digits.
fn keyword_candidate(subject: &str, chars: &[(usize, char)], i: usize) -> Option<(usize, usize)> {
    // The keyword must start a word: "showcase 1234…" is not a reference.
    if i > 0 && chars[i - 1].1.is_alphanumeric() && chars[i - 1].1.is_ascii() {
        return None;
    }
    let rest = &subject[chars[i].0..];
    let kw = KEYWORDS.iter().find(|k| starts_with_ignore_case(rest, k))?;
    let mut j = i + kw.chars().count();
    // "Cases" or "Casey" is another word.
    if chars.get(j).is_some_and(|c| c.1.is_ascii_alphanumeric() && !c.1.is_ascii_digit()) {
        return None;
    }
    while chars.get(j).is_some_and(|c| matches!(c.1, ' ' | '\t' | '\u{3000}' | '#' | ':' | '：' | '＃' | '.')) {
        j += 1;
    }
    digit_run(chars, j)
}

/// `4827-1936-5` exactly, not part of a longer number.
fn printed_candidate(chars: &[(usize, char)], i: usize) -> Option<(usize, usize)> {
    if i > 0 && (chars[i - 1].1.is_ascii_digit() || chars[i - 1].1 == '-') {
        return None;
    }
    let shape = "dddd-dddd-d";
    let mut j = i;
    for want in shape.chars() {
        let c = chars.get(j)?.1;
        let ok = if want == 'd' { c.is_ascii_digit() } else { c == '-' };
        if !ok {
            return None;
        }
        j += 1;
    }
    if chars.get(j).is_some_and(|c| c.1.is_ascii_digit() || c.1 == '-') {
        return None;
    }
    Some((i, j))
}

/// Nine digits starting at `j`, with the separators people type between them. `None` when fewer than
/// nine digits follow or when the number goes on (a longer number is not a reference).
fn digit_run(chars: &[(usize, char)], j: usize) -> Option<(usize, usize)> {
    let is_digit = |c: char| c.is_ascii_digit() || ('０'..='９').contains(&c);
    let is_sep = |c: char| matches!(c, '-' | ' ' | '.' | '－' | '\u{3000}');
    if !chars.get(j).is_some_and(|c| is_digit(c.1)) {
        return None;
    }
    let mut k = j;
    let mut digits = 0;
    while let Some(&(_, c)) = chars.get(k) {
        if is_digit(c) {
            digits += 1;
            k += 1;
            if digits == 9 {
                break;
            }
        } else if is_sep(c) {
            k += 1;
        } else {
            break;
        }
    }
    if digits != 9 {
        return None;
    }
    // A tenth digit right after means a longer number.
    if chars.get(k).is_some_and(|c| is_digit(c.1)) {
        return None;
    }
    Some((j, k))
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The subject without leading `Re:`, `RE:`, `Fwd:`, `FW:`, `回复:`, `回复：`, `转发:` … (any number,
/// any mix, also `Re[2]:`), so that replies and their original compare equal.
pub fn strip_reply_prefixes(subject: &str) -> &str {
    let mut s = subject.trim_start();
    'outer: loop {
        for p in PREFIXES {
            let Some(rest) = s.get(..p.len()).filter(|head| head.eq_ignore_ascii_case(p)).map(|_| &s[p.len()..]) else {
                continue;
            };
            // Optional counter as some clients write it: "Re[2]:", "Re(2):".
            let rest = skip_counter(rest).trim_start_matches([' ', '\t']);
            if let Some(after) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('：')) {
                s = after.trim_start();
                continue 'outer;
            }
        }
        return s;
    }
}

/// Whether the subject opens with a forward prefix (`Fwd:`, `FW:`, `转发:`). The body of a forward is
/// the forwarded message itself — evidence the customer wants read — not history to strip. Only the
/// first prefix counts: "Re: Fwd: …" is a reply, whose forwarded part is now the quoted history.
pub fn is_forward(subject: &str) -> bool {
    let rest = subject.trim_start();
    ["fwd", "fw", "转发", "wg"].iter().any(|p| {
        rest.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p))
            && skip_counter(&rest[p.len()..]).trim_start_matches([' ', '\t']).starts_with([':', '：'])
    })
}

fn skip_counter(s: &str) -> &str {
    for (open, close) in [('[', ']'), ('(', ')')] {
        if let Some(inner) = s.strip_prefix(open)
            && let Some(end) = inner.find(close)
            && end > 0
            && inner[..end].bytes().all(|b| b.is_ascii_digit())
        {
            return &inner[end + 1..];
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(r: u64) -> String {
        CaseRef::from_seq(r).as_str().to_string()
    }

    /// A reference with its last digit changed: the check digit no longer matches.
    fn mistyped(r: u64) -> String {
        let good = valid(r);
        let last = good.chars().last().and_then(|c| c.to_digit(10)).unwrap_or(0);
        format!("{}{}", &good[..good.len() - 1], (last + 1) % 10)
    }

    #[test]
    fn finds_references_in_subjects() {
        let r = valid(7);
        let digits: String = r.chars().filter(char::is_ascii_digit).collect();
        let wide: String =
            digits.chars().map(|c| char::from_u32(c as u32 - '0' as u32 + '０' as u32).unwrap_or(c)).collect();
        let cases: Vec<(String, Vec<String>)> = vec![
            (format!("[Case {r}] My parcel"), vec![r.clone()]),
            (format!("[投诉 {r}] 包裹丢失"), vec![r.clone()]),
            (format!("Case {r} still open"), vec![r.clone()]),
            (format!("投诉{r}"), vec![r.clone()]),
            (format!("Re: RE: 回复: 回复：Fwd: FW: 转发: [Case {r}] x"), vec![r.clone()]),
            (format!("case #{digits}"), vec![r.clone()]),
            (format!("CASE: {wide}"), vec![r.clone()]),
            (format!("投诉：{}", digits.chars().map(|c| format!("{c} ")).collect::<String>()), vec![r.clone()]),
            // The printed shape alone, as in a quoted acknowledgement subject.
            (format!("Re: Your complaint {r} was received"), vec![r.clone()]),
            // Repeats are reported once; two different cases are both reported.
            (format!("[Case {r}] [Case {r}] [Case {}]", valid(8)), vec![r.clone(), valid(8)]),
            // Not references.
            ("Order 123456789 not delivered".to_string(), vec![]),
            (format!("showcase {digits}"), vec![]),
            (format!("Case {digits}0"), vec![]),
            ("Case 1234-5678".to_string(), vec![]),
            (format!("Re: {digits}"), vec![]),
            (format!("x{r}9"), vec![]),
            (String::new(), vec![]),
        ];
        for (subject, want) in cases {
            let got: Vec<String> = find_case_refs(&subject).valid.iter().map(|r| r.as_str().to_string()).collect();
            assert_eq!(got, want, "{subject}");
        }
    }

    #[test]
    fn a_wrong_check_digit_links_nothing() {
        for subject in [
            format!("[Case {}] hello", mistyped(42)),
            format!("Re: 投诉 {}", mistyped(42)),
            format!("Re: {}", mistyped(42)),
        ] {
            let found = find_case_refs(&subject);
            assert!(found.valid.is_empty(), "{subject}");
            assert_eq!(found.mistyped, vec![mistyped(42)], "{subject}");
        }
    }

    #[test]
    fn strips_reply_prefixes() {
        for (subject, want) in [
            ("Re: hello", "hello"),
            ("RE: Re: re:hello", "hello"),
            ("回复: 回复：转发: 你好", "你好"),
            ("Fwd: FW: Fw : x", "x"),
            ("Re[2]: AW: x", "x"),
            ("  Re:  [Case 1] x", "[Case 1] x"),
            ("Regarding: x", "Regarding: x"),
            ("Re", "Re"),
            ("", ""),
            ("回复", "回复"),
        ] {
            assert_eq!(strip_reply_prefixes(subject), want, "{subject}");
        }
    }

    #[test]
    fn tells_forwards_from_replies() {
        for (subject, want) in [
            ("Fwd: Your order", true),
            ("FW : Your order", true),
            ("转发：您的订单", true),
            ("Re: Fwd: Your order", false),
            ("Forward planning", false),
            ("Your order", false),
            ("", false),
        ] {
            assert_eq!(is_forward(subject), want, "{subject}");
        }
    }
}
