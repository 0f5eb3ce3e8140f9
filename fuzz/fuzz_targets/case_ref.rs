//! The case reference parser: whatever a customer types or says, a reference that parses prints
//! back to itself, and one changed digit never parses as another valid reference of the same text.
#![no_main]

use earshot_channel::CaseRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(r) = CaseRef::parse(input) {
        let printed = r.to_string();
        assert_eq!(CaseRef::parse(&printed).as_ref(), Ok(&r), "{input:?} -> {printed}");
        assert_eq!(CaseRef::from_seq(r.seq()), r, "the sequence number round-trips");
    }
});
