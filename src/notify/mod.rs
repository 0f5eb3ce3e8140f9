//! Customer-facing texts: minijinja templates per channel, name and language.
//!
//! Templates live in `config/templates/<channel>/<name>.<lang>.j2`. The shipped ones are built into
//! the binary, so the gateway runs from any working directory; a file of the same name in the
//! configured folder overrides the built-in one. Every template is rendered once at start-up with
//! sample values, so a broken template stops the start instead of a customer's acknowledgement.

use std::path::Path;
use std::time::Duration;

use earshot_channel::{ChannelKind, Lang};
use minijinja::Environment;
use serde::Serialize;

/// (path below the templates folder, built-in text)
const BUILT_IN: &[(&str, &str)] = &[
    ("web/ack.en.j2", include_str!("../../config/templates/web/ack.en.j2")),
    ("web/ack.zh.j2", include_str!("../../config/templates/web/ack.zh.j2")),
    ("email/ack.en.j2", include_str!("../../config/templates/email/ack.en.j2")),
    ("email/ack.zh.j2", include_str!("../../config/templates/email/ack.zh.j2")),
    ("email/ack.en.html.j2", include_str!("../../config/templates/email/ack.en.html.j2")),
    ("email/ack.zh.html.j2", include_str!("../../config/templates/email/ack.zh.html.j2")),
    ("web/status_update.en.j2", include_str!("../../config/templates/web/status_update.en.j2")),
    ("web/status_update.zh.j2", include_str!("../../config/templates/web/status_update.zh.j2")),
    ("web/agent_reply.en.j2", include_str!("../../config/templates/web/agent_reply.en.j2")),
    ("web/agent_reply.zh.j2", include_str!("../../config/templates/web/agent_reply.zh.j2")),
    ("web/survey.en.j2", include_str!("../../config/templates/web/survey.en.j2")),
    ("web/survey.zh.j2", include_str!("../../config/templates/web/survey.zh.j2")),
    ("email/status_update.en.j2", include_str!("../../config/templates/email/status_update.en.j2")),
    ("email/status_update.zh.j2", include_str!("../../config/templates/email/status_update.zh.j2")),
    ("email/agent_reply.en.j2", include_str!("../../config/templates/email/agent_reply.en.j2")),
    ("email/agent_reply.zh.j2", include_str!("../../config/templates/email/agent_reply.zh.j2")),
    ("email/survey.en.j2", include_str!("../../config/templates/email/survey.en.j2")),
    ("email/survey.zh.j2", include_str!("../../config/templates/email/survey.zh.j2")),
    ("telegram/ack.en.j2", include_str!("../../config/templates/telegram/ack.en.j2")),
    ("telegram/ack.zh.j2", include_str!("../../config/templates/telegram/ack.zh.j2")),
    ("telegram/status_update.en.j2", include_str!("../../config/templates/telegram/status_update.en.j2")),
    ("telegram/status_update.zh.j2", include_str!("../../config/templates/telegram/status_update.zh.j2")),
    ("telegram/agent_reply.en.j2", include_str!("../../config/templates/telegram/agent_reply.en.j2")),
    ("telegram/agent_reply.zh.j2", include_str!("../../config/templates/telegram/agent_reply.zh.j2")),
    ("telegram/survey.en.j2", include_str!("../../config/templates/telegram/survey.en.j2")),
    ("telegram/survey.zh.j2", include_str!("../../config/templates/telegram/survey.zh.j2")),
    ("phone/ack.en.j2", include_str!("../../config/templates/phone/ack.en.j2")),
    ("phone/ack.zh.j2", include_str!("../../config/templates/phone/ack.zh.j2")),
    ("phone/status_update.en.j2", include_str!("../../config/templates/phone/status_update.en.j2")),
    ("phone/status_update.zh.j2", include_str!("../../config/templates/phone/status_update.zh.j2")),
    ("phone/agent_reply.en.j2", include_str!("../../config/templates/phone/agent_reply.en.j2")),
    ("phone/agent_reply.zh.j2", include_str!("../../config/templates/phone/agent_reply.zh.j2")),
    ("phone/survey.en.j2", include_str!("../../config/templates/phone/survey.en.j2")),
    ("phone/survey.zh.j2", include_str!("../../config/templates/phone/survey.zh.j2")),
    ("feedback/thanks.en.html.j2", include_str!("../../config/templates/feedback/thanks.en.html.j2")),
    ("feedback/thanks.zh.html.j2", include_str!("../../config/templates/feedback/thanks.zh.html.j2")),
];

/// The kinds of customer message every channel has templates for, besides the acknowledgement.
pub const KINDS: [&str; 3] = ["status_update", "agent_reply", "survey"];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: {source}")]
    Render { name: String, source: minijinja::Error },
    #[error("cannot read template {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// Values a template can use.
#[derive(Debug, Serialize)]
pub struct AckContext<'a> {
    pub case_ref: &'a str,
    pub customer_name: Option<&'a str>,
    pub subject: Option<&'a str>,
    /// The first-response due time, spelled for the language (e.g. "1 hour", "1小时").
    pub first_response: String,
}

pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Loads the built-in templates, overridden by files in `dir` when it exists, and test-renders all.
    pub fn load(dir: &Path) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        for (name, text) in BUILT_IN {
            let path = dir.join(name);
            let source = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (*text).to_owned(),
                Err(source) => {
                    return Err(TemplateError::Read { path: path.display().to_string(), source });
                }
            };
            env.add_template_owned(*name, source)
                .map_err(|source| TemplateError::Render { name: (*name).to_owned(), source })?;
        }
        let t = Templates { env };
        for lang in [Lang::En, Lang::Zh] {
            let ctx = AckContext {
                case_ref: "0000-0000-0",
                customer_name: Some("Li Wei"),
                subject: Some("sample"),
                first_response: spell_duration(Duration::from_secs(3600), lang),
            };
            t.ack(ChannelKind::Web, lang, &ctx)?;
            t.ack(ChannelKind::Email, lang, &ctx)?;
            t.ack(ChannelKind::Telegram, lang, &ctx)?;
            t.ack(ChannelKind::Phone, lang, &ctx)?;
            let sample = sample_context();
            for channel in ChannelKind::ALL {
                for kind in KINDS {
                    t.message(channel, kind, lang, &sample)?;
                }
            }
            t.page("feedback/thanks", lang, &sample)?;
            let name = format!("email/ack.{}.html.j2", lang.as_str());
            t.env
                .get_template(&name)
                .and_then(|tpl| tpl.render(&ctx))
                .map_err(|source| TemplateError::Render { name, source })?;
        }
        Ok(t)
    }

    /// The HTML alternative of the acknowledgement, for channels that have an HTML template.
    pub fn ack_html(&self, channel: ChannelKind, lang: Lang, ctx: &AckContext<'_>) -> Option<String> {
        let name = format!("{}/ack.{}.html.j2", channel.as_str(), lang.as_str());
        let tpl = self.env.get_template(&name).ok()?;
        tpl.render(ctx).map_err(|e| tracing::error!(template = %name, error = %e, "HTML template failed.")).ok()
    }

    /// The acknowledgement for a new case.
    pub fn ack(&self, channel: ChannelKind, lang: Lang, ctx: &AckContext<'_>) -> Result<String, TemplateError> {
        let name = format!("{}/ack.{}.j2", channel.as_str(), lang.as_str());
        // Channels without their own acknowledgement template use the web one.
        let name = if self.env.get_template(&name).is_ok() { name } else { format!("web/ack.{}.j2", lang.as_str()) };
        let render = || -> Result<String, minijinja::Error> { self.env.get_template(&name)?.render(ctx) };
        render().map(|s| s.trim().to_owned()).map_err(|source| TemplateError::Render { name, source })
    }
}

/// Values every message template may use, with samples for the start-up test render.
fn sample_context() -> serde_json::Value {
    serde_json::json!({
        "case_ref": "0000-0000-0", "customer_name": "Li Wei", "subject": "sample", "status": "in_progress",
        "note": "sample", "text": "sample", "author": "sample", "link": "http://127.0.0.1/v1/feedback/x",
        "choices": [{"value": "rating=5", "label": "5", "url": "http://127.0.0.1/v1/feedback/x?rating=5"}],
        "expires": "2026-01-01", "answered": true, "rating": 5, "solved": false,
    })
}

impl Templates {
    /// A customer message of `kind` (`status_update`, `agent_reply`, `survey`) for `channel`; a
    /// channel without its own template uses the web one (plain text).
    pub fn message<S: Serialize>(
        &self,
        channel: ChannelKind,
        kind: &str,
        lang: Lang,
        ctx: &S,
    ) -> Result<String, TemplateError> {
        let name = format!("{}/{kind}.{}.j2", channel.as_str(), lang.as_str());
        let name = if self.env.get_template(&name).is_ok() { name } else { format!("web/{kind}.{}.j2", lang.as_str()) };
        let render = || -> Result<String, minijinja::Error> { self.env.get_template(&name)?.render(ctx) };
        render().map(|s| s.trim().to_owned()).map_err(|source| TemplateError::Render { name, source })
    }

    /// A page (`feedback/thanks`) in `lang`, HTML-escaped.
    pub fn page<S: Serialize>(&self, name: &str, lang: Lang, ctx: &S) -> Result<String, TemplateError> {
        let name = format!("{name}.{}.html.j2", lang.as_str());
        let render = || -> Result<String, minijinja::Error> { self.env.get_template(&name)?.render(ctx) };
        render().map_err(|source| TemplateError::Render { name, source })
    }
}

/// "1 hour", "90 minutes", "1小时", "30分钟": whole hours when exact, else minutes.
pub fn spell_duration(d: Duration, lang: Lang) -> String {
    let mins = d.as_secs().div_ceil(60);
    let (n, unit_en, unit_zh) =
        if mins >= 60 && mins.is_multiple_of(60) { (mins / 60, "hour", "小时") } else { (mins, "minute", "分钟") };
    match lang {
        // Chinese writes the number against its unit: "1小时", "30分钟".
        Lang::Zh => format!("{n}{unit_zh}"),
        Lang::En if n == 1 => format!("{n} {unit_en}"),
        Lang::En => format!("{n} {unit_en}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_languages() {
        let t = Templates::load(Path::new("/nonexistent")).expect("built-in templates load");
        let ctx = |lang| AckContext {
            case_ref: "4827-1936-5",
            customer_name: None,
            subject: None,
            first_response: spell_duration(Duration::from_secs(3600), lang),
        };
        let en = t.ack(ChannelKind::Web, Lang::En, &ctx(Lang::En)).expect("renders");
        assert!(en.contains("4827-1936-5") && en.contains("within 1 hour"), "{en}");
        let zh = t.ack(ChannelKind::Web, Lang::Zh, &ctx(Lang::Zh)).expect("renders");
        assert!(zh.contains("案件编号为 4827-1936-5") && zh.contains("1小时内"), "{zh}");
    }

    #[test]
    fn spells_durations() {
        assert_eq!(spell_duration(Duration::from_secs(7200), Lang::En), "2 hours");
        assert_eq!(spell_duration(Duration::from_secs(5400), Lang::En), "90 minutes");
        assert_eq!(spell_duration(Duration::from_secs(1800), Lang::Zh), "30分钟");
        assert_eq!(spell_duration(Duration::from_secs(3600), Lang::Zh), "1小时");
    }
}
