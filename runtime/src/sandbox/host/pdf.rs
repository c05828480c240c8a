//! `runner:task/pdf`: documents rendered to PDF.

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::pdf::{self, Document};
use crate::sandbox::run::RunState;

/// The PDF renderer one run talks to.
pub trait PdfRenderer: Send + Sync {
    /// Renders the document; returns the PDF file's bytes.
    fn render(&self, document: Document) -> BoxFuture<'_, Result<Vec<u8>, HostError>>;
}

impl pdf::Host for RunState {
    async fn render(&mut self, document: Document) -> GuestResult<Vec<u8>> {
        self.host_call("pdf", "render", |host| &host.pdf)
            .run(|renderer| async move { renderer.render(document).await })
            .await
    }
}
