//! The parser against real MIME messages: the shared corpus (`shared/corpus/email`, see its
//! SOURCES.md), externally authored bounces, reports, auto-replies, CJK charsets and torture tests.
//!
//! Expectations are written out file by file, so that a change in what the parser does with any of
//! them shows up here as a failing assertion rather than as a surprise in production.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use earshot_channel::AutoKind;
use earshot_channel_email::{ParseOptions, ParsedMail, normalize};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/email")
}

/// Whether the corpus is there. A plain clone of the repository has no `shared/` beside it: the
/// test then says SKIPPED and passes, except under `CI=true`, where the corpus is required.
fn have_corpus(test: &str) -> bool {
    let dir = corpus_dir();
    if dir.join("SOURCES.md").is_file() {
        return true;
    }
    let why = format!(
        "the email test corpus is missing: expected {} (the `shared/` folder beside the repository, \
         with corpus/email/SOURCES.md in it)",
        dir.display()
    );
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true and {why}");
    eprintln!("SKIPPED: {test}: {why}");
    false
}

/// Every corpus file but SOURCES.md, by path relative to the corpus, sorted.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = corpus_dir();
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under the corpus root").to_string_lossy().replace('\\', "/");
            if rel == "SOURCES.md" {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            files.push((rel, bytes));
        }
    }
    files.sort();
    assert!(files.len() >= 150, "the corpus looks incomplete: {} files", files.len());
    files
}

fn parse(rel: &str) -> ParsedMail {
    let raw = std::fs::read(corpus_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    normalize(&raw, &ParseOptions::default()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Files that are not usable messages and go to quarantine, with the reason code.
const QUARANTINED: [(&str, &str); 13] = [
    // Boundary torture without a sender whose only text sits in nested parts the parser cannot
    // reach, or nowhere at all.
    ("mail-parser-malformed/000.eml", "no_sender_no_text"),
    ("mail-parser-malformed/001.eml", "no_sender_no_text"),
    ("mail-parser-malformed/003.eml", "no_sender_no_text"),
    ("mail-parser-malformed/004.eml", "no_sender_no_text"),
    ("mail-parser-malformed/006.eml", "no_sender_no_text"),
    ("mail-parser-malformed/007.eml", "no_sender_no_text"),
    ("mail-parser-malformed/010.eml", "no_sender_no_text"),
    ("mail-parser-malformed/012.eml", "no_sender_no_text"),
    // Licence texts copied beside the messages: not messages.
    ("mail-parser-malformed/COPYING", "no_sender_no_text"),
    ("mail-parser-thirdparty/COPYING", "no_sender_no_text"),
    // A digest whose From has no domain ("<moderator>") and whose text is all in the digested parts.
    ("mail-parser-thirdparty/007.eml", "no_sender_no_text"),
    // Starts with a blank line: no header fields at all (SOURCES.md calls it "headers only").
    ("mnako-letters/test_english_empty.txt", "no_headers"),
    // A bare attachment: no From, no Subject, no text.
    ("mnako-letters/test_english_top_level_attachment.txt", "no_sender_no_text"),
];

#[test]
fn every_file_is_normalized_or_quarantined() {
    if !have_corpus("every_file_is_normalized_or_quarantined") {
        return;
    }
    let mut quarantined = BTreeMap::new();
    for (rel, raw) in corpus() {
        let result = std::panic::catch_unwind(|| normalize(&raw, &ParseOptions::default()))
            .unwrap_or_else(|_| panic!("{rel}: the parser panicked"));
        match result {
            Err(e) => {
                assert!(!e.is_transient(), "{rel}");
                quarantined.insert(rel, e.code());
            }
            Ok(m) => {
                check_invariants(&rel, &m);
                // Pure: the same bytes give the same result.
                let again = normalize(&raw, &ParseOptions::default()).expect("parsed once already");
                assert_eq!(m, again, "{rel}: not deterministic");
            }
        }
    }
    let want: BTreeMap<String, &str> = QUARANTINED.iter().map(|(f, code)| (f.to_string(), *code)).collect();
    assert_eq!(quarantined, want);
}

fn check_invariants(rel: &str, m: &ParsedMail) {
    assert!(!m.message_id.is_empty(), "{rel}: no message id");
    assert!(!m.message_id.contains(['<', '>']), "{rel}: {}", m.message_id);
    if m.message_id_derived {
        let hex = m
            .message_id
            .strip_prefix("sha256-")
            .and_then(|s| s.strip_suffix("@earshot.invalid"))
            .unwrap_or_else(|| panic!("{rel}: derived id {}", m.message_id));
        assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{rel}");
    }
    assert!(
        m.customer_address().is_some() || !m.full_text.trim().is_empty(),
        "{rel}: neither sender nor text, yet not refused"
    );
    for text in [&m.text, &m.full_text] {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{rel}: control characters in {text:?}"
        );
    }
    // Stripping never takes everything.
    assert_eq!(m.text.trim().is_empty(), m.full_text.trim().is_empty(), "{rel}");
    for a in m.attachments.iter().chain(std::iter::empty()) {
        let sha = a.meta.sha256.as_deref().unwrap_or_else(|| panic!("{rel}: no sha256"));
        assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{rel}");
        assert!(!a.meta.name.is_empty() && !a.meta.name.contains(['/', '\\']), "{rel}: {}", a.meta.name);
        assert!(a.meta.media_type.contains('/'), "{rel}: {}", a.meta.media_type);
        assert!(!a.meta.media_type.starts_with("multipart/"), "{rel}: {}", a.meta.media_type);
        match &a.content {
            Some(c) => assert_eq!(c.len() as u64, a.meta.size, "{rel}"),
            None => assert!(a.meta.truncated, "{rel}"),
        }
    }
    if let Some(addr) = m.customer_address() {
        assert_eq!(addr, addr.to_lowercase(), "{rel}");
        assert!(addr.contains('@'), "{rel}");
    }
}

/// What the corpus says about itself in SOURCES.md: bounces, DSNs, ARF reports, MDNs and
/// auto-replies, plus the mailing-list and robot mail that also carries automatic signals. Every
/// other file (the negative controls is-not-bounce-01/02 among them) must come out as a person's mail.
const AUTOMATIC: [(&str, AutoKind); 37] = [
    ("chatwoot/non_utf_encoded_mail.eml", AutoKind::AutoReply),
    ("cpython-test_email/msg_02.txt", AutoKind::Bulk), // Mailman digest from ppp-request@
    ("cpython-test_email/msg_16.txt", AutoKind::Bounce),
    ("enmime/multipart-wo-boundary.raw", AutoKind::Bounce),
    ("flanker/disposition-notification.eml", AutoKind::Report),
    ("flanker/gmail-invalid-address.eml", AutoKind::Bounce),
    ("flanker/mailbox-full.eml", AutoKind::Bounce),
    ("flanker/yahoo.eml", AutoKind::Report),
    ("imap_tools/empty_in_reply_to.eml", AutoKind::Bulk), // carries List-Id
    ("imap_tools/encoding_madness.eml", AutoKind::Bulk),  // from no-reply@
    ("imap_tools/raw_email_with_mimepart_without_content_type.eml", AutoKind::Bounce),
    ("imap_tools/report_422.eml", AutoKind::Bounce),
    ("mimekit/delivery-status.txt", AutoKind::Bounce),
    ("mimekit/disposition-notification.txt", AutoKind::Report),
    ("mimekit/feedback-report.txt", AutoKind::Report),
    ("sisimai-set-of-emails/arf-01.eml", AutoKind::Report),
    ("sisimai-set-of-emails/dos/lhost-exim-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/lhost-amazonses-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/lhost-exim-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/lhost-gmail-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/lhost-office365-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/lhost-postfix-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/lhost-qmail-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/lhost-sendmail-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/rfc3464-01.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/rfc3464-03.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/rfc3464-04.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/rfc3464-06.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/rfc3464-38.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/rfc3464-39.eml", AutoKind::Bounce),
    ("sisimai-set-of-emails/rfc3834-01.eml", AutoKind::AutoReply),
    ("sisimai-set-of-emails/rfc3834-02.eml", AutoKind::AutoReply),
    ("sisimai-set-of-emails/rfc3834-03.eml", AutoKind::AutoReply),
    ("sisimai-set-of-emails/rfc3834-04.eml", AutoKind::AutoReply),
    ("sisimai-set-of-emails/rfc3834-05.eml", AutoKind::AutoReply),
    ("sisimai-set-of-emails/rfc3834-06.eml", AutoKind::AutoReply),
    ("sisimai-set-of-emails/rhost-tencent-01.eml", AutoKind::Bounce),
];

#[test]
fn automatic_mail_is_recognised_and_personal_mail_is_not() {
    if !have_corpus("automatic_mail_is_recognised_and_personal_mail_is_not") {
        return;
    }
    let want: BTreeMap<String, AutoKind> = AUTOMATIC.iter().map(|(f, k)| (f.to_string(), *k)).collect();
    let mut got = BTreeMap::new();
    for (rel, raw) in corpus() {
        if let Ok(m) = normalize(&raw, &ParseOptions::default())
            && let Some((kind, reason)) = m.automatic
        {
            assert!(!reason.is_empty(), "{rel}: no reason");
            got.insert(rel, kind);
        }
    }
    assert_eq!(got, want);

    // The negative controls and ordinary messages, named explicitly.
    for rel in [
        "sisimai-set-of-emails/is-not-bounce-01.eml",
        "sisimai-set-of-emails/is-not-bounce-02.eml",
        "mnako-letters/test_english_plaintext_ascii_over_7bit.txt",
        "mnako-letters/test_chinese_plaintext_gbk_over_base64.txt",
        "mnako-letters/test_chinese_plaintext_gb18030_over_quoted-printable.txt",
        "php-imap/thread_re_my_topic.eml",
        "flanker/no-ctype.eml",
        "flanker/charset-gb2312.eml",
    ] {
        assert_eq!(parse(rel).automatic, None, "{rel}");
    }
}

#[test]
fn automatic_mail_says_why() {
    if !have_corpus("automatic_mail_says_why") {
        return;
    }
    for (rel, kind, reason) in [
        ("sisimai-set-of-emails/rfc3834-01.eml", AutoKind::AutoReply, "Auto-Submitted: auto-replied"),
        // Exchange out-of-office: no Auto-Submitted, a null Return-Path and X-Auto-Response-Suppress.
        ("sisimai-set-of-emails/rfc3834-02.eml", AutoKind::AutoReply, "out-of-office (Subject: automatic reply:)"),
        ("sisimai-set-of-emails/rfc3834-03.eml", AutoKind::AutoReply, "X-Apple-Action: VACATION"),
        ("sisimai-set-of-emails/rfc3834-04.eml", AutoKind::AutoReply, "out-of-office (Subject: automatic reply:)"),
        // A DSN that also says Auto-Submitted: auto-replied is a bounce.
        (
            "sisimai-set-of-emails/rhost-tencent-01.eml",
            AutoKind::Bounce,
            "Content-Type: multipart/report; report-type=delivery-status",
        ),
        // multipart/report without report-type: the message/delivery-status part says it.
        ("cpython-test_email/msg_16.txt", AutoKind::Bounce, "Content-Type: message/delivery-status"),
        ("sisimai-set-of-emails/lhost-qmail-01.eml", AutoKind::Bounce, "From: mailer-daemon@"),
        ("sisimai-set-of-emails/rfc3464-39.eml", AutoKind::Bounce, "From: postmaster@"),
        (
            "sisimai-set-of-emails/arf-01.eml",
            AutoKind::Report,
            "Content-Type: multipart/report; report-type=feedback-report",
        ),
        ("chatwoot/non_utf_encoded_mail.eml", AutoKind::AutoReply, "Auto-Submitted: auto-replied"),
    ] {
        assert_eq!(parse(rel).automatic, Some((kind, reason.to_string())), "{rel}");
    }
}

#[test]
fn bounces_name_the_failed_recipient_and_our_message() {
    if !have_corpus("bounces_name_the_failed_recipient_and_our_message") {
        return;
    }
    // file, failed recipients, status codes, original Message-ID
    type Want<'a> = (&'a str, &'a [&'a str], &'a [&'a str], Option<&'a str>);
    let cases: [Want<'_>; 13] = [
        (
            "sisimai-set-of-emails/lhost-exim-01.eml",
            &["kijitora@example.ed.jp"],
            &[],
            Some("E1P1ce6-000Egt-GZ@e1.example.org"),
        ),
        (
            "sisimai-set-of-emails/lhost-qmail-01.eml",
            &["kijitora@example.ne.jp"],
            &["5.5.0"],
            Some("000000000.9999999999999.JavaMail.postmaster@mailhub"),
        ),
        // Original-Recipient (what we sent to), not the alias Postfix expanded it into.
        ("sisimai-set-of-emails/lhost-postfix-01.eml", &["kijitora@example.org"], &["5.1.1"], None),
        (
            "sisimai-set-of-emails/lhost-gmail-01.eml",
            &["userunknown@example.jp"],
            &[],
            Some("D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com"),
        ),
        (
            "sisimai-set-of-emails/lhost-amazonses-01.eml",
            &["shironeko@example.co.jp"],
            &["5.0.0"],
            Some("000001321defbd2a-788e31c8-2be1-422f-a8d4-cf7765cc9ed7-000000@email.amazonses.com"),
        ),
        // A DSN without its delivery-status part: read from the text.
        (
            "sisimai-set-of-emails/lhost-office365-01.eml",
            &["kijitora@example.com"],
            &["5.1.10"],
            Some("FFFFFFFF.EEEEEEEE@example.ed.jp"),
        ),
        ("sisimai-set-of-emails/rfc3464-38.eml", &["kijitora-nyaan@example.jp"], &[], None),
        ("sisimai-set-of-emails/rfc3464-39.eml", &["kijitora@nyaan.example.net"], &[], None),
        (
            "sisimai-set-of-emails/rhost-tencent-01.eml",
            &["nekochan@qq.example.cn"],
            &["5.0.0"],
            Some("20180429233445.1BFAC0EE7C9F@mail.example.net"),
        ),
        ("mimekit/delivery-status.txt", &["newsletter-request@imusic.com"], &[], Some("31FC7EB4.41C6@netscape.com")),
        (
            "cpython-test_email/msg_16.txt",
            &["jangel1@cougar.noc.ucla.edu"],
            &["5.0.0"],
            Some("002001c144a6$8752e060$56104586@oxy.edu"),
        ),
        // Delay warnings: nobody failed (yet).
        (
            "imap_tools/report_422.eml",
            &[],
            &["4.2.2"],
            Some("15655788.13.1200472642578.JavaMail.Administrator@mail.ttttt.com.au"),
        ),
        (
            "imap_tools/raw_email_with_mimepart_without_content_type.eml",
            &[],
            &["4.5.0"],
            Some("89d7557c0610181510r6fa5ebd8n66a7deec71ade118@mail.gmail.com"),
        ),
    ];
    for (rel, failed, codes, original) in cases {
        let m = parse(rel);
        let report = m.report.unwrap_or_else(|| panic!("{rel}: no report"));
        assert_eq!(report.failed_recipients, failed, "{rel}");
        assert_eq!(report.status_codes, codes, "{rel}");
        assert_eq!(report.original_message_id.as_deref(), original, "{rel}");
    }
    let arf = parse("flanker/yahoo.eml").report.expect("an ARF report");
    assert_eq!(arf.report_type.as_deref(), Some("feedback-report"));
    assert_eq!(arf.feedback.as_deref(), Some("abuse"));
    assert!(arf.failed_recipients.is_empty());
    // Auto-replies and personal mail carry no report.
    assert_eq!(parse("sisimai-set-of-emails/rfc3834-01.eml").report, None);
    assert_eq!(parse("sisimai-set-of-emails/is-not-bounce-02.eml").report, None);
}

const POEM_START: &str = "石室诗士施氏，嗜狮，誓食十狮。";
const POEM_END: &str = "试释是事。";

#[test]
fn chinese_charsets_read_as_chinese() {
    if !have_corpus("chinese_charsets_read_as_chinese") {
        return;
    }
    let mnako: Vec<String> =
        corpus().into_iter().map(|(rel, _)| rel).filter(|rel| rel.starts_with("mnako-letters/test_chinese_")).collect();
    assert_eq!(mnako.len(), 16);
    for rel in &mnako {
        let m = parse(rel);
        let subject = m.subject.as_deref().unwrap_or_default();
        assert!(subject.starts_with("📧 ") && subject.ends_with("Test 施氏食狮史"), "{rel}: {subject}");
        // 絲 (bd 7a) exists in GBK and GB18030, not in GB2312: a GB2312 decoder would lose it.
        let from = m.from.as_ref().expect("a sender");
        assert_eq!(from.name.as_deref(), Some("艾莉絲 发件人"), "{rel}");
        assert_eq!(from.address, "alice.fajianren@example.com", "{rel}");
        assert_eq!(m.customer_address(), Some("alice.fajianren@example.net"), "{rel}: Reply-To wins");
        assert!(m.text.starts_with(POEM_START), "{rel}: {}", m.text);
        assert!(m.text.contains(POEM_END), "{rel}: {}", m.text);
        assert!(!m.text.contains('\u{FFFD}'), "{rel}: {}", m.text);
        assert_eq!(m.lang, earshot_channel::Lang::Zh, "{rel}");
    }

    // QQ enterprise mail: raw 8-bit GB2312 in From and Subject, HTML body.
    let m = parse("flanker/charset-gb2312.eml");
    assert_eq!(m.subject.as_deref(), Some("提示：您的企业成员暂时无法登录邮件客户端"));
    assert_eq!(m.from.and_then(|f| f.name).as_deref(), Some("腾讯企业邮箱"));
    for want in ["尊敬的管理员：", "频繁地登录失败，原因是密码错误。", "腾讯企业邮箱团队"]
    {
        assert!(m.text.contains(want), "{want} in {}", m.text);
    }
    for html in ["<div", "<td", "&nbsp;", "style="] {
        assert!(!m.text.contains(html), "{html} in {}", m.text);
    }

    // The same sender, but the file was already broken upstream ("锟斤拷" is UTF-8's replacement
    // character read as GBK): read consistently as GB18030, keeping what survived (讯, 业, 突, 2G).
    let m = parse("flanker/charset-gb2312-1.eml");
    assert_eq!(m.from.and_then(|f| f.name).as_deref(), Some("锟斤拷讯锟斤拷业锟斤拷锟斤拷"));
    assert!(m.subject.as_deref().unwrap_or_default().starts_with("锟斤拷时锟截伙拷"));
    assert!(m.text.contains("突锟斤拷2G"), "{}", m.text);
    assert!(!m.text.contains('\u{FFFD}') && !m.text.contains("<td"), "{}", m.text);

    // The non-standard label X-GBK.
    assert_eq!(parse("php-imap/gbk_charset.eml").text, "Hi");
}

#[test]
fn other_cjk_charsets_are_not_mojibake() {
    if !have_corpus("other_cjk_charsets_are_not_mojibake") {
        return;
    }
    // file, subject, text snippets
    let cases: [(&str, &str, &[&str]); 9] = [
        ("imap_tools/japanese_iso_2022.eml", "まみむめも", &["すみません。"]),
        ("imap_tools/japanese_shift_jis.eml", "test", &["あいうえお", "このメールはテスト用のメールです。"]),
        ("imap_tools/ks_c_5601-1987.eml", "test", &["스티해"]),
        ("mimekit/japanese.txt", "日本語メールテスト (testing Japanese emails)", &["日本語が\n正常に"]),
        (
            "mnako-letters/test_japanese_plaintext_iso-2022-jp_over_7bit.txt",
            "📧 Test いろは歌",
            &["色は匂えど", "酔いもせず。"],
        ),
        (
            "mnako-letters/test_japanese_multipart_mixed_iso-2022-jp_over_base64.txt",
            "📧 Test いろは歌",
            &["色は匂えど"],
        ),
        ("mnako-letters/test_japanese_plaintext_euc-jp_over_base64.txt", "📧 Test いろは歌", &["色は匂えど"]),
        (
            "mnako-letters/test_korean_plaintext_euc-kr_over_base64.txt",
            "📧 Test 한국어 팬그램",
            &["키스의 고유조건은 입술끼리 만나야 하고"],
        ),
        // Big5 spam whose bytes were read as Latin-1 and stored as UTF-8, subject and body alike.
        (
            "imap_tools/content_transfer_encoding_empty.eml",
            "4d8119\u{3000}(大補泡麵專賣) 大家說英語 每日聽MP3 (2004年6月份) 繁體中文光碟版 (英語教學)\u{3000}8afb90",
            &["軟體帝國更新迅速", "Yahoo! 工具列 - 內置防止彈出視窗工能！"],
        ),
    ];
    for (rel, subject, snippets) in cases {
        let m = parse(rel);
        assert_eq!(m.subject.as_deref(), Some(subject), "{rel}");
        for s in snippets {
            assert!(m.full_text.contains(s), "{rel}: {s} in {}", m.full_text);
        }
        assert!(!m.full_text.contains('\u{FFFD}'), "{rel}: {}", m.full_text);
    }
    let m = parse("mnako-letters/test_japanese_plaintext_iso-2022-jp_over_7bit.txt");
    assert_eq!(m.from.and_then(|f| f.name).as_deref(), Some("郵便アリス"));
}

#[test]
fn encoded_words_are_decoded() {
    if !have_corpus("encoded_words_are_decoded") {
        return;
    }
    // file, subject, sender's display name
    let cases: [(&str, Option<&str>, Option<&str>); 7] = [
        // Arabic UTF-8 Q-encoded subject split over three encoded-words.
        ("chatwoot/non_utf_encoded_mail.eml", Some("أهلين عميلنا الكريم"), Some("متجر سوق نت")),
        // A display name that decodes to a comma stays one name.
        ("flanker/encoded-header.eml", Some("hello"), Some("Foo, Bar")),
        ("mail-parser-thirdparty/010.eml", Some("こんにちは"), None),
        ("imap_tools/forwarded_message.eml", Some("статус"), None),
        ("imap_tools/header_fields_with_empty_values.eml", Some("Testmail"), Some("Jørn Støylen")),
        (
            "mnako-letters/test_english_multipart_mixed_utf-8_over_quoted-printable.txt",
            Some("📧 Test English Pangrams"),
            Some("Alice Sender"),
        ),
        // An unknown charset label: the bytes are ASCII anyway.
        ("imap_tools/bad_encoded_subject.eml", Some("TEST"), None),
    ];
    for (rel, subject, name) in cases {
        let m = parse(rel);
        assert_eq!(m.subject.as_deref(), subject, "{rel}");
        assert_eq!(m.from.and_then(|f| f.name).as_deref(), name, "{rel}");
    }
    // Windows-1252 quoted-printable bodies (Exchange): =92 is a right single quote.
    assert!(parse("sisimai-set-of-emails/lhost-office365-01.eml").text.contains("wasn\u{2019}t found"));
    assert!(parse("sisimai-set-of-emails/rfc3834-04.eml").text.contains("intermittent access"));
}

#[test]
fn html_only_mail_reads_as_text() {
    if !have_corpus("html_only_mail_reads_as_text") {
        return;
    }
    for (rel, want) in [("php-imap/html_only.eml", "Hi"), ("enmime/html-only-inline.raw", "Test of HTML section")] {
        assert_eq!(parse(rel).text, want, "{rel}");
    }
}

#[test]
fn threads_are_followed() {
    if !have_corpus("threads_are_followed") {
        return;
    }
    let root = parse("php-imap/thread_my_topic.eml");
    let reply = parse("php-imap/thread_re_my_topic.eml");
    assert_eq!(reply.in_reply_to, vec![root.message_id.clone()]);
    assert!(parse("php-imap/thread_unrelated.eml").in_reply_to.is_empty());
    assert_eq!(
        parse("sisimai-set-of-emails/rfc3834-03.eml").references,
        vec!["25203A4E-F90F-4A14-BF51-3E7B9D39BE8E@libsisimai.org"]
    );
    // An empty In-Reply-To is no reference; a duplicated one counts once.
    assert!(parse("imap_tools/empty_in_reply_to.eml").in_reply_to.is_empty());
    assert_eq!(parse("chatwoot/non_utf_encoded_mail.eml").in_reply_to.len(), 1);
    // Without Message-ID, an id derived from the bytes.
    let m = parse("php-imap/html_only.eml");
    assert!(m.message_id_derived);
    assert!(m.message_id.starts_with("sha256-") && m.message_id.ends_with("@earshot.invalid"));
}

#[test]
fn attachments_keep_metadata_and_respect_the_size_limit() {
    if !have_corpus("attachments_keep_metadata_and_respect_the_size_limit") {
        return;
    }
    let rel = "mnako-letters/test_chinese_multipart_mixed_gbk_over_base64.txt";
    // name, media type, size, SHA-256 (computed with Python's email package)
    let want: [(&str, &str, u64, &str); 7] = [
        (
            "inline-jpg-image-without-disposition.jpg",
            "image/jpeg",
            107,
            "0b8d8b5f15046343fd32f451df93acc2bdd9e6373be478b968e4cad6b6647351",
        ),
        (
            "inline-jpg-image-filename.jpg",
            "image/jpeg",
            107,
            "0b8d8b5f15046343fd32f451df93acc2bdd9e6373be478b968e4cad6b6647351",
        ),
        (
            "attached-pdf-filename.pdf",
            "application/pdf",
            67,
            "1d9e024228ddfa3a9b8924b96d65d7428c326cc8945102a8149182b2f8e823b5",
        ),
        (
            "attached-pdf-without-disposition.pdf",
            "application/pdf",
            67,
            "1d9e024228ddfa3a9b8924b96d65d7428c326cc8945102a8149182b2f8e823b5",
        ),
        (
            "attached-json-filename.json",
            "application/json",
            13,
            "7a38bf81f383f69433ad6e900d35b3e2385593f76a7b7ab5d4355b8ba41ee24b",
        ),
        (
            "attached-text-plain-filename.txt",
            "text/plain",
            44,
            "9a08f13c2af533227fced1ff423929519865d9d20283a22e63f10464ec58af62",
        ),
        (
            "attached-text-html-filename.html",
            "text/html",
            44,
            "10666c3cd3e42cc276efb5c51b9271a7dd35a92bda7759078aaf5b35d02fde10",
        ),
    ];
    for rel in [rel, "mnako-letters/test_chinese_multipart_mixed_gbk_over_quoted-printable.txt"] {
        let m = parse(rel);
        let got: Vec<(&str, &str, u64, &str)> = m
            .attachments
            .iter()
            .map(|a| {
                (
                    a.meta.name.as_str(),
                    a.meta.media_type.as_str(),
                    a.meta.size,
                    a.meta.sha256.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(got, want, "{rel}");
        for a in &m.attachments {
            assert!(!a.meta.truncated, "{rel}");
            assert_eq!(a.meta.content, a.content, "{rel}: the contract's copy is the same bytes");
        }
        let pdf = &m.attachments[2];
        assert!(pdf.content.as_deref().is_some_and(|c| c.starts_with(b"%PDF-1.")));
    }

    // Over the limit: metadata and hash kept, content dropped.
    let raw = std::fs::read(corpus_dir().join(rel)).expect("readable");
    let m = normalize(&raw, &ParseOptions { max_attachment_bytes: 50 }).expect("parses");
    for a in &m.attachments {
        let over = a.meta.size > 50;
        assert_eq!(a.meta.truncated, over, "{}", a.meta.name);
        assert_eq!(a.content.is_none(), over, "{}", a.meta.name);
        assert_eq!(a.meta.content.is_none(), over, "{}", a.meta.name);
        assert!(a.meta.sha256.is_some());
    }
    assert_eq!(m.attachments.iter().filter(|a| a.meta.truncated).count(), 4);

    // An RFC 2231 name in a charset the bytes do not fit keeps a name (with a replacement mark),
    // and a forwarded message is one attachment.
    let m = parse("imap_tools/attachment_with_encoded_name.eml");
    assert_eq!(m.attachments.len(), 1);
    assert!(m.attachments[0].meta.name.ends_with("Pitbull.mp3"));
    let m = parse("imap_tools/attachment_message_rfc822.eml");
    assert_eq!(m.attachments[0].meta.name, "ForwardedMessage.eml");
    assert_eq!(m.attachments[0].meta.media_type, "message/rfc822");
}

#[test]
fn lenient_with_malformed_messages() {
    if !have_corpus("lenient_with_malformed_messages") {
        return;
    }
    // No blank line between header and body.
    assert_eq!(parse("cpython-test_email/msg_35.txt").text, "counter to RFC 5322, there's no separating newline here");
    // An invalid Date is no date, not an error.
    let m = parse("cpython-test_email/msg_47.txt");
    assert_eq!(m.date, None);
    assert_eq!(m.text, "### PHARRMACY ON1INE 24/7 ###");
    // A UTF-8 byte-order mark before the first header.
    assert_eq!(parse("mimekit/feedback-report.txt").customer_address(), Some("abusedesk@example.com"));
    // An mbox "From " line before the header.
    assert_eq!(parse("sisimai-set-of-emails/rfc3834-05.eml").customer_address(), Some("foo@bar.net"));
    // A multipart whose boundary never comes: its text rather than nothing.
    assert!(
        parse("sisimai-set-of-emails/rfc3464-04.eml")
            .text
            .contains("The following addresses had permanent fatal errors")
    );
    // Lenient about header names with spaces (mnako's X-Script lines): an extra header, not the body.
    let m = parse("mnako-letters/test_english_plaintext_ascii_over_7bit.txt");
    assert!(m.text.starts_with("The quick brown fox"), "{}", m.text);
    // Broken Content-Type: the media type is cleaned.
    let m = parse("enmime/mime-bad-content-type.raw");
    assert_eq!(m.attachments[0].meta.media_type, "application/pdf");
    // No From at all, but text: normalized, and the caller decides (it has no customer address).
    let m = parse("php-imap/missing_from.eml");
    assert_eq!((m.customer_address(), m.text.as_str()), (None, "Hi"));
}

/// Cut and damaged copies of every corpus file: whatever arrives, the parser answers without
/// panicking (a panic in the IMAP loop would stall the mailbox on one message forever).
#[test]
fn damaged_messages_do_not_panic() {
    if !have_corpus("damaged_messages_do_not_panic") {
        return;
    }
    // xorshift64: deterministic, so a failure reproduces.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let junk: [&[u8]; 8] = [b"\r\n", b"\n\n", b"--", b"=?", b"?=", b":", b"\xff\xfe", b"boundary=\"\""];
    for (rel, raw) in corpus() {
        if raw.is_empty() {
            continue;
        }
        for round in 0..24 {
            let mut bytes = raw.clone();
            let at = (next() as usize) % bytes.len();
            match round % 4 {
                0 => bytes.truncate(at),
                1 => bytes[at] = (next() & 0xff) as u8,
                2 => {
                    let piece = junk[(next() as usize) % junk.len()];
                    bytes.splice(at..at, piece.iter().copied());
                }
                _ => {
                    let end = (at + (next() as usize) % 64).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
            let outcome = std::panic::catch_unwind(|| normalize(&bytes, &ParseOptions { max_attachment_bytes: 16 }));
            assert!(outcome.is_ok(), "{rel}: panicked on round {round} (damage at byte {at})");
        }
    }
}
