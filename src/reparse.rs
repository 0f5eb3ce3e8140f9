//! `earshot reparse`: normalize stored raw messages again, after the parser has improved.
//!
//! Only the derived fields of each message change (subject, text, language, attachments, automatic);
//! ids, case membership and times stay, so nothing downstream has to be re-keyed.

use crate::schema::Message;
use crate::store::{Store, StoreError};

/// What a reparse run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reparsed {
    pub updated: u64,
    pub unchanged: u64,
    /// Raw messages the parser refuses now; their stored message is left as it was.
    pub failed: u64,
}

/// Walks every stored raw email in id order, in pages, logging progress.
#[cfg(feature = "email")]
pub async fn reparse(store: &dyn Store, max_attachment_bytes: usize) -> Result<Reparsed, StoreError> {
    use earshot_channel_email::{ParseOptions, normalize};
    let opts = ParseOptions { max_attachment_bytes };
    let mut out = Reparsed::default();
    let mut after = String::new();
    loop {
        let page = store.raw_messages(&after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.0.clone();
        for (id, channel, raw, data) in page {
            if channel != "email" {
                continue;
            }
            let mut message: Message =
                serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))?;
            let mail = match normalize(&raw, &opts) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(message_id = %id, error = %e, "Stored raw message no longer parses; left as it was.");
                    out.failed += 1;
                    continue;
                }
            };
            let before = message.clone();
            message.subject = mail.subject.clone();
            message.text = if mail.text.trim().is_empty() { mail.full_text.clone() } else { mail.text.clone() };
            message.lang = mail.lang;
            message.attachments = mail.attachments.iter().map(|a| a.meta.clone()).collect();
            message.automatic = mail.automatic.as_ref().map(|(k, _)| *k);
            if message == before {
                out.unchanged += 1;
                continue;
            }
            let json = serde_json::to_string(&message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            store.update_message(&id, &json).await?;
            out.updated += 1;
        }
        tracing::info!(updated = out.updated, unchanged = out.unchanged, failed = out.failed, "Reparse progress.");
    }
    Ok(out)
}

#[cfg(not(feature = "email"))]
pub async fn reparse(_: &dyn Store, _: usize) -> Result<Reparsed, StoreError> {
    Ok(Reparsed::default())
}
