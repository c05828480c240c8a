//! Renders a small report (title, heading, paragraph, key-values, table) to
//! PDF. With `"save_to": {"root": "reports", "path": "r.pdf"}` it writes the
//! file there (needs the `files` grant too); it always returns the PDF's
//! size. Needs the `pdf` grant.

use runner_sdk::pdf::Document;
use runner_sdk::{Context, TaskError, files, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct SaveTo {
    root: String,
    path: String,
}

#[derive(Deserialize)]
struct Input {
    title: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    rows: Vec<(String, u64)>,
    save_to: Option<SaveTo>,
}

#[derive(Serialize)]
struct Output {
    bytes: usize,
    saved: bool,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    // Checked: a release build wraps silently (the total of u64::MAX and 1
    // was printed as 0).
    let total = input
        .rows
        .iter()
        .try_fold(0u64, |sum, (_, n)| sum.checked_add(*n))
        .ok_or_else(|| TaskError::fail("the rows' total is too large"))?;
    let table_rows: Vec<[String; 2]> = input
        .rows
        .iter()
        .map(|(name, n)| [name.clone(), n.to_string()])
        .collect();
    let pdf = Document::new(&input.title)
        .author("runner pdf-report example")
        .heading(1, &input.title)
        .paragraph(&input.summary)
        .key_values([
            ("Rows", input.rows.len().to_string()),
            ("Total", total.to_string()),
        ])
        .heading(2, "Details")
        .table(["Name", "Count"], table_rows)
        .render()?;
    ctx.info(format!("rendered {} bytes", pdf.len()));
    let saved = match &input.save_to {
        Some(to) => {
            files::write(&to.root, &to.path, &pdf)?;
            true
        }
        None => false,
    };
    Ok(Output {
        bytes: pdf.len(),
        saved,
    })
}
