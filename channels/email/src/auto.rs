//! Is this message itself automatic? RFC 3834 (`Auto-Submitted`), RFC 3464 / RFC 5965 / RFC 8098
//! reports, and the de-facto signals of Exchange, Apple, Gmail and list servers.
//!
//! Invariant: an automatic message never gets an acknowledgement (that is how mail loops start) and
//! never opens a case of its own; so a signal counts only when a person's mail does not carry it.
//! Signals are tried from the most specific to the least, and the first that matches gives the kind
//! and a reason an operator can read, e.g. `Auto-Submitted: auto-replied`:
//! 1. a report (`multipart/report; report-type=…`, or a `message/delivery-status` … part) — Bounce for
//!    delivery status, Report for feedback (ARF) and read receipts (MDN);
//! 2. a bounce sender (`MAILER-DAEMON@`, `postmaster@`), or a bounce subject (`Undeliverable:`,
//!    `failure notice`, `Delivery Status Notification (Failure)` …) backed by structure: a null
//!    `Return-Path` or the returned message attached (`message/rfc822`, `text/rfc822-headers`) —
//!    Bounce. A subject alone is what a customer writes ("Delivery failure – my order never came");
//!    a provider's abuse desk (`abuse@`, `fbl@` …) returning a message attached is a Report;
//! 3. a `multipart/report` of no stated kind — Report;
//! 4. `Auto-Submitted` other than `no` — AutoReply for `auto-replied`, Report for `auto-notified`,
//!    Bulk otherwise (a DSN also says `auto-replied`, hence bounces first);
//! 5. `X-Autoreply`, `X-Autorespond`, `X-Apple-Action: VACATION`, Exchange's "Automatic reply:" —
//!    AutoReply;
//! 6. `Precedence: bulk|junk|list`, `List-Id`/`List-Unsubscribe`, `X-Auto-Response-Suppress` with
//!    `All`, `DR` or `AutoReply` — Bulk (`Precedence: auto_reply` — AutoReply);
//! 7. `Return-Path: <>` — AutoReply (bounces were caught above; RFC 3834 §3.3 asks responders for it);
//! 8. robot senders (`noreply@`, `no-reply@`, `owner-…@`, `…-request@`) — Bulk; but not when the
//!    message has a `Reply-To` of a person: that is how web shops relay their contact form
//!    (`From: no-reply@shop.example`, `Reply-To: the customer`), and the customer is answered there.

use earshot_channel::AutoKind;
use mail_parser::{Message, MimeHeaders};

use crate::headers;

/// Classifies a parsed message; `None` for a message a person wrote.
pub fn classify(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    if msg.parts.is_empty() {
        return None;
    }
    report(msg)
        .or_else(|| bounce_sender(msg))
        .or_else(|| bounce_subject(msg))
        .or_else(|| feedback_loop(msg))
        .or_else(|| untyped_report(msg))
        .or_else(|| auto_submitted(msg))
        .or_else(|| vendor_auto_reply(msg))
        .or_else(|| out_of_office(msg))
        .or_else(|| precedence(msg))
        .or_else(|| list(msg))
        .or_else(|| suppress(msg))
        .or_else(|| null_return_path(msg))
        .or_else(|| robot_sender(msg))
}

/// The machine-readable report type a message carries, from its top-level `multipart/report` or, when
/// that lacks `report-type` (cpython's msg_16), from the part it contains.
pub(crate) fn report_type(msg: &Message<'_>) -> Option<String> {
    if let Some(Some(rt)) = declared_report_type(msg) {
        // RFC 6533's global-delivery-status is the same report for internationalized addresses.
        return Some(rt.trim_start_matches("global-").to_string());
    }
    msg.parts.iter().find_map(|p| {
        match headers::media_type(p).as_str() {
            "message/delivery-status" | "message/global-delivery-status" => Some("delivery-status"),
            "message/feedback-report" => Some("feedback-report"),
            "message/disposition-notification" | "message/global-disposition-notification" => {
                Some("disposition-notification")
            }
            _ => None,
        }
        .map(str::to_string)
    })
}

/// The declared `report-type` of a top-level `multipart/report`: `None` when the message is no
/// report, `Some(None)` when it is one without the parameter.
fn declared_report_type(msg: &Message<'_>) -> Option<Option<String>> {
    let root = msg.parts.first()?;
    (headers::media_type(root) == "multipart/report").then(|| {
        root.content_type().and_then(|ct| ct.attribute("report-type")).map(|rt| rt.trim().to_ascii_lowercase())
    })
}

fn report(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    let rt = report_type(msg)?;
    let kind = if rt == "delivery-status" { AutoKind::Bounce } else { AutoKind::Report };
    let reason = match declared_report_type(msg) {
        Some(Some(declared)) => format!("Content-Type: multipart/report; report-type={declared}"),
        // Said by the part, not the top-level type: name the part.
        _ => format!("Content-Type: message/{rt}"),
    };
    Some((kind, reason))
}

/// A `multipart/report` that says nothing of its kind (and whose sender and subject did not say it
/// was a bounce either) is still a machine's report.
fn untyped_report(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    declared_report_type(msg).map(|_| (AutoKind::Report, "Content-Type: multipart/report".to_string()))
}

/// The local part of the From address, lower-case.
fn from_local(msg: &Message<'_>) -> Option<String> {
    let addr = msg.from()?.first()?.address()?;
    let local = addr.rsplit_once('@').map_or(addr, |(l, _)| l);
    Some(local.trim().to_ascii_lowercase())
}

fn bounce_sender(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    let local = from_local(msg)?;
    matches!(local.as_str(), "mailer-daemon" | "mailer_daemon" | "postmaster")
        .then(|| (AutoKind::Bounce, format!("From: {local}@")))
}

/// Subjects MTAs give their non-delivery reports. Prefixes only: a customer forwarding a bounce writes
/// "Fwd: Undeliverable: …", which is a person's message.
const BOUNCE_SUBJECTS: [&str; 10] = [
    "undeliverable:",
    "undelivered mail returned to sender",
    "undeliverable mail",
    "failure notice",
    "delivery status notification (failure)",
    "delivery status notification (delay)",
    "mail delivery failed",
    "returned mail:",
    "delivery failure",
    "delivery notification: delivery has failed",
];

fn bounce_subject(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    let subject = msg.subject()?.trim().to_lowercase();
    let prefix = BOUNCE_SUBJECTS.iter().find(|p| subject.starts_with(*p))?;
    let backing = if has_null_return_path(msg) {
        "Return-Path: <>"
    } else if returned_message(msg) {
        "the returned message attached"
    } else {
        return None;
    };
    Some((AutoKind::Bounce, format!("Subject: {prefix} with {backing}")))
}

/// Whether a message carries another message (or its headers) as a part, as bounces and feedback
/// loops return what they are about.
fn returned_message(msg: &Message<'_>) -> bool {
    msg.parts
        .iter()
        .skip(1)
        .any(|p| matches!(headers::media_type(p).as_str(), "message/rfc822" | "text/rfc822-headers"))
}

/// Local parts of mailbox providers' abuse desks and feedback-loop senders.
const FEEDBACK_SENDERS: [&str; 6] = ["abuse", "fbl", "feedbackloop", "feedback-loop", "scomp", "complaints-fbl"];

/// A feedback-loop report that is not ARF: the provider's abuse desk returns the reported message as
/// an attached `message/rfc822`.
fn feedback_loop(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    let local = from_local(msg)?;
    (FEEDBACK_SENDERS.contains(&local.as_str()) && returned_message(msg))
        .then(|| (AutoKind::Report, format!("feedback loop: From: {local}@ with the reported message attached")))
}

fn auto_submitted(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    headers::top_values(msg, "Auto-Submitted").into_iter().find_map(|raw| {
        let value = auto_submitted_value(&raw)?;
        let kind = match value.as_str() {
            "auto-replied" => AutoKind::AutoReply,
            "auto-notified" => AutoKind::Report,
            _ => AutoKind::Bulk,
        };
        Some((kind, format!("Auto-Submitted: {value}")))
    })
}

/// The keyword of an `Auto-Submitted` value without comments and parameters; `None` for `no`.
pub(crate) fn auto_submitted_value(raw: &str) -> Option<String> {
    let no_comments = headers::strip_comments(raw);
    let keyword = no_comments.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    (!keyword.is_empty() && keyword != "no").then_some(keyword)
}

fn vendor_auto_reply(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    for name in ["X-Autoreply", "X-Autorespond", "X-Autoresponder"] {
        if let Some(v) = headers::first(msg, name)
            && !v.eq_ignore_ascii_case("no")
        {
            return Some((AutoKind::AutoReply, format!("{name}: {v}")));
        }
    }
    // Apple iCloud's vacation responder sets neither Auto-Submitted nor a null Return-Path.
    headers::top_values(msg, "X-Apple-Action")
        .into_iter()
        .find(|v| v.to_ascii_uppercase().contains("VACATION"))
        .map(|v| (AutoKind::AutoReply, format!("X-Apple-Action: {v}")))
}

/// Subject prefixes of out-of-office replies (Outlook in English and Chinese, QQ Mail, Gmail).
const OOF_SUBJECTS: [&str; 9] = [
    "automatic reply:",
    "auto reply:",
    "autoreply:",
    "auto-reply:",
    "out of office",
    "自动回复",
    "自动答复",
    "自動回覆",
    "自動回复",
];

/// Exchange's out-of-office reply has no Auto-Submitted; it says so by its subject, backed by one of
/// the headers Exchange puts on rule-generated mail, so a customer's subject alone never counts.
fn out_of_office(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    let subject = msg.subject()?.trim().to_lowercase();
    let prefix = OOF_SUBJECTS.iter().find(|p| subject.starts_with(*p))?;
    let backed = headers::first(msg, "X-MS-Exchange-Inbox-Rules-Loop").is_some()
        || headers::first(msg, "X-Auto-Response-Suppress").is_some()
        || has_null_return_path(msg);
    backed.then(|| (AutoKind::AutoReply, format!("out-of-office (Subject: {prefix})")))
}

fn precedence(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    headers::top_values(msg, "Precedence").into_iter().find_map(|raw| {
        let v = headers::strip_comments(&raw).to_ascii_lowercase();
        let kind = match v.as_str() {
            "bulk" | "junk" | "list" => AutoKind::Bulk,
            "auto_reply" | "auto-reply" => AutoKind::AutoReply,
            _ => return None,
        };
        Some((kind, format!("Precedence: {v}")))
    })
}

fn list(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    ["List-Id", "List-Unsubscribe"]
        .into_iter()
        .find_map(|name| headers::first(msg, name).map(|v| (AutoKind::Bulk, format!("{name}: {v}"))))
}

/// `X-Auto-Response-Suppress` asks Exchange not to answer; senders of bulk and system mail set it.
fn suppress(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    headers::top_values(msg, "X-Auto-Response-Suppress")
        .into_iter()
        .find(|v| {
            v.split([',', ' ', ';'])
                .any(|t| ["all", "dr", "autoreply"].contains(&t.trim().to_ascii_lowercase().as_str()))
        })
        .map(|v| (AutoKind::Bulk, format!("X-Auto-Response-Suppress: {v}")))
}

fn has_null_return_path(msg: &Message<'_>) -> bool {
    headers::top_values(msg, "Return-Path").iter().any(|v| headers::strip_comments(v).replace(' ', "") == "<>")
}

fn null_return_path(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    has_null_return_path(msg).then(|| (AutoKind::AutoReply, "Return-Path: <>".to_string()))
}

fn is_robot_local(local: &str) -> bool {
    matches!(local, "noreply" | "no-reply" | "no_reply" | "donotreply" | "do-not-reply" | "do_not_reply")
        || local.starts_with("owner-")
        || local.ends_with("-request")
}

fn robot_sender(msg: &Message<'_>) -> Option<(AutoKind, String)> {
    // A contact-form relay: the robot sends, the person is in Reply-To.
    let reply_to_person = msg
        .reply_to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(|a| a.rsplit_once('@').map_or(a, |(l, _)| l).trim().to_ascii_lowercase())
        .is_some_and(|local| !is_robot_local(&local));
    if reply_to_person {
        return None;
    }
    let mut locals: Vec<String> = from_local(msg).into_iter().collect();
    if let Some(sender) = msg.sender().and_then(|a| a.first()).and_then(|a| a.address()) {
        let local = sender.rsplit_once('@').map_or(sender, |(l, _)| l);
        locals.push(local.trim().to_ascii_lowercase());
    }
    locals.into_iter().find_map(|local| is_robot_local(&local).then(|| (AutoKind::Bulk, format!("sender {local}@"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    fn kind_of(raw: &str) -> Option<(AutoKind, String)> {
        let msg = MessageParser::default().parse(raw.as_bytes()).expect("a message");
        classify(&msg)
    }

    #[test]
    fn classifies_automatic_mail() {
        let person = "From: Jane <jane@example.com>\nTo: support@shop.example\nSubject: My order\n\nWhere is it?\n";
        let cases: Vec<(String, Option<AutoKind>, &str)> = vec![
            (person.to_string(), None, ""),
            (format!("Auto-Submitted: no\n{person}"), None, ""),
            (
                format!("Auto-Submitted: auto-replied\n{person}"),
                Some(AutoKind::AutoReply),
                "Auto-Submitted: auto-replied",
            ),
            (
                format!("Auto-Submitted: Auto-Replied (vacation); owner-email=\"x@y\"\n{person}"),
                Some(AutoKind::AutoReply),
                "Auto-Submitted: auto-replied",
            ),
            (
                format!("Auto-Submitted: auto-generated (failure)\n{person}"),
                Some(AutoKind::Bulk),
                "Auto-Submitted: auto-generated",
            ),
            (
                format!("Auto-Submitted: (comment only) no\n{person}"),
                None,
                "",
            ),
            (
                format!("Precedence: bulk\n{person}"),
                Some(AutoKind::Bulk),
                "Precedence: bulk",
            ),
            (
                format!("Precedence: JUNK\n{person}"),
                Some(AutoKind::Bulk),
                "Precedence: junk",
            ),
            (
                format!("Precedence: auto_reply\n{person}"),
                Some(AutoKind::AutoReply),
                "Precedence: auto_reply",
            ),
            (format!("Precedence: first-class\n{person}"), None, ""),
            (
                format!("List-Id: <shop.lists.example>\n{person}"),
                Some(AutoKind::Bulk),
                "List-Id: <shop.lists.example>",
            ),
            (
                format!("List-Unsubscribe: <mailto:u@x>\n{person}"),
                Some(AutoKind::Bulk),
                "List-Unsubscribe: <mailto:u@x>",
            ),
            (
                format!("X-Autoreply: yes\n{person}"),
                Some(AutoKind::AutoReply),
                "X-Autoreply: yes",
            ),
            (
                format!("X-Autorespond: Out of office\n{person}"),
                Some(AutoKind::AutoReply),
                "X-Autorespond: Out of office",
            ),
            (
                format!("X-Auto-Response-Suppress: DR, RN\n{person}"),
                Some(AutoKind::Bulk),
                "X-Auto-Response-Suppress: DR, RN",
            ),
            (format!("X-Auto-Response-Suppress: OOF\n{person}"), None, ""),
            (
                format!("Return-Path: <>\n{person}"),
                Some(AutoKind::AutoReply),
                "Return-Path: <>",
            ),
            (format!("Return-Path: <jane@example.com>\n{person}"), None, ""),
            (
                person.replace("jane@example.com", "MAILER-DAEMON@mx.example.com"),
                Some(AutoKind::Bounce),
                "From: mailer-daemon@",
            ),
            (
                person.replace("jane@example.com", "postmaster@example.com"),
                Some(AutoKind::Bounce),
                "From: postmaster@",
            ),
            (
                person.replace("jane@example.com", "no-reply@example.com"),
                Some(AutoKind::Bulk),
                "sender no-reply@",
            ),
            // A web shop's contact form relayed: the customer is in Reply-To.
            (
                format!("Reply-To: Li Wei <li@customer.example>\n{}", person.replace("jane@example.com", "no-reply@shop.example")),
                None,
                "",
            ),
            // Reply-To another robot does not make it a person's.
            (
                format!("Reply-To: <noreply@shop.example>\n{}", person.replace("jane@example.com", "no-reply@shop.example")),
                Some(AutoKind::Bulk),
                "sender no-reply@",
            ),
            // A relayed form that is also marked bulk stays bulk.
            (
                format!("Precedence: bulk\nReply-To: li@customer.example\n{}", person.replace("jane@example.com", "no-reply@shop.example")),
                Some(AutoKind::Bulk),
                "Precedence: bulk",
            ),
            (
                person.replace("jane@example.com", "owner-list@example.com"),
                Some(AutoKind::Bulk),
                "sender owner-list@",
            ),
            (
                person.replace("jane@example.com", "list-request@example.com"),
                Some(AutoKind::Bulk),
                "sender list-request@",
            ),
            // A bounce subject alone is a customer's: "Delivery failure – SO-1001 never arrived".
            (person.replace("My order", "Undeliverable: My order"), None, ""),
            (person.replace("My order", "Delivery failure – SO-1001 never arrived"), None, ""),
            (
                format!("Return-Path: <>\n{}", person.replace("My order", "Undeliverable: My order")),
                Some(AutoKind::Bounce),
                "Subject: undeliverable: with Return-Path: <>",
            ),
            (
                "From: mail@mx.example\nSubject: Mail delivery failed: returning message to sender\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nThis message could not be delivered.\n--b\nContent-Type: message/rfc822\n\nFrom: support@shop.example\nTo: x@y.example\nSubject: Your case\n\nHello\n--b--\n".to_string(),
                Some(AutoKind::Bounce),
                "Subject: mail delivery failed with the returned message attached",
            ),
            (person.replace("My order", "Fwd: Undeliverable: My order"), None, ""),
            (
                "From: Abuse Desk <abuse@mailbox.example>\nSubject: Complaint about message from 203.0.113.5\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nA user marked this message as spam.\n--b\nContent-Type: message/rfc822\n\nFrom: support@shop.example\nTo: x@y.example\nSubject: Your case\n\nHello\n--b--\n".to_string(),
                Some(AutoKind::Report),
                "feedback loop: From: abuse@ with the reported message attached",
            ),
            // A person writing to abuse@ of their own accord, without a returned message, is a person.
            (person.replace("jane@example.com", "abuse@example.com"), None, ""),
            (
                format!("X-MS-Exchange-Inbox-Rules-Loop: a@b\n{}", person.replace("My order", "Automatic reply: My order")),
                Some(AutoKind::AutoReply),
                "out-of-office (Subject: automatic reply:)",
            ),
            (
                format!("Return-Path: <>\n{}", person.replace("My order", "自动回复: 您好")),
                Some(AutoKind::AutoReply),
                "out-of-office (Subject: 自动回复)",
            ),
            // A customer's subject alone is not an out-of-office reply.
            (person.replace("My order", "Automatic reply: broken"), None, ""),
            (
                format!("X-Apple-Action: VACATION\n{person}"),
                Some(AutoKind::AutoReply),
                "X-Apple-Action: VACATION",
            ),
            (
                "From: a@b.example\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; x@y.example\nAction: failed\nStatus: 5.1.1\n--b--\n".to_string(),
                Some(AutoKind::Bounce),
                "Content-Type: multipart/report; report-type=delivery-status",
            ),
            (
                "From: a@b.example\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\nContent-Type: text/plain\n\nabuse\n--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n--b--\n".to_string(),
                Some(AutoKind::Report),
                "Content-Type: multipart/report; report-type=feedback-report",
            ),
            (
                // No report-type: the part tells (cpython's msg_16).
                "From: a@b.example\nContent-Type: multipart/report; boundary=b\n\n--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/DELIVERY-STATUS\n\nAction: failed\n--b--\n".to_string(),
                Some(AutoKind::Bounce),
                "Content-Type: message/delivery-status",
            ),
            (
                // multipart/report without report-type or a report part, from a mailer daemon.
                "From: MAILER-DAEMON@b.example\nSubject: Delivery Status Notification (Failure)\nContent-Type: multipart/report;\n\nbroken\n".to_string(),
                Some(AutoKind::Bounce),
                "From: mailer-daemon@",
            ),
            (
                "From: a@b.example\nContent-Type: multipart/report; boundary=b\n\n--b\nContent-Type: text/plain\n\nsomething\n--b--\n".to_string(),
                Some(AutoKind::Report),
                "Content-Type: multipart/report",
            ),
            (
                // A DSN also says Auto-Submitted: auto-replied (rhost-tencent-01): it is still a bounce.
                "Auto-Submitted: auto-replied\nFrom: a@b.example\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: text/plain\n\nfailed\n--b--\n".to_string(),
                Some(AutoKind::Bounce),
                "Content-Type: multipart/report; report-type=delivery-status",
            ),
        ];
        for (raw, want_kind, want_reason) in cases {
            let got = kind_of(&raw);
            assert_eq!(got.as_ref().map(|g| g.0), want_kind, "{raw}");
            if let Some((_, reason)) = got {
                assert_eq!(reason, want_reason, "{raw}");
            }
        }
    }

    #[test]
    fn reads_auto_submitted_values() {
        for (raw, want) in [
            ("no", None),
            ("No (a person wrote this)", None),
            ("auto-replied", Some("auto-replied")),
            ("AUTO-GENERATED; x=y", Some("auto-generated")),
            ("(c) auto-notified (d)", Some("auto-notified")),
            ("", None),
        ] {
            assert_eq!(auto_submitted_value(raw).as_deref(), want, "{raw}");
        }
    }
}
