//! Imports run one way: each top-level module of the runtime may use only
//! modules of lower layers (`docs/architecture.md`). Read from the source,
//! so that a new `use crate::...` that points up, or sideways between two
//! modules of one layer, fails here with the file and the line.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::files_with_ext;

/// Layers, highest first; a module may use the modules of every later row.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["app"],
    &["api"],
    &["config"],
    &["worker", "scheduler"],
    &["workflow"],
    &["producer", "deploy"],
    &["sandbox"],
    &["registry"],
    &["queue"],
    &["names", "builtin", "json_object"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`worker` for
/// `src/worker/run.rs`, `app` for `src/app.rs`); `None` for `lib.rs` and
/// the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "bin")).then(|| name.to_string())
}

#[test]
fn layers_every_crate_path_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for file in files_with_ext(&src, "rs") {
        let Some(from) = module_of(&src, &file) else {
            continue;
        };
        let from_layer = layer_of(&from)
            .unwrap_or_else(|| panic!("module `{from}` is in no layer of this test: add it"));
        *seen.entry(from.clone()).or_default() += 1;
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (at, _) in code.match_indices("crate::") {
                // `runner_host_fns::...` and the like are other crates.
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = &code[at + "crate::".len()..];
                let to: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if to.is_empty() || to == from {
                    continue;
                }
                let to_layer = layer_of(&to)
                    .unwrap_or_else(|| panic!("module `{to}` is in no layer of this test: add it"));
                if to_layer <= from_layer {
                    wrong.push(format!(
                        "{}:{}: `{from}` uses `{to}`",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(seen.len() >= 10, "too few modules read: {seen:?}");
    assert!(
        wrong.is_empty(),
        "imports that do not point down:\n{}",
        wrong.join("\n")
    );
}
