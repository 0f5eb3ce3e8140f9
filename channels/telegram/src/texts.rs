//! What the bot says by itself (commands, button presses), in English and Chinese. Case messages
//! (acknowledgements, updates, replies, the survey) are the gateway's templates, not these.

use earshot_channel::{CaseSummary, Lang};

pub fn start(lang: Lang) -> String {
    match lang {
        Lang::Zh => "您好！这里是客户投诉服务。请直接发送您遇到的问题（可附照片或文件），我们会立即给您一个案件编号，并在这里告诉您处理进度。\n\n/status — 查看您的案件\n/status 编号 — 查看某一案件\n/new 内容 — 另开一个新案件".into(),
        Lang::En => "Hello! This is our complaints service. Just send us your problem (photos and files are welcome): you get a case reference at once, and we tell you here how your case moves.\n\n/status — your cases\n/status REF — one case\n/new TEXT — start a separate case".into(),
    }
}

pub fn new_without_text(lang: Lang) -> String {
    match lang {
        Lang::Zh => "请在 /new 后面写上新的问题，例如：/new 包裹一直没有送到".into(),
        Lang::En => "Write your new complaint after /new, for example: /new The parcel never arrived".into(),
    }
}

fn line(lang: Lang, c: &CaseSummary) -> String {
    let date = c.created_at.date();
    format!("{} — {} ({date})\n{}", c.case_ref, c.status_label(lang), c.text)
}

pub fn status_list(lang: Lang, cases: &[CaseSummary]) -> String {
    if cases.is_empty() {
        return match lang {
            Lang::Zh => "您在这里还没有案件。直接发送您的问题即可开始。".into(),
            Lang::En => "You have no cases with us here yet. Just send your problem to start one.".into(),
        };
    }
    let head = match lang {
        Lang::Zh => "您的案件：",
        Lang::En => "Your cases:",
    };
    let lines: Vec<String> = cases.iter().map(|c| line(lang, c)).collect();
    format!("{head}\n\n{}", lines.join("\n\n"))
}

pub fn status_one(lang: Lang, c: &CaseSummary) -> String {
    line(lang, c)
}

pub fn check_digit(lang: Lang, typed: &str) -> String {
    match lang {
        Lang::Zh => format!("{typed} 的校验位不对：可能有一位数字输错了，请核对案件编号。"),
        Lang::En => format!(
            "The check digit of {typed} does not match: a digit is probably mistyped. Please check the reference."
        ),
    }
}

pub fn not_a_reference(lang: Lang, typed: &str) -> String {
    match lang {
        Lang::Zh => format!("{typed} 不是案件编号。案件编号有 9 位数字，例如 4827-1936-5。"),
        Lang::En => format!("{typed} is not a case reference. A reference has 9 digits, like 4827-1936-5."),
    }
}

pub fn no_such_case(lang: Lang, r: &str) -> String {
    match lang {
        Lang::Zh => format!("在这个对话中没有案件 {r}。"),
        Lang::En => format!("There is no case {r} in this chat."),
    }
}

pub fn thanks(lang: Lang) -> String {
    match lang {
        Lang::Zh => "谢谢您的反馈！".into(),
        Lang::En => "Thank you for your feedback!".into(),
    }
}

pub fn survey_closed(lang: Lang) -> String {
    match lang {
        Lang::Zh => "这份问卷已经结束。".into(),
        Lang::En => "This survey is closed.".into(),
    }
}
