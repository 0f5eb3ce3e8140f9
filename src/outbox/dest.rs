//! Where an outbox job goes: a downstream endpoint, or a channel's sender (a mailbox, a web source, a
//! bot). Stored as text (`downstream:<name>`, `channel:<kind>:<sender>`), typed everywhere else.

use earshot_channel::ChannelKind;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A `[[downstream]]` endpoint, by name.
    Downstream(String),
    /// A channel and the account within it that sends (absent on jobs stored before senders were
    /// named; the channel's kind is kept as stored, so a job of a kind this build does not know
    /// still says where it was going).
    Channel { kind: String, sender: Option<String> },
}

impl Destination {
    pub fn downstream(name: &str) -> Destination {
        Destination::Downstream(name.to_owned())
    }

    pub fn channel(kind: ChannelKind, sender: &str) -> Destination {
        Destination::Channel { kind: kind.as_str().to_owned(), sender: Some(sender.to_owned()) }
    }

    /// The stored form back; `None` when it is neither.
    pub fn parse(stored: &str) -> Option<Destination> {
        if let Some(name) = stored.strip_prefix("downstream:") {
            return Some(Destination::Downstream(name.to_owned()));
        }
        let rest = stored.strip_prefix("channel:")?;
        Some(match rest.split_once(':') {
            Some((kind, sender)) => Destination::Channel { kind: kind.to_owned(), sender: Some(sender.to_owned()) },
            None => Destination::Channel { kind: rest.to_owned(), sender: None },
        })
    }

    pub fn is_channel(&self) -> bool {
        matches!(self, Destination::Channel { .. })
    }

    /// The channel kind of a channel destination this build knows.
    pub fn channel_kind(&self) -> Option<ChannelKind> {
        match self {
            Destination::Channel { kind, .. } => ChannelKind::parse(kind),
            Destination::Downstream(_) => None,
        }
    }
}

/// Written as its stored text (job listings, timelines).
impl serde::Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A stored destination read back; the error names the text.
impl TryFrom<String> for Destination {
    type Error = String;

    fn try_from(stored: String) -> Result<Destination, String> {
        Destination::parse(&stored).ok_or_else(|| format!("not a destination: {stored:?}"))
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Downstream(name) => write!(f, "downstream:{name}"),
            Destination::Channel { kind, sender: Some(s) } => write!(f, "channel:{kind}:{s}"),
            Destination::Channel { kind, sender: None } => write!(f, "channel:{kind}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for d in [
            Destination::downstream("tickets"),
            Destination::channel(ChannelKind::Email, "support"),
            Destination::Channel { kind: "web".into(), sender: None },
        ] {
            assert_eq!(Destination::parse(&d.to_string()), Some(d.clone()));
        }
        assert_eq!(
            Destination::parse("channel:email:support").and_then(|d| d.channel_kind()),
            Some(ChannelKind::Email)
        );
        assert_eq!(Destination::parse("somewhere"), None);
    }
}
