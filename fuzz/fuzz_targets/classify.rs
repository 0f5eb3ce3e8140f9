//! The automatic-mail classifier (bounce, auto-reply, report, bulk) on any message mail-parser reads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    // mail-parser itself stops at an assertion on some inputs (see the regression test in
    // channels/email/src/parse.rs; `normalize` turns that into a refusal): those are not the
    // classifier's, so they are skipped here.
    let Ok(parsed) = std::panic::catch_unwind(|| mail_parser::MessageParser::default().parse(raw)) else { return };
    if let Some(msg) = parsed {
        if let Some((_, reason)) = earshot_channel_email::classify(&msg) {
            assert!(!reason.is_empty(), "a classification says why");
        }
    }
});
