//! Raw header access on a parsed message: the field as written, unfolded, for the headers
//! mail-parser does not model (Auto-Submitted, Precedence, X-…) or models lossily (`Return-Path: <>`).
//!
//! Invariant: nothing here indexes without checking; a message with no parts simply has no headers.

use mail_parser::{Header, Message, MessagePart, MimeHeaders};

/// The top-level header fields.
pub(crate) fn top<'a>(msg: &'a Message<'a>) -> &'a [Header<'a>] {
    msg.parts.first().map_or(&[], |p| p.headers.as_slice())
}

/// Every value of the field `name` (case-insensitive) in `headers`, unfolded and trimmed, in order.
pub(crate) fn values(raw: &[u8], headers: &[Header<'_>], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .map(|h| {
            let bytes = raw.get(h.offset_start as usize..h.offset_end as usize).unwrap_or_default();
            unfold(&String::from_utf8_lossy(bytes))
        })
        .collect()
}

/// Every value of the top-level field `name`.
pub(crate) fn top_values(msg: &Message<'_>, name: &str) -> Vec<String> {
    values(&msg.raw_message, top(msg), name)
}

/// The first non-empty value of the top-level field `name`.
pub(crate) fn first(msg: &Message<'_>, name: &str) -> Option<String> {
    top_values(msg, name).into_iter().find(|v| !v.is_empty())
}

/// Folded lines joined with single spaces, ends trimmed.
pub(crate) fn unfold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut pending_space = false;
    for c in value.chars() {
        if c == '\r' || c == '\n' || c == '\t' || c == ' ' {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// A structured value without `(comments)`, which RFC 5322 allows almost anywhere.
pub(crate) fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

/// `type/subtype` of a part, lower-case; `text/plain` when absent, as RFC 2045 says. Cleaned of what
/// broken senders leave in it (`application/pdf name="x.pdf"` without the `;`); a type without a
/// subtype (`application-x-gzip`) is `application/octet-stream`.
pub(crate) fn media_type(part: &MessagePart<'_>) -> String {
    let Some(ct) = part.content_type() else {
        return "text/plain".to_string();
    };
    let token = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(*c))
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let (ctype, sub) = (token(ct.ctype()), ct.subtype().map(token).unwrap_or_default());
    if ctype.is_empty() || sub.is_empty() { "application/octet-stream".to_string() } else { format!("{ctype}/{sub}") }
}

/// The lower-case `charset` parameter of a part.
pub(crate) fn charset(part: &MessagePart<'_>) -> Option<String> {
    part.content_type().and_then(|ct| ct.attribute("charset")).map(|c| c.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfolds_and_strips_comments() {
        assert_eq!(unfold(" a\r\n\tb  c \n"), "a b c");
        assert_eq!(unfold(""), "");
        assert_eq!(strip_comments("auto-generated (failure (nested)) "), "auto-generated");
        assert_eq!(strip_comments("(x) <> (y)"), "<>");
        assert_eq!(strip_comments(r"a \( b"), "a ( b");
    }
}
