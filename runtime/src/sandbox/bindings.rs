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
