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
        Lang::Zh => "您已退订，此后不会再收到我们的短信。",
        Lang::En => "You will get no more text messages from us.",
    }
}
