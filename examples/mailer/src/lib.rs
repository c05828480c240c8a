//! Sends one e-mail from its input and returns the Message-ID:
//! `{"to": ["Ada <ada@example.com>"], "subject": "Hi", "text": "Hello"}`.
//! Optional: `cc`, `bcc`, `from`, `reply_to`, `html`, and `attachment`
//! (`{"filename": "a.txt", "content_type": "text/plain", "text": "..."}`).
//! Needs the `mail` grant; a transient SMTP failure becomes a retry.

use runner_sdk::mail::Message;
use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Attachment {
    filename: String,
    content_type: String,
    text: String,
}

#[derive(Deserialize)]
struct Input {
    to: Vec<String>,
    #[serde(default)]
    cc: Vec<String>,
    #[serde(default)]
    bcc: Vec<String>,
    from: Option<String>,
    reply_to: Option<String>,
    subject: String,
    text: Option<String>,
    html: Option<String>,
    attachment: Option<Attachment>,
}

#[derive(Serialize)]
struct Output {
    message_id: String,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let mut message = Message::new().subject(input.subject);
    for to in &input.to {
        message = message.to(to);
    }
    for cc in &input.cc {
        message = message.cc(cc);
    }
    for bcc in &input.bcc {
        message = message.bcc(bcc);
    }
    if let Some(from) = input.from {
        message = message.from(from);
    }
    if let Some(reply_to) = input.reply_to {
        message = message.reply_to(reply_to);
    }
    if let Some(text) = input.text {
        message = message.text(text);
    }
    if let Some(html) = input.html {
        message = message.html(html);
    }
    if let Some(a) = input.attachment {
        message = message.attach(a.filename, a.content_type, a.text.into_bytes());
    }
    let message_id = message.send()?;
    ctx.info(format!("sent {message_id}"));
    Ok(Output { message_id })
}
