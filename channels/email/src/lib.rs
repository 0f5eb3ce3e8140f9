//! The email channel's parsing half: raw MIME messages turned into plain data, with no I/O.
//!
//! [`normalize`] reads one message: identity (Reply-To, else From), thread ids, subject, the text the
//! customer wrote (quoted history and signature stripped, see [`quote`]), attachments, the case
//! references in the subject ([`refs`]), and whether the message is itself automatic — a bounce,
//! auto-reply, report or bulk mail ([`auto`]) — with the details of a bounce ([`report`]).
//! The IMAP/SMTP side builds on these functions; nothing here touches a socket or the store.

pub mod auto;
pub mod config;
mod headers;
pub mod parse;
pub mod quote;
pub mod refs;
pub mod report;

pub use auto::classify;
pub use parse::{
    Attachment, DEFAULT_MAX_ATTACHMENT_BYTES, Mailbox, ParseError, ParseOptions, ParsedMail, derived_id, normalize,
};
pub use quote::strip_quoted;
pub use refs::{SubjectRefs, find_case_refs, is_forward, strip_reply_prefixes};
pub use report::Report;

// The I/O half: IMAP in, SMTP out, and the `Channel` that ties them to intake.
#[cfg(feature = "io")]
mod channel;
#[cfg(feature = "io")]
mod handle;
#[cfg(feature = "io")]
mod imap;
#[cfg(feature = "io")]
pub mod settings;
#[cfg(feature = "io")]
mod smtp;
#[cfg(feature = "io")]
pub mod tls;

#[cfg(feature = "io")]
pub use channel::{EmailChannel, EmailContext};
#[cfg(feature = "io")]
pub use smtp::reply_subject;
