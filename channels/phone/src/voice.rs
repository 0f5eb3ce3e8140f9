//! Calls to the hotline, as TwiML answers to the provider's voice callbacks:
//!
//! 1. `voice` (the call comes in): a greeting in the configured language and a one-key menu, 1 to
//!    make a complaint, 2 to hear a case's status.
//! 2. `voice/menu` (the key): 1 records the complaint with transcription; 2 gathers a reference.
//! 3. `voice/recorded` (the recording ended, the caller still on the line): the case is made now
//!    (external id: the `CallSid`) and its reference is read back digit by digit; the SMS
//!    acknowledgement follows through the outbox.
//! 4. `transcription` (later, asynchronously): the text replaces the placeholder of the call's
//!    message (a follow-up that edits it); an empty or failed transcription says so and keeps the
//!    recording's URL.
//! 5. `voice/status` (the keyed reference): read back with its status when the case belongs to the
//!    calling number; a wrong check digit is told so; anyone else's case reveals nothing.

use earshot_channel::{CaseRef, CaseRefError, CaseSummary, Lang};

/// TwiML's `language` attribute.
fn say_lang(lang: Lang) -> &'static str {
    match lang {
        Lang::Zh => "zh-CN",
        Lang::En => "en-US",
    }
}

fn esc(s: &str) -> String {
    crate::xml_escape(s)
}

fn say(lang: Lang, text: &str) -> String {
    format!("<Say language=\"{}\">{}</Say>", say_lang(lang), esc(text))
}

fn doc(inner: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{inner}</Response>")
}

/// The greeting and the menu.
pub fn greeting(lang: Lang, base: &str) -> String {
    let text = match lang {
        Lang::Zh => "您好，这里是客户投诉热线。投诉请按 1，查询案件进度请按 2。",
        Lang::En => {
            "Hello, this is the complaints line. To make a complaint, press 1. To hear the status of a case, press 2."
        }
    };
    doc(&format!(
        "<Gather input=\"dtmf\" numDigits=\"1\" timeout=\"8\" action=\"{}\" method=\"POST\">{}</Gather><Redirect method=\"POST\">{}</Redirect>",
        esc(&format!("{base}/v1/inbound/phone/voice/menu")),
        say(lang, text),
        esc(&format!("{base}/v1/inbound/phone/voice")),
    ))
}

/// The answer to the menu key.
pub fn menu(lang: Lang, base: &str, digit: Option<&str>, record_max_secs: u64) -> String {
    match digit {
        Some("1") => {
            let text = match lang {
                Lang::Zh => "请在提示音后说明您的问题，说完请按井号键。",
                Lang::En => "Please describe your problem after the tone, then press the hash key.",
            };
            doc(&format!(
                "{}<Record action=\"{}\" method=\"POST\" maxLength=\"{record_max_secs}\" finishOnKey=\"#\" playBeep=\"true\" transcribe=\"true\" transcribeCallback=\"{}\"/>",
                say(lang, text),
                esc(&format!("{base}/v1/inbound/phone/voice/recorded")),
                esc(&format!("{base}/v1/inbound/phone/transcription")),
            ))
        }
        Some("2") => {
            let text = match lang {
                Lang::Zh => "请输入 9 位案件编号，然后按井号键。",
                Lang::En => "Please key in the nine digits of your case reference, then press the hash key.",
            };
            doc(&format!(
                "<Gather input=\"dtmf\" numDigits=\"9\" finishOnKey=\"#\" timeout=\"10\" action=\"{}\" method=\"POST\">{}</Gather>{}",
                esc(&format!("{base}/v1/inbound/phone/voice/status")),
                say(lang, text),
                say(lang, goodbye(lang)),
            ))
        }
        _ => doc(&format!("<Redirect method=\"POST\">{}</Redirect>", esc(&format!("{base}/v1/inbound/phone/voice")))),
    }
}

fn goodbye(lang: Lang) -> &'static str {
    match lang {
        Lang::Zh => "再见。",
        Lang::En => "Goodbye.",
    }
}

/// A reference read digit by digit: `4 8 2 7, 1 9 3 6, 5` (Chinese digits in Chinese).
pub fn spoken_ref(lang: Lang, r: &str) -> String {
    const ZH: [&str; 10] = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"];
    let mut out = String::new();
    for c in r.chars() {
        match c.to_digit(10) {
            Some(d) if lang == Lang::Zh => out.push_str(ZH[d as usize]),
            Some(_) => {
                out.push(c);
                out.push(' ');
            }
            None => out.push_str(if lang == Lang::Zh { "，" } else { ", " }),
        }
    }
    out.trim_end().to_owned()
}

/// The answer once the complaint is recorded and its case made.
pub fn recorded(lang: Lang, case_ref: &str) -> String {
    let spoken = spoken_ref(lang, case_ref);
    let text = match lang {
        Lang::Zh => {
            format!("谢谢，我们已收到您的投诉。您的案件编号是：{spoken}。再说一遍：{spoken}。我们也会用短信发给您。")
        }
        Lang::En => format!(
            "Thank you, we have your complaint. Your case reference is: {spoken}. Again: {spoken}. We will also send it to you by text message."
        ),
    };
    doc(&format!("{}<Hangup/>", say(lang, &text)))
}

/// What the keyed reference is, for [`status`].
pub enum Keyed {
    Found(CaseSummary),
    /// A well-formed reference with no case of this caller behind it (or someone else's).
    NotFound(CaseRef),
    Invalid(CaseRefError),
}

pub fn parse_keyed(digits: &str) -> Result<CaseRef, CaseRefError> {
    CaseRef::parse(digits.trim_end_matches('#'))
}

/// The answer to a keyed reference.
pub fn status(lang: Lang, keyed: &Keyed) -> String {
    let text = match (keyed, lang) {
        (Keyed::Found(c), Lang::Zh) => {
            format!("案件 {} 当前状态：{}。", spoken_ref(lang, &c.case_ref), c.status_label(lang))
        }
        (Keyed::Found(c), Lang::En) => {
            format!("Case {} is {}.", spoken_ref(lang, &c.case_ref), c.status_label(lang))
        }
        (Keyed::NotFound(_), Lang::Zh) => "此号码名下没有这个案件。".to_owned(),
        (Keyed::NotFound(_), Lang::En) => "There is no such case for the number you are calling from.".to_owned(),
        (Keyed::Invalid(CaseRefError::CheckDigit), Lang::Zh) => "校验位不对，可能有一位数字输错了。".to_owned(),
        (Keyed::Invalid(CaseRefError::CheckDigit), Lang::En) => {
            "The check digit does not match: a digit was probably mistyped.".to_owned()
        }
        (Keyed::Invalid(CaseRefError::Length), Lang::Zh) => "案件编号有 9 位数字。".to_owned(),
        (Keyed::Invalid(CaseRefError::Length), Lang::En) => "A case reference has nine digits.".to_owned(),
    };
    doc(&format!("{}{}<Hangup/>", say(lang, &text), say(lang, goodbye(lang))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_digit_by_digit() {
        assert_eq!(spoken_ref(Lang::En, "4827-1936-5"), "4 8 2 7 , 1 9 3 6 , 5");
        assert_eq!(spoken_ref(Lang::Zh, "4827-1936-5"), "四八二七，一九三六，五");
    }

    #[test]
    fn the_menu_points_back_at_the_gateway() {
        let t = greeting(Lang::Zh, "https://hotline.example.com");
        assert!(t.contains("language=\"zh-CN\""), "{t}");
        assert!(t.contains("action=\"https://hotline.example.com/v1/inbound/phone/voice/menu\""), "{t}");
        let r = menu(Lang::En, "https://h", Some("1"), 120);
        assert!(r.contains("<Record ") && r.contains("transcribe=\"true\""), "{r}");
        assert!(r.contains("transcribeCallback=\"https://h/v1/inbound/phone/transcription\""), "{r}");
        let g = menu(Lang::En, "https://h", Some("2"), 120);
        assert!(g.contains("numDigits=\"9\""), "{g}");
    }
}
