//! E-mail over the operator's SMTP server. Needs the `mail` grant; a `from`
//! other than the operator's default sender must be allowed by it.
//!
//! ```no_run
//! use runner_sdk::{mail::Message, TaskError};
//!
//! fn remind(to: &str, pdf: Vec<u8>) -> Result<String, TaskError> {
//!     let id = Message::new()
//!         .to(to)
//!         .cc("Team <team@example.com>")
//!         .subject("Your weekly report")
//!         .text("The report is attached.")
//!         .attach("report.pdf", "application/pdf", pdf)
//!         .send()?;
//!     Ok(id)
//! }
//! ```
//!
//! Errors: [`HostError::Denied`] (no grant, sender not allowed),
//! [`HostError::Invalid`] (bad address, no recipient, no body),
//! [`HostError::Transient`] (connection failure, SMTP 4xx: `?` turns it into
//! a retry), [`HostError::Permanent`] (SMTP 5xx).

use crate::HostError;
use crate::bindings::runner::task::mail as wit;

/// A mailbox: an e-mail address with an optional display name. Non-ASCII
/// names are encoded by the host.
///
/// Converts from `"ada@example.com"` and from `"Ada Lovelace <ada@example.com>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The address itself, `user@domain`.
    pub email: String,
    /// The display name, if any.
    pub name: Option<String>,
}

impl Address {
    /// An address without a display name.
    pub fn new(email: impl Into<String>) -> Self {
        Address {
            email: email.into(),
            name: None,
        }
    }

    /// An address with a display name: `name <email>`.
    pub fn named(name: impl Into<String>, email: impl Into<String>) -> Self {
        Address {
            email: email.into(),
            name: Some(name.into()),
        }
    }

    /// Reads `email` or `Name <email>` (the name may be quoted). The host
    /// checks that the address itself is valid.
    pub fn parse(text: &str) -> Self {
        let text = text.trim();
        if let Some(open) = text.rfind('<')
            && text.ends_with('>')
        {
            let email = text[open + 1..text.len() - 1].trim().to_string();
            let name = text[..open].trim().trim_matches('"').trim();
            return Address {
                email,
                name: (!name.is_empty()).then(|| name.to_string()),
            };
        }
        Address::new(text)
    }
}

impl From<&str> for Address {
    fn from(text: &str) -> Self {
        Address::parse(text)
    }
}

impl From<String> for Address {
    fn from(text: String) -> Self {
        Address::parse(&text)
    }
}

impl From<&String> for Address {
    fn from(text: &String) -> Self {
        Address::parse(text)
    }
}

impl From<Address> for wit::Address {
    fn from(a: Address) -> Self {
        wit::Address {
            email: a.email,
            name: a.name,
        }
    }
}

/// A file attached to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name shown to the recipient.
    pub filename: String,
    /// e.g. `application/pdf`.
    pub content_type: String,
    /// The file's bytes.
    pub data: Vec<u8>,
}

/// An e-mail message, built step by step and sent with [`Message::send`].
///
/// At least one recipient (to, cc or bcc) and one body (text or html) are
/// needed; with both bodies the message is multipart/alternative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    to: Vec<Address>,
    cc: Vec<Address>,
    bcc: Vec<Address>,
    from: Option<Address>,
    reply_to: Option<Address>,
    subject: String,
    text: Option<String>,
    html: Option<String>,
    attachments: Vec<Attachment>,
}

impl Message {
    /// An empty message.
    pub fn new() -> Self {
        Message::default()
    }

    /// Adds a `To` recipient.
    pub fn to(mut self, address: impl Into<Address>) -> Self {
        self.to.push(address.into());
        self
    }

    /// Adds a `Cc` recipient.
    pub fn cc(mut self, address: impl Into<Address>) -> Self {
        self.cc.push(address.into());
        self
    }

    /// Adds a `Bcc` recipient (not shown to the others).
    pub fn bcc(mut self, address: impl Into<Address>) -> Self {
        self.bcc.push(address.into());
        self
    }

    /// Sets the sender. Without it the operator's configured sender is used;
    /// with it, the sender must be allowed by the task's grant.
    pub fn from(mut self, address: impl Into<Address>) -> Self {
        self.from = Some(address.into());
        self
    }

    /// Sets the `Reply-To` address.
    pub fn reply_to(mut self, address: impl Into<Address>) -> Self {
        self.reply_to = Some(address.into());
        self
    }

    /// Sets the subject (any UTF-8; the host encodes it).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Sets the plain-text body.
    pub fn text(mut self, body: impl Into<String>) -> Self {
        self.text = Some(body.into());
        self
    }

    /// Sets the HTML body.
    pub fn html(mut self, body: impl Into<String>) -> Self {
        self.html = Some(body.into());
        self
    }

    /// Attaches a file.
    pub fn attach(
        mut self,
        filename: impl Into<String>,
        content_type: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        self.attachments.push(Attachment {
            filename: filename.into(),
            content_type: content_type.into(),
            data: data.into(),
        });
        self
    }

    /// Sends the message through the host; returns its Message-ID.
    pub fn send(self) -> Result<String, HostError> {
        send(self)
    }

    fn into_wit(self) -> wit::Message {
        fn list(addresses: Vec<Address>) -> Vec<wit::Address> {
            addresses.into_iter().map(Into::into).collect()
        }
        wit::Message {
            to: list(self.to),
            cc: list(self.cc),
            bcc: list(self.bcc),
            from: self.from.map(Into::into),
            reply_to: self.reply_to.map(Into::into),
            subject: self.subject,
            text: self.text,
            html: self.html,
            attachments: self
                .attachments
                .into_iter()
                .map(|a| wit::Attachment {
                    filename: a.filename,
                    content_type: a.content_type,
                    data: a.data,
                })
                .collect(),
        }
    }
}

/// Sends `message`; returns its Message-ID. Same as [`Message::send`].
pub fn send(message: Message) -> Result<String, HostError> {
    Ok(wit::send(&message.into_wit())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_named_addresses() {
        assert_eq!(
            Address::from("ada@example.com"),
            Address::new("ada@example.com")
        );
        assert_eq!(
            Address::from("Ada Lovelace <ada@example.com>"),
            Address::named("Ada Lovelace", "ada@example.com")
        );
        assert_eq!(
            Address::from("\"山田 太郎\" <taro@example.jp>"),
            Address::named("山田 太郎", "taro@example.jp")
        );
        assert_eq!(
            Address::from("<x@example.com>"),
            Address::new("x@example.com")
        );
        // Not valid, but left for the host to reject with a clear message.
        assert_eq!(Address::from("not an address").email, "not an address");
    }

    #[test]
    fn builder_fills_every_field() {
        let msg = Message::new()
            .to("a@example.com")
            .to(Address::named("B", "b@example.com"))
            .cc("c@example.com")
            .bcc("d@example.com")
            .from("Reports <reports@example.com>")
            .reply_to("help@example.com")
            .subject("件名")
            .text("plain")
            .html("<p>html</p>")
            .attach("r.pdf", "application/pdf", vec![1, 2, 3])
            .into_wit();
        assert_eq!(msg.to.len(), 2);
        assert_eq!(msg.to[1].name.as_deref(), Some("B"));
        assert_eq!(msg.cc[0].email, "c@example.com");
        assert_eq!(msg.bcc[0].email, "d@example.com");
        let from = msg.from.expect("from");
        assert_eq!(
            (from.email.as_str(), from.name.as_deref()),
            ("reports@example.com", Some("Reports"))
        );
        assert_eq!(
            msg.reply_to.map(|a| a.email).as_deref(),
            Some("help@example.com")
        );
        assert_eq!(msg.subject, "件名");
        assert_eq!(msg.text.as_deref(), Some("plain"));
        assert_eq!(msg.html.as_deref(), Some("<p>html</p>"));
        assert_eq!(msg.attachments.len(), 1);
        assert_eq!(msg.attachments[0].filename, "r.pdf");
        assert_eq!(msg.attachments[0].content_type, "application/pdf");
        assert_eq!(msg.attachments[0].data, [1, 2, 3]);
    }

    #[test]
    fn empty_message_has_no_defaults_invented() {
        let msg = Message::new().into_wit();
        assert!(msg.to.is_empty() && msg.cc.is_empty() && msg.bcc.is_empty());
        assert!(msg.from.is_none() && msg.reply_to.is_none());
        assert!(msg.text.is_none() && msg.html.is_none());
        assert!(msg.subject.is_empty());
    }
}
