//! The email channel: IMAP loops in, SMTP replies out.

use std::sync::Arc;

use async_trait::async_trait;
use earshot_channel::{Channel, ChannelError, ChannelKind, Intake, Outbound, Recipient, SendError, Sent};
use tokio_util::sync::CancellationToken;

use crate::parse::ParseOptions;
use crate::settings::{EmailSettings, MailboxSettings};
use crate::smtp::SmtpSender;

/// What every mailbox loop shares.
pub struct EmailContext {
    pub parse: ParseOptions,
    /// See `EmailSettings::max_message_bytes`.
    pub max_message_bytes: u32,
    pub instance: String,
}

pub struct EmailChannel {
    ctx: Arc<EmailContext>,
    mailboxes: Vec<Arc<MailboxSettings>>,
    smtp: SmtpSender,
}

impl EmailChannel {
    pub fn new(settings: EmailSettings) -> Result<EmailChannel, ChannelError> {
        let smtp =
            SmtpSender::new(&settings.mailboxes, settings.max_acks_per_recipient_per_hour).map_err(ChannelError)?;
        let ctx = EmailContext {
            parse: ParseOptions { max_attachment_bytes: settings.max_attachment_bytes },
            max_message_bytes: settings.max_message_bytes,
            instance: settings.instance,
        };
        Ok(EmailChannel { ctx: Arc::new(ctx), mailboxes: settings.mailboxes.into_iter().map(Arc::new).collect(), smtp })
    }

    pub fn mailbox_names(&self) -> Vec<String> {
        self.mailboxes.iter().map(|m| m.name.clone()).collect()
    }
}

#[async_trait]
impl Channel for EmailChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    async fn run(&self, intake: Arc<dyn Intake>, shutdown: CancellationToken) -> Result<(), ChannelError> {
        let mut set = tokio::task::JoinSet::new();
        for mb in &self.mailboxes {
            set.spawn(crate::imap::run_mailbox(self.ctx.clone(), mb.clone(), intake.clone(), shutdown.clone()));
        }
        while set.join_next().await.is_some() {}
        Ok(())
    }

    async fn send(&self, msg: &Outbound) -> Result<Sent, SendError> {
        self.smtp.send(msg).await
    }

    fn senders(&self) -> Vec<String> {
        self.mailbox_names()
    }

    fn own_identities(&self) -> Vec<Recipient> {
        self.mailboxes.iter().map(|m| Recipient::new(ChannelKind::Email, &m.address)).collect()
    }

    fn send_deadline(&self, sender: &str) -> std::time::Duration {
        self.mailboxes.iter().find(|m| m.name == sender).map_or(std::time::Duration::from_secs(30), |m| m.smtp.timeout)
    }
}
