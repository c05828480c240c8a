//! Host bindings for the `task` world, generated once from THE contract in
//! `sdk/wit/` (the same files the SDK's guest bindings come from).
//!
//! Every import is async (host services do I/O) and trappable (a broken host
//! invariant traps the guest; a failure the task should handle is a
//! `host-error` value instead).

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "task",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use runner::task::types::HostError;

impl HostError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self::Denied(message.into())
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient(message.into())
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }
}

impl HostError {
    /// The case's name as in the WIT (`denied`, `invalid`, ...): the
    /// outcome of a traced host call and a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Denied(_) => "denied",
            Self::Invalid(_) => "invalid",
            Self::Transient(_) => "transient",
            Self::Permanent(_) => "permanent",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The same error with its message capped at `max` bytes
    /// ([`crate::queue::job::cap_text`]): a server's answer or a path can be
    /// as long as it likes, what reaches the task is not.
    pub fn capped(self, max: usize) -> Self {
        let cap = |m: String| crate::queue::job::cap_text(m, max);
        match self {
            Self::Denied(m) => Self::Denied(cap(m)),
            Self::Invalid(m) => Self::Invalid(cap(m)),
            Self::Transient(m) => Self::Transient(cap(m)),
            Self::Permanent(m) => Self::Permanent(cap(m)),
            Self::Unavailable(m) => Self::Unavailable(cap(m)),
        }
    }

    /// The message, without the case.
    pub fn message(&self) -> &str {
        match self {
            Self::Denied(m)
            | Self::Invalid(m)
            | Self::Transient(m)
            | Self::Permanent(m)
            | Self::Unavailable(m) => m,
        }
    }
}
