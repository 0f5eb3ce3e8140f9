//! Quoted history and signatures, removed from the text of a follow-up.
//!
//! A reply carries the whole conversation below the customer's new words; a case wants only the new
//! words, so that an agent (and the language detector) reads what was actually said. The full body is
//! kept elsewhere (`ParsedMail::full_text`). Invariant: stripping never yields an empty text — when
//! everything would go (a message that is all quote or all signature), the full text is kept.
//!
//! Recognised, in the styles of the clients Chinese and English-speaking customers use:
//! - lines starting with `>` (removed wherever they are, so inline answers between quotes stay);
//! - attributions `On … wrote:` (also wrapped over two lines), `在 … 写道：`, `… 于 … 写道：`;
//! - separators `-----Original Message-----`, `-----原始邮件-----`, QQ Mail's
//!   `------------------ 原始邮件 ------------------`;
//! - Outlook header blocks `From: … Sent: …` and `发件人：… 发送时间：…` (with an optional `____` rule
//!   above them);
//! - the signature separator `-- ` on its own line.
//!
//! Everything from the first history marker on is dropped. An attribution followed by quotes that
//! are interleaved with new text (an inline answer) is not a cut: only the quoted lines go.

/// The text without quoted history and signature, lines joined with `\n`.
pub fn strip_quoted(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut drop = vec![false; lines.len()];
    let mut cut = lines.len();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if is_signature_separator(line) || is_original_marker(line) {
            cut = i;
            break;
        }
        if is_outlook_block(&lines, i) {
            cut = rule_above(&lines, i).unwrap_or(i);
            break;
        }
        if let Some(last) = attribution_end(&lines, i) {
            if is_interleaved(&lines[last + 1..]) {
                drop[i..=last].iter_mut().for_each(|d| *d = true);
                i = last + 1;
                continue;
            }
            cut = i;
            break;
        }
        i += 1;
    }

    let kept = lines[..cut]
        .iter()
        .zip(&drop)
        .filter(|(line, dropped)| !**dropped && !is_quoted(line))
        .map(|(line, _)| line.trim_end());
    let stripped = join_collapsed(kept);
    if stripped.is_empty() { join_collapsed(lines.iter().map(|l| l.trim_end())) } else { stripped }
}

/// Joins lines with `\n`, without leading or trailing blank lines and with runs of blank lines
/// collapsed to one (removed quotes leave gaps).
fn join_collapsed<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut blank_run = false;
    for line in lines {
        if line.trim().is_empty() {
            blank_run = !out.is_empty();
            continue;
        }
        if blank_run {
            out.push_str("\n\n");
        } else if !out.is_empty() {
            out.push('\n');
        }
        blank_run = false;
        out.push_str(line);
    }
    out
}

fn is_quoted(line: &str) -> bool {
    line.trim_start().starts_with('>')
}

/// `-- ` is the usenet/RFC 3676 convention; many clients trim the space, so `--` counts too.
fn is_signature_separator(line: &str) -> bool {
    line.trim_end() == "--"
}

/// `-----Original Message-----`, `-----原始邮件-----`, `---- 原始邮件 ----`: at least two dashes (or
/// underscores) around the words, so that a sentence mentioning "original message" is not a cut.
fn is_original_marker(line: &str) -> bool {
    let t = line.trim();
    let fence = |c: char| matches!(c, '-' | '_' | '=' | '－' | '—');
    let words = t.trim_matches(|c: char| fence(c) || c.is_whitespace());
    if t.chars().filter(|c| fence(*c)).count() < 2 {
        return false;
    }
    let lower = words.to_lowercase();
    matches!(lower.as_str(), "original message" | "original message follows" | "原始邮件" | "原始郵件" | "原邮件")
}

const FROM_FIELDS: [&str; 3] = ["from", "发件人", "寄件者"];
const SENT_FIELDS: [&str; 4] = ["sent", "发送时间", "寄件日期", "时间"];

/// Outlook's reply header: `From:` and, within the next few lines, `Sent:` (or the Chinese fields).
/// `Date:` is deliberately not enough: Gmail's *forwarded* messages use `From:`/`Date:`, and a
/// forwarded merchant email is evidence the customer wants kept.
fn is_outlook_block(lines: &[&str], i: usize) -> bool {
    if field_name(lines[i]).is_none_or(|f| !FROM_FIELDS.contains(&f.as_str())) {
        return false;
    }
    lines.iter().skip(i + 1).take(4).any(|l| field_name(l).is_some_and(|f| SENT_FIELDS.contains(&f.as_str())))
}

/// The lower-cased name of a `Name: value` / `名称：值` line, if it looks like one.
fn field_name(line: &str) -> Option<String> {
    let t = line.trim_start().trim_start_matches('*');
    let end = t.find([':', '：'])?;
    let name = t[..end].trim().trim_end_matches('*').trim();
    if name.is_empty() || name.chars().count() > 12 {
        return None;
    }
    Some(name.to_lowercase())
}

/// The `________________________________` rule Outlook puts above its header block, if right above.
fn rule_above(lines: &[&str], i: usize) -> Option<usize> {
    let j = (0..i).rev().find(|&j| !lines[j].trim().is_empty())?;
    let t = lines[j].trim();
    (t.len() >= 10 && t.chars().all(|c| c == '_' || c == '-')).then_some(j)
}

/// The index of the last line of an attribution starting at `i`, if one starts there.
fn attribution_end(lines: &[&str], i: usize) -> Option<usize> {
    let first = lines[i].trim();
    let starts_en = first.starts_with("On ");
    let starts_zh = first.starts_with('在');
    if ends_attribution(first) && (starts_en || starts_zh || first.contains('于')) {
        return Some(i);
    }
    // Clients wrap long attributions: "On Mon, 1 Jan 2024 at 10:00, Some Body\n<a@b.c> wrote:".
    if (starts_en || starts_zh)
        && let Some(next) = lines.get(i + 1)
        && ends_attribution(next.trim())
    {
        return Some(i + 1);
    }
    None
}

fn ends_attribution(line: &str) -> bool {
    line.ends_with("wrote:") || line.ends_with("写道：") || line.ends_with("写道:")
}

/// After an attribution: quotes, then new unquoted text, then maybe more quotes — an inline answer.
/// History that is not quoted at all (HTML converted to text) counts as history, not as an answer.
fn is_interleaved(rest: &[&str]) -> bool {
    let mut seen_quote = false;
    for line in rest {
        if line.trim().is_empty() {
            continue;
        }
        if is_quoted(line) {
            seen_quote = true;
        } else {
            return seen_quote && !is_signature_separator(line);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_history_and_signatures() {
        let cases: [(&str, &str, &str); 16] = [
            ("plain text stays", "Hello\n\nMy parcel is late.", "Hello\n\nMy parcel is late."),
            (
                "gmail attribution",
                "Still broken.\n\nOn Mon, 1 Jan 2024 at 10:00, Support <s@x.com> wrote:\n> We fixed it.\n> Bye",
                "Still broken.",
            ),
            (
                "wrapped attribution",
                "Still broken.\n\nOn Mon, 1 Jan 2024 at 10:00, Earshot Support\n<support@example.com> wrote:\n\n> We fixed it.",
                "Still broken.",
            ),
            (
                "outlook separator",
                "Thanks\r\n\r\n-----Original Message-----\r\nFrom: a\r\nSent: b\r\n\r\nold",
                "Thanks",
            ),
            (
                "outlook header block with rule",
                "Thanks\n\n________________________________\nFrom: Support <s@x.com>\nSent: Monday\nTo: me\nSubject: x\n\nold",
                "Thanks",
            ),
            (
                "chinese attribution",
                "还是没有收到。\n\n在 2024年1月1日 星期一 10:00，客服 <s@x.com> 写道：\n> 已发货",
                "还是没有收到。",
            ),
            (
                "gmail chinese attribution",
                "还是没有收到。\n\n客服 <s@x.com> 于2024年1月1日周一 10:00写道：\n\n> 已发货",
                "还是没有收到。",
            ),
            (
                "qq mail",
                "好的\n\n------------------ 原始邮件 ------------------\n发件人: \"客服\"<s@x.com>;\n发送时间: 2024年1月1日\n\n已发货",
                "好的",
            ),
            (
                "foxmail / outlook chinese",
                "好的\n\n-----原始邮件-----\n发件人: 客服\n发送时间: 2024年1月1日\n已发货",
                "好的",
            ),
            (
                "chinese outlook header block without separator",
                "好的\n\n发件人： 客服 <s@x.com>\n发送时间： 2024年1月1日 10:00\n收件人： 我\n主题： 回复\n\n已发货",
                "好的",
            ),
            ("signature", "My order is late.\n\n-- \nJane Doe\nACME", "My order is late."),
            ("signature without trailing space", "My order is late.\n--\nJane", "My order is late."),
            (
                "inline answers between quotes are kept",
                "On Mon, Support wrote:\n> Which order?\n12345\n> Which city?\nBeijing",
                "12345\nBeijing",
            ),
            ("unquoted history after attribution is history", "Yes.\nOn Mon, Support wrote:\nWhich order?", "Yes."),
            (
                "gmail forward is kept",
                "See below.\n\n---------- Forwarded message ---------\nFrom: Shop <s@x.com>\nDate: Mon\nSubject: Order\n\nYour order shipped.",
                "See below.\n\n---------- Forwarded message ---------\nFrom: Shop <s@x.com>\nDate: Mon\nSubject: Order\n\nYour order shipped.",
            ),
            (
                "a sentence mentioning the original message stays",
                "The original message was lost.\nOn time delivery is what I wrote about.",
                "The original message was lost.\nOn time delivery is what I wrote about.",
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(strip_quoted(input), want, "{name}");
        }
    }

    #[test]
    fn never_strips_everything() {
        for (input, want) in [
            ("> only a quote\n> here", "> only a quote\n> here"),
            ("\r\n\r\n--\r\nJørn Støylen\r\n", "--\nJørn Støylen"),
            ("-----Original Message-----\nFrom: a", "-----Original Message-----\nFrom: a"),
            ("", ""),
        ] {
            assert_eq!(strip_quoted(input), want, "{input:?}");
        }
    }
}
