//! Phone numbers in one form, E.164, whatever way a caller, a provider or a web form wrote them:
//! `138 0013 8000`, `+86 138-0013-8000` and `008613800138000` are one customer.

use phonenumber::{Mode, country};

/// The number in E.164 (`+8613800138000`), read in `region` when it has no country code; `None`
/// when it is not a phone number.
pub fn e164(raw: &str, region: country::Id) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 40 {
        return None;
    }
    let number = phonenumber::parse(Some(region), raw).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    Some(number.format().mode(Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_number_however_written() {
        for raw in ["138 0013 8000", "+86 138-0013-8000", "008613800138000", "+8613800138000"] {
            assert_eq!(e164(raw, country::Id::CN).as_deref(), Some("+8613800138000"), "{raw}");
        }
        assert_eq!(e164("+1 650-253-0000", country::Id::CN).as_deref(), Some("+16502530000"));
        assert_eq!(e164("not a number", country::Id::CN), None);
        assert_eq!(e164("", country::Id::CN), None);
    }
}
