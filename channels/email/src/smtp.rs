//! SMTP out: acknowledgements and status updates as replies in the customer's thread.
//!
//! Every message carries `In-Reply-To`, `References`, `Subject: Re: <original> [Case REF]`,
//! `Auto-Submitted: auto-replied` and a Message-ID made from the outbox job id, so every retry of one
//! job is the same message. A 4xx or a refused connection is transient (the outbox retries); a 5xx is
//! permanent (dead-lettered with the server's answer).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use earshot_channel::{Outbound, ReplyRoute, SendError, Sent};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use lettre::Message;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use secrecy::ExposeSecret;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::refs::strip_reply_prefixes;
use crate::settings::{MailboxSettings, Security};

/// `Auto-Submitted: auto-replied` (RFC 3834), so other responders do not answer us.
#[derive(Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-replied".to_owned())
    }
}

struct Outgoing {
    host: String,
    port: u16,
    security: Security,
    /// STARTTLS parameters (`security = "starttls"`).
    starttls: Option<TlsParameters>,
    /// Extra trusted certificates for implicit TLS (`security = "tls"`).
    ca_pem: Option<Vec<u8>>,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// The whole send: connect, TLS, every command and the message (lettre's own timeout covers
    /// only part of that).
    timeout: Duration,
    from: Mailbox,
    domain: String,
}

/// The stream under an implicit-TLS connection, for lettre (which takes any stream that can say
/// its peer).
#[derive(Debug)]
struct TlsTcp(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for TlsTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

/// Why one send failed before the server answered the message.
enum Failure {
    Io(std::io::Error),
    Smtp(lettre::transport::smtp::Error),
}

impl Outgoing {
    /// One message over a connection of its own (a connection cut off by the deadline goes with
    /// the send, never back to a pool).
    ///
    /// The socket is ours, with `TCP_NODELAY`: lettre writes the message and its final `.` in two
    /// writes before it reads the answer, and without it Nagle's algorithm holds the `.` until the
    /// server's delayed ACK, 40 ms later (measured: 50 ms per message against aiosmtpd).
    async fn deliver(&self, envelope: &lettre::address::Envelope, body: &[u8]) -> Result<Response, Failure> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(Failure::Io)?;
        tcp.set_nodelay(true).map_err(Failure::Io)?;
        let stream: Box<dyn AsyncTokioStream> = match self.security {
            Security::Tls => Box::new(TlsTcp(
                crate::tls::connect(&self.host, tcp, self.ca_pem.as_deref()).await.map_err(Failure::Io)?,
            )),
            Security::Plain | Security::Starttls => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello).await.map_err(Failure::Smtp)?;
        if let Some(params) = &self.starttls {
            conn.starttls(params.clone(), &self.hello).await.map_err(Failure::Smtp)?;
        }
        if let Some(c) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], c).await.map_err(Failure::Smtp)?;
        }
        let sent = conn.send(envelope, body).await.map_err(Failure::Smtp)?;
        conn.abort().await;
        Ok(sent)
    }
}

/// TLS towards the SMTP server: the public roots, plus the `ca_file` certificates if any.
fn tls_parameters(s: &crate::settings::SmtpSettings) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(s.host.clone());
    if let Some(pem) = &s.ca_pem {
        for cert in crate::tls::pem_certificates(pem)? {
            let der =
                lettre::transport::smtp::client::Certificate::from_der(cert.to_vec()).map_err(|e| e.to_string())?;
            b = b.add_root_certificate(der);
        }
    }
    b.build().map_err(|e| e.to_string())
}

pub struct SmtpSender {
    by_mailbox: HashMap<String, Outgoing>,
    per_recipient: DefaultKeyedRateLimiter<String>,
}

impl SmtpSender {
    pub fn new(mailboxes: &[MailboxSettings], acks_per_hour: u32) -> Result<SmtpSender, String> {
        let mut by_mailbox = HashMap::new();
        for mb in mailboxes {
            let s = &mb.smtp;
            let starttls = match s.security {
                Security::Starttls => Some(tls_parameters(s)?),
                Security::Plain | Security::Tls => None,
            };
            let credentials = match (&s.username, &s.password) {
                (Some(u), Some(p)) => Some(Credentials::new(u.clone(), p.expose_secret().to_owned())),
                _ => None,
            };
            let address = mb.address.parse().map_err(|e| format!("mailbox {}: address: {e}", mb.name))?;
            let from = Mailbox::new(mb.display_name.clone(), address);
            let domain =
                mb.address.rsplit_once('@').map(|(_, d)| d.to_owned()).unwrap_or_else(|| "earshot.invalid".into());
            let out = Outgoing {
                host: s.host.clone(),
                port: s.port,
                security: s.security,
                starttls,
                ca_pem: s.ca_pem.clone(),
                credentials,
                hello: ClientId::default(),
                timeout: s.timeout,
                from,
                domain,
            };
            by_mailbox.insert(mb.name.clone(), out);
        }
        let quota = Quota::per_hour(NonZeroU32::new(acks_per_hour.max(1)).unwrap_or(NonZeroU32::MIN));
        Ok(SmtpSender { by_mailbox, per_recipient: RateLimiter::keyed(quota) })
    }

    pub async fn send(&self, msg: &Outbound) -> Result<Sent, SendError> {
        let ReplyRoute::Email { mailbox, to, message_id, references, subject } = &msg.reply_route else {
            return Err(SendError::Permanent { reason: "not an email reply route".into() });
        };
        let out = self
            .by_mailbox
            .get(mailbox)
            .ok_or_else(|| SendError::Permanent { reason: format!("mailbox {mailbox:?} is no longer configured") })?;
        // Forget recipients whose quota has refilled, so the limiter's memory stays bounded.
        if self.per_recipient.len() > 10_000 {
            self.per_recipient.retain_recent();
        }
        // The loop breaker counts automatic acknowledgements only: what an agent or the ticket
        // store sends (status updates, replies, the survey) is not an automatic answer to mail,
        // and a busy case must not wait an hour for its sixth message.
        let automatic = matches!(msg.kind, earshot_channel::OutboundKind::Ack);
        if automatic && let Err(not_until) = self.per_recipient.check_key(to) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(SendError::Transient {
                reason: format!("rate limit for {to}: too many messages this hour"),
                retry_after: Some(wait.max(Duration::from_secs(1))),
            });
        }
        let email = build(msg, out, to, message_id, references, subject.as_deref())?;
        let sent = match tokio::time::timeout(out.timeout, out.deliver(email.envelope(), &email.formatted())).await {
            Ok(sent) => sent,
            Err(_) => {
                return Err(SendError::Transient {
                    reason: format!("SMTP server gave no complete answer within {} s", out.timeout.as_secs_f32()),
                    retry_after: None,
                });
            }
        };
        match sent {
            Ok(resp) => Ok(Sent { provider_id: resp.message().next().map(str::to_owned), segments: None }),
            Err(Failure::Smtp(e)) if e.is_permanent() => Err(SendError::Permanent { reason: e.to_string() }),
            Err(Failure::Smtp(e)) => Err(SendError::Transient { reason: e.to_string(), retry_after: None }),
            Err(Failure::Io(e)) => Err(SendError::Transient { reason: format!("connection: {e}"), retry_after: None }),
        }
    }
}

/// `Re: <original subject> [Case REF]`, without stacking `Re:` prefixes or references.
pub fn reply_subject(original: Option<&str>, case_ref: &str) -> String {
    let base = original.map(strip_reply_prefixes).map(str::trim).filter(|s| !s.is_empty());
    let tag = format!("[Case {case_ref}]");
    match base {
        Some(b) if b.contains(case_ref) => format!("Re: {b}"),
        Some(b) => format!("Re: {b} {tag}"),
        None => format!("Re: {tag}"),
    }
}

fn build(
    msg: &Outbound,
    out: &Outgoing,
    to: &str,
    message_id: &str,
    references: &[String],
    subject: Option<&str>,
) -> Result<Message, SendError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| SendError::Permanent { reason: format!("{what}: {e}") };
    let to: Mailbox = to.parse().map_err(|e| bad("recipient address", &e))?;
    let refs = references.iter().map(|r| format!("<{r}>")).collect::<Vec<_>>().join(" ");
    let html = msg.html.clone().unwrap_or_else(|| format!("<pre>{}</pre>", html_escape(&msg.text)));
    Message::builder()
        .from(out.from.clone())
        .to(to)
        .subject(reply_subject(subject, msg.case_ref.as_str()))
        .message_id(Some(format!("<{}@{}>", msg.id, out.domain)))
        .in_reply_to(format!("<{message_id}>"))
        .references(refs)
        .header(AutoSubmitted)
        .multipart(MultiPart::alternative_plain_html(msg.text.clone(), html))
        .map_err(|e| bad("message", &e))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::reply_subject;

    #[test]
    fn reply_subjects() {
        assert_eq!(reply_subject(Some("Broken cup"), "4827-1936-5"), "Re: Broken cup [Case 4827-1936-5]");
        assert_eq!(reply_subject(Some("Re: RE: Broken cup"), "4827-1936-5"), "Re: Broken cup [Case 4827-1936-5]");
        assert_eq!(
            reply_subject(Some("回复: 杯子碎了 [Case 4827-1936-5]"), "4827-1936-5"),
            "Re: 杯子碎了 [Case 4827-1936-5]"
        );
        assert_eq!(reply_subject(None, "4827-1936-5"), "Re: [Case 4827-1936-5]");
    }

    fn mailbox(smtp_port: u16) -> crate::settings::MailboxSettings {
        use crate::settings::{ImapSettings, MailboxSettings, Security, SmtpSettings};
        MailboxSettings {
            name: "support".into(),
            address: "support@example.com".into(),
            display_name: None,
            imap: ImapSettings {
                host: "127.0.0.1".into(),
                port: 1,
                security: Security::Plain,
                username: "u".into(),
                password: "p".to_owned().into(),
                folder: "INBOX".into(),
                idle: true,
                poll: std::time::Duration::from_secs(60),
                move_to: None,
                batch: 1,
                ca_pem: None,
            },
            smtp: SmtpSettings {
                host: "127.0.0.1".into(),
                port: smtp_port,
                security: Security::Plain,
                username: None,
                password: None,
                timeout: std::time::Duration::from_secs(2),
                ca_pem: None,
            },
        }
    }

    fn ack_to(to: &str, n: u32) -> earshot_channel::Outbound {
        earshot_channel::Outbound {
            id: format!("msg_{n}"),
            kind: earshot_channel::OutboundKind::Ack,
            case_id: "case_1".into(),
            case_ref: earshot_channel::CaseRef::from_seq(1),
            status: None,
            lang: earshot_channel::Lang::En,
            subject: None,
            text: "We have your complaint.".into(),
            html: None,
            reply_route: earshot_channel::ReplyRoute::Email {
                mailbox: "support".into(),
                to: to.into(),
                message_id: format!("c{n}@customer.example"),
                references: vec![],
                subject: Some("Broken".into()),
            },
        }
    }

    /// The per-recipient limit stops a loop by itself: past the hourly quota a recipient gets
    /// nothing more (a transient refusal, retried once the quota refills), others are unaffected.
    #[tokio::test]
    async fn per_recipient_rate_limit_stops_a_loop() {
        // Nothing listens on the port: each send that passes the limit fails to connect.
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
        let sender = super::SmtpSender::new(&[mailbox(port)], 2).expect("sender");
        for n in 0..2 {
            let e = sender.send(&ack_to("loop@customer.example", n)).await.expect_err("nothing listens");
            assert!(!e.to_string().contains("rate limit"), "within the quota it tries to send: {e}");
        }
        let e = sender.send(&ack_to("loop@customer.example", 3)).await.expect_err("limited");
        assert!(
            matches!(&e, earshot_channel::SendError::Transient { reason, retry_after: Some(wait) }
                if reason.contains("rate limit") && *wait >= std::time::Duration::from_secs(1)),
            "{e:?}"
        );
        let other = sender.send(&ack_to("someone.else@customer.example", 4)).await.expect_err("nothing listens");
        assert!(!other.to_string().contains("rate limit"), "another recipient has its own quota: {other}");
    }
}
