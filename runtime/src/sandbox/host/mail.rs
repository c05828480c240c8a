//! `runner:task/mail`: e-mail through the operator's SMTP server.

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::mail::{self, Message};
use crate::sandbox::run::RunState;

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
