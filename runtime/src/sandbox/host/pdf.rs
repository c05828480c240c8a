//! `runner:task/pdf`: documents rendered to PDF.

use std::time::Instant;

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::pdf::{self, Document};
use crate::sandbox::run::RunState;
use runner_host_fns::pdf::PdfConfig;

use super::Service;
use crate::registry::TaskGrants;
use runner_host_fns::pdf::PdfService;
use std::sync::Arc;

/// The PDF renderer one run talks to.
pub trait PdfRenderer: Send + Sync {
    /// Renders the document; returns the PDF file's bytes. `deadline` is
    /// the run's: the renderer stops waiting for a compile slot or a
    /// compile then (a compile itself cannot be interrupted, and runs on).
    fn render(
        &self,
        document: Document,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Vec<u8>, HostError>>;
}

impl pdf::Host for RunState {
    async fn render(&mut self, document: Document) -> GuestResult<Vec<u8>> {
        let deadline = self.deadline;
        self.host_call("pdf", "render", |host| &host.pdf)
            .run(|renderer| async move { renderer.render(document, deadline).await })
            .await
    }
}

/// The process's [`PdfService`] for one run.
struct TaskPdf {
    service: Arc<PdfService>,
}

impl PdfRenderer for TaskPdf {
    fn render(
        &self,
        document: Document,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Vec<u8>, HostError>> {
        use runner_host_fns::pdf::{Block, Document as PdfDocument, Paper};
        Box::pin(async move {
            let document = PdfDocument {
                title: document.title,
                author: document.author,
                paper: match document.paper {
                    pdf::Paper::A4 => Paper::A4,
                    pdf::Paper::Letter => Paper::Letter,
                },
                landscape: document.landscape,
                blocks: document
                    .blocks
                    .into_iter()
                    .map(|b| match b {
                        pdf::Block::Heading(h) => Block::Heading {
                            level: h.level,
                            text: h.text,
                        },
                        pdf::Block::Paragraph(text) => Block::Paragraph(text),
                        pdf::Block::Table(t) => Block::Table {
                            header: t.header,
                            rows: t.rows,
                        },
                        pdf::Block::KeyValues(kv) => Block::KeyValues(kv),
                        pdf::Block::PageBreak => Block::PageBreak,
                    })
                    .collect(),
            };
            Ok(self.service.render_until(&document, Some(deadline)).await?)
        })
    }
}

/// The process's PDF renderer `[host.pdf]` describes (none without it).
pub(super) async fn service(config: Option<&PdfConfig>) -> anyhow::Result<Option<Arc<PdfService>>> {
    let Some(config) = config.cloned() else {
        return Ok(None);
    };
    // Indexing the fonts reads every font file.
    let service = tokio::task::spawn_blocking(move || PdfService::new(&config)).await?;
    Ok(Some(Arc::new(service)))
}

/// The renderer, when the task is granted `pdf`.
pub(super) fn grant(
    service: &Option<Arc<PdfService>>,
    grants: &TaskGrants,
) -> Service<dyn PdfRenderer> {
    Service::bind(service, grants.pdf.then_some(&()), |service, ()| {
        Arc::new(TaskPdf { service }) as Arc<dyn PdfRenderer>
    })
}
