//! The web channel's payload parser: any body is either a valid complaint (which becomes an
//! `Inbound` with at least one identity) or a precise 4xx; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match earshot_channel_web::parse_complaint(body) {
        Ok(valid) => {
            let key =
                earshot_channel::webhooks::SigningKey::from_whsec("whsec_ZnV6ei1zZWNyZXQtZm9yLXRoZS13ZWItc291cmNl")
                    .expect("a valid secret");
            let source = earshot_channel_web::SourceSettings {
                name: "fuzz".into(),
                keys: key.into(),
                callback_url: None,
                rate_per_sec: std::num::NonZeroU32::MIN,
                burst: std::num::NonZeroU32::MIN,
            };
            let inbound = valid.into_inbound(&source, "msg_fuzz", time::OffsetDateTime::UNIX_EPOCH);
            assert!(!inbound.identities.is_empty(), "a complaint names its customer");
            assert!(!inbound.text.trim().is_empty(), "a complaint has text");
        }
        Err(e) => assert!(e.status.is_client_error(), "a refusal is a 4xx: {e}"),
    }
});
