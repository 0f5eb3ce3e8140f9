//! Standard Webhooks headers and verification: any header values and body are accepted only with a
//! signature made with the key (never by accident), the timestamp arithmetic never overflows, and
//! what the key signs always verifies.
#![no_main]

use earshot_channel::webhooks::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_whsec("whsec_ZnV6ei1zZWNyZXQtZm9yLXdlYmhvb2tzLTAwMDA=").expect("a valid secret");
    // Split the input into id, timestamp, signature and body at the first three 0xFF bytes.
    let mut parts = data.splitn(4, |b| *b == 0xFF);
    let id = parts.next().map(String::from_utf8_lossy).unwrap_or_default();
    let ts = parts.next().map(String::from_utf8_lossy).unwrap_or_default();
    let sig = parts.next().map(String::from_utf8_lossy).unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let now = 1_800_000_000;
    if key.verify(Some(&id), Some(&ts), Some(&sig), body, now).is_ok() {
        // Accepted: then it must be exactly what the key signs for this id, time and body.
        let ts: i64 = ts.trim().parse().expect("an accepted timestamp is a number");
        assert!(sig.split(' ').any(|s| s == key.sign(&id, ts, body)), "accepted without our signature");
    }
    for ts in [now, i64::MIN, i64::MAX, now - 301] {
        let _ = key.verify(Some(&id), Some(&ts.to_string()), Some(&sig), body, now);
    }
    if !id.is_empty() {
        let good = key.sign(&id, now, body);
        assert!(key.verify(Some(&id), Some(&now.to_string()), Some(&good), body, now).is_ok());
    }
    let _ = SigningKey::from_whsec(&String::from_utf8_lossy(data));
});
