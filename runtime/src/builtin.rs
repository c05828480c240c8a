//! Components embedded in the `runner` binary: the built-in tasks
//! (`reminder`, `report`, `cleanup`, `notify`, built from `tasks/`) and the
//! `hello` example of the README tour, which `runner dev` uploads and binds.
//! A `runner.toml` refers to them as `module = "builtin:reminder"`. Test
//! programs are not embedded (they are built for the tests by the
//! test-programs crate).
//!
//! They are built from source by `build.rs` on every build of the runtime;
//! nothing here is a committed `.wasm`.

/// `(name, kind, component bytes)`; kind is `task` or `example`.
static EMBEDDED: &[(&str, &str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// The component of built-in `name`.
pub fn module(name: &str) -> Option<&'static [u8]> {
    EMBEDDED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, bytes)| *bytes)
}

/// Every built-in's name, tasks first.
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<(&str, &str)> = EMBEDDED.iter().map(|(n, k, _)| (*n, *k)).collect();
    v.sort_by_key(|(n, k)| (*k != "task", *n));
    v.into_iter().map(|(n, _)| n).collect()
}

/// `(name, kind, bytes)` of every built-in.
pub fn all() -> impl Iterator<Item = (&'static str, &'static str, &'static [u8])> {
    EMBEDDED.iter().copied()
}
