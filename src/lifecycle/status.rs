//! The case status table: which status may follow which. Pure.
//!
//! | from                | to                                   |
//! |---------------------|--------------------------------------|
//! | `new`               | `acknowledged`, `in_progress`        |
//! | `acknowledged`      | `in_progress`                        |
//! | `in_progress`       | `awaiting_customer`, `resolved`      |
//! | `awaiting_customer` | `in_progress`, `resolved`            |
//! | `resolved`          | `closed`, `reopened`                 |
//! | `reopened`          | `in_progress`                        |
//! | `closed`            | (none)                               |
//!
//! `new → in_progress` is allowed because the ticket store may start work before the
//! acknowledgement has been delivered (which is what moves `new` to `acknowledged`).

use crate::schema::CaseStatus;

/// The statuses that may follow `from`.
pub fn next(from: CaseStatus) -> &'static [CaseStatus] {
    use CaseStatus::*;
    match from {
        New => &[Acknowledged, InProgress],
        Acknowledged => &[InProgress],
        InProgress => &[AwaitingCustomer, Resolved],
        AwaitingCustomer => &[InProgress, Resolved],
        Resolved => &[Closed, Reopened],
        Reopened => &[InProgress],
        Closed => &[],
    }
}

pub fn allowed(from: CaseStatus, to: CaseStatus) -> bool {
    next(from).contains(&to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaseStatus::*;

    #[test]
    fn the_documented_paths_are_allowed_and_nothing_else() {
        let ok = [
            (New, Acknowledged),
            (New, InProgress),
            (Acknowledged, InProgress),
            (InProgress, AwaitingCustomer),
            (AwaitingCustomer, InProgress),
            (InProgress, Resolved),
            (AwaitingCustomer, Resolved),
            (Resolved, Closed),
            (Resolved, Reopened),
            (Reopened, InProgress),
        ];
        for from in CaseStatus::ALL {
            for to in CaseStatus::ALL {
                assert_eq!(allowed(from, to), ok.contains(&(from, to)), "{from} -> {to}");
            }
        }
        assert!(next(Closed).is_empty());
    }

    #[test]
    fn the_readme_table_is_this_table() {
        let readme = include_str!("../../README.md");
        for from in CaseStatus::ALL {
            let to: Vec<String> = next(from).iter().map(|s| format!("`{s}`")).collect();
            let to = if to.is_empty() { "(none)".to_owned() } else { to.join(", ") };
            let row = format!("| `{from}` | {to} |");
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }
}
