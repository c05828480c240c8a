//! Request bodies nobody read are read to their end (and thrown away)
//! before the response goes out.
//!
//! A handler may answer without reading the body: a 401 or 403 before an
//! upload, a 404 for an unknown name, a 413 for a body over the limit. The
//! connection then closes with the body still arriving, the kernel resets
//! it, and the client, still sending, sees "connection reset" instead of
//! the answer that says what was wrong (more likely the larger the body).
//! Servers such as nginx read on before they close ("lingering close");
//! this layer does the same, up to [`DRAIN_MAX`] bytes or [`DRAIN_TIME`].

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures::{Stream, StreamExt as _};

/// The most of an unread body read and discarded before answering.
const DRAIN_MAX: usize = 256 * 1024 * 1024;
/// The longest time spent discarding an unread body.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// What is left of a request body its handler dropped before its end.
type Left = Arc<Mutex<Option<BodyDataStream>>>;

/// A request body that, dropped before its end, leaves the rest in `left`.
struct Tracked {
    body: Option<BodyDataStream>,
    ended: bool,
    left: Left,
}

impl Stream for Tracked {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let next = body.poll_next_unpin(cx);
        if let Poll::Ready(None) = next {
            this.ended = true;
        }
        next
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ended
            && let Some(body) = self.body.take()
        {
            *self.left.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
        }
    }
}

/// The body's length as `req` declares it (`Content-Length`), if it does.
pub fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Whether `req` may come with a body its client is sending now.
fn may_have_body(req: &Request) -> bool {
    let h = req.headers();
    // A client that waits for "100 Continue" sends nothing until the body
    // is read: nothing to drain.
    if h.get(header::EXPECT).is_some() {
        return false;
    }
    declared_length(req).is_some_and(|n| n > 0) || h.contains_key(header::TRANSFER_ENCODING)
}

/// The layer (`axum::middleware::from_fn`): runs the request, then reads
/// and discards what its handler left of the body.
pub async fn drain_unread(req: Request, next: Next) -> Response {
    if !may_have_body(&req) {
        return next.run(req).await;
    }
    let left: Left = Arc::default();
    let req = req.map(|body| {
        Body::from_stream(Tracked {
            body: Some(body.into_data_stream()),
            ended: false,
            left: left.clone(),
        })
    });
    let res = next.run(req).await;
    let rest = left.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rest) = rest {
        drain(rest).await;
    }
    res
}

async fn drain(mut stream: BodyDataStream) {
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}
