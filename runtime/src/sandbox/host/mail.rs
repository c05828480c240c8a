//! `runner:task/mail`: e-mail through the operator's SMTP server.

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::mail::{self, Message};
use crate::sandbox::run::RunState;
use anyhow::Context as _;
use runner_host_fns::mail::MailConfig;

use super::Service;
use crate::registry::TaskGrants;
use runner_host_fns::mail::{MailAddress, MailAttachment, MailGrant, Mailer, OutgoingMail};
use std::sync::Arc;

/// The mail service one run talks to, already bound to the task's grant
/// (which senders it may use).
pub trait MailSender: Send + Sync {
    /// Sends the message; returns its Message-ID.
    fn send(&self, message: Message) -> BoxFuture<'_, Result<String, HostError>>;
}

impl mail::Host for RunState {
    async fn send(&mut self, message: Message) -> GuestResult<String> {
        self.host_call("mail", "send", |host| &host.mail)
            .run(|mailer| async move { mailer.send(message).await })
            .await
    }
}

/// The process's [`Mailer`] under one task's mail grant.
struct TaskMail {
    service: Arc<Mailer>,
    grant: MailGrant,
}

impl MailSender for TaskMail {
    fn send(&self, message: Message) -> BoxFuture<'_, Result<String, HostError>> {
        Box::pin(async move {
            let outgoing = OutgoingMail {
                to: message.to.into_iter().map(address).collect(),
                cc: message.cc.into_iter().map(address).collect(),
                bcc: message.bcc.into_iter().map(address).collect(),
                from: message.from.map(address),
                reply_to: message.reply_to.map(address),
                subject: message.subject,
                text: message.text,
                html: message.html,
                attachments: message
                    .attachments
                    .into_iter()
                    .map(|a| MailAttachment {
                        filename: a.filename,
                        content_type: a.content_type,
                        data: a.data,
                    })
                    .collect(),
            };
            Ok(self.service.send(&self.grant, &outgoing).await?)
        })
    }
}

fn address(a: mail::Address) -> MailAddress {
    MailAddress {
        email: a.email,
        name: a.name,
    }
}

/// The process's mailer `[host.mail]` describes (none without it).
pub(super) fn service(config: Option<&MailConfig>) -> anyhow::Result<Option<Arc<Mailer>>> {
    config
        .map(|c| Mailer::from_config(c).context("[host.mail]").map(Arc::new))
        .transpose()
}

/// The mailer under the task's mail grant (its allowed senders).
pub(super) fn grant(service: &Option<Arc<Mailer>>, grants: &TaskGrants) -> Service<dyn MailSender> {
    Service::bind(service, grants.mail.as_ref(), |service, grant| {
        Arc::new(TaskMail {
            service,
            grant: grant.clone(),
        }) as Arc<dyn MailSender>
    })
}
