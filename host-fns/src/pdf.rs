//! Renders the document model of `runner:task/pdf` to PDF with typst.
//!
//! Task text is never typst markup. The typst source is one fixed template
//! ([`TEMPLATE`]); the document travels into it as JSON, served as the
//! template's only readable file (`data.json`) and decoded by typst's own
//! `json()`. Every title, heading, cell and value therefore reaches the
//! layout as a typst *string*, which is shown as literal text: `#panic()`,
//! `$x$`, `*bold*`, `<label>`, `@ref` or backslashes in task data are just
//! characters. The typst world serves no other file, so even a bug in the
//! template could not read the host's files.
//!
//! Fonts: typst-assets' fonts (Libertinus Serif, New Computer Modern,
//! DejaVu Sans Mono) plus every font found under the configured font
//! directories (by default the system's, where Debian's `fonts-noto-cjk`
//! or `fonts-ipaexfont-gothic` put their CJK fonts). Fonts are indexed once
//! at start-up and loaded on first use. A document with CJK text fails with
//! `unavailable` and a clear message when no installed font covers it,
//! rather than rendering empty boxes. PDFs embed subset fonts.
//!
//! Layout is CPU-bound: it runs on tokio's blocking pool.
//!
//! # Limits
//!
//! A document is counted before typst sees it; past any of these it is
//! `invalid`, the message naming what is too big:
//! [`MAX_BLOCKS`] blocks (10,000), [`MAX_TABLE_ROWS`] table rows in all
//! (50,000, empty rows included), [`MAX_TABLE_COLUMNS`] columns in one
//! table (100), [`MAX_CELLS`] table cells in all (200,000),
//! [`MAX_KEY_VALUE_PAIRS`] key-value pairs in all (10,000) and
//! [`MAX_TEXT_BYTES`] bytes of text in all (8 MiB: title, author, headings,
//! paragraphs, cells, keys and values).
//!
//! Compiles are bounded in number and in time ([`PdfConfig`], under
//! `[host.pdf]` in `runner.toml`): at most `max_concurrent_renders` run at
//! once (default: the number of CPUs); a render waits for a free slot, and
//! neither that wait nor the compile is waited for past the caller's
//! deadline ([`PdfService::render_until`]; the sandbox passes the run's)
//! or past `max_render_time` (seconds, default 60) after the call. A typst
//! compile cannot be interrupted: when the caller stops waiting, the
//! compile runs on to its end on the blocking pool, *keeping its slot*, so
//! compiles left behind never pile up beyond `max_concurrent_renders`.
//! Running out of time mostly waiting for a slot is `transient` (the
//! renderer is busy); running out of time mostly compiling is `permanent`
//! (the same document would take as long again).
//!
//! ```toml
//! [host.pdf]
//! # font_dirs = ["/usr/share/fonts", "/usr/local/share/fonts"]
//! # max_concurrent_renders = 4   # default: the number of CPUs
//! # max_render_time = 60         # seconds
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use typst::diag::{FileError, FileResult, SourceDiagnostic};
use typst::foundations::{Bytes, Datetime};
use typst::syntax::{FileId, RootedPath, Source, VirtualPath, VirtualRoot};
use typst::text::{Font, FontBook, FontInfo};
use typst::utils::LazyHash;
use typst::{Library, LibraryExt, World};
use typst_layout::PagedDocument;

use crate::HostError;
use crate::trace::traced;

const CAPABILITY: &str = "pdf";

/// The one typst source ever compiled. It reads the document from
/// `data.json` and only ever passes task strings as values.
pub const TEMPLATE: &str = r##"
#let doc = json("data.json")
#set document(title: doc.title, author: doc.authors)
#set page(paper: doc.paper, flipped: doc.landscape, margin: (x: 2cm, y: 2.2cm), numbering: "1 / 1")
#set text(font: doc.fonts, size: 10.5pt, lang: doc.lang)
#set table(stroke: 0.5pt + luma(150), inset: 5pt)
#align(center, block(below: 1.4em, text(size: 18pt, weight: "bold", doc.title)))
#for b in doc.blocks {
  if b.kind == "heading" {
    heading(level: b.level, b.text)
  } else if b.kind == "paragraph" {
    par(b.text)
  } else if b.kind == "table" {
    let header = if b.header.len() > 0 { (table.header(..b.header.map(h => strong(h))),) } else { () }
    table(columns: b.columns, ..header, ..b.cells)
  } else if b.kind == "key-values" {
    block(grid(columns: 2, column-gutter: 1.5em, row-gutter: 0.65em, ..b.pairs.map(p => (strong(p.at(0)), p.at(1))).flatten()))
  } else if b.kind == "page-break" {
    pagebreak(weak: true)
  }
}
"##;

/// Most bytes of task text in one document.
pub const MAX_TEXT_BYTES: usize = 8 * 1024 * 1024;
/// Most table cells in one document.
pub const MAX_CELLS: usize = 200_000;
/// Most blocks in one document.
pub const MAX_BLOCKS: usize = 10_000;
/// Most table rows in one document, all tables together.
pub const MAX_TABLE_ROWS: usize = 50_000;
/// Most columns in one table.
pub const MAX_TABLE_COLUMNS: usize = 100;
/// Most key-value pairs in one document, all blocks together.
pub const MAX_KEY_VALUE_PAIRS: usize = 10_000;
/// How long a render is waited for, unless configured.
pub const DEFAULT_MAX_RENDER_TIME: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Paper {
    #[default]
    A4,
    Letter,
}

/// One block of the document (mirrors WIT `pdf.block`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Block {
    Heading {
        level: u8,
        text: String,
    },
    Paragraph(String),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    KeyValues(Vec<(String, String)>),
    PageBreak,
}

/// Mirrors WIT `pdf.document`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Document {
    pub title: String,
    pub author: Option<String>,
    pub paper: Paper,
    pub landscape: bool,
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PdfConfig {
    /// Directories searched (recursively) for `.ttf`, `.otf`, `.ttc` and
    /// `.otc` fonts, besides the fonts built into typst-assets.
    pub font_dirs: Vec<PathBuf>,
    /// Most typst compiles running at once (0 counts as 1). Default: the
    /// number of CPUs.
    pub max_concurrent_renders: usize,
    /// Longest a render is waited for (slot and compile), in seconds.
    #[serde(with = "crate::serde_secs")]
    pub max_render_time: Duration,
}

impl Default for PdfConfig {
    fn default() -> Self {
        Self {
            font_dirs: vec![
                PathBuf::from("/usr/share/fonts"),
                PathBuf::from("/usr/local/share/fonts"),
            ],
            max_concurrent_renders: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_render_time: DEFAULT_MAX_RENDER_TIME,
        }
    }
}

/// CJK families preferred, in order, when installed.
const CJK_FAMILIES: &[&str] = &[
    "IPAexGothic",
    "Noto Sans CJK JP",
    "Noto Serif CJK JP",
    "IPAGothic",
    "IPAexMincho",
    "Noto Sans CJK SC",
    "Noto Sans CJK KR",
];

/// A font known to the book, loaded on first use.
struct FontSlot {
    source: FontSource,
    index: u32,
    font: OnceLock<Option<Font>>,
}

enum FontSource {
    Embedded(&'static [u8]),
    File(PathBuf),
}

impl FontSlot {
    fn get(&self) -> Option<Font> {
        self.font
            .get_or_init(|| {
                let data = match &self.source {
                    FontSource::Embedded(bytes) => Bytes::new(*bytes),
                    FontSource::File(path) => match fs::read(path) {
                        Ok(data) => Bytes::new(data),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot read a font");
                            return None;
                        }
                    },
                };
                Font::new(data, self.index)
            })
            .clone()
    }
}

struct Fonts {
    book: LazyHash<FontBook>,
    slots: Vec<FontSlot>,
    /// Families listed first in `text(font: ..)`.
    families: Vec<String>,
    has_cjk: bool,
    /// The CJK characters ([`is_cjk`]) some font covers, one bit each from
    /// [`CJK_FIRST`]: looked up per character of a document, where asking
    /// each font's coverage (a walk of its runs) cost thousands of steps.
    cjk_covered: Vec<u64>,
}

/// The first and last character [`is_cjk`] takes.
const CJK_FIRST: u32 = 0x3000;
const CJK_LAST: u32 = 0x2FA1F;

/// The bit of `c` (a CJK character) in [`Fonts::cjk_covered`].
fn cjk_bit(c: u32) -> (usize, u64) {
    let i = (c - CJK_FIRST) as usize;
    (i / 64, 1 << (i % 64))
}

/// The pdf capability; one per process (font index and typst library are
/// built once), shared by every task.
pub struct PdfService {
    shared: Arc<Shared>,
    /// One permit per compile that may run; held by the compile itself.
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    max_render_time: Duration,
}

struct Shared {
    library: LazyHash<Library>,
    fonts: Fonts,
}

impl PdfService {
    /// Indexes the fonts; warns (does not fail) when no CJK font is found,
    /// since only documents with CJK text need one.
    pub fn new(config: &PdfConfig) -> Self {
        let fonts = index_fonts(&config.font_dirs);
        if !fonts.has_cjk {
            tracing::warn!(
                dirs = ?config.font_dirs,
                "no CJK font found: PDFs with Japanese text will fail; install fonts-noto-cjk or fonts-ipaexfont-gothic"
            );
        }
        let max_concurrent = config.max_concurrent_renders.max(1);
        Self {
            shared: Arc::new(Shared {
                library: LazyHash::new(Library::builder().build()),
                fonts,
            }),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_render_time: config.max_render_time,
        }
    }

    /// Compiles running now, including those nobody waits for any more.
    pub fn renders_running(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    /// The font families available, for diagnostics.
    pub fn families(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .shared
            .fonts
            .book
            .families()
            .map(|(name, _)| name.to_owned())
            .collect();
        all.dedup();
        all
    }

    /// Renders the document; returns the PDF bytes. Waits at most the
    /// configured `max_render_time`.
    pub async fn render(&self, document: &Document) -> Result<Vec<u8>, HostError> {
        self.render_until(document, None).await
    }

    /// Renders the document, waiting (for a compile slot, then for the
    /// compile) until `deadline` at most, and at most `max_render_time`.
    pub async fn render_until(
        &self,
        document: &Document,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, HostError> {
        traced(CAPABILITY, "render", async {
            let started = Instant::now();
            let limit = started + self.max_render_time;
            let (until, why) = match deadline {
                Some(d) if d < limit => (d, "the job's deadline"),
                _ => (limit, "the runner's pdf max_render_time"),
            };
            let data = self.prepare(document)?;
            let slot = match tokio::time::timeout_at(
                until.into(),
                self.slots.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(slot)) => slot,
                Ok(Err(_)) => return Err(HostError::unavailable("the PDF renderer is shut down")),
                Err(_) => {
                    return Err(HostError::transient(format!(
                        "the PDF renderer is busy: no compile slot (of {}) came free before {why}",
                        self.max_concurrent
                    )));
                }
            };
            let waited = started.elapsed();
            let shared = self.shared.clone();
            // The slot goes with the compile: it is given back when the
            // compile ends, whether or not anyone still waits for it.
            let compiling = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                compile(&shared, data)
            });
            match tokio::time::timeout_at(until.into(), compiling).await {
                Ok(done) => done.map_err(|e| {
                    HostError::transient(format!("PDF rendering did not complete: {e}"))
                })?,
                Err(_) => {
                    let compiled = started.elapsed() - waited;
                    let message = format!(
                        "PDF rendering did not finish before {why} (waited {:.1}s for a compile \
                         slot, compiled for {:.1}s)",
                        waited.as_secs_f64(),
                        compiled.as_secs_f64()
                    );
                    // Mostly compiling: the same document would take as
                    // long again. Mostly waiting: the renderer was busy.
                    Err(if compiled >= waited {
                        HostError::permanent(format!(
                            "{message}; the document is too big to render in time"
                        ))
                    } else {
                        HostError::transient(format!("{message}; the renderer is busy"))
                    })
                }
            }
        })
        .await
    }

    /// Refuses a document past any of the limits, before anything else is
    /// done with it.
    fn check_size(doc: &Document) -> Result<(), HostError> {
        if doc.blocks.len() > MAX_BLOCKS {
            return Err(HostError::invalid(format!(
                "the document has {} blocks, more than the limit of {MAX_BLOCKS} blocks",
                doc.blocks.len()
            )));
        }
        let mut rows = 0usize;
        let mut pairs = 0usize;
        let mut text = doc.title.len() + doc.author.as_ref().map_or(0, String::len);
        for (i, block) in doc.blocks.iter().enumerate() {
            match block {
                Block::Heading { text: t, .. } | Block::Paragraph(t) => text += t.len(),
                Block::Table { header, rows: r } => {
                    rows += r.len();
                    let columns = r.iter().map(Vec::len).chain([header.len()]).max();
                    if let Some(columns) = columns.filter(|c| *c > MAX_TABLE_COLUMNS) {
                        return Err(HostError::invalid(format!(
                            "block {i}: the table has {columns} columns, more than the limit \
                             of {MAX_TABLE_COLUMNS} columns"
                        )));
                    }
                    text += header
                        .iter()
                        .chain(r.iter().flatten())
                        .map(String::len)
                        .sum::<usize>();
                }
                Block::KeyValues(p) => {
                    pairs += p.len();
                    text += p.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                }
                Block::PageBreak => {}
            }
        }
        if rows > MAX_TABLE_ROWS {
            return Err(HostError::invalid(format!(
                "the document's tables have {rows} rows, more than the limit of {MAX_TABLE_ROWS} rows"
            )));
        }
        if pairs > MAX_KEY_VALUE_PAIRS {
            return Err(HostError::invalid(format!(
                "the document has {pairs} key-value pairs, more than the limit of \
                 {MAX_KEY_VALUE_PAIRS} key-value pairs"
            )));
        }
        if text > MAX_TEXT_BYTES {
            return Err(HostError::invalid(format!(
                "the document has {text} bytes of text, more than the limit of {MAX_TEXT_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Validates the document and turns it into the template's JSON.
    fn prepare(&self, doc: &Document) -> Result<Vec<u8>, HostError> {
        Self::check_size(doc)?;
        let mut text_bytes = doc.title.len() + doc.author.as_ref().map_or(0, String::len);
        let mut cells_total = 0usize;
        let mut uncovered: Option<char> = None;
        let mut japanese = false;
        let mut check = |s: &str, bytes: &mut usize| {
            *bytes += s.len();
            for c in s.chars() {
                if is_cjk(c) {
                    japanese |= is_kana(c);
                    if uncovered.is_none() && !self.covered(c) {
                        uncovered = Some(c);
                    }
                }
            }
        };
        check(&doc.title, &mut 0);
        if let Some(a) = &doc.author {
            check(a, &mut 0);
        }
        let mut blocks = Vec::with_capacity(doc.blocks.len());
        for (i, block) in doc.blocks.iter().enumerate() {
            blocks.push(match block {
                Block::Heading { level, text } => {
                    if !(1..=4).contains(level) {
                        return Err(HostError::invalid(format!(
                            "block {i}: heading level {level} is not 1 to 4"
                        )));
                    }
                    check(text, &mut text_bytes);
                    json!({"kind": "heading", "level": level, "text": text})
                }
                Block::Paragraph(text) => {
                    check(text, &mut text_bytes);
                    json!({"kind": "paragraph", "text": text})
                }
                Block::Table { header, rows } => {
                    let columns = rows
                        .iter()
                        .map(Vec::len)
                        .chain([header.len()])
                        .max()
                        .unwrap_or(0);
                    if columns == 0 {
                        continue;
                    }
                    cells_total += columns * (rows.len() + 1);
                    if cells_total > MAX_CELLS {
                        return Err(HostError::invalid(format!(
                            "more than {MAX_CELLS} table cells"
                        )));
                    }
                    let pad = |r: &Vec<String>| -> Vec<String> {
                        let mut r = r.clone();
                        r.resize(columns, String::new());
                        r
                    };
                    let header = if header.is_empty() {
                        Vec::new()
                    } else {
                        pad(header)
                    };
                    for s in &header {
                        check(s, &mut text_bytes);
                    }
                    let mut cells = Vec::with_capacity(columns * rows.len());
                    for row in rows {
                        for s in pad(row) {
                            check(&s, &mut text_bytes);
                            cells.push(s);
                        }
                    }
                    json!({"kind": "table", "columns": columns, "header": header, "cells": cells})
                }
                Block::KeyValues(pairs) => {
                    for (k, v) in pairs {
                        check(k, &mut text_bytes);
                        check(v, &mut text_bytes);
                    }
                    json!({"kind": "key-values", "pairs": pairs})
                }
                Block::PageBreak => json!({"kind": "page-break"}),
            });
            if text_bytes > MAX_TEXT_BYTES {
                return Err(HostError::invalid(format!(
                    "document text exceeds {MAX_TEXT_BYTES} bytes"
                )));
            }
        }
        if let Some(c) = uncovered {
            return Err(HostError::unavailable(format!(
                "no installed font can show '{c}' (U+{:04X}): install a CJK font (Debian: fonts-noto-cjk or \
                 fonts-ipaexfont-gothic) or add its directory to the pdf font_dirs",
                c as u32
            )));
        }
        let data = json!({
            "title": doc.title,
            "authors": doc.author.iter().collect::<Vec<_>>(),
            "paper": match doc.paper { Paper::A4 => "a4", Paper::Letter => "us-letter" },
            "landscape": doc.landscape,
            "lang": if japanese { "ja" } else { "en" },
            "fonts": self.shared.fonts.families,
            "blocks": blocks,
        });
        serde_json::to_vec(&data)
            .map_err(|e| HostError::invalid(format!("cannot encode the document: {e}")))
    }

    /// Whether some font covers `c`, a CJK character.
    fn covered(&self, c: char) -> bool {
        self.shared.fonts.covers_cjk(c)
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x303F // CJK symbols and punctuation
        | 0x3040..=0x30FF // hiragana, katakana
        | 0x3400..=0x4DBF // extension A
        | 0x4E00..=0x9FFF // unified ideographs
        | 0xAC00..=0xD7AF // hangul
        | 0xF900..=0xFAFF // compatibility ideographs
        | 0xFF00..=0xFFEF // half- and full-width forms
        | 0x20000..=0x2FA1F)
}

fn is_kana(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0xFF66..=0xFF9F)
}

fn index_fonts(dirs: &[PathBuf]) -> Fonts {
    let mut book = FontBook::new();
    let mut slots = Vec::new();
    for data in typst_assets::fonts() {
        for (index, info) in FontInfo::iter(data).enumerate() {
            book.push(info);
            slots.push(FontSlot {
                source: FontSource::Embedded(data),
                index: index as u32,
                font: OnceLock::new(),
            });
        }
    }
    let mut files = Vec::new();
    for dir in dirs {
        collect_font_files(dir, &mut files);
    }
    files.sort();
    for path in files {
        let Ok(data) = fs::read(&path) else {
            continue;
        };
        for (index, info) in FontInfo::iter(&data).enumerate() {
            book.push(info);
            slots.push(FontSlot {
                source: FontSource::File(path.clone()),
                index: index as u32,
                font: OnceLock::new(),
            });
        }
    }
    let mut families = vec!["Libertinus Serif".to_owned()];
    let mut has_cjk = false;
    for family in CJK_FAMILIES {
        if book.contains_family(family) {
            families.push((*family).to_owned());
            has_cjk = true;
        }
    }
    // Any other font covering kana also makes Japanese renderable.
    has_cjk |= (0..slots.len())
        .filter_map(|i| book.info(i))
        .any(|info| info.coverage.contains('あ' as u32));
    tracing::debug!(fonts = slots.len(), has_cjk, "pdf fonts indexed");
    let mut cjk_covered = vec![0u64; cjk_bit(CJK_LAST).0 + 1];
    for info in (0..slots.len()).filter_map(|i| book.info(i)) {
        for c in info.coverage.iter() {
            if char::from_u32(c).is_some_and(is_cjk) {
                let (word, bit) = cjk_bit(c);
                cjk_covered[word] |= bit;
            }
        }
    }
    Fonts {
        book: LazyHash::new(book),
        slots,
        families,
        has_cjk,
        cjk_covered,
    }
}

impl Fonts {
    /// Whether some font covers `c`, a CJK character ([`is_cjk`]).
    fn covers_cjk(&self, c: char) -> bool {
        let (word, bit) = cjk_bit(c as u32);
        self.cjk_covered[word] & bit != 0
    }
}

fn collect_font_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(items) = fs::read_dir(dir) else {
        return;
    };
    for item in items.flatten() {
        let path = item.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_font_files(&path, out);
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "ttf" | "otf" | "ttc" | "otc"
            )
        }) {
            out.push(path);
        }
    }
}

/// The world one render sees: the template, its data, the fonts; nothing
/// else is readable.
struct RenderWorld<'a> {
    shared: &'a Shared,
    main: Source,
    data_id: FileId,
    data: Bytes,
}

impl World for RenderWorld<'_> {
    fn library(&self) -> &LazyHash<Library> {
        &self.shared.library
    }

    fn book(&self) -> &LazyHash<FontBook> {
        &self.shared.fonts.book
    }

    fn main(&self) -> FileId {
        self.main.id()
    }

    fn source(&self, id: FileId) -> FileResult<Source> {
        if id == self.main.id() {
            Ok(self.main.clone())
        } else {
            Err(FileError::AccessDenied)
        }
    }

    fn file(&self, id: FileId) -> FileResult<Bytes> {
        if id == self.data_id {
            Ok(self.data.clone())
        } else {
            Err(FileError::AccessDenied)
        }
    }

    fn font(&self, index: usize) -> Option<Font> {
        self.shared.fonts.slots.get(index)?.get()
    }

    fn today(&self, _offset: Option<typst::foundations::Duration>) -> Option<Datetime> {
        use chrono::Datelike;
        let now = chrono::Utc::now();
        Datetime::from_ymd(now.year(), now.month() as u8, now.day() as u8)
    }
}

fn file_id(path: &str) -> Result<FileId, HostError> {
    let vpath = VirtualPath::new(path)
        .map_err(|e| HostError::unavailable(format!("typst path {path}: {e:?}")))?;
    Ok(FileId::new(RootedPath::new(VirtualRoot::Project, vpath)))
}

fn compile(shared: &Shared, data: Vec<u8>) -> Result<Vec<u8>, HostError> {
    let main_id = file_id("/main.typ")?;
    let world = RenderWorld {
        shared,
        main: Source::new(main_id, TEMPLATE.to_owned()),
        data_id: file_id("/data.json")?,
        data: Bytes::new(data),
    };
    let warned = typst::compile::<PagedDocument>(&world);
    for warning in &warned.warnings {
        tracing::debug!(warning = %warning.message, "typst warning");
    }
    let result = warned
        .output
        .map_err(|errors: typst::ecow::EcoVec<SourceDiagnostic>| {
            HostError::invalid(format!("PDF layout failed: {}", messages(&errors)))
        })
        .and_then(|document| {
            typst_pdf::pdf(&document, &typst_pdf::PdfOptions::default()).map_err(|errors| {
                HostError::invalid(format!("PDF export failed: {}", messages(&errors)))
            })
        });
    // typst memoizes across calls; keep the cache from growing without end.
    typst::comemo::evict(10);
    result
}

fn messages(errors: &[SourceDiagnostic]) -> String {
    errors
        .iter()
        .map(|e| e.message.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CJK coverage index says what the fonts' own coverage says, for
    /// every seventh CJK character (asking every font is slow: that is why
    /// the index is there).
    #[test]
    fn the_cjk_index_agrees_with_the_fonts() {
        let fonts = index_fonts(&PdfConfig::default().font_dirs);
        let mut covered = 0;
        let chars = (CJK_FIRST..=CJK_LAST)
            .step_by(7)
            .chain([CJK_LAST])
            .filter_map(char::from_u32)
            .filter(|c| is_cjk(*c));
        for c in chars {
            let scan = (0..fonts.slots.len())
                .filter_map(|i| fonts.book.info(i))
                .any(|info| info.coverage.contains(c as u32));
            assert_eq!(fonts.covers_cjk(c), scan, "{c:?} (U+{:04X})", c as u32);
            covered += usize::from(scan);
        }
        // The machine has a CJK font (scripts/setup installs one): the
        // index is not empty by accident.
        assert!(covered > 500, "{covered} CJK characters covered");
    }
}
