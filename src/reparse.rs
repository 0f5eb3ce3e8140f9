//! `earshot reparse`: normalize stored raw messages again, after the parser has improved.
//!
//! Only the derived fields of each message change (subject, text, attachments, automatic); ids, case
//! membership, times and the language stay, so nothing downstream has to be re-keyed. The language
//! stays because it is the case's (a follow-up takes its case's language) and replies already went
//! out in it.

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
            // Compared as stored: attachment contents are never serialized, so they must not count.
            let before = serde_json::to_string(&message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            message.subject = mail.subject.clone();
            (message.text, message.full_text) = mail.texts();
            message.attachments = mail.attachments.iter().map(|a| a.meta.clone()).collect();
            message.automatic = mail.automatic.as_ref().map(|(k, _)| *k);
            let json = serde_json::to_string(&message).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if json == before {
                out.unchanged += 1;
                continue;
            }
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
