//! What happens to one fetched message: quarantine, channel event, or intake.

use bytes::Bytes;
use earshot_channel::{
    AutoKind, ChannelEvent, ChannelKind, CustomerInfo, ExternalId, Identity, IdentityKind, Inbound, Intake,
    IntakeError, ReplyRoute, ThreadHint,
};

use crate::EmailContext;
use crate::parse::{self, ParsedMail};
use crate::settings::MailboxSettings;

/// Handles one raw message; returns only when its outcome is durably recorded (committed case or
/// follow-up, stored event, or quarantine entry). An error means nothing was recorded and the message
/// must be fetched again.
pub async fn message(
    ctx: &EmailContext,
    mb: &MailboxSettings,
    intake: &dyn Intake,
    raw: &[u8],
) -> Result<(), IntakeError> {
    let mail = match parse::normalize(raw, &ctx.parse) {
        Ok(m) => m,
        Err(e) => return quarantine(mb, intake, raw, &e.to_string()).await,
    };
    let Some(sender) = mail.customer_address().map(str::to_owned) else {
        return quarantine(mb, intake, raw, "no sender address (From or Reply-To)").await;
    };
    match mail.automatic.as_ref().map(|(k, _)| *k) {
        Some(AutoKind::Bounce | AutoKind::Report) => {
            metrics::counter!("earshot_email_reports_total", "mailbox" => mb.name.clone()).increment(1);
            let (kind, reason) = mail.automatic.clone().unwrap_or((AutoKind::Report, String::new()));
            let mut related = mail.in_reply_to.clone();
            related.extend(mail.references.iter().cloned());
            let mut failed = Vec::new();
            if let Some(report) = &mail.report {
                related.extend(report.original_message_id.iter().cloned());
                failed.extend(report.failed_recipients.iter().cloned());
            }
            tracing::info!(mailbox = %mb.name, message_id = %mail.message_id, kind = ?kind, reason = %reason, "Delivery report stored; no case.");
            intake
                .record_event(ChannelEvent {
                    channel: ChannelKind::Email,
                    source: mb.name.clone(),
                    kind,
                    external_id: ExternalId(mail.message_id.clone()),
                    from: Some(sender),
                    subject: mail.subject.clone(),
                    related_ids: related,
                    failed_recipients: failed,
                    reason,
                    raw: Some(Bytes::copy_from_slice(raw)),
                })
                .await
        }
        _ => {
            let inbound = to_inbound(mb, mail, sender, raw);
            let receipt = intake.submit(inbound).await?;
            tracing::debug!(mailbox = %mb.name, case_ref = %receipt.case_ref, duplicate = receipt.duplicate, "Email committed.");
            Ok(())
        }
    }
}

pub async fn quarantine(
    mb: &MailboxSettings,
    intake: &dyn Intake,
    raw: &[u8],
    reason: &str,
) -> Result<(), IntakeError> {
    // The intake counts it in `earshot_quarantined_total` and logs it once stored.
    tracing::debug!(mailbox = %mb.name, reason, bytes = raw.len(), "Quarantining a message.");
    intake.quarantine(ChannelKind::Email, &mb.name, Bytes::copy_from_slice(raw), reason).await
}

fn to_inbound(mb: &MailboxSettings, mail: ParsedMail, sender: String, raw: &[u8]) -> Inbound {
    let mut references = mail.references.clone();
    references.retain(|r| !r.is_empty());
    if !references.contains(&mail.message_id) {
        references.push(mail.message_id.clone());
    }
    let mut thread_ids = mail.in_reply_to.clone();
    thread_ids.extend(mail.references.iter().cloned());
    let name = mail.reply_to.as_ref().or(mail.from.as_ref()).and_then(|m| m.name.clone());
    // Every case reference the subject names, linked or not (a stranger's, a mistyped one): a
    // new case keeps them, so an agent sees which case the customer had in mind.
    let mentioned: Vec<serde_json::Value> = mail
        .case_refs
        .iter()
        .map(|r| r.to_string())
        .chain(mail.mentioned_refs.iter().cloned())
        .map(serde_json::Value::String)
        .collect();
    let mut metadata = std::collections::BTreeMap::new();
    if !mentioned.is_empty() {
        metadata.insert("mentioned_case_refs".to_owned(), serde_json::Value::Array(mentioned));
    }
    let (text, full_text) = mail.texts();
    // The parser already put the kept content into each attachment's metadata.
    let attachments = mail.attachments.into_iter().map(|a| a.meta).collect();
    Inbound {
        content_digest: None,
        channel: ChannelKind::Email,
        source: mb.name.clone(),
        external_id: ExternalId(mail.message_id.clone()),
        identities: vec![Identity { kind: IdentityKind::Email, value: sender.clone() }],
        customer: CustomerInfo { name, tier: None, language: None },
        reply_route: ReplyRoute::Email {
            mailbox: mb.name.clone(),
            to: sender,
            message_id: mail.message_id.clone(),
            references,
            subject: mail.subject.clone(),
        },
        thread: Some(ThreadHint {
            in_reply_to: thread_ids.into_iter().map(ExternalId).collect(),
            case_refs: mail.case_refs.iter().map(|r| r.to_string()).collect(),
            open_case_within_secs: None,
            edits: None,
        }),
        subject: mail.subject,
        text,
        full_text,
        lang: Some(mail.lang),
        category: None,
        order_id: None,
        metadata,
        attachments,
        raw: Some(Bytes::copy_from_slice(raw)),
        received_at: time::OffsetDateTime::now_utc(),
        automatic: mail.automatic.map(|(k, _)| k),
    }
}
