//! `/v1/events`: every job's state changes and progress as server-sent
//! events, as the broker publishes them (the dashboard's live job list).
//! It costs the broker nothing per job beyond what it already publishes for
//! waiters; a client that reads too slowly is told how many events it
//! missed instead of slowing anyone down.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Submit;
use super::error::ErrorBody;
use super::schema::{NeedsToken, UsesStorage};
use super::{ApiError, ApiQuery, AppState};
use crate::queue::JobEvent;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only the jobs of these queues (comma-separated); all when absent.
    pub queue: Option<String>,
}

/// The `lagged` event: this many events were dropped because the client
/// read too slowly (0: an unknown number, lost while the server's feed from
/// Redis was cut); read the state again.
#[derive(Serialize, ToSchema)]
pub struct Lagged {
    pub missed: u64,
}

/// Every job's state changes (`job` events: `{id, queue, state,
/// progress?}`) as they happen, until the client disconnects. A `lagged`
/// event says how many were missed by a slow reader.
#[utoipa::path(get, path = "/v1/events", tag = "jobs",
    params(EventsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "an event stream of `job` events (a `JobEvent`) and `lagged` events (a `Lagged`)",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "bad queue filter", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn events(
    State(ctx): State<AppState>,
    _: Submit,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let queues: Option<Vec<String>> = match q.queue.as_deref() {
        None => None,
        Some(list) => {
            let names: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if names.is_empty() {
                return Err(ApiError::bad_request(
                    "queue: give one or more queue names, comma-separated",
                ));
            }
            for name in &names {
                super::queues::check_queue(name)?;
            }
            // A partitioned queue's jobs are in its partitions.
            Some(ctx.producer.partitions().expand(&names))
        }
    };
    let rx = ctx.broker.subscribe().await?;
    let stream = futures::stream::unfold((rx, queues), |(mut rx, queues)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.is_gap() => {
                    // The feed was cut and is back: like a lag, of unknown size.
                    let ev = Event::default()
                        .event("lagged")
                        .json_data(Lagged { missed: 0 })
                        .unwrap_or_default();
                    return Some((Ok(ev), (rx, queues)));
                }
                Ok(ev) => {
                    if queues.as_ref().is_some_and(|qs| !qs.contains(&ev.queue)) {
                        continue;
                    }
                    return Some((Ok(job_event(&ev)), (rx, queues)));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let ev = Event::default()
                        .event("lagged")
                        .json_data(Lagged { missed })
                        .unwrap_or_default();
                    return Some((Ok(ev), (rx, queues)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(super::sse(&ctx, stream))
}

fn job_event(ev: &JobEvent) -> Event {
    Event::default()
        .event("job")
        .json_data(ev)
        .unwrap_or_default()
}
