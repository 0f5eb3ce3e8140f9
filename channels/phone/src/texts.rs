//! What the hotline answers by itself by SMS (keywords), in English and Chinese.

use earshot_channel::{CaseSummary, Lang};

fn label(lang: Lang, status: &str) -> &str {
    match (lang, status) {
        (Lang::Zh, "new" | "acknowledged") => "已受理",
        (Lang::Zh, "in_progress") => "处理中",
        (Lang::Zh, "awaiting_customer") => "等待您补充信息",
        (Lang::Zh, "resolved") => "已解决",
        (Lang::Zh, "reopened") => "已重新打开",
        (Lang::Zh, "closed") => "已关闭",
        (Lang::En, "new" | "acknowledged") => "received",
        (Lang::En, "in_progress") => "being worked on",
        (Lang::En, "awaiting_customer") => "waiting for you",
        (_, other) => other,
    }
}

pub fn status_list(lang: Lang, cases: &[CaseSummary]) -> String {
    if cases.is_empty() {
        return match lang {
            Lang::Zh => "此号码没有案件。".into(),
            Lang::En => "There are no cases for this number.".into(),
        };
    }
    let lines: Vec<String> = cases.iter().map(|c| format!("{}: {}", c.case_ref, label(lang, &c.status))).collect();
    lines.join("\n")
}

pub fn stopped(lang: Lang) -> &'static str {
    match lang {
        Lang::Zh => "您已退订，此后不会再收到我们的短信。",
        Lang::En => "You will get no more text messages from us.",
    }
}
