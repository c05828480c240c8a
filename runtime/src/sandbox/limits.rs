//! A run's memory limit, and the record that it was reached.
//!
//! A guest denied memory usually traps a moment later (Rust aborts on
//! allocation failure), and that trap says nothing about memory. The limiter
//! remembers the denial so the run is reported as `MemoryLimit`.

use wasmtime::ResourceLimiter;

/// Tables hold function references; a guest has no business with more
/// elements than this, and each costs host memory.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

pub(crate) struct MemoryLimiter {
    limit: usize,
    /// Bytes of linear memory across all of the run's memories.
    used: usize,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: 0,
            hit: false,
        }
    }

    /// Bytes of linear memory granted so far (at instantiation and by
    /// every `memory.grow`).
    pub(crate) fn used(&self) -> usize {
        self.used
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // The memory's own declared maximum, not the run's limit.
            return Ok(false);
        }
        let growth = desired.saturating_sub(current);
        if self.used.saturating_add(growth) <= self.limit {
            self.used += growth;
            Ok(true)
        } else {
            self.hit = true;
            Ok(false)
        }
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The pool's slot size is the other memory ceiling.
        self.hit = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }
}
