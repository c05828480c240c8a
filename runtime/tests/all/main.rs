//! The runtime's one integration-test binary: one module per area, shared
//! helpers in `support`.

mod redis_support;
mod support;

mod api;
mod api_contract;
mod builtin_tasks;
mod capabilities;
mod cli_run;
mod cluster;
mod connections;
mod crash;
mod dashboard;
mod deploy_files;
mod dev;
mod layers;
pub(crate) mod ops;
mod python;
mod queue_conformance;
mod rate_limit;
pub(crate) mod redis_tls;
mod registry;
mod sandbox;
mod scenarios;
mod scheduler;
mod scheduler_race;
mod wiring;
mod worker;
mod worker_grants;
mod workflows;
