//! The MIME → complaint parser: any bytes either parse into a `ParsedMail` or are refused with an
//! error; nothing panics, and what comes out holds its invariants.
#![no_main]

use earshot_channel_email::{ParseOptions, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    let opts = ParseOptions { max_attachment_bytes: 64 * 1024 };
    if let Ok(mail) = normalize(raw, &opts) {
        assert!(!mail.message_id.is_empty(), "every message gets an id");
        assert!(mail.text.len() <= mail.full_text.len().max(mail.text.len()));
        for a in &mail.attachments {
            if let Some(c) = &a.content {
                assert!(c.len() <= 64 * 1024, "kept content stays within the limit");
            }
        }
        for r in &mail.case_refs {
            assert_eq!(earshot_channel::CaseRef::parse(r.as_str()).ok().as_ref(), Some(r));
        }
    }
});
