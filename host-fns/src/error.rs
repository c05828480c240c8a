//! The error every capability returns.

/// How a host call failed; mirrors `runner:task/types.host-error`, so the
/// adapter maps it one to one and a task decides in one place whether to
/// retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The grant does not allow this call. Retrying will not help.
    #[error("denied: {0}")]
    Denied(String),
    /// The arguments were wrong. Retrying will not help.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A temporary failure (connection, timeout, SMTP 4xx). Retrying later
    /// may succeed.
    #[error("transient: {0}")]
    Transient(String),
    /// A permanent failure from the other side (SMTP 5xx, quota exceeded).
    #[error("permanent: {0}")]
    Permanent(String),
    /// This deployment does not provide the capability.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl HostError {
    pub fn denied(msg: impl Into<String>) -> Self {
        Self::Denied(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
    pub fn transient(msg: impl Into<String>) -> Self {
        Self::Transient(msg.into())
    }
    pub fn permanent(msg: impl Into<String>) -> Self {
        Self::Permanent(msg.into())
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::Unavailable(msg.into())
    }

    /// The variant's name as in the WIT (`denied`, `invalid`, ...), used as
    /// the outcome of a traced call and as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Denied(_) => "denied",
            Self::Invalid(_) => "invalid",
            Self::Transient(_) => "transient",
            Self::Permanent(_) => "permanent",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        match self {
            Self::Denied(m)
            | Self::Invalid(m)
            | Self::Transient(m)
            | Self::Permanent(m)
            | Self::Unavailable(m) => m,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// `e` and each error under it, joined by ": ": what reqwest's own
/// message leaves out ("error sending request" says nothing of "Connection
/// refused" or a certificate).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        message.push_str(": ");
        message.push_str(&err.to_string());
        source = err.source();
    }
    message
}

/// `text` if it has at most `max` bytes; else its start (cut at a
/// character boundary) and how many bytes were dropped, `max` bytes at most.
pub fn cap_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    // Room for the note: " [... 18446744073709551615 more bytes]" is 38.
    let mut cut = max.saturating_sub(40);
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    let note = format!(" [... {} more bytes]", total - cut);
    if text.len() + note.len() <= max {
        text.push_str(&note);
    }
    text
}
