//! The modules a sandbox keeps loaded: the `max` used most recently are
//! held, so a process that meets many module versions over its life (every
//! re-deploy is one) keeps a bounded amount of compiled code. A module let
//! go while a run or a caller still holds it is found again by its hash
//! (a weak reference) instead of being loaded a second time.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::module::{LoadedModule, ModuleHash};

pub(super) struct Loaded {
    max: usize,
    /// Counts uses: an entry's `used` is the count at its last use.
    clock: u64,
    map: HashMap<ModuleHash, Entry>,
}

struct Entry {
    module: Weak<LoadedModule>,
    /// The module, while it is one of the `max` used most recently.
    held: Option<Arc<LoadedModule>>,
    used: u64,
}

impl Loaded {
    /// Holds at most `max` modules (at least one).
    pub(super) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            clock: 0,
            map: HashMap::new(),
        }
    }

    /// The module with this hash, if it is held or still in use somewhere;
    /// it is then the one used most recently.
    pub(super) fn get(&mut self, hash: &ModuleHash) -> Option<Arc<LoadedModule>> {
        self.clock += 1;
        let entry = self.map.get_mut(hash)?;
        entry.used = self.clock;
        if let Some(m) = &entry.held {
            return Some(Arc::clone(m));
        }
        match entry.module.upgrade() {
            // Let go of but still in use: held again.
            Some(m) => {
                entry.held = Some(Arc::clone(&m));
                self.let_go();
                Some(m)
            }
            None => {
                self.map.remove(hash);
                None
            }
        }
    }

    /// Keeps `module`, or the one with its hash kept meanwhile (two threads
    /// may load the same hash at once: one copy is kept); returns that one.
    pub(super) fn insert(&mut self, module: Arc<LoadedModule>) -> Arc<LoadedModule> {
        if let Some(kept) = self.get(&module.hash) {
            return kept;
        }
        self.map.insert(
            module.hash,
            Entry {
                module: Arc::downgrade(&module),
                held: Some(Arc::clone(&module)),
                used: self.clock,
            },
        );
        self.let_go();
        module
    }

    /// How many modules are held.
    pub(super) fn held(&self) -> usize {
        self.map.values().filter(|e| e.held.is_some()).count()
    }

    /// Lets go of the least recently used modules past `max`, and forgets
    /// those nobody holds any more.
    fn let_go(&mut self) {
        let mut held = self.held();
        while held > self.max {
            let oldest = self
                .map
                .iter()
                .filter(|(_, e)| e.held.is_some())
                .min_by_key(|(_, e)| e.used)
                .map(|(h, _)| *h);
            let Some(oldest) = oldest else { break };
            if let Some(e) = self.map.get_mut(&oldest) {
                e.held = None;
            }
            held -= 1;
        }
        self.map
            .retain(|_, e| e.held.is_some() || e.module.strong_count() > 0);
    }
}
