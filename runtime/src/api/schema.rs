//! The OpenAPI schemas that cannot be derived where their types are
//! defined, and the error responses every route shares.
//!
//! - The names: a module hash, a job id, a task name and a queue name are
//!   strings with a pattern (the rules of `crate::names` and
//!   `validate_queue_name`).
//! - The grants of `runner-host-fns` (`HttpGrant`, `MailGrant`, `Access`),
//!   which this crate cannot derive `ToSchema` on: described here by
//!   doc-only types of the same JSON shape; and so `TaskGrants`, which
//!   holds them (its layer may not name this module).
//! - [`BeatStatus`](crate::scheduler::BeatStatus), a beat flattened into
//!   its status: the beat's schema refuses unknown fields (it is a request
//!   body too), so the status is one object with the beat's properties
//!   and its own, not an `allOf` that no status could satisfy.
//! - The error responses ([`ErrorBody`](super::error::ErrorBody)) that
//!   depend on how a route is reached rather than on what it does: 401 and
//!   403 (its token), 413 (its body), 500 and 503 (its storage).
//!
//! The documented maxima in `#[schema(maximum = ...)]` attributes are
//! literals (the attribute takes nothing else); the contract tests check
//! that they equal the constants of `crate::queue::job`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use utoipa::openapi::header::Header;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    KnownFormat, Object, ObjectBuilder, OneOfBuilder, Ref, SchemaFormat, Type,
};
use utoipa::openapi::{ContentBuilder, RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::names::{ModuleHash, TaskName};
use crate::queue::JobId;
use crate::registry::{JobsGrant, KvGrant, TaskGrants};
use crate::scheduler::beat::Beat;
use crate::scheduler::{BeatSource, BeatStatus, FireTime, JobOutcome, LastFire};

/// A module hash as the API shows it (requests also take bare hex digits
/// and upper case; the documented form is the canonical one).
pub const MODULE_HASH_PATTERN: &str = "^sha256:[0-9a-f]{64}$";
/// A task or beat name: 1 to 100 of `A-Z a-z 0-9 _ - . :`, starting with
/// a letter or digit (`crate::names::check_name`).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$";
/// A queue name: 1 to 100 of `A-Z a-z 0-9 _ - . :`, not `.` or `..`
/// (`crate::queue::job::validate_queue_name`).
pub const QUEUE_PATTERN: &str = "^(?!\\.{1,2}$)[A-Za-z0-9_.:-]{1,100}$";
/// A queue's name, or one partition's: `x~0` to `x~63`
/// (`crate::queue::partition::validate_queue_or_partition`).
pub const QUEUE_OR_PARTITION_PATTERN: &str =
    "^(?!\\.{1,2}(~|$))[A-Za-z0-9_.:-]{1,100}(~([0-9]|[1-5][0-9]|6[0-3]))?$";

fn pattern_string(pattern: &str, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .into()
}

impl PartialSchema for ModuleHash {
    fn schema() -> RefOr<Schema> {
        pattern_string(
            MODULE_HASH_PATTERN,
            "`sha256:` and the 64 lowercase hex digits of the sha256 of the component's bytes.",
        )
    }
}

impl ToSchema for ModuleHash {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ModuleHash")
    }
}

impl PartialSchema for JobId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .description(Some("A job id: a UUIDv7 (ids sort by creation time)."))
            .into()
    }
}

impl ToSchema for JobId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobId")
    }
}

impl PartialSchema for TaskName {
    fn schema() -> RefOr<Schema> {
        pattern_string(
            NAME_PATTERN,
            "A task name: 1 to 100 bytes of `A-Z a-z 0-9 _ - . :`, starting with a letter or digit.",
        )
    }
}

impl ToSchema for TaskName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TaskName")
    }
}

/// A queue name (documentation only: queue names are plain strings).
pub struct QueueName;

impl PartialSchema for QueueName {
    fn schema() -> RefOr<Schema> {
        pattern_string(
            QUEUE_PATTERN,
            "A queue name: 1 to 100 bytes of `A-Z a-z 0-9 _ - . :`, not `.` or `..`.",
        )
    }
}

impl ToSchema for QueueName {}

/// Where a job is: a queue, or one partition of a partitioned queue
/// (documentation only).
pub struct QueueOrPartition;

impl PartialSchema for QueueOrPartition {
    fn schema() -> RefOr<Schema> {
        pattern_string(
            QUEUE_OR_PARTITION_PATTERN,
            "A queue name (1 to 100 bytes of `A-Z a-z 0-9 _ - . :`, not `.` or `..`), or the name of one of a \
             partitioned queue's partitions: the queue's name, `~` and the partition's number \
             (0 to 63).",
        )
    }
}

impl ToSchema for QueueOrPartition {}

/// The bytes of a component (`application/wasm`), not JSON.
pub struct WasmBytes;

impl PartialSchema for WasmBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("The component's bytes."))
            .into()
    }
}

impl ToSchema for WasmBytes {}

/// The http grant: what a task may reach with `http.fetch`
/// (`runner_host_fns::http::HttpGrant`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HttpGrant {
    /// Allowed destinations: `https://hooks.slack.com`,
    /// `https://*.example.com:8443`, `http://127.0.0.1:8080`, `https://*`.
    pub allow: Vec<String>,
    /// Non-public networks the task may reach anyway (`10.1.0.0/16`).
    #[schema(required = false)]
    pub private_networks: Vec<String>,
}

/// The mail grant: the From addresses a task may use
/// (`runner_host_fns::mail::MailGrant`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MailGrant {
    /// Exact (`noreply@example.com`) or a whole domain (`*@example.com`).
    /// The configured sender is always allowed.
    #[schema(required = false)]
    pub allowed_senders: Vec<String>,
}

/// How a task may use one files root (`runner_host_fns::files::Access`).
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

fn nullable_ref(name: &str) -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(Ref::from_schema_name(name))
        .into()
}

impl PartialSchema for TaskGrants {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "What a task may reach (the format of `[tasks.NAME.grants]` in runner.toml); \
                 each grant left out is not given.",
            ))
            .property("kv", nullable_ref("KvGrant"))
            .property("mail", nullable_ref("MailGrant"))
            .property("http", nullable_ref("HttpGrant"))
            .property(
                "files",
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .description(Some("Root name (from `[host.files.roots]`) -> access."))
                    .additional_properties(Some(Ref::from_schema_name("Access"))),
            )
            .property(
                "pdf",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some("`pdf.render`.")),
            )
            .property("jobs", nullable_ref("JobsGrant"))
            .additional_properties(Some(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
            ))
            .into()
    }
}

impl ToSchema for TaskGrants {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TaskGrants")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((KvGrant::name().into(), KvGrant::schema()));
        schemas.push((MailGrant::name().into(), MailGrant::schema()));
        schemas.push((HttpGrant::name().into(), HttpGrant::schema()));
        schemas.push((Access::name().into(), Access::schema()));
        schemas.push((JobsGrant::name().into(), JobsGrant::schema()));
        <JobsGrant as ToSchema>::schemas(schemas);
    }
}

impl PartialSchema for BeatStatus {
    fn schema() -> RefOr<Schema> {
        let mut status = match <Beat as PartialSchema>::schema() {
            RefOr::T(Schema::Object(beat)) => beat,
            _ => Object::new(),
        };
        // The status carries more than the beat: its own fields below.
        status.additional_properties = None;
        status.description = Some(
            "A beat (its definition, as in `PUT /v1/schedules/{name}`) with where it comes \
             from and how it has been firing."
                .into(),
        );
        let own: [(&str, RefOr<Schema>, bool); 6] = [
            ("source", Ref::from_schema_name("BeatSource").into(), true),
            (
                "updated_at",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                    .description(Some("When the API last changed this beat."))
                    .into(),
                false,
            ),
            ("next_fire", nullable_ref("FireTime"), true),
            ("last_fire", nullable_ref("LastFire"), true),
            ("last_job", nullable_ref("JobOutcome"), true),
            (
                "last_error",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "The last fire this process could not enqueue, and why.",
                    ))
                    .into(),
                false,
            ),
        ];
        for (name, schema, required) in own {
            status.properties.insert(name.to_string(), schema);
            if required {
                status.required.push(name.to_string());
            }
        }
        Schema::Object(status).into()
    }
}

impl ToSchema for BeatStatus {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <Beat as ToSchema>::schemas(schemas);
        schemas.push((BeatSource::name().into(), BeatSource::schema()));
        schemas.push((FireTime::name().into(), FireTime::schema()));
        schemas.push((LastFire::name().into(), LastFire::schema()));
        <LastFire as ToSchema>::schemas(schemas);
        schemas.push((JobOutcome::name().into(), JobOutcome::schema()));
        <JobOutcome as ToSchema>::schemas(schemas);
    }
}

fn error_builder(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}

fn error_response(description: &str) -> RefOr<Response> {
    error_builder(description).build().into()
}

fn unauthorized() -> (String, RefOr<Response>) {
    let res = error_builder("no token, a malformed `Authorization` header, or an unknown token")
        .header(
            "WWW-Authenticate",
            Header::new(ObjectBuilder::new().schema_type(Type::String)),
        )
        .build();
    ("401".into(), res.into())
}

/// 401: every route that needs a token (submit or admin).
pub struct NeedsToken;

impl utoipa::IntoResponses for NeedsToken {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([unauthorized()])
    }
}

/// 401 and 403: a route that needs an admin token.
pub struct NeedsAdmin;

impl utoipa::IntoResponses for NeedsAdmin {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([
            unauthorized(),
            (
                "403".into(),
                error_response("a submit token: this route needs an admin token"),
            ),
        ])
    }
}

/// 413: a route that reads a request body.
pub struct TakesBody;

impl utoipa::IntoResponses for TakesBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([(
            "413".into(),
            error_response(
                "the body is larger than the server's limit (`[server] max_body`, named in the message)",
            ),
        )])
    }
}

/// 500 and 503: a route that reads or writes the broker or the registry
/// (Redis, or memory on the embedded broker).
pub struct UsesStorage;

impl utoipa::IntoResponses for UsesStorage {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([
            (
                "500".into(),
                error_response("a stored record is corrupt, or the broker answered nonsense"),
            ),
            (
                "503".into(),
                error_response("Redis (the broker or the registry) is unreachable; try again"),
            ),
        ])
    }
}

/// 500 and 503 of the schedule routes: this server runs no scheduler, or
/// the beat store or the registry is unreachable.
pub struct UsesScheduler;

impl utoipa::IntoResponses for UsesScheduler {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        BTreeMap::from([
            (
                "500".into(),
                error_response("a stored beat or job record is corrupt"),
            ),
            (
                "503".into(),
                error_response(
                    "this server has no scheduler configured, or the beat store or the registry (Redis) is unreachable",
                ),
            ),
        ])
    }
}
