//! Generic PBX / IVR events: `POST /v1/inbound/phone/events/{source}`, a JSON event from a
//! call-centre system that is not the provider, signed with Standard Webhooks and the source's
//! secret. The call id is the external id, so a retried event makes one case. Its JSON Schema is
//! served at `GET /v1/schema/phone-event.json`, beside the case's.

use schemars::JsonSchema;
use serde::Deserialize;

/// One finished (or answered) call, as the PBX reports it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PbxEvent {
    /// The PBX's id of the call: the complaint's external id.
    pub call_id: String,
    /// The caller's number, in any common notation (normalized to E.164).
    pub caller: String,
    /// The number that was called.
    pub called: Option<String>,
    /// What the caller chose in the IVR (`"1"`, `"complaint"`, …).
    pub ivr_selection: Option<String>,
    /// The complaint as text (a transcript of the call).
    pub transcript: Option<String>,
    pub recording_url: Option<String>,
    /// RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub started_at: String,
    #[schemars(extend("format" = "date-time"))]
    pub ended_at: Option<String>,
    /// What the agent wrote down.
    pub agent_notes: Option<String>,
    /// The caller's language, if the PBX knows it (`zh`, `en`).
    pub language: Option<String>,
}

/// The event's JSON Schema (draft 2020-12), as served.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PbxEvent)).unwrap_or_default()
}

impl PbxEvent {
    /// The complaint's text: the transcript, else the agent's notes, else a note that there is none.
    pub fn text(&self) -> String {
        let pick = |s: &Option<String>| s.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
        pick(&self.transcript).or_else(|| pick(&self.agent_notes)).unwrap_or_else(|| match &self.recording_url {
            Some(url) => format!("[a call without a transcript; the recording: {url}]"),
            None => "[a call without a transcript or notes]".to_owned(),
        })
    }
}
