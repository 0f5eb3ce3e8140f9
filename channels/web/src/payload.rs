//! The JSON body of a web complaint: parsing and validation, pure and apart from I/O.

use std::collections::BTreeMap;

use earshot_channel::{
    ApiError, AttachmentMeta, ChannelKind, CustomerInfo, ExternalId, Identity, IdentityKind, Inbound, Lang, ReplyRoute,
};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::SourceSettings;

/// The body as integrators send it (DESIGN.md section 5). Unknown fields are ignored so that a site
/// can add its own without breaking intake; `metadata` is the place for them.
#[derive(Debug, Deserialize)]
pub struct Complaint {
    #[serde(default)]
    pub customer: CustomerIn,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub category: Option<String>,
    pub order_id: Option<String>,
    #[serde(default)]
    pub attachments: Vec<AttachmentIn>,
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CustomerIn {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub user_id: Option<String>,
    pub language: Option<String>,
    pub tier: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AttachmentIn {
    pub name: String,
    pub media_type: String,
    #[serde(default)]
    pub size: u64,
    pub url: Option<String>,
}

/// A complaint that passed validation: `text` is present and at least one contact is valid.
#[derive(Debug)]
pub struct Valid {
    complaint: Complaint,
    text: String,
    identities: Vec<Identity>,
}

/// Parses and validates a body; every refusal names the field to blame.
pub fn parse_complaint(body: &[u8]) -> Result<Valid, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let complaint: Complaint = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError { field: None, ..ApiError::bad_request("malformed_json", inner.to_string(), "") };
        }
        // serde_path_to_error says "." for the whole document and "?" where it lost track.
        let field = (path != "." && path != "?").then_some(path);
        ApiError { field, ..ApiError::bad_request("invalid_field", inner.to_string(), "") }
    })?;
    for (field, value) in [
        ("subject", complaint.subject.as_deref()),
        ("text", complaint.text.as_deref()),
        ("customer.name", complaint.customer.name.as_deref()),
    ] {
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::bad_request("invalid_field", "must not contain NUL characters", field));
        }
    }
    let text = match complaint.text.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => t.to_owned(),
        Some(_) => {
            return Err(ApiError::bad_request("missing_field", "text must not be empty", "text"));
        }
        None => {
            return Err(ApiError::bad_request("missing_field", "text is required", "text"));
        }
    };
    let mut identities = Vec::new();
    if let Some(email) = complaint.customer.email.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        identities.push(Identity { kind: IdentityKind::Email, value: normalize_email(email)? });
    }
    if let Some(phone) = complaint.customer.phone.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        identities.push(Identity { kind: IdentityKind::Phone, value: normalize_phone(phone)? });
    }
    if let Some(uid) = complaint.customer.user_id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        identities.push(Identity { kind: IdentityKind::WebUser, value: uid.to_owned() });
    }
    if identities.is_empty() {
        return Err(ApiError::bad_request(
            "missing_field",
            "at least one of customer.email, customer.phone or customer.user_id is required",
            "customer",
        ));
    }
    for (i, a) in complaint.attachments.iter().enumerate() {
        if a.name.trim().is_empty() {
            return Err(ApiError::bad_request("invalid_field", "must not be empty", format!("attachments[{i}].name")));
        }
    }
    Ok(Valid { complaint, text, identities })
}

fn normalize_email(email: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("invalid_field", "is not an email address", "customer.email");
    let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty() || domain.is_empty() || !domain.contains('.') || email.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    // Domains are case-insensitive; local parts in practice are too, and one customer typing
    // "Li.Wei@" and "li.wei@" is one customer.
    Ok(email.to_lowercase())
}

/// E.164 only: `+` and 8 to 15 digits, spaces, dots, dashes and brackets removed. Numbers in national
/// form need a region to resolve, which the web channel does not have.
fn normalize_phone(phone: &str) -> Result<String, ApiError> {
    let digits: String = phone.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
    match digits.strip_prefix('+') {
        Some(d) if (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0') => {
            Ok(format!("+{d}"))
        }
        _ => Err(ApiError::bad_request(
            "invalid_field",
            "must be an international number such as +86 138 0013 8000",
            "customer.phone",
        )),
    }
}

impl Valid {
    /// The channel-neutral message; the external id is `{source}:{webhook-id}` so that two sources
    /// choosing the same ids never collide.
    pub fn into_inbound(self, source: &SourceSettings, webhook_id: &str, now: OffsetDateTime) -> Inbound {
        let Valid { complaint, text, mut identities } = self;
        for id in &mut identities {
            if id.kind == IdentityKind::WebUser {
                id.value = format!("{}:{}", source.name, id.value);
            }
        }
        let lang = complaint.customer.language.as_deref().and_then(Lang::from_tag);
        Inbound {
            channel: ChannelKind::Web,
            source: source.name.clone(),
            external_id: ExternalId(format!("{}:{webhook_id}", source.name)),
            identities,
            customer: CustomerInfo { name: complaint.customer.name, tier: complaint.customer.tier, language: lang },
            reply_route: ReplyRoute::Web { source: source.name.clone(), callback_url: source.callback_url.clone() },
            thread: None,
            content_digest: None,
            subject: complaint.subject.filter(|s| !s.trim().is_empty()),
            text,
            full_text: None,
            lang,
            category: complaint.category,
            order_id: complaint.order_id,
            metadata: complaint.metadata,
            attachments: complaint
                .attachments
                .into_iter()
                .map(|a| AttachmentMeta::by_reference(a.name, a.media_type, a.size, a.url))
                .collect(),
            raw: None,
            received_at: now,
            automatic: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> (String, Option<String>) {
        let e = parse_complaint(body.as_bytes()).expect_err("should be refused");
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        (e.code.to_owned(), e.field)
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (r#"{"customer":{"email":"a@b.cn"}"#, "malformed_json", None),
            (r#"not json"#, "malformed_json", None),
            (r#"{"customer":{"email":"a@b.cn"}}"#, "missing_field", Some("text")),
            (r#"{"customer":{"email":"a@b.cn"},"text":"   "}"#, "missing_field", Some("text")),
            (r#"{"text":"broken"}"#, "missing_field", Some("customer")),
            (r#"{"customer":{},"text":"broken"}"#, "missing_field", Some("customer")),
            (r#"{"customer":{"email":"nope"},"text":"broken"}"#, "invalid_field", Some("customer.email")),
            (r#"{"customer":{"phone":"12345"},"text":"broken"}"#, "invalid_field", Some("customer.phone")),
            (r#"{"customer":{"email":"a@b.cn"},"text":42}"#, "invalid_field", Some("text")),
            (
                r#"{"customer":{"email":"a@b.cn"},"text":"x","attachments":[{"name":"a"}]}"#,
                "invalid_field",
                Some("attachments[0]"),
            ),
            (r#"{"customer":{"email":"a@b.cn"},"text":"a\u0000b"}"#, "invalid_field", Some("text")),
        ];
        for (body, code, field) in cases {
            let (got_code, got_field) = field_of(body);
            assert_eq!((got_code.as_str(), got_field.as_deref()), (code, field), "{body}");
        }
    }

    #[test]
    fn normalizes_contacts() {
        let v = parse_complaint(
            r#"{"customer":{"email":" Li.Wei@Example.COM ","phone":"+86 138-0013-8000","user_id":"u1"},"text":" 坏了 "}"#
                .as_bytes(),
        )
        .expect("valid");
        assert_eq!(v.text, "坏了");
        let ids: Vec<(IdentityKind, &str)> = v.identities.iter().map(|i| (i.kind, i.value.as_str())).collect();
        assert_eq!(
            ids,
            [
                (IdentityKind::Email, "li.wei@example.com"),
                (IdentityKind::Phone, "+8613800138000"),
                (IdentityKind::WebUser, "u1")
            ]
        );
    }
}
