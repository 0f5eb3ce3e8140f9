//! A Telegram update turned into what the gateway does with it: a customer's message, a command,
//! a survey answer, or nothing (with the reason, for `/metrics`). Pure: no I/O.

use std::collections::BTreeMap;

use earshot_channel::{
    AttachmentMeta, ChannelKind, CustomerInfo, ExternalId, Identity, IdentityKind, Inbound, Lang, ReplyRoute,
    ThreadHint,
};
use serde_json::json;
use teloxide_core::types::{Message, MessageKind, Update, UpdateKind, User};
use time::OffsetDateTime;

/// What the parser needs to know of the channel's settings.
#[derive(Debug, Clone)]
pub struct ParseContext {
    /// The bot's name: the cases' source, the replies' sender.
    pub source: String,
    pub allow_groups: bool,
    /// The follow-up window in seconds.
    pub follow_up_secs: u64,
}

/// What one update asks of the gateway.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// A message from a customer: a new case, or a follow-up of their open one.
    Message(Box<Inbound>),
    /// A command, answered by the bot at once.
    Command(Chat, Command),
    /// A tap on a survey button: `token` and `answer` (`rating=4`, `solved=no`).
    Answer {
        callback_id: String,
        token: String,
        answer: String,
        lang: Lang,
    },
    /// A button this gateway did not make (or an old keyboard): answered, nothing recorded.
    UnknownButton {
        callback_id: String,
    },
    Ignored(Ignored),
}

/// The chat a command came from, and who sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    pub chat_id: i64,
    pub message_id: i32,
    pub user: Identity,
    pub lang: Lang,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Start,
    /// `/status`, or `/status REF` (as typed).
    Status(Option<String>),
    /// `/new` with nothing after it: the bot explains how to start a separate case.
    NewWithoutText,
}

/// Why an update makes nothing; each reason is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A group or supergroup, with `allow_groups` off.
    Group,
    /// A channel post.
    Channel,
    /// A service message (a member joined, a pin, …).
    Service,
    /// A message from another bot.
    Bot,
    /// An update kind teloxide does not know.
    Unknown,
    /// A kind the gateway has no use for (an inline query, a poll, a reaction, …).
    Unused,
    /// A message with no text, caption, photo, document or voice note (a sticker, a location, …).
    Empty,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Group => "group",
            Ignored::Channel => "channel",
            Ignored::Service => "service",
            Ignored::Bot => "bot",
            Ignored::Unknown => "unknown_update",
            Ignored::Unused => "unused_update",
            Ignored::Empty => "empty",
        }
    }
}

/// The external id of a message: message ids count per chat, so the chat is part of it. The same
/// update delivered twice (a webhook retry, a restart before the offset moved) has the same id.
pub fn message_key(chat_id: i64, message_id: i32) -> String {
    format!("{chat_id}:{message_id}")
}

/// Survey buttons carry `s:<token>:<answer>` (at most 64 bytes, Telegram's limit).
pub fn survey_button(token: &str, answer: &str) -> String {
    format!("s:{token}:{answer}")
}

pub fn parse(update: &Update, ctx: &ParseContext) -> Parsed {
    match &update.kind {
        UpdateKind::Message(m) => message(update.id.0, m, false, ctx),
        UpdateKind::EditedMessage(m) => message(update.id.0, m, true, ctx),
        UpdateKind::CallbackQuery(q) => {
            let lang = user_lang(&q.from).unwrap_or(Lang::En);
            match q.data.as_deref().and_then(|d| d.strip_prefix("s:")).and_then(|d| d.split_once(':')) {
                Some((token, answer)) => Parsed::Answer {
                    callback_id: q.id.0.clone(),
                    token: token.to_owned(),
                    answer: answer.to_owned(),
                    lang,
                },
                None => Parsed::UnknownButton { callback_id: q.id.0.clone() },
            }
        }
        UpdateKind::ChannelPost(_) | UpdateKind::EditedChannelPost(_) => Parsed::Ignored(Ignored::Channel),
        UpdateKind::Error(_) => Parsed::Ignored(Ignored::Unknown),
        _ => Parsed::Ignored(Ignored::Unused),
    }
}

fn user_lang(user: &User) -> Option<Lang> {
    user.language_code.as_deref().and_then(Lang::from_tag)
}

fn message(update_id: u32, m: &Message, edited: bool, ctx: &ParseContext) -> Parsed {
    if m.chat.is_channel() {
        return Parsed::Ignored(Ignored::Channel);
    }
    if !m.chat.is_private() && !ctx.allow_groups {
        return Parsed::Ignored(Ignored::Group);
    }
    let MessageKind::Common(common) = &m.kind else { return Parsed::Ignored(Ignored::Service) };
    let Some(user) = m.from.as_ref() else { return Parsed::Ignored(Ignored::Service) };
    if user.is_bot {
        return Parsed::Ignored(Ignored::Bot);
    }
    let chat_id = m.chat.id.0;
    let identity = Identity { kind: IdentityKind::Telegram, value: user.id.0.to_string() };
    let text = m.text().or(m.caption()).unwrap_or_default().trim().to_owned();
    let lang = user_lang(user);

    // Commands (never from an edit: editing "/status" asks nothing new).
    let mut separate_case = false;
    let mut text = text;
    if !edited && let Some((cmd, rest)) = command(&text) {
        let chat = Chat {
            chat_id,
            message_id: m.id.0,
            user: identity.clone(),
            lang: lang.unwrap_or_else(|| Lang::detect(&text)),
        };
        match cmd {
            "start" | "help" => return Parsed::Command(chat, Command::Start),
            "status" => return Parsed::Command(chat, Command::Status(Some(rest.to_owned()).filter(|r| !r.is_empty()))),
            "new" if rest.is_empty() => return Parsed::Command(chat, Command::NewWithoutText),
            "new" => {
                separate_case = true;
                text = rest.to_owned();
            }
            // Another command is taken as text: a customer may well start a message with a slash.
            _ => {}
        }
    }

    let mut files = Vec::new();
    let mut attachments = Vec::new();
    let mut add = |kind: &str, id: &str, unique: &str, size: u32, name: Option<&str>, mime: Option<String>| {
        let name = name.map(str::to_owned).unwrap_or_else(|| kind.to_owned());
        let media_type = mime.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
        files.push(json!({
            "type": kind, "file_id": id, "file_unique_id": unique, "size": size, "name": name, "mime_type": mime,
        }));
        attachments.push(AttachmentMeta::by_reference(name, media_type, u64::from(size), None));
    };
    // A photo comes in several sizes: the largest is the photo.
    if let Some(p) = m.photo().and_then(|sizes| sizes.iter().max_by_key(|p| u64::from(p.width) * u64::from(p.height))) {
        add("photo", &p.file.id.0, &p.file.unique_id.0, p.file.size, None, Some("image/jpeg".to_owned()));
    }
    if let Some(d) = m.document() {
        add(
            "document",
            &d.file.id.0,
            &d.file.unique_id.0,
            d.file.size,
            d.file_name.as_deref(),
            d.mime_type.as_ref().map(|t| t.to_string()),
        );
    }
    if let Some(v) = m.voice() {
        add("voice", &v.file.id.0, &v.file.unique_id.0, v.file.size, None, v.mime_type.as_ref().map(|t| t.to_string()));
    }
    if text.is_empty() && files.is_empty() {
        return Parsed::Ignored(Ignored::Empty);
    }
    // The text the ticket store shows when only a file came.
    let shown = if text.is_empty() {
        let kinds: Vec<&str> = files.iter().filter_map(|f| f["type"].as_str()).collect();
        format!("[{}]", kinds.join(", "))
    } else {
        text.clone()
    };

    let mut metadata = BTreeMap::new();
    metadata.insert("telegram_chat_id".to_owned(), json!(chat_id));
    metadata.insert("telegram_message_id".to_owned(), json!(m.id.0));
    metadata.insert("telegram_update_id".to_owned(), json!(update_id));
    if let Some(u) = &user.username {
        metadata.insert("telegram_username".to_owned(), json!(u));
    }
    if !files.is_empty() {
        metadata.insert("telegram_files".to_owned(), json!(files));
    }
    let mut external_id = message_key(chat_id, m.id.0);
    let mut in_reply_to = Vec::new();
    let mut edits = None;
    if edited {
        // Each edit is its own message (its edit time makes the id), threaded to the original.
        let at = common.edit_date.map(|d| d.timestamp()).unwrap_or_default();
        metadata.insert("edited".to_owned(), json!(true));
        metadata.insert("edit_of".to_owned(), json!(external_id));
        in_reply_to.push(ExternalId(external_id.clone()));
        edits = Some(ExternalId(external_id.clone()));
        external_id = format!("{external_id}:edit:{at}");
    }
    if let Some(r) = m.reply_to_message() {
        // A reply to one of the bot's messages (or to the customer's own) continues that case.
        in_reply_to.push(ExternalId(message_key(r.chat.id.0, r.id.0)));
    }
    let received_at =
        OffsetDateTime::from_unix_timestamp(m.date.timestamp()).unwrap_or_else(|_| OffsetDateTime::now_utc());
    Parsed::Message(Box::new(Inbound {
        channel: ChannelKind::Telegram,
        source: ctx.source.clone(),
        external_id: ExternalId(external_id),
        identities: vec![identity],
        customer: CustomerInfo { name: Some(user.full_name()).filter(|n| !n.is_empty()), tier: None, language: lang },
        reply_route: ReplyRoute::Direct {
            via: ChannelKind::Telegram,
            sender: ctx.source.clone(),
            recipient: chat_id.to_string(),
            reply_to: Some(m.id.0.to_string()),
        },
        thread: Some(ThreadHint {
            in_reply_to,
            case_refs: Vec::new(),
            open_case_within_secs: (!separate_case).then_some(ctx.follow_up_secs),
            edits,
        }),
        subject: None,
        text: shown.clone(),
        full_text: None,
        lang: lang.or_else(|| (!text.is_empty()).then(|| Lang::detect(&text))),
        category: None,
        order_id: None,
        metadata,
        attachments,
        raw: None,
        received_at,
        automatic: None,
        content_digest: None,
    }))
}

/// `/name rest` or `/name@bot rest`: the command's name and what follows it.
fn command(text: &str) -> Option<(&str, &str)> {
    let body = text.strip_prefix('/')?;
    let (head, rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    let name = head.split('@').next().unwrap_or(head);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    Some((name, rest.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ParseContext {
        ParseContext { source: "bot".into(), allow_groups: false, follow_up_secs: 86_400 }
    }

    fn update(json: &str) -> Update {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    const TEXT: &str = r#"{"update_id":892252934,"message":{"message_id":6557,"from":{"id":218485655,"is_bot":false,"first_name":"Waffle","username":"WaffleLapkin","language_code":"en"},"chat":{"id":218485655,"first_name":"Waffle","username":"WaffleLapkin","type":"private"},"date":1569518342,"text":"hello there"}}"#;

    #[test]
    fn a_private_text_is_a_message_with_its_chat_as_the_way_back() {
        let Parsed::Message(m) = parse(&update(TEXT), &ctx()) else { panic!("a message") };
        assert_eq!(m.external_id.0, "218485655:6557");
        assert_eq!(m.identities, vec![Identity { kind: IdentityKind::Telegram, value: "218485655".into() }]);
        assert_eq!(m.text, "hello there");
        assert_eq!(m.lang, Some(Lang::En));
        assert_eq!(m.customer.name.as_deref(), Some("Waffle"));
        assert_eq!(
            m.reply_route,
            ReplyRoute::Direct {
                via: ChannelKind::Telegram,
                sender: "bot".into(),
                recipient: "218485655".into(),
                reply_to: Some("6557".into())
            }
        );
        assert_eq!(m.thread.as_ref().and_then(|t| t.open_case_within_secs), Some(86_400));
        assert_eq!(m.metadata["telegram_username"], "WaffleLapkin");
    }

    #[test]
    fn commands() {
        let with = |text: &str| TEXT.replace("hello there", text);
        assert!(matches!(parse(&update(&with("/start")), &ctx()), Parsed::Command(_, Command::Start)));
        assert!(matches!(parse(&update(&with("/status")), &ctx()), Parsed::Command(_, Command::Status(None))));
        match parse(&update(&with("/status@earshot_bot 4827-1936-5")), &ctx()) {
            Parsed::Command(_, Command::Status(Some(r))) => assert_eq!(r, "4827-1936-5"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&update(&with("/new")), &ctx()), Parsed::Command(_, Command::NewWithoutText)));
        let Parsed::Message(m) = parse(&update(&with("/new The lid is cracked")), &ctx()) else { panic!("a message") };
        assert_eq!(m.text, "The lid is cracked");
        assert_eq!(m.thread.as_ref().and_then(|t| t.open_case_within_secs), None, "/new never joins the open case");
        let Parsed::Message(m) = parse(&update(&with("/etc/hosts is wrong")), &ctx()) else { panic!("text") };
        assert_eq!(m.text, "/etc/hosts is wrong");
    }

    #[test]
    fn a_voice_note_and_an_edit() {
        let voice = r#"{"update_id":892252937,"message":{"message_id":6560,"from":{"id":218485655,"is_bot":false,"first_name":"Waffle"},"chat":{"id":218485655,"first_name":"Waffle","type":"private"},"date":1569518520,"voice":{"duration":3,"mime_type":"audio/ogg","file_id":"AwACAgIAAxkBAAIBdWVvoice","file_unique_id":"AgADvoice1","file_size":5120}}}"#;
        let Parsed::Message(m) = parse(&update(voice), &ctx()) else { panic!("a message") };
        assert_eq!(m.text, "[voice]");
        assert_eq!(m.metadata["telegram_files"][0]["file_id"], "AwACAgIAAxkBAAIBdWVvoice");
        assert_eq!(m.attachments[0].media_type, "audio/ogg");
        let edit = r#"{"update_id":892252938,"edited_message":{"message_id":6557,"from":{"id":218485655,"is_bot":false,"first_name":"Waffle"},"chat":{"id":218485655,"first_name":"Waffle","type":"private"},"date":1569518342,"edit_date":1569518600,"text":"hello there (edited)"}}"#;
        let Parsed::Message(m) = parse(&update(edit), &ctx()) else { panic!("a message") };
        assert_eq!(m.external_id.0, "218485655:6557:edit:1569518600");
        assert_eq!(m.thread.as_ref().and_then(|t| t.edits.clone()), Some(ExternalId("218485655:6557".into())));
        assert_eq!(m.metadata["edited"], true);
    }

    #[test]
    fn what_is_ignored() {
        let group = r#"{"update_id":892252940,"message":{"message_id":20225,"from":{"id":408258968,"is_bot":false,"first_name":"Hirrolot","username":"hirrolot"},"chat":{"id":-1001276785818,"title":"teloxide dev","type":"supergroup","username":"teloxide_dev"},"date":1582134655,"text":"group msg"}}"#;
        assert!(matches!(parse(&update(group), &ctx()), Parsed::Ignored(Ignored::Group)));
        let allowed = ParseContext { allow_groups: true, ..ctx() };
        assert!(matches!(parse(&update(group), &allowed), Parsed::Message(_)));
        let unknown = r#"{"update_id":892252941,"something_new":{"x":1}}"#;
        assert!(matches!(parse(&update(unknown), &ctx()), Parsed::Ignored(Ignored::Unknown)));
        let bot = TEXT.replace(r#""is_bot":false"#, r#""is_bot":true"#);
        assert!(matches!(parse(&update(&bot), &ctx()), Parsed::Ignored(Ignored::Bot)));
    }

    #[test]
    fn survey_buttons_round_trip() {
        let data = survey_button("sv_0123456789abcdef0123456789abcdef", "rating=5");
        assert!(data.len() <= 64, "Telegram's callback_data limit");
        let q = format!(
            r#"{{"update_id":1,"callback_query":{{"id":"4382","from":{{"id":5,"is_bot":false,"first_name":"A","language_code":"zh-hans"}},"chat_instance":"-57","data":"{data}"}}}}"#
        );
        match parse(&update(&q), &ctx()) {
            Parsed::Answer { callback_id, token, answer, lang } => {
                assert_eq!(
                    (callback_id.as_str(), token.as_str(), answer.as_str(), lang),
                    ("4382", "sv_0123456789abcdef0123456789abcdef", "rating=5", Lang::Zh)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
