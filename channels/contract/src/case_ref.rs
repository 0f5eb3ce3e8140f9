//! `CaseRef`: the reference customers read, say and type, e.g. `4827-1936-5`.
//!
//! Eight digits and a Damm check digit. Damm catches every single wrong digit and every swap of two
//! neighbouring digits, needs no letters (so it can be spoken in Chinese or English and keyed on a
//! phone keypad), and is a ten-line table walk — written here because no maintained crate offers it.
//! The eight digits are a bijection of the case's sequence number, so references never collide
//! (within 10^8 cases) and do not reveal how many cases came before.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const DAMM: [[u8; 10]; 10] = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2],
    [7, 0, 9, 2, 1, 5, 4, 8, 6, 3],
    [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6],
    [6, 1, 2, 3, 0, 4, 5, 9, 7, 8],
    [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4],
    [8, 9, 4, 5, 3, 6, 2, 0, 1, 7],
    [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0],
];

const SPACE: u64 = 100_000_000;
/// Odd and not a multiple of 5, hence invertible modulo 10^8: `seq -> seq * MULT + OFFSET` is a bijection.
const MULT: u64 = 48_271_937;
const OFFSET: u64 = 31_415_926;

fn damm(digits: impl Iterator<Item = u8>) -> u8 {
    digits.fold(0, |interim, d| DAMM[interim as usize][d as usize])
}

/// A case reference: 9 digits, the last a check digit; shown as `DDDD-DDDD-D`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct CaseRef(#[schemars(regex(pattern = r"^[0-9]{4}-[0-9]{4}-[0-9]$"))] String);

/// Why a typed reference is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseRefError {
    #[error("a case reference has 9 digits")]
    Length,
    #[error("the check digit does not match: a digit is mistyped")]
    CheckDigit,
}

impl CaseRef {
    /// The reference of the case with sequence number `seq` (1, 2, 3, …).
    pub fn from_seq(seq: u64) -> CaseRef {
        let body = (seq % SPACE).wrapping_mul(MULT).wrapping_add(OFFSET) % SPACE;
        let digits: Vec<u8> = format!("{body:08}").bytes().map(|b| b - b'0').collect();
        let check = damm(digits.iter().copied());
        let s: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        CaseRef(format!("{}-{}-{check}", &s[..4], &s[4..]))
    }

    /// Accepts what people type: dashes, spaces and dots anywhere, full-width digits too.
    pub fn parse(input: &str) -> Result<CaseRef, CaseRefError> {
        let mut digits = Vec::with_capacity(9);
        for c in input.chars() {
            match c {
                '0'..='9' => digits.push(c as u8 - b'0'),
                '０'..='９' => digits.push((c as u32 - '０' as u32) as u8),
                '-' | ' ' | '.' | '－' | '\u{3000}' => {}
                _ => return Err(CaseRefError::Length),
            }
        }
        if digits.len() != 9 {
            return Err(CaseRefError::Length);
        }
        if damm(digits.iter().copied()) != 0 {
            return Err(CaseRefError::CheckDigit);
        }
        let s: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        Ok(CaseRef(format!("{}-{}-{}", &s[..4], &s[4..8], &s[8..])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The sequence number this reference was made from (the inverse of [`CaseRef::from_seq`]), in
    /// `1..=10^8`.
    pub fn seq(&self) -> u64 {
        let body: u64 = self.0.bytes().filter(u8::is_ascii_digit).take(8).fold(0, |n, d| n * 10 + u64::from(d - b'0'));
        let seq = (body + SPACE - OFFSET) % SPACE * inverse_mult() % SPACE;
        if seq == 0 { SPACE } else { seq }
    }
}

/// MULT⁻¹ modulo 10^8: MULT^(φ(10^8) − 1), φ(10^8) = 4·10^7 (Euler).
fn inverse_mult() -> u64 {
    let (mut base, mut exp, mut acc) = (u128::from(MULT), 40_000_000u64 - 1, 1u128);
    while exp > 0 {
        if exp & 1 == 1 {
            acc = acc * base % u128::from(SPACE);
        }
        base = base * base % u128::from(SPACE);
        exp >>= 1;
    }
    acc as u64
}

/// A stored reference read back (the store keeps them as text).
impl TryFrom<String> for CaseRef {
    type Error = CaseRefError;

    fn try_from(s: String) -> Result<CaseRef, CaseRefError> {
        CaseRef::parse(&s)
    }
}

impl fmt::Display for CaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn references_are_unique_and_valid() {
        let mut seen = HashSet::new();
        for seq in 1..=20_000u64 {
            let r = CaseRef::from_seq(seq);
            assert_eq!(CaseRef::parse(r.as_str()), Ok(r.clone()));
            assert_eq!(r.seq(), seq, "seq() inverts from_seq()");
            assert!(seen.insert(r), "seq {seq} repeats a reference");
        }
    }

    #[test]
    fn every_single_digit_error_and_adjacent_swap_is_caught() {
        for seq in [1u64, 2, 77, 123_456, 99_999_999] {
            let r = CaseRef::from_seq(seq);
            let digits: Vec<u8> = r.as_str().bytes().filter(u8::is_ascii_digit).collect();
            for i in 0..9 {
                for d in b'0'..=b'9' {
                    if d == digits[i] {
                        continue;
                    }
                    let mut typo = digits.clone();
                    typo[i] = d;
                    let typed = String::from_utf8(typo).expect("ascii");
                    assert_eq!(CaseRef::parse(&typed), Err(CaseRefError::CheckDigit), "{typed}");
                }
                if i < 8 && digits[i] != digits[i + 1] {
                    let mut swap = digits.clone();
                    swap.swap(i, i + 1);
                    let typed = String::from_utf8(swap).expect("ascii");
                    assert_eq!(CaseRef::parse(&typed), Err(CaseRefError::CheckDigit), "{typed}");
                }
            }
        }
    }

    #[test]
    fn parses_what_people_type() {
        let r = CaseRef::from_seq(42);
        let plain: String = r.as_str().chars().filter(char::is_ascii_digit).collect();
        assert_eq!(CaseRef::parse(&plain), Ok(r.clone()));
        let spaced = plain.chars().map(|c| format!("{c} ")).collect::<String>();
        assert_eq!(CaseRef::parse(&spaced), Ok(r.clone()));
        let wide: String =
            plain.chars().map(|c| char::from_u32(c as u32 - '0' as u32 + '０' as u32).expect("digit")).collect();
        assert_eq!(CaseRef::parse(&wide), Ok(r));
        assert_eq!(CaseRef::parse("1234"), Err(CaseRefError::Length));
        assert_eq!(CaseRef::parse("1234-5678-9x"), Err(CaseRefError::Length));
    }
}
