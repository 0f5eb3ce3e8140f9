//! What a bounce or report says: which recipients failed, with which status codes, about which of
//! our messages.
//!
//! Read from the machine-readable part when there is one (RFC 3464 `message/delivery-status`, RFC 5965
//! `message/feedback-report`, RFC 8098 `message/disposition-notification`), else from the text of a
//! bounce written for people (Exim, qmail, old Sendmail, Exchange) — the latter is best effort.
//! Invariant: addresses are lower-case and never the bounce's own sender or recipient; status codes
//! have the RFC 3463 shape `class.subject.detail`.

use mail_parser::{Message, MessageParser, PartType};
use serde::Serialize;

use crate::headers;

/// The details of a bounce, DSN, complaint (ARF) or read receipt (MDN).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `delivery-status`, `feedback-report`, `disposition-notification`; `None` for a bounce written
    /// as plain text.
    pub report_type: Option<String>,
    /// Recipients whose delivery failed for good (`Action: failed`), lower-case.
    pub failed_recipients: Vec<String>,
    /// Status codes such as `5.1.1`, in order of appearance, without repeats.
    pub status_codes: Vec<String>,
    /// The Message-ID (without `<>`) of the message the report is about, when it says.
    pub original_message_id: Option<String>,
    /// ARF's `Feedback-Type` (abuse, fraud …) or an MDN's `Disposition`.
    pub feedback: Option<String>,
}

/// Reads the report details of a message classified as a bounce or report.
pub fn extract(msg: &Message<'_>, body_text: &str) -> Report {
    let mut report = Report { report_type: crate::auto::report_type(msg), ..Report::default() };
    let own: Vec<String> = [msg.from(), msg.to()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();

    // Machine-readable fields: in their own part, or — when a broken DSN lost the part's
    // Content-Type (imap_tools) — among the text parts.
    let mut machine = String::new();
    for part in &msg.parts {
        let media = headers::media_type(part);
        let is_report_part = matches!(
            media.as_str(),
            "message/delivery-status"
                | "message/global-delivery-status"
                | "message/feedback-report"
                | "message/disposition-notification"
                | "message/global-disposition-notification"
        );
        let text = match &part.body {
            PartType::Text(t) => Some(t.as_ref().to_string()),
            PartType::Binary(b) | PartType::InlineBinary(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        if let Some(text) = text
            && (is_report_part || has_dsn_fields(&text))
        {
            machine.push_str(&text);
            machine.push_str("\n\n");
        }
    }
    read_fields(&machine, &mut report);

    // The original message: an attached message/rfc822 or text/rfc822-headers part.
    report.original_message_id = report.original_message_id.take().or_else(|| {
        msg.parts.iter().find_map(|part| match &part.body {
            PartType::Message(inner) => inner.message_id().map(str::to_string),
            PartType::Text(t) if headers::media_type(part) == "text/rfc822-headers" => {
                MessageParser::default().parse_headers(t.as_bytes()).and_then(|h| h.message_id().map(str::to_string))
            }
            _ => None,
        })
    });

    // X-Failed-Recipients (Exim) names them even in a bounce without a DSN.
    for v in headers::top_values(msg, "X-Failed-Recipients") {
        for a in v.split(',') {
            push_address(&mut report.failed_recipients, a, &own);
        }
    }

    let failed_status = report.status_codes.iter().any(|s| s.starts_with('5'));
    let is_bounce = report.report_type.as_deref().is_none_or(|t| t == "delivery-status");
    if is_bounce && report.failed_recipients.is_empty() && (report.status_codes.is_empty() || failed_status) {
        // A bounce written for people, or a DSN that lost its machine-readable part: look before
        // the copy of the original message. (A delay warning names no failed recipient.)
        let (explanation, original) = split_at_original(body_text);
        for a in addresses_in(explanation) {
            push_address(&mut report.failed_recipients, &a, &own);
        }
        if report.status_codes.is_empty() {
            for code in status_codes_in(explanation) {
                push_unique(&mut report.status_codes, code);
            }
        }
        if report.original_message_id.is_none() {
            report.original_message_id = original.lines().find_map(message_id_line);
        }
    }
    if report.original_message_id.is_none() {
        report.original_message_id = body_text.lines().find_map(message_id_line);
    }
    report
}

fn has_dsn_fields(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("final-recipient:") || l.starts_with("original-recipient:")
    })
}

/// Reads DSN per-recipient blocks and ARF/MDN fields (`Name: value`, folded lines continued).
fn read_fields(text: &str, report: &mut Report) {
    for block in text.split("\n\n").flat_map(|b| b.split("\r\n\r\n")) {
        let fields = parse_fields(block);
        let get = |name: &str| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        // Original-Recipient is the address as we sent it; Final-Recipient may be an alias's
        // expansion (Postfix: "r@host (expanded from <kijitora@example.org>)").
        let recipient = get("Original-Recipient").or_else(|| get("Final-Recipient"));
        let action = get("Action").map(|a| a.to_ascii_lowercase());
        let status = get("Status").and_then(|s| status_codes_in(s).into_iter().next());
        if let Some(status) = &status {
            push_unique(&mut report.status_codes, status.clone());
        }
        if let Some(recipient) = recipient {
            // "rfc822; user@example.com": the address type is before the semicolon.
            let address = recipient.split_once(';').map_or(recipient, |(_, a)| a);
            let failed = match action.as_deref() {
                Some(a) => a.starts_with("failed"),
                None => status.as_deref().is_some_and(|s| s.starts_with('5')),
            };
            if failed {
                push_address(&mut report.failed_recipients, address, &[]);
            }
        }
        if let Some(id) = get("Original-Message-ID") {
            report.original_message_id = report.original_message_id.take().or_else(|| Some(strip_angles(id)));
        }
        if let Some(f) = get("Feedback-Type").or_else(|| get("Disposition")) {
            report.feedback = report.feedback.take().or_else(|| Some(f.to_string()));
        }
    }
}

fn parse_fields(block: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':')
            && !name.is_empty()
            && !name.contains(' ')
        {
            fields.push((name.to_string(), value.trim().to_string()));
        }
    }
    fields
}

/// Phrases of the line that starts the copy of the original message in bounces written for people
/// (Exim, qmail, Postfix, Sendmail).
const ORIGINAL_MARKERS: [&str; 6] = [
    "copy of the message",
    "below this line",
    "original message follows",
    "original message headers",
    "message headers follow",
    "returned message",
];

fn is_original_marker(line: &str) -> bool {
    let lower = line.trim().to_lowercase();
    ORIGINAL_MARKERS.iter().any(|m| lower.contains(m))
        // "The original message was received at …" opens Sendmail's explanation; only a fenced
        // "----- Original message -----" starts the copy.
        || (lower.starts_with('-') && lower.contains("original message"))
}

fn split_at_original(text: &str) -> (&str, &str) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if offset > 0 && is_original_marker(line) {
            return text.split_at(offset);
        }
        offset += line.len();
    }
    (text, "")
}

fn message_id_line(line: &str) -> Option<String> {
    let (name, value) = line.trim_start().split_once(':')?;
    name.trim().eq_ignore_ascii_case("message-id").then(|| strip_angles(value)).filter(|id| !id.is_empty())
}

fn strip_angles(v: &str) -> String {
    v.trim().trim_start_matches('<').trim_end_matches('>').trim().to_string()
}

fn push_unique(list: &mut Vec<String>, v: String) {
    if !list.contains(&v) {
        list.push(v);
    }
}

fn push_address(list: &mut Vec<String>, raw: &str, exclude: &[String]) {
    let a = strip_angles(raw).to_ascii_lowercase();
    let Some((local, domain)) = a.rsplit_once('@') else {
        return;
    };
    if local.is_empty()
        || !domain.contains('.')
        || exclude.contains(&a)
        || matches!(local, "mailer-daemon" | "postmaster")
    {
        return;
    }
    push_unique(list, a);
}

/// Email addresses in free text.
fn addresses_in(text: &str) -> Vec<String> {
    let is_local = |c: char| c.is_ascii_alphanumeric() || "._%+-=".contains(c);
    let is_domain = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
    let mut out = Vec::new();
    for (at, _) in text.match_indices('@') {
        let start = text[..at].char_indices().rev().take_while(|(_, c)| is_local(*c)).last().map_or(at, |(i, _)| i);
        let end = text[at + 1..]
            .char_indices()
            .take_while(|(_, c)| is_domain(*c))
            .last()
            .map_or(at + 1, |(i, c)| at + 1 + i + c.len_utf8());
        let candidate = text[start..end].trim_matches('.');
        if candidate.len() > 3 {
            out.push(candidate.to_string());
        }
    }
    out
}

/// RFC 3463 status codes (`5.1.1`, `4.4.7`) in free text, not parts of longer dotted numbers.
fn status_codes_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let boundary_before = i == 0 || !(bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.');
        if boundary_before && matches!(bytes[i], b'2' | b'4' | b'5') && bytes.get(i + 1) == Some(&b'.') {
            let mut j = i + 2;
            let a = digits(bytes, &mut j);
            if (1..=3).contains(&a) && bytes.get(j) == Some(&b'.') {
                j += 1;
                let b = digits(bytes, &mut j);
                let boundary_after = !bytes.get(j).is_some_and(|c| {
                    c.is_ascii_digit() || *c == b'.' && bytes.get(j + 1).is_some_and(u8::is_ascii_digit)
                });
                if (1..=3).contains(&b) && boundary_after {
                    out.push(text[i..j].to_string());
                    i = j;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

fn digits(bytes: &[u8], j: &mut usize) -> usize {
    let start = *j;
    while bytes.get(*j).is_some_and(u8::is_ascii_digit) {
        *j += 1;
    }
    *j - start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(raw: &str) -> Report {
        let msg = MessageParser::default().parse(raw.as_bytes()).expect("a message");
        let text = msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
        extract(&msg, &text)
    }

    #[test]
    fn reads_a_dsn() {
        let r = report_of(
            "From: MAILER-DAEMON@mx.example\nTo: support@shop.example\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n\
             --b\nContent-Type: text/plain\n\nI could not deliver it.\n\
             --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example\n\n\
             Final-Recipient: rfc822; Jane@Example.com\nAction: failed\nStatus: 5.1.1 (user unknown)\n\n\
             Final-Recipient: rfc822; later@example.com\nAction: delayed\nStatus: 4.4.7\n\n\
             --b\nContent-Type: text/rfc822-headers\n\nMessage-ID: <ack-1@shop.example>\nSubject: x\n\n--b--\n",
        );
        assert_eq!(
            r,
            Report {
                report_type: Some("delivery-status".into()),
                failed_recipients: vec!["jane@example.com".into()],
                status_codes: vec!["5.1.1".into(), "4.4.7".into()],
                original_message_id: Some("ack-1@shop.example".into()),
                feedback: None,
            }
        );
    }

    #[test]
    fn reads_a_bounce_written_for_people() {
        let r = report_of(
            "From: MAILER-DAEMON@mx.example\nTo: support@shop.example\nSubject: failure notice\n\n\
             I'm afraid I wasn't able to deliver your message to the following addresses.\n\n\
             <jane@example.com>:\nremote host said: 550 5.1.1 unknown user support@shop.example (#5.1.1)\n\
             host 192.0.2.5 said 550\n\n\
             --- Below this line is a copy of the message.\n\nMessage-ID: <ack-2@shop.example>\nTo: jane@example.com\n\nhello\n",
        );
        assert_eq!(r.report_type, None);
        assert_eq!(r.failed_recipients, vec!["jane@example.com".to_string()]);
        assert_eq!(r.status_codes, vec!["5.1.1".to_string()]);
        assert_eq!(r.original_message_id.as_deref(), Some("ack-2@shop.example"));
    }

    #[test]
    fn finds_status_codes() {
        for (text, want) in [
            ("550 5.1.1 unknown", vec!["5.1.1"]),
            ("(#5.5.0)", vec!["5.5.0"]),
            ("host 192.0.2.20 said", vec![]),
            ("version 5.1.1.2", vec![]),
            ("4.4.7 and 2.0.0.", vec!["4.4.7", "2.0.0"]),
            ("3.1.1", vec![]),
        ] {
            assert_eq!(status_codes_in(text), want, "{text}");
        }
    }

    #[test]
    fn finds_addresses() {
        assert_eq!(
            addresses_in("to <a.b@x.example>: and c@d.example. Also @ alone and e@f"),
            vec!["a.b@x.example", "c@d.example"]
        );
    }
}
