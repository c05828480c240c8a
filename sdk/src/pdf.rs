//! PDF rendering. Needs the `pdf` grant. Text is always literal (nothing is
//! read as markup) and Japanese renders: the host ships a CJK font.
//!
//! ```no_run
//! use runner_sdk::{pdf::Document, TaskError};
//!
//! fn report() -> Result<Vec<u8>, TaskError> {
//!     let bytes = Document::new("Monthly report")
//!         .author("Runner")
//!         .heading(1, "Summary")
//!         .paragraph("Everything ran on time.")
//!         .key_values([("Jobs", "1,024"), ("Failures", "0")])
//!         .table(["Queue", "Jobs"], [["default", "1000"], ["mail", "24"]])
//!         .render()?;
//!     Ok(bytes)
//! }
//! ```

use crate::HostError;
use crate::bindings::runner::task::pdf as wit;

/// Paper size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Paper {
    /// ISO A4 (the default).
    #[default]
    A4,
    /// US Letter.
    Letter,
}

/// A document: a title and blocks laid out top to bottom, rendered by
/// [`Document::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    title: String,
    author: Option<String>,
    paper: Paper,
    landscape: bool,
    blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Heading(u8, String),
    Paragraph(String),
    Table(Vec<String>, Vec<Vec<String>>),
    KeyValues(Vec<(String, String)>),
    PageBreak,
}

impl Document {
    /// An empty A4 portrait document with this title (shown at the top and
    /// stored in the PDF's metadata).
    pub fn new(title: impl Into<String>) -> Self {
        Document {
            title: title.into(),
            author: None,
            paper: Paper::A4,
            landscape: false,
            blocks: Vec::new(),
        }
    }

    /// Sets the author stored in the PDF's metadata.
    pub fn author(mut self, author: impl Into<String>) -> Self {
        self.author = Some(author.into());
        self
    }

    /// Sets the paper size.
    pub fn paper(mut self, paper: Paper) -> Self {
        self.paper = paper;
        self
    }

    /// Lays the pages out landscape (`true`) or portrait.
    pub fn landscape(mut self, landscape: bool) -> Self {
        self.landscape = landscape;
        self
    }

    /// Adds a heading; `level` 1 is the largest, 4 the smallest (others are
    /// refused by the host as invalid).
    pub fn heading(mut self, level: u8, text: impl Into<String>) -> Self {
        self.blocks.push(Block::Heading(level, text.into()));
        self
    }

    /// Adds a paragraph of text.
    pub fn paragraph(mut self, text: impl Into<String>) -> Self {
        self.blocks.push(Block::Paragraph(text.into()));
        self
    }

    /// Adds a table with a header row (may be empty) and rows of cells.
    pub fn table<H, R, C>(mut self, header: H, rows: R) -> Self
    where
        H: IntoIterator,
        H::Item: Into<String>,
        R: IntoIterator,
        R::Item: IntoIterator<Item = C>,
        C: Into<String>,
    {
        let header = header.into_iter().map(Into::into).collect();
        let rows = rows
            .into_iter()
            .map(|row| row.into_iter().map(Into::into).collect())
            .collect();
        self.blocks.push(Block::Table(header, rows));
        self
    }

    /// Adds a two-column list of labels and values ("Total: 42").
    pub fn key_values<I, K, V>(mut self, pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.blocks.push(Block::KeyValues(pairs));
        self
    }

    /// Starts a new page.
    pub fn page_break(mut self) -> Self {
        self.blocks.push(Block::PageBreak);
        self
    }

    /// Renders the document; returns the PDF file's bytes.
    pub fn render(self) -> Result<Vec<u8>, HostError> {
        render(self)
    }

    fn into_wit(self) -> wit::Document {
        wit::Document {
            title: self.title,
            author: self.author,
            paper: match self.paper {
                Paper::A4 => wit::Paper::A4,
                Paper::Letter => wit::Paper::Letter,
            },
            landscape: self.landscape,
            blocks: self
                .blocks
                .into_iter()
                .map(|block| match block {
                    Block::Heading(level, text) => {
                        wit::Block::Heading(wit::Heading { level, text })
                    }
                    Block::Paragraph(text) => wit::Block::Paragraph(text),
                    Block::Table(header, rows) => wit::Block::Table(wit::Table { header, rows }),
                    Block::KeyValues(pairs) => wit::Block::KeyValues(pairs),
                    Block::PageBreak => wit::Block::PageBreak,
                })
                .collect(),
        }
    }
}

/// Renders `document`; same as [`Document::render`].
pub fn render(document: Document) -> Result<Vec<u8>, HostError> {
    Ok(wit::render(&document.into_wit())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_keeps_block_order() {
        let doc = Document::new("報告書")
            .author("Runner")
            .paper(Paper::Letter)
            .landscape(true)
            .heading(2, "Summary")
            .paragraph("All good.")
            .table(
                ["Queue", "Jobs"],
                vec![vec!["default".to_string(), "3".to_string()]],
            )
            .key_values([("Total", "3")])
            .page_break()
            .into_wit();
        assert_eq!(doc.title, "報告書");
        assert_eq!(doc.author.as_deref(), Some("Runner"));
        assert!(matches!(doc.paper, wit::Paper::Letter));
        assert!(doc.landscape);
        assert_eq!(doc.blocks.len(), 5);
        assert!(
            matches!(&doc.blocks[0], wit::Block::Heading(h) if h.level == 2 && h.text == "Summary")
        );
        assert!(matches!(&doc.blocks[1], wit::Block::Paragraph(p) if p == "All good."));
        assert!(matches!(&doc.blocks[2], wit::Block::Table(t)
            if t.header == ["Queue", "Jobs"] && t.rows == [vec!["default".to_string(), "3".to_string()]]));
        assert!(matches!(&doc.blocks[3], wit::Block::KeyValues(kv)
            if kv == &[("Total".to_string(), "3".to_string())]));
        assert!(matches!(doc.blocks[4], wit::Block::PageBreak));
    }

    #[test]
    fn defaults_are_a4_portrait() {
        let doc = Document::new("t").into_wit();
        assert!(matches!(doc.paper, wit::Paper::A4));
        assert!(!doc.landscape && doc.author.is_none() && doc.blocks.is_empty());
    }

    #[test]
    fn tables_accept_headerless_rows() {
        let doc = Document::new("t")
            .table(Vec::<String>::new(), [["a", "b"]])
            .into_wit();
        assert!(
            matches!(&doc.blocks[0], wit::Block::Table(t) if t.header.is_empty() && t.rows[0] == ["a", "b"])
        );
    }
}
