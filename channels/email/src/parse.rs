//! Raw MIME bytes → [`ParsedMail`]: who wrote, what they said, in which thread, with which files.
//!
//! Pure: bytes in, data out, no I/O. Invariants:
//! - lenient: a malformed message that still yields a sender or some text is normalized; only bytes
//!   that are not a message at all (empty, no header fields, neither sender nor text) are a
//!   [`ParseError`], which the caller quarantines;
//! - every message has an id: its Message-ID, or one derived from the SHA-256 of the raw bytes, so a
//!   redelivery of the same bytes is recognised as a duplicate;
//! - text is Unicode whatever the charset (GB2312/GBK/GB18030, Big5, ISO-2022-JP, Shift_JIS, EUC-KR,
//!   ISO-8859-x, Windows-125x, UTF-8), including encoded-words and raw 8-bit headers as Chinese mail
//!   clients send them, and it contains no NUL or other control characters a store would refuse.

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use earshot_channel::{AttachmentMeta, AutoKind, CaseRef, Lang, sha256_hex};
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::html::html_to_text;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Address, Encoding, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};
use time::{OffsetDateTime, UtcOffset};

use crate::report::{self, Report};
use crate::{auto, headers, quote, refs};

/// Attachments larger than this keep their metadata only, unless configured otherwise.
pub const DEFAULT_MAX_ATTACHMENT_BYTES: usize = 10 * 1024 * 1024;

/// The domain of ids derived for messages without a Message-ID (`.invalid` can never be real).
pub const DERIVED_ID_DOMAIN: &str = "earshot.invalid";

/// How much of a message to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// Attachment content is kept up to this many bytes; larger ones keep metadata and are marked
    /// truncated.
    pub max_attachment_bytes: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { max_attachment_bytes: DEFAULT_MAX_ATTACHMENT_BYTES }
    }
}

/// Why bytes could not be taken as a message. Never transient: the same bytes fail the same way, so
/// the caller quarantines them instead of retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message is empty")]
    Empty,
    #[error("no header fields: the bytes are not an email message")]
    NoHeaders,
    #[error("neither a sender nor any text: nothing to take a complaint from")]
    NoSenderNoText,
    /// The MIME parser gave up in the middle (it panicked): the message is kept, not lost, and
    /// the mailbox goes on with the next one.
    #[error("the MIME parser failed on this message: {0}")]
    ParserFailed(String),
}

impl ParseError {
    /// A stable code for the quarantine record.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::NoHeaders => "no_headers",
            ParseError::ParserFailed(_) => "parser_failed",
            ParseError::NoSenderNoText => "no_sender_no_text",
        }
    }

    pub fn is_transient(&self) -> bool {
        false
    }
}

/// An address with its display name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mailbox {
    /// Lower-cased: `Jane@Example.COM` and `jane@example.com` are one customer.
    pub address: String,
    pub name: Option<String>,
}

/// One attachment: its description, and its bytes when within the size limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub meta: AttachmentMeta,
    /// `None` when the attachment is larger than `ParseOptions::max_attachment_bytes`. The same
    /// buffer as `meta.content` (a `Bytes` clone shares it), so keeping both costs nothing.
    pub content: Option<Bytes>,
}

/// A message, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedMail {
    /// The Message-ID without `<>`, or a derived `sha256-…@earshot.invalid`.
    pub message_id: String,
    /// True when the message had no usable Message-ID and `message_id` was derived from its bytes.
    pub message_id_derived: bool,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub from: Option<Mailbox>,
    pub reply_to: Option<Mailbox>,
    pub to: Vec<String>,
    pub subject: Option<String>,
    /// What the customer wrote in this message: quoted history and signature stripped. For a forward
    /// (`Fwd:`, `转发:`) the whole body, since the forwarded mail is what the customer wants read.
    pub text: String,
    /// The whole body text (HTML turned into text), line ends normalized to `\n`.
    pub full_text: String,
    pub lang: Lang,
    pub attachments: Vec<Attachment>,
    pub date: Option<OffsetDateTime>,
    /// Set when the message is itself automatic, with the reason (e.g. `Auto-Submitted: auto-replied`).
    pub automatic: Option<(AutoKind, String)>,
    /// For bounces and reports: failed recipients, status codes, the original Message-ID.
    pub report: Option<Report>,
    /// Valid case references seen in the subject.
    pub case_refs: Vec<CaseRef>,
    /// References typed in the subject whose check digit is wrong; they link nothing.
    pub mentioned_refs: Vec<String>,
}

impl ParsedMail {
    /// The text a case shows (quotes and signature cut; the whole body if nothing is left), and the
    /// whole body besides when the cut made it shorter.
    pub fn texts(&self) -> (String, Option<String>) {
        if self.text.trim().is_empty() {
            return (self.full_text.clone(), None);
        }
        let cut = self.full_text.trim() != self.text.trim();
        (self.text.clone(), cut.then(|| self.full_text.clone()))
    }

    /// Who the customer is: Reply-To when present, else From.
    pub fn customer(&self) -> Option<&Mailbox> {
        self.reply_to.as_ref().or(self.from.as_ref())
    }

    /// The customer's address: Reply-To when present, else From.
    pub fn customer_address(&self) -> Option<&str> {
        self.customer().map(|m| m.address.as_str())
    }
}

/// Normalizes one raw message.
///
/// Hostile bytes must not take a mailbox down: fuzzing found messages on which mail-parser stops
/// at an internal assertion (a `debug_assert!`, so in debug builds a panic). A panic anywhere in
/// here becomes [`ParseError::ParserFailed`], and the caller quarantines the message.
pub fn normalize(raw: &[u8], opts: &ParseOptions) -> Result<ParsedMail, ParseError> {
    match std::panic::catch_unwind(|| normalize_unguarded(raw, opts)) {
        Ok(r) => r,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(ParseError::ParserFailed(why))
        }
    }
}

fn normalize_unguarded(raw: &[u8], opts: &ParseOptions) -> Result<ParsedMail, ParseError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    let prepared = prepare(raw);
    let msg = MessageParser::default().parse(prepared.as_ref()).ok_or(ParseError::NoHeaders)?;
    if headers::top(&msg).is_empty() {
        return Err(ParseError::NoHeaders);
    }

    let from = first_mailbox(msg.from());
    let reply_to = first_mailbox(msg.reply_to());
    let full_text = body_text(&msg);
    if from.is_none() && reply_to.is_none() && full_text.trim().is_empty() {
        return Err(ParseError::NoSenderNoText);
    }

    let subject = msg.subject().map(clean_line).filter(|s| !s.is_empty());
    let text = match &subject {
        Some(s) if refs::is_forward(s) => full_text.clone(),
        _ => quote::strip_quoted(&full_text),
    };
    let lang = Lang::detect(&format!("{}\n{}", subject.as_deref().unwrap_or(""), text));

    let (message_id, message_id_derived) = match msg.message_id().map(clean_id) {
        Some(id) if !id.is_empty() => (id, false),
        _ => (derived_id(raw), true),
    };

    let automatic = auto::classify(&msg);
    let report = match automatic {
        Some((AutoKind::Bounce | AutoKind::Report, _)) => Some(report::extract(&msg, &full_text)),
        _ => None,
    };
    let found = subject.as_deref().map(refs::find_case_refs).unwrap_or_default();

    Ok(ParsedMail {
        message_id,
        message_id_derived,
        in_reply_to: ids(msg.in_reply_to()),
        references: ids(msg.references()),
        from,
        reply_to,
        to: all_addresses(&msg),
        subject,
        text,
        full_text,
        lang,
        attachments: attachments(&msg, opts),
        date: msg.date().and_then(to_offset_date_time),
        automatic,
        report,
        case_refs: found.valid,
        mentioned_refs: found.mistyped,
    })
}

/// `sha256-<first 32 hex of SHA-256 of the raw bytes>@earshot.invalid`.
pub fn derived_id(raw: &[u8]) -> String {
    let hex = sha256_hex(raw);
    format!("sha256-{}@{DERIVED_ID_DOMAIN}", &hex[..32])
}

// ---------------------------------------------------------------------------------------------
// Before parsing: the bytes as a parser should see them.
// ---------------------------------------------------------------------------------------------

/// Drops what is not part of the message (a UTF-8 byte-order mark, an mbox `From ` line) and turns
/// header lines written in raw 8-bit non-UTF-8 (QQ Mail writes GB2312 headers without encoded-words)
/// or double-encoded (Big5 bytes stored as Latin-1 UTF-8) into UTF-8, which the parser then reads.
fn prepare(raw: &[u8]) -> Cow<'_, [u8]> {
    match relabel_charsets(raw) {
        Some(relabelled) => Cow::Owned(prepare_labelled(&relabelled).into_owned()),
        None => prepare_labelled(raw),
    }
}

/// Charset labels that mail software writes besides the IANA names, and the name the decoders know.
/// Python's `email` package writes its codec names (`Header(text, "gb2312")` comes out as
/// `=?eucgb2312_cn?b?…?=`); Windows and Java write their own.
const CHARSET_ALIASES: [(&str, &str); 9] = [
    ("eucgb2312_cn", "gb2312"),
    ("euc_cn", "gb2312"),
    ("big5_tw", "big5"),
    ("big5hkscs", "big5-hkscs"),
    ("x-gbk", "gbk"),
    ("cp936", "gbk"),
    ("ms936", "gbk"),
    ("cp950", "big5"),
    ("ms950", "big5"),
];

/// `raw` with every aliased charset label, in an encoded word (`=?label?`) or a `charset=`
/// parameter, replaced by its IANA name; `None` when there is none.
fn relabel_charsets(raw: &[u8]) -> Option<Vec<u8>> {
    let lower: Vec<u8> = raw.iter().map(u8::to_ascii_lowercase).collect();
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < lower.len() {
        // The start of a label: just after `=?`, or after `charset=` and an optional quote.
        let start = if lower[i..].starts_with(b"=?") {
            Some(i + 2)
        } else if lower[i..].starts_with(b"charset=") {
            Some(i + 8 + usize::from(lower.get(i + 8) == Some(&b'"')))
        } else {
            None
        };
        if let Some(at) = start {
            let found = CHARSET_ALIASES.iter().find(|(alias, _)| {
                lower[at..].starts_with(alias.as_bytes())
                    && lower
                        .get(at + alias.len())
                        .is_none_or(|b| matches!(b, b'?' | b'"' | b';' | b' ' | b'\r' | b'\n'))
            });
            if let Some((alias, name)) = found {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(raw.len()));
                buf.extend_from_slice(&raw[copied..at]);
                buf.extend_from_slice(name.as_bytes());
                copied = at + alias.len();
                i = copied;
                continue;
            }
        }
        i += 1;
    }
    let mut buf = out?;
    buf.extend_from_slice(&raw[copied..]);
    Some(buf)
}

fn prepare_labelled(raw: &[u8]) -> Cow<'_, [u8]> {
    let mut raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
    if is_mbox_from_line(raw)
        && let Some(nl) = raw.iter().position(|&b| b == b'\n')
    {
        raw = &raw[nl + 1..];
    }
    let blank_line = header_end(raw);
    // A header block that runs into the body without a blank line (cpython's msg_35): the first
    // line that is neither a field nor a continuation starts the body, as Python's parser has it.
    let missing_blank = missing_separator(&raw[..blank_line]);
    let header = &raw[..missing_blank.unwrap_or(blank_line)];
    if header.is_ascii() && missing_blank.is_none() {
        return Cow::Borrowed(raw);
    }
    let declared = declared_charset(raw);
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 2);
    let mut changed = missing_blank.is_some();
    for line in header.split_inclusive(|&b| b == b'\n') {
        match fix_header_line(line, declared.as_deref()) {
            Some(fixed) => {
                out.extend_from_slice(fixed.as_bytes());
                changed = true;
            }
            None => out.extend_from_slice(line),
        }
    }
    if !changed {
        return Cow::Borrowed(raw);
    }
    match missing_blank {
        Some(body) => {
            out.extend_from_slice(if header.ends_with(b"\r\n") { b"\r\n" } else { b"\n" });
            out.extend_from_slice(&raw[body..]);
        }
        None => out.extend_from_slice(&raw[blank_line..]),
    }
    Cow::Owned(out)
}

/// The offset of the first line of `header` (after the first) that is neither a field (it has no
/// colon) nor a folded continuation.
fn missing_separator(header: &[u8]) -> Option<usize> {
    let mut offset = 0;
    for (i, line) in header.split_inclusive(|&b| b == b'\n').enumerate() {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let continuation = content.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if i > 0 && !content.is_empty() && !continuation && !content.contains(&b':') {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

/// mbox's `From sender date` separator; a header would be `From:`.
fn is_mbox_from_line(raw: &[u8]) -> bool {
    raw.starts_with(b"From ") && raw[5..].iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b != b':')
}

/// The offset just past the header block's last line (the blank line is not included).
fn header_end(raw: &[u8]) -> usize {
    raw.windows(2)
        .position(|w| w == b"\n\n")
        .into_iter()
        .chain(raw.windows(3).position(|w| w == b"\n\r\n"))
        .min()
        .map_or(raw.len(), |i| i + 1)
}

/// The first `charset=` value anywhere in the message: the best guess for raw 8-bit headers, since
/// the client that wrote them used the same charset for the body.
fn declared_charset(raw: &[u8]) -> Option<String> {
    let lower: Vec<u8> = raw.iter().map(u8::to_ascii_lowercase).collect();
    let at = lower.windows(8).position(|w| w == b"charset=")? + 8;
    let value: String = lower[at..]
        .iter()
        .skip_while(|&&b| b == b'"' || b == b'\'')
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        .map(|&b| char::from(b))
        .collect();
    (!value.is_empty()).then_some(value)
}

/// Charsets where one character takes two bytes or more: only for these can Latin-1 "mojibake"
/// be undone, because only they turn pairs of Latin-1 characters into one character.
fn is_multibyte_cjk(charset: &str) -> bool {
    let c = charset.to_ascii_lowercase();
    [
        "gb",
        "csgb",
        "x-gbk",
        "cp936",
        "windows-936",
        "big5",
        "cn-big5",
        "csbig5",
        "x-x-big5",
        "shift",
        "sjis",
        "x-sjis",
        "ms932",
        "windows-31j",
        "euc-",
        "x-euc",
        "cseuc",
        "iso-2022-",
        "csiso2022",
        "ks_c",
        "ksc",
        "cp949",
        "windows-949",
    ]
    .iter()
    .any(|p| c.starts_with(p))
}

/// A header line the parser would misread, as UTF-8; `None` when it reads fine as it is.
fn fix_header_line(line: &[u8], declared: Option<&str>) -> Option<String> {
    if line.is_ascii() {
        return None;
    }
    let decoder_of = |name: &str| {
        let n = name.to_ascii_lowercase();
        (n != "utf-8" && n != "utf8" && n != "us-ascii").then(|| charset_decoder(n.as_bytes())).flatten()
    };
    match std::str::from_utf8(line) {
        Ok(text) => {
            let charset = declared.filter(|c| is_multibyte_cjk(c))?;
            let decode = decoder_of(charset)?;
            if text.contains(char::REPLACEMENT_CHARACTER) {
                // Already broken on the way (flanker's charset-gb2312-1: GBK bytes that some relay
                // replaced in part by EF BF BD): read as the declared charset, which keeps the
                // characters that survived and agrees with how the body reads ("锟斤拷").
                let decoded = decode(line);
                return (replacement_count(&decoded) == 0).then_some(decoded);
            }
            undo_latin1_mojibake(text, decode)
        }
        Err(_) => {
            let lossy_bad = replacement_count(&String::from_utf8_lossy(line));
            // The declared charset first; GB18030 (a superset of GB2312 and GBK) as the guess for
            // undeclared raw headers, since Chinese clients are the ones that still send them.
            let candidates = declared.and_then(decoder_of).into_iter().chain(charset_decoder(b"gb18030"));
            let (bad, decoded) = candidates
                .map(|decode| {
                    let decoded = decode(line);
                    (replacement_count(&decoded), decoded)
                })
                .min_by_key(|(bad, _)| *bad)?;
            (bad < lossy_bad).then_some(decoded)
        }
    }
}

fn replacement_count(s: &str) -> usize {
    s.chars().filter(|&c| c == char::REPLACEMENT_CHARACTER).count()
}

/// Text whose bytes were read as Latin-1 and stored as UTF-8 ("å¤§" for "大"), decoded again with the
/// charset it was written in. `None` unless the result is clean and actually changed.
fn undo_latin1_mojibake(text: &str, decode: fn(&[u8]) -> String) -> Option<String> {
    let high = text.chars().filter(|&c| ('\u{80}'..='\u{FF}').contains(&c)).count();
    if high < 2 || text.chars().any(|c| c > '\u{FF}') {
        return None;
    }
    let bytes: Vec<u8> = text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect::<Option<_>>()?;
    let fixed = decode(&bytes);
    let clean = replacement_count(&fixed) == 0 && !fixed.chars().any(|c| ('\u{80}'..='\u{FF}').contains(&c));
    (clean && fixed != text).then_some(fixed)
}

// ---------------------------------------------------------------------------------------------
// Headers.
// ---------------------------------------------------------------------------------------------

/// The first address in a From/Reply-To that is an email address at all.
fn first_mailbox(addr: Option<&Address<'_>>) -> Option<Mailbox> {
    addr?.iter().find_map(|a| mailbox_of(a).or_else(|| a.name().and_then(mailbox_in_text)))
}

/// One parsed address as a mailbox, when it has an address at all.
fn mailbox_of(a: &mail_parser::Addr<'_>) -> Option<Mailbox> {
    let address = a.address().and_then(clean_address)?;
    let name = a.name().map(clean_line).filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case(&address));
    Some(Mailbox { address, name })
}

/// The mailbox in a display text that holds a whole address: some senders encode the whole header
/// value, address included, as one RFC 2047 word (Python's `email` package does, with
/// `Header('"张伟" <zhang.wei@example.cn>', "utf-8")`), which decodes to a name and no address.
fn mailbox_in_text(text: &str) -> Option<Mailbox> {
    if !text.contains('@') {
        return None;
    }
    let header = format!("From: {}\r\n\r\n", text.replace(['\r', '\n'], " "));
    let msg = MessageParser::default().parse(header.as_bytes())?;
    msg.from()?.iter().find_map(mailbox_of)
}

fn clean_address(a: &str) -> Option<String> {
    let a = clean_line(a).trim_matches(['<', '>']).to_lowercase();
    let (local, domain) = a.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty() && !a.contains(' ')).then_some(a)
}

fn all_addresses(msg: &Message<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in msg.all_to().flat_map(|a| a.iter()) {
        if let Some(addr) = a.address().and_then(clean_address)
            && !out.contains(&addr)
        {
            out.push(addr);
        }
    }
    out
}

/// Message ids from In-Reply-To / References, without `<>`, repeats removed.
///
/// At most [`MAX_THREAD_IDS`]: the first (the thread's root) and the most recent ones, as RFC 5322
/// §3.6.4 suggests for trimming References. A header of 40,000 ids would otherwise be looked up
/// id by id, and past SQLite's 32,766 bound parameters fail the lookup.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    let raw: Vec<&str> = match value {
        HeaderValue::Text(t) => vec![t.as_ref()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.as_ref()).collect(),
        _ => vec![],
    };
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for id in raw.into_iter().map(clean_id) {
        if !id.is_empty() && seen.insert(id.clone()) {
            out.push(id);
        }
    }
    if out.len() > MAX_THREAD_IDS {
        out.drain(1..out.len() - (MAX_THREAD_IDS - 1));
    }
    out
}

/// Most message ids kept from one In-Reply-To or References header.
pub const MAX_THREAD_IDS: usize = 50;

fn clean_id(id: &str) -> String {
    clean_line(id).trim_matches(['<', '>']).trim().to_string()
}

/// One line of header text: whitespace runs collapsed, control characters gone.
fn clean_line(s: &str) -> String {
    headers::unfold(&s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>())
}

fn to_offset_date_time(d: &mail_parser::DateTime) -> Option<OffsetDateTime> {
    if !d.is_valid() {
        return None;
    }
    let sign = if d.tz_before_gmt { -1 } else { 1 };
    let offset =
        UtcOffset::from_hms(sign * i8::try_from(d.tz_hour).ok()?, sign * i8::try_from(d.tz_minute).ok()?, 0).ok()?;
    OffsetDateTime::from_unix_timestamp(d.to_timestamp()).ok().map(|t| t.to_offset(offset))
}

// ---------------------------------------------------------------------------------------------
// Body.
// ---------------------------------------------------------------------------------------------

/// The readable text: the text/plain body parts, else the HTML ones turned into text, else the text
/// of a multipart whose boundary never came (sisimai's rfc3464-04) — some text rather than none.
fn body_text(msg: &Message<'_>) -> String {
    let parents = parent_map(msg);
    let collect = |ids: Vec<usize>| {
        let mut out = String::new();
        for id in ids {
            let Some(t) = part_text(msg, &parents, id) else {
                continue;
            };
            let t = clean_text(&t);
            if t.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(&t);
        }
        out
    };
    let ids = |list: &[u32]| list.iter().map(|&id| id as usize).collect::<Vec<_>>();
    let text = collect(ids(&msg.text_body));
    if !text.is_empty() {
        return text;
    }
    let html = collect(ids(&msg.html_body));
    if !html.is_empty() {
        return html;
    }
    collect((0..msg.parts.len()).filter(|&id| msg.parts.get(id).is_some_and(is_broken_multipart)).collect())
}

/// A multipart the parser could not split (its boundary is missing or never appears): kept as text.
fn is_broken_multipart(part: &MessagePart<'_>) -> bool {
    matches!(part.body, PartType::Text(_) | PartType::Binary(_)) && headers::media_type(part).starts_with("multipart/")
}

/// For each part, the multipart that contains it.
fn parent_map(msg: &Message<'_>) -> Vec<Option<usize>> {
    let mut parents = vec![None; msg.parts.len()];
    for (id, part) in msg.parts.iter().enumerate() {
        if let PartType::Multipart(children) = &part.body {
            for &child in children {
                if let Some(slot) = parents.get_mut(child as usize)
                    && child as usize != id
                {
                    *slot = Some(id);
                }
            }
        }
    }
    parents
}

fn part_text(msg: &Message<'_>, parents: &[Option<usize>], id: usize) -> Option<String> {
    let part = msg.parts.get(id)?;
    let (decoded, is_html) = match &part.body {
        PartType::Text(t) => (t.as_ref(), false),
        PartType::Html(h) => (h.as_ref(), true),
        PartType::Binary(b) if is_broken_multipart(part) => {
            return Some(String::from_utf8_lossy(b).into_owned());
        }
        _ => return None,
    };
    let better = repair_part(&msg.raw_message, part).or_else(|| redecode(msg, parents, id, decoded));
    let text = better.as_deref().unwrap_or(decoded);
    Some(if is_html { html_to_text(text) } else { text.to_string() })
}

/// A part labelled with a CJK charset whose 8-bit body is Latin-1 mojibake stored as UTF-8 (the
/// Enron-era Big5 spam in imap_tools): decoded again from the original bytes.
fn repair_part(raw: &[u8], part: &MessagePart<'_>) -> Option<String> {
    if part.encoding != Encoding::None {
        return None;
    }
    let charset = headers::charset(part).filter(|c| is_multibyte_cjk(c))?;
    let decode = charset_decoder(charset.as_bytes())?;
    let bytes = raw.get(part.offset_body as usize..part.offset_end as usize)?;
    undo_latin1_mojibake(std::str::from_utf8(bytes).ok()?, decode)
}

/// When the parser's text has replacement characters, the part's bytes are decoded again with the
/// charsets the sender may have meant — the part's own, an enclosing multipart's (mnako's
/// multipart/signed declares it there, not on the text part), UTF-8, GB18030 — and with a lenient
/// base64 (an unpadded last group loses the parser a byte). The decoding with the fewest
/// replacement characters wins if it beats the parser's.
fn redecode(msg: &Message<'_>, parents: &[Option<usize>], id: usize, current: &str) -> Option<String> {
    let bad = replacement_count(current);
    if bad == 0 {
        return None;
    }
    let part = msg.parts.get(id)?;
    let bytes = original_bytes(&msg.raw_message, part)?;
    let mut charsets: Vec<String> = headers::charset(part).into_iter().collect();
    let mut up = parents.get(id).copied().flatten();
    while let Some(parent) = up {
        charsets.extend(msg.parts.get(parent).and_then(headers::charset));
        up = parents.get(parent).copied().flatten();
    }
    charsets.extend(["utf-8".to_string(), "gb18030".to_string()]);
    charsets
        .iter()
        .filter_map(|c| decode_with(c, &bytes))
        .map(|t| (replacement_count(&t), t))
        .filter(|(b, _)| *b < bad)
        .min_by_key(|(b, _)| *b)
        .map(|(_, t)| t)
}

fn decode_with(charset: &str, bytes: &[u8]) -> Option<String> {
    match charset {
        "utf-8" | "utf8" | "us-ascii" | "ascii" => Some(String::from_utf8_lossy(bytes).into_owned()),
        other => charset_decoder(other.as_bytes()).map(|decode| decode(bytes)),
    }
}

/// Line ends as `\n`, no control characters but tab and newline, no trailing blanks.
fn clean_text(s: &str) -> String {
    let s = s.replace("\r\n", "\n").replace('\r', "\n");
    let mut out: String = s.chars().filter(|&c| c == '\n' || c == '\t' || !c.is_control()).collect();
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    // Leading blank lines carry nothing.
    out.trim_start_matches(['\n', ' ', '\t']).to_string()
}

// ---------------------------------------------------------------------------------------------
// Attachments.
// ---------------------------------------------------------------------------------------------

fn attachments(msg: &Message<'_>, opts: &ParseOptions) -> Vec<Attachment> {
    let parents = parent_map(msg);
    // Another rendering of the body (text/enriched beside text/plain) is not a file the customer sent.
    let is_alternative = |id: usize| {
        parents
            .get(id)
            .copied()
            .flatten()
            .and_then(|p| msg.parts.get(p))
            .is_some_and(|p| headers::media_type(p) == "multipart/alternative")
    };
    msg.attachments
        .iter()
        .map(|&id| id as usize)
        .filter(|&id| !is_alternative(id))
        .filter_map(|id| msg.parts.get(id))
        .enumerate()
        .filter_map(|(n, part)| attachment(&msg.raw_message, part, n, opts))
        .collect()
}

fn attachment(raw: &[u8], part: &MessagePart<'_>, n: usize, opts: &ParseOptions) -> Option<Attachment> {
    if is_broken_multipart(part) {
        // Its text is the body (or the parser's leftovers), not a file.
        return None;
    }
    let bytes: Cow<'_, [u8]> = match &part.body {
        PartType::Binary(b) | PartType::InlineBinary(b) => Cow::Borrowed(b.as_ref()),
        PartType::Message(m) => Cow::Borrowed(m.raw_message()),
        // Text was decoded to UTF-8 by the parser; the file is what the sender attached.
        PartType::Text(t) | PartType::Html(t) => {
            original_bytes(raw, part).map_or(Cow::Borrowed(t.as_bytes()), Cow::Owned)
        }
        PartType::Multipart(_) => return None,
    };
    let media_type = match (&part.body, part.content_type()) {
        (PartType::Message(_), None) => "message/rfc822".to_string(),
        _ => headers::media_type(part),
    };
    let name = part
        .attachment_name()
        .map(|n| {
            // A name is a label, not a path: "..\\..\\boot.ini" becomes "boot.ini".
            let base = n.rsplit(['/', '\\']).next().unwrap_or(n);
            clean_line(base)
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| match part.body {
            PartType::Message(_) => format!("message-{}.eml", n + 1),
            _ => format!("attachment-{}", n + 1),
        });
    let size = bytes.len();
    let truncated = size > opts.max_attachment_bytes;
    let sha256 = Some(sha256_hex(&bytes));
    let content = (!truncated).then(|| Bytes::from(bytes.into_owned()));
    Some(Attachment {
        meta: AttachmentMeta {
            name,
            media_type,
            size: size as u64,
            sha256,
            url: None,
            truncated,
            content: content.clone(),
        },
        content,
    })
}

/// The part's bytes as sent, transfer encoding undone but no charset conversion.
fn original_bytes(raw: &[u8], part: &MessagePart<'_>) -> Option<Vec<u8>> {
    let body = raw.get(part.offset_body as usize..part.offset_end as usize)?;
    match part.encoding {
        Encoding::Base64 => {
            let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            LENIENT_BASE64.decode(compact).ok()
        }
        Encoding::QuotedPrintable => quoted_printable_decode(body),
        Encoding::None => Some(body.to_vec()),
    }
}

/// Mail encoders differ on padding; what matters is the bytes.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

#[cfg(test)]
mod tests {
    /// Messages found by fuzzing (bench/fuzz.sh) on which mail-parser stops at an internal assertion:
    /// refused with a reason (and so quarantined), not a panic that would stop the mailbox.
    #[test]
    fn messages_that_stop_the_mime_parser_are_refused_not_panicked() {
        for raw in [
            &include_bytes!("../tests/fuzz/mime-parser-assertion-1.eml")[..],
            &include_bytes!("../tests/fuzz/mime-parser-assertion-2.eml")[..],
        ] {
            match normalize(raw, &ParseOptions::default()) {
                // Release builds (no debug assertions in mail-parser) may parse it; either is fine.
                Ok(_) => {}
                Err(ParseError::ParserFailed(why)) => assert!(!why.is_empty()),
                Err(e) => panic!("refused for another reason: {e}"),
            }
        }
    }

    #[test]
    fn a_huge_references_header_keeps_its_first_and_latest_ids() {
        let refs: Vec<String> = (0..40_000).map(|i| format!("<id{i}@example.com>")).collect();
        let raw = format!(
            "From: a@b.example\nSubject: x\nMessage-ID: <m@b.example>\nReferences: {}\n\nhello\n",
            refs.join("\n ")
        );
        let started = std::time::Instant::now();
        let m = normalize(raw.as_bytes(), &ParseOptions::default()).expect("parses");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(m.references.len(), MAX_THREAD_IDS);
        assert_eq!(m.references[0], "id0@example.com", "the root stays");
        assert_eq!(m.references[MAX_THREAD_IDS - 1], "id39999@example.com", "the latest stays");
        assert_eq!(m.references[1], "id39951@example.com");
    }

    #[test]
    fn a_from_header_encoded_whole_keeps_its_address() {
        // Made by Python's `email` package (compat32): MIMEText(…, "gb2312") with
        // `Header('"张伟" <zhang.wei@example.cn>', "utf-8")` as From and `Header("杯子碎了", "gb2312")`
        // as Subject, which it labels with its codec name.
        let python = "Content-Type: text/plain; charset=\"gb2312\"\nMIME-Version: 1.0\n\
            Content-Transfer-Encoding: base64\n\
            From: =?utf-8?b?IuW8oOS8nyIgPHpoYW5nLndlaUBleGFtcGxlLmNuPg==?=\n\
            Subject: =?eucgb2312_cn?b?sa3X08vpwcs=?=\nMessage-ID: <py1@customer.example>\n\nsa3X08vpwcs=\n";
        let m = normalize(python.as_bytes(), &ParseOptions::default()).expect("parses");
        assert_eq!(m.customer_address(), Some("zhang.wei@example.cn"));
        assert_eq!(m.from.as_ref().and_then(|f| f.name.as_deref()), Some("张伟"));
        assert_eq!(m.subject.as_deref(), Some("杯子碎了"));
        assert_eq!(m.text, "杯子碎了");
        // The same, in the labels other software writes.
        for label in ["x-gbk", "EUCGB2312_CN", "cp936"] {
            let raw = python.replace("eucgb2312_cn", label);
            let m = normalize(raw.as_bytes(), &ParseOptions::default()).expect("parses");
            assert_eq!(m.subject.as_deref(), Some("杯子碎了"), "{label}");
        }
        let big5 = "From: a@b.example\nSubject: =?big5_tw?b?pKSk5Q==?=\n\nx\n";
        let m = normalize(big5.as_bytes(), &ParseOptions::default()).expect("parses");
        assert_eq!(m.subject.as_deref(), Some("中文"));
        // A name that only looks like it has an address stays a name with no address.
        let m = normalize(b"From: =?utf-8?q?Support_team?=\nSubject: x\n\nhello\n", &ParseOptions::default())
            .expect("parses");
        assert_eq!(m.customer_address(), None);
    }

    #[test]
    fn charset_labels_are_relabelled_only_where_they_are_labels() {
        assert_eq!(
            relabel_charsets(b"Subject: =?x-gbk?b?AA==?=\n").as_deref(),
            Some(&b"Subject: =?gbk?b?AA==?=\n"[..])
        );
        assert_eq!(
            relabel_charsets(b"Content-Type: text/plain; charset=\"big5_tw\"\n").as_deref(),
            Some(&b"Content-Type: text/plain; charset=\"big5\"\n"[..])
        );
        assert_eq!(relabel_charsets(b"Subject: about x-gbk and big5_tw\n"), None);
        assert_eq!(relabel_charsets(b"Subject: =?x-gbkfoo?b?AA==?=\n"), None);
    }
    use super::*;

    fn parse(raw: &str) -> ParsedMail {
        normalize(raw.as_bytes(), &ParseOptions::default()).expect("a message")
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        for (raw, want) in [
            ("", ParseError::Empty),
            (" \r\n\r\n", ParseError::Empty),
            ("just some words without a colon\n", ParseError::NoHeaders),
            ("Subject: hello\n\n", ParseError::NoSenderNoText),
            ("X-Whatever: 1\n\n\n\n", ParseError::NoSenderNoText),
        ] {
            assert_eq!(normalize(raw.as_bytes(), &ParseOptions::default()), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn is_lenient_with_what_still_has_a_sender_or_text() {
        // No From, but text.
        let m = parse("Subject: hi\n\nMy parcel is late.\n");
        assert_eq!(m.text, "My parcel is late.");
        assert_eq!(m.customer_address(), None);
        // A sender and no text.
        let m = parse("From: a@example.com\n\n");
        assert_eq!(m.customer_address(), Some("a@example.com"));
        assert_eq!(m.text, "");
    }

    #[test]
    fn reads_identity_and_thread() {
        let m = parse(
            "From: =?UTF-8?B?5byg5LiJ?= <Zhang.San@Example.COM>\r\n\
             Reply-To: \"Zhang\" <ZS@example.net>\r\n\
             To: support@shop.example, Other <o@shop.example>\r\n\
             Subject: =?GB2312?B?u9i4tDogW0Nhc2UgMDAwMC0wMDAwLTBd?=\r\n\
             Message-ID: < abc@mail.example >\r\n\
             In-Reply-To: <ack-1@shop.example>\r\n\
             References: <case-1@shop.example> <ack-1@shop.example>\r\n\
             Date: Tue, 2 Jan 2024 10:00:00 +0800\r\n\r\n还没到。\r\n",
        );
        assert_eq!(m.message_id, "abc@mail.example");
        assert!(!m.message_id_derived);
        assert_eq!(m.from, Some(Mailbox { address: "zhang.san@example.com".into(), name: Some("张三".into()) }));
        assert_eq!(m.customer_address(), Some("zs@example.net"));
        assert_eq!(m.to, vec!["support@shop.example", "o@shop.example"]);
        assert_eq!(m.subject.as_deref(), Some("回复: [Case 0000-0000-0]"));
        assert_eq!(m.in_reply_to, vec!["ack-1@shop.example"]);
        assert_eq!(m.references, vec!["case-1@shop.example", "ack-1@shop.example"]);
        assert_eq!(m.lang, Lang::Zh);
        let date = m.date.expect("a date");
        assert_eq!(date.unix_timestamp(), 1_704_160_800);
        assert_eq!(date.offset().whole_hours(), 8);
    }

    #[test]
    fn derives_a_stable_id_without_message_id() {
        let raw = b"From: a@example.com\n\nhello\n";
        let a = normalize(raw, &ParseOptions::default()).expect("parses");
        let b = normalize(raw, &ParseOptions::default()).expect("parses");
        assert!(a.message_id_derived);
        assert_eq!(a.message_id, b.message_id);
        let hex = a
            .message_id
            .strip_prefix("sha256-")
            .and_then(|s| s.strip_suffix("@earshot.invalid"))
            .expect("derived shape");
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
        // An empty Message-ID is no id either.
        let c = parse("Message-ID: <>\nFrom: a@example.com\n\nhello\n");
        assert!(c.message_id_derived);
    }

    #[test]
    fn links_only_valid_case_refs() {
        let good = CaseRef::from_seq(5);
        let digits: String = good.as_str().chars().filter(char::is_ascii_digit).collect();
        let last = digits.chars().last().and_then(|c| c.to_digit(10)).unwrap_or(0);
        let bad = format!("{}{}", &digits[..8], (last + 1) % 10);
        let m = parse(&format!("From: a@example.com\nSubject: Re: [Case {good}] and Case {bad}\n\nstill late\n"));
        assert_eq!(m.case_refs, vec![good]);
        assert_eq!(m.mentioned_refs, vec![bad]);
    }

    #[test]
    fn strips_history_but_keeps_the_full_text() {
        let m = parse(
            "From: a@example.com\nSubject: Re: x\n\nStill late.\n\nOn Mon, Shop <s@shop.example> wrote:\n> We shipped it.\n",
        );
        assert_eq!(m.text, "Still late.");
        assert!(m.full_text.contains("> We shipped it."));
        // A forward keeps the forwarded message: it is the evidence.
        let m = parse(
            "From: a@example.com\nSubject: Fwd: order\n\nSee below\n\n-----Original Message-----\nFrom: shop\nSent: Mon\n\nYour order is cancelled.\n",
        );
        assert!(m.text.contains("Your order is cancelled."));
    }

    #[test]
    fn turns_html_into_readable_text() {
        let m = parse(
            "From: a@example.com\nContent-Type: text/html; charset=utf-8\n\n<html><head><style>p{color:red}</style></head><body><p>Fish &amp; chips&nbsp;&lt;cold&gt;</p><br>订单</body></html>\n",
        );
        for tag in ["<p", "</", "<br", "<html"] {
            assert!(!m.text.contains(tag), "{}", m.text);
        }
        assert!(!m.text.contains("color"), "{}", m.text);
        assert!(m.text.contains("Fish & chips"), "{}", m.text);
        assert!(m.text.contains("<cold>"), "{}", m.text);
        assert!(m.text.contains("订单"), "{}", m.text);
    }

    #[test]
    fn decodes_every_charset_customers_use() {
        // charset label, body bytes (8bit), expected text
        let cases: [(&str, &[u8], &str); 14] = [
            ("utf-8", "订单未到 café".as_bytes(), "订单未到 café"),
            ("gb2312", b"\xb6\xa9\xb5\xa5\xce\xb4\xb5\xbd", "订单未到"),
            ("GBK", b"\xb0\xac\xc0\xf2\xbdz", "艾莉絲"),
            ("gb18030", b"\xb0\xac\xc0\xf2\xbdz", "艾莉絲"),
            ("big5", b"\xad\x71\xb3\xe6\xa5\xbc\xa8\xec", "訂單未到"),
            ("iso-2022-jp", b"\x1b$B$9$_$^$;$s\x1b(B", "すみません"),
            ("shift_jis", b"\x82\xa0\x82\xa2\x82\xa4", "あいう"),
            ("euc-kr", b"\xc7\xd1\xb1\xb9\xbe\xee", "한국어"),
            ("iso-8859-1", b"caf\xe9", "café"),
            ("iso-8859-2", b"\xb3\xf3d\xbc", "łódź"),
            ("iso-8859-5", b"\xbf\xe0\xd8\xd2\xd5\xe2", "Привет"),
            ("windows-1251", b"\xcf\xf0\xe8\xe2\xe5\xf2", "Привет"),
            ("windows-1252", b"\x93late\x94 \x80", "\u{201c}late\u{201d} €"),
            ("windows-1250", b"\x8a\x9e", "Šž"),
        ];
        for (charset, body, want) in cases {
            let mut raw = format!("From: a@example.com\nContent-Type: text/plain; charset={charset}\n\n").into_bytes();
            raw.extend_from_slice(body);
            let m = normalize(&raw, &ParseOptions::default()).expect("parses");
            assert_eq!(m.text, want, "{charset}");
            // The same bytes as an encoded-word subject.
            let b64 = base64::engine::general_purpose::STANDARD.encode(body);
            let raw = format!("From: a@example.com\nSubject: =?{charset}?B?{b64}?=\n\nx\n");
            let m = normalize(raw.as_bytes(), &ParseOptions::default()).expect("parses");
            assert_eq!(m.subject.as_deref(), Some(want), "{charset} subject");
        }
    }

    #[test]
    fn decodes_raw_8bit_chinese_headers() {
        // QQ Mail style: GB2312 bytes in the header, no encoded-word; the body declares the charset.
        let mut raw = b"From: \"".to_vec();
        raw.extend_from_slice(b"\xd5\xc5\xc8\xfd"); // 张三
        raw.extend_from_slice(b"\" <zs@example.com>\nSubject: ");
        raw.extend_from_slice(b"\xcd\xb6\xcb\xdf"); // 投诉
        raw.extend_from_slice(b"\nContent-Type: text/plain; charset=\"gb2312\"\n\n");
        raw.extend_from_slice(b"\xc4\xe3\xba\xc3\n"); // 你好
        let m = normalize(&raw, &ParseOptions::default()).expect("parses");
        assert_eq!(m.subject.as_deref(), Some("投诉"));
        assert_eq!(m.from.and_then(|f| f.name).as_deref(), Some("张三"));
        assert_eq!(m.text, "你好");
    }

    #[test]
    fn undoes_latin1_mojibake_only_when_clean() {
        let big5 = charset_decoder(b"big5").expect("big5 decoder");
        // "大家" in Big5 is a4 6a ae 61; read as Latin-1 that is "¤j®a".
        assert_eq!(undo_latin1_mojibake("¤j®a", big5).as_deref(), Some("大家"));
        assert_eq!(undo_latin1_mojibake("plain", big5), None);
        assert_eq!(undo_latin1_mojibake("already 大家", big5), None);
    }

    #[test]
    fn keeps_attachment_metadata_and_truncates() {
        let raw = "From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nsee attached\n--b\nContent-Type: application/pdf; name=\"../receipt.pdf\"\nContent-Disposition: attachment; filename=\"../receipt.pdf\"\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n--b\nContent-Type: text/plain; charset=gbk; name=note.txt\nContent-Disposition: attachment; filename=note.txt\nContent-Transfer-Encoding: quoted-printable\n\n=C4=E3=BA=C3\n--b--\n";
        let m = normalize(raw.as_bytes(), &ParseOptions::default()).expect("parses");
        assert_eq!(m.text, "see attached");
        assert_eq!(m.attachments.len(), 2);
        let pdf = &m.attachments[0];
        assert_eq!(pdf.meta.name, "receipt.pdf");
        assert_eq!(pdf.meta.media_type, "application/pdf");
        assert_eq!(pdf.content.as_deref(), Some(&b"%PDF-1.4\n"[..]));
        assert_eq!(pdf.meta.size, 9);
        assert_eq!(pdf.meta.sha256.as_deref(), Some(sha256_hex(b"%PDF-1.4\n").as_str()));
        assert!(!pdf.meta.truncated);
        // The text attachment is the file as sent: GBK bytes, not UTF-8.
        assert_eq!(m.attachments[1].content.as_deref(), Some(&b"\xc4\xe3\xba\xc3"[..]));

        let small = ParseOptions { max_attachment_bytes: 4 };
        let m = normalize(raw.as_bytes(), &small).expect("parses");
        let pdf = &m.attachments[0];
        assert!(pdf.meta.truncated);
        assert_eq!(pdf.content, None);
        assert_eq!(pdf.meta.size, 9);
        assert!(pdf.meta.sha256.is_some());
        assert!(!m.attachments[1].meta.truncated);
    }

    #[test]
    fn drops_mbox_lines_and_byte_order_marks() {
        let m =
            parse("\u{feff}From MAILER-DAEMON  Mon Sep 20 19:29:27 2021\nFrom: a@example.com\nSubject: s\n\nbody\n");
        assert_eq!(m.customer_address(), Some("a@example.com"));
        assert_eq!(m.subject.as_deref(), Some("s"));
    }

    #[test]
    fn removes_control_characters() {
        let m = parse("From: a@example.com\nSubject: a\u{1}b\n\nx\u{0}y\r\nz\n");
        assert_eq!(m.subject.as_deref(), Some("a b"));
        assert_eq!(m.full_text, "xy\nz");
    }
}
