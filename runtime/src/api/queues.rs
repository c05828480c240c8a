//! `/v1/queues` (depths, delayed, in flight, dead letters, replay) and
//! `/v1/workers` (heartbeats and what they run).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Admin, Submit};
use super::error::ErrorBody;
use super::jobs::job_view;
use super::schema::{NeedsAdmin, NeedsToken, QueueOrPartition, TakesBody, UsesStorage};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::queue::history::{self, HistoryPoint};
use crate::queue::partition::{Partitions, queue_of, validate_queue_or_partition};
use crate::queue::{
    Job, JobId, MAX_INSPECT_WAIT, PurgeFilter, QueueStats, RateLimit, WorkerInfo, WorkerSnapshot,
};
use crate::registry::TaskName;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_queues))
        .routes(routes!(queue_detail))
        .routes(routes!(all_history))
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
        .routes(routes!(purge))
        .routes(routes!(running))
        .routes(routes!(scheduled))
        .routes(routes!(list_workers))
        .routes(routes!(inspect))
}

/// Every known queue: ready, delayed, in flight, dead.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", security(("bearer" = [])),
    responses(
        (status = 200, description = "queues", body = Vec<QueueStats>),
        NeedsToken, UsesStorage,
    ))]
async fn list_queues(
    State(ctx): State<AppState>,
    _: Submit,
) -> Result<axum::Json<Vec<QueueStats>>, ApiError> {
    let stats = ctx.broker.queues().await?;
    Ok(axum::Json(add_up_partitions(
        ctx.producer.partitions(),
        stats,
    )))
}

/// The queues' rows, with a partitioned queue's (its own and its
/// partitions') added up into one row under its name.
fn add_up_partitions(partitions: &Partitions, stats: Vec<QueueStats>) -> Vec<QueueStats> {
    let mut out: Vec<QueueStats> = Vec::with_capacity(stats.len());
    for row in stats {
        let owner = queue_of(&row.name);
        if partitions.count(owner) == 1 {
            out.push(row);
            continue;
        }
        match out.iter_mut().find(|r| r.name == owner) {
            Some(sum) => add_to(sum, &row),
            None => out.push(QueueStats {
                name: owner.to_string(),
                ..row
            }),
        }
    }
    out
}

fn add_to(sum: &mut QueueStats, row: &QueueStats) {
    sum.ready += row.ready;
    sum.delayed += row.delayed;
    sum.in_flight += row.in_flight;
    sum.dead += row.dead;
}

#[derive(Serialize, ToSchema)]
pub struct QueueDetail {
    #[serde(flatten)]
    pub stats: QueueStats,
    /// The rate limits that hold back this queue's jobs: the queue's own
    /// (`queue:NAME`, as this API process is configured) and those of the
    /// tasks bound to it (`task:NAME`, counted in this queue).
    pub rate_limits: Vec<LimitUse>,
    /// The last hour, minute by minute, oldest first; the last point is
    /// the current minute (its depth is the depth now).
    pub history: Vec<HistoryPoint>,
}

#[derive(Serialize, ToSchema)]
pub struct LimitUse {
    /// `queue:NAME` or `task:NAME`.
    pub key: String,
    /// The limit as written: `30/m` is at most 30 starts in any minute.
    pub limit: String,
    pub count: u32,
    pub period_ms: u64,
    /// Starts within the window now: at `count`, the next job waits.
    pub used: u64,
}

#[derive(Serialize, ToSchema)]
pub struct AllHistory {
    /// The queues added up.
    pub queues: Vec<String>,
    /// The last hour of all of them, minute by minute, oldest first.
    pub history: Vec<HistoryPoint>,
}

/// One queue: its depths now, its rate limits with their use, and its
/// last hour minute by minute (enqueued, started, and ended by state;
/// waiting and running at each minute's end). Kept by the scripts that
/// change job state: exact, at no extra round trip.
#[utoipa::path(get, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = QueueOrPartition, Path, description = "queue name (a partitioned queue's covers all its partitions), or one partition's")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the queue", body = QueueDetail),
        (status = 400, description = "a bad queue name", body = ErrorBody),
        (status = 404, description = "no such queue", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn queue_detail(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(queue): ApiPath<String>,
) -> Result<axum::Json<QueueDetail>, ApiError> {
    check_queue(&queue)?;
    // A partitioned queue: its own and its partitions' rows, added up.
    let names = ctx.producer.partitions().names(&queue);
    let rows: Vec<QueueStats> = ctx
        .broker
        .queues()
        .await?
        .into_iter()
        .filter(|q| names.contains(&q.name))
        .collect();
    let Some(first) = rows.first() else {
        return Err(ApiError::not_found(format!("no queue {queue:?}")));
    };
    let mut stats = QueueStats {
        name: queue.clone(),
        ..first.clone()
    };
    for row in &rows[1..] {
        add_to(&mut stats, row);
    }
    let mut limits: Vec<RateLimit> = ctx
        .producer
        .queue_limit(&queue)
        .cloned()
        .into_iter()
        .collect();
    for b in ctx.registry.tasks().await? {
        if b.queue == queue
            && let Some(spec) = &b.rate_limit
            && let Ok(l) = RateLimit::parse(format!("task:{}", b.name), spec)
        {
            limits.push(l);
        }
    }
    // A partitioned queue's rate-limited jobs are all in one partition
    // (`queue/partition.rs`): the sum is that partition's count.
    let mut used = vec![0; limits.len()];
    for row in &rows {
        let counts = ctx.broker.rate_usage(&row.name, &limits).await?;
        for (sum, n) in used.iter_mut().zip(counts) {
            *sum += n;
        }
    }
    let row_names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let minutes = ctx.broker.history(&row_names).await?;
    let now = chrono::Utc::now();
    let each: Vec<Vec<HistoryPoint>> = minutes
        .iter()
        .zip(&rows)
        .map(|(m, r)| m.points(now, Some(r.depth())))
        .collect();
    let history = history::sum(&each);
    Ok(axum::Json(QueueDetail {
        stats,
        rate_limits: limits
            .into_iter()
            .zip(used)
            .map(|(l, used)| LimitUse {
                limit: l.spec(),
                key: l.key,
                count: l.count,
                period_ms: l.period_ms,
                used,
            })
            .collect(),
        history,
    }))
}

/// The last hour of every queue added up, minute by minute: the
/// dashboard's throughput and failure charts.
#[utoipa::path(get, path = "/v1/history", tag = "queues", security(("bearer" = [])),
    responses(
        (status = 200, description = "all queues' last hour", body = AllHistory),
        NeedsToken, UsesStorage,
    ))]
async fn all_history(
    State(ctx): State<AppState>,
    _: Submit,
) -> Result<axum::Json<AllHistory>, ApiError> {
    let stats = ctx.broker.queues().await?;
    let names: Vec<String> = stats.iter().map(|q| q.name.clone()).collect();
    let minutes = ctx.broker.history(&names).await?;
    let now = chrono::Utc::now();
    let each: Vec<Vec<HistoryPoint>> = minutes
        .iter()
        .zip(&stats)
        .map(|(m, q)| m.points(now, Some(q.depth())))
        .collect();
    let mut history = history::sum(&each);
    if history.is_empty() {
        history = history::Minutes::default().points(now, Some((0, 0)));
    }
    Ok(axum::Json(AllHistory {
        queues: names,
        history,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// At most this many (default 100; more than 10000 counts as 10000).
    pub limit: Option<usize>,
}

pub(super) fn check_queue(q: &str) -> Result<(), ApiError> {
    validate_queue_or_partition(q).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Dead letters of a queue, oldest first.
#[utoipa::path(get, path = "/v1/queues/{queue}/dead", tag = "queues",
    params(("queue" = QueueOrPartition, Path, description = "queue name (a partitioned queue's covers all its partitions), or one partition's"), LimitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "dead jobs", body = Vec<Job>),
        (status = 400, description = "a bad queue name or `limit`", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn dead_letters(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(queue): ApiPath<String>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<axum::Json<Vec<serde_json::Value>>, ApiError> {
    check_queue(&queue)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let mut jobs = Vec::new();
    for name in ctx.producer.partitions().names(&queue) {
        jobs.extend(ctx.broker.dead_letters(&name, limit).await?);
    }
    // Each partition's oldest first: merged by when they ended.
    jobs.sort_by_key(|j| (j.finished_at, j.id));
    jobs.truncate(limit);
    Ok(axum::Json(jobs.iter().map(job_view).collect()))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayRequest {
    /// Job ids to replay; every dead letter of the queue when empty.
    #[schema(value_type = Vec<JobId>)]
    pub ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Replayed {
    /// The jobs put back (ids that were not dead letters of the queue are
    /// left out).
    #[schema(value_type = Vec<JobId>)]
    pub replayed: Vec<String>,
}

/// Puts dead letters back in the queue as fresh first attempts.
#[utoipa::path(post, path = "/v1/queues/{queue}/replay", tag = "queues",
    params(("queue" = QueueOrPartition, Path, description = "queue name (a partitioned queue's covers all its partitions), or one partition's")),
    request_body = ReplayRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "replayed", body = Replayed),
        (status = 400, description = "a bad queue name or id, or malformed JSON", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn replay(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(queue): ApiPath<String>,
    ApiJson(req): ApiJson<ReplayRequest>,
) -> Result<axum::Json<Replayed>, ApiError> {
    check_queue(&queue)?;
    let ids = req
        .ids
        .iter()
        .map(|s| {
            s.parse::<JobId>()
                .map_err(|_| ApiError::bad_request(format!("ids: {s:?} is not a job id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut done = Vec::new();
    for name in ctx.producer.partitions().names(&queue) {
        done.extend(ctx.broker.replay(&name, &ids).await?);
    }
    Ok(axum::Json(Replayed {
        replayed: done.iter().map(|i| i.to_string()).collect(),
    }))
}

/// Refuses a filter naming a task that cannot exist.
pub fn check_filter(f: &PurgeFilter) -> Result<(), ApiError> {
    if let Some(t) = &f.task {
        TaskName::validate(t).map_err(|e| ApiError::bad_request(format!("task: {e}")))?;
    }
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct Purged {
    /// How many jobs were purged (or would be, on a dry run).
    pub count: usize,
    /// Their ids: each ended REVOKED ("purged from its queue before it
    /// ran") and is kept, as any ended job, for its result TTL.
    #[schema(value_type = Vec<JobId>)]
    pub purged: Vec<String>,
    pub dry_run: bool,
}

/// Purges a queue: its waiting jobs (ready and/or delayed, of one task or
/// all) end REVOKED and never run; running jobs are left alone (revoke
/// them with `POST /v1/jobs/revoke`). The reply lists every job purged.
#[utoipa::path(post, path = "/v1/queues/{queue}/purge", tag = "queues",
    params(("queue" = QueueOrPartition, Path, description = "queue name (a partitioned queue's covers all its partitions), or one partition's")),
    request_body = PurgeFilter,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "purged", body = Purged),
        (status = 400, description = "a bad queue or task name, or malformed JSON", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn purge(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(queue): ApiPath<String>,
    ApiJson(filter): ApiJson<PurgeFilter>,
) -> Result<axum::Json<Purged>, ApiError> {
    check_queue(&queue)?;
    check_filter(&filter)?;
    let mut ids = Vec::new();
    for name in ctx.producer.partitions().names(&queue) {
        ids.extend(purge_one(&ctx, &name, &filter).await?);
    }
    if !filter.dry_run {
        tracing::info!(queue, count = ids.len(), task = ?filter.task, "purged");
    }
    Ok(axum::Json(Purged {
        count: ids.len(),
        purged: ids.iter().map(|i| i.to_string()).collect(),
        dry_run: filter.dry_run,
    }))
}

/// Purges the waiting jobs of one queue (or partition) that `filter`
/// takes, and ends the workflows they were members of.
pub(super) async fn purge_one(
    ctx: &AppState,
    name: &str,
    filter: &PurgeFilter,
) -> Result<Vec<JobId>, ApiError> {
    let purged = ctx.broker.purge(name, filter).await?;
    if !filter.dry_run {
        // Purged workflow members end their workflows now.
        crate::workflow::Workflows::new(ctx.producer.clone())
            .drain_queue(name)
            .await?;
    }
    Ok(purged)
}

/// Jobs of a queue under a lease now: running, or prefetched by a worker
/// (`worker` says which; `started_at` is when it leased the job), oldest
/// first. Read from the broker, not from heartbeats: current to the call.
#[utoipa::path(get, path = "/v1/queues/{queue}/running", tag = "queues",
    params(("queue" = QueueOrPartition, Path, description = "queue name (a partitioned queue's covers all its partitions), or one partition's")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "leased jobs", body = Vec<Job>),
        (status = 400, description = "a bad queue name", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn running(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(queue): ApiPath<String>,
) -> Result<axum::Json<Vec<serde_json::Value>>, ApiError> {
    check_queue(&queue)?;
    let mut jobs = Vec::new();
    for name in ctx.producer.partitions().names(&queue) {
        jobs.extend(ctx.broker.running(&name).await?);
    }
    jobs.sort_by_key(|j| (j.started_at, j.id));
    Ok(axum::Json(jobs.iter().map(job_view).collect()))
}

#[derive(Serialize, ToSchema)]
pub struct ScheduledJob {
    /// When it may run (a countdown, an ETA, a retry's backoff, a rate
    /// limit's next slot).
    pub due: chrono::DateTime<chrono::Utc>,
    #[schema(value_type = Job)]
    pub job: serde_json::Value,
}

/// Delayed jobs of a queue, soonest first, with their due times.
#[utoipa::path(get, path = "/v1/queues/{queue}/scheduled", tag = "queues",
    params(("queue" = QueueOrPartition, Path, description = "queue name (a partitioned queue's covers all its partitions), or one partition's"), LimitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "delayed jobs", body = Vec<ScheduledJob>),
        (status = 400, description = "a bad queue name or `limit`", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn scheduled(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(queue): ApiPath<String>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<axum::Json<Vec<ScheduledJob>>, ApiError> {
    check_queue(&queue)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let mut jobs = Vec::new();
    for name in ctx.producer.partitions().names(&queue) {
        jobs.extend(ctx.broker.scheduled(&name, limit).await?);
    }
    jobs.sort_by_key(|(due, job)| (*due, job.id));
    jobs.truncate(limit);
    Ok(axum::Json(
        jobs.iter()
            .map(|(due, job)| ScheduledJob {
                due: *due,
                job: job_view(job),
            })
            .collect(),
    ))
}

/// Live workers: queues, concurrency, heartbeats, the jobs they run.
#[utoipa::path(get, path = "/v1/workers", tag = "queues", security(("bearer" = [])),
    responses(
        (status = 200, description = "workers", body = Vec<WorkerInfo>),
        NeedsToken, UsesStorage,
    ))]
async fn list_workers(
    State(ctx): State<AppState>,
    _: Submit,
) -> Result<axum::Json<Vec<WorkerInfo>>, ApiError> {
    Ok(axum::Json(ctx.broker.workers().await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InspectQuery {
    /// How long to wait for the workers' answers (`1s` by default, at
    /// most `10s`); the answer comes as soon as every worker that heard
    /// the request answered.
    pub timeout: Option<String>,
}

/// What every live worker holds right now, asked of the workers
/// themselves (Celery's `inspect active` and `inspect reserved`): the jobs
/// it runs, with their start time, attempt and the fuel used so far, and
/// the jobs it leased that wait for a free slot. A worker that does not
/// answer within the timeout is left out.
#[utoipa::path(get, path = "/v1/inspect", tag = "queues", params(InspectQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "one answer per worker, by worker id", body = Vec<WorkerSnapshot>),
        (status = 400, description = "a bad `timeout`", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn inspect(
    State(ctx): State<AppState>,
    _: Submit,
    ApiQuery(q): ApiQuery<InspectQuery>,
) -> Result<axum::Json<Vec<WorkerSnapshot>>, ApiError> {
    let timeout = match &q.timeout {
        None => std::time::Duration::from_secs(1),
        Some(t) => super::jobs::duration_param("timeout", t, "1s")?,
    };
    Ok(axum::Json(
        ctx.broker.inspect(timeout.min(MAX_INSPECT_WAIT)).await?,
    ))
}
