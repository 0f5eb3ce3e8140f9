//! What the hotline answers by itself by SMS (keywords), in English and Chinese.

use earshot_channel::{CaseSummary, Lang};

pub fn status_list(lang: Lang, cases: &[CaseSummary]) -> String {
    if cases.is_empty() {
        return match lang {
            Lang::Zh => "此号码没有案件。".into(),
            Lang::En => "There are no cases for this number.".into(),
        };
    }
    let lines: Vec<String> = cases.iter().map(|c| format!("{}: {}", c.case_ref, c.status_label(lang))).collect();
    lines.join("\n")
}

pub fn stopped(lang: Lang) -> &'static str {
    match lang {
        Lang::Zh => "您已退订，此后不会再收到我们的短信。回复“订阅”可重新接收。",
        Lang::En => "You will get no more text messages from us. Reply START to get them again.",
    }
}

pub fn started(lang: Lang) -> &'static str {
    match lang {
        Lang::Zh => "您已重新订阅，我们会继续通过短信告诉您案件进展。",
        Lang::En => "You will get text messages from us again about your cases.",
    }
}
