//! `runner dev`: everything in one process on this machine. The API, a
//! worker on every queue and the scheduler, on the embedded broker (or on
//! Redis with `--redis`), with the built-in tasks and the examples uploaded
//! and bound, mail written to a directory instead of sent, and a generated
//! admin token printed at start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use crate::app::{self, Core, Process};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Address to listen on (default: the configuration's; the built-in
    /// one listens on 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
    /// Use this Redis instead of the embedded broker.
    #[arg(long, env = "RUNNER_REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// A runner.toml to use instead of the built-in dev configuration.
    #[arg(long, env = "RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where uploads, compiled modules, dry-run mail and file roots live.
    #[arg(long, default_value = ".runner")]
    pub data_dir: PathBuf,
    /// The admin token (default: generated and printed).
    #[arg(long, env = "RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Jobs run at once by the worker, fixed (default: adaptive, from one
    /// per core).
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
}

const DEV_CONFIG: &str = include_str!("dev.toml");

/// The built-in dev configuration with its paths under `data`; tasks whose
/// built-in component is not in this binary are left out.
pub fn dev_config(data: &Path) -> anyhow::Result<Config> {
    // Inside TOML strings: a `"` ended the string, and `\u0041` in a path
    // was read as `A` (a root outside the data directory).
    let text = DEV_CONFIG.replace("{data}", &toml_escaped(&data.display().to_string()));
    let mut config: Config = toml::from_str(&text).context("the built-in dev configuration")?;
    config.tasks.retain(|_, t| {
        match t.module.as_deref().and_then(|m| m.strip_prefix("builtin:")) {
            Some(b) => crate::builtin::module(b).is_some(),
            None => true,
        }
    });
    config.base_dir = data.to_path_buf();
    Ok(config)
}

/// `s` as the inside of a TOML basic string.
fn toml_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub async fn execute(args: DevArgs) -> anyhow::Result<ExitCode> {
    // From now on a stop is never lost, even while starting.
    app::listen_for_stop();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data = std::fs::canonicalize(&args.data_dir)?;
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => dev_config(&data)?,
    };
    config.apply_env(|k| std::env::var(k).ok())?;
    if let Some(listen) = &args.listen {
        config.server.listen = listen.clone();
    }
    if let Some(r) = &args.redis {
        config.broker.redis_url = Some(r.clone());
    }
    if let Some(c) = args.concurrency {
        anyhow::ensure!(c > 0, "--concurrency must be at least 1");
        config.worker.concurrency = Some(c);
    }
    if config.broker.redis_url.is_none() && config.broker.data_dir.is_none() {
        config.broker.data_dir = Some(data.join("registry"));
    }
    if let Some(files) = &config.host.files {
        for dir in files.roots.values() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    config.check()?;

    let token = args.token.clone().unwrap_or_else(|| {
        let bytes: [u8; 24] = rand::random();
        hex::encode(bytes)
    });
    anyhow::ensure!(
        token.len() >= 16,
        "--token must be at least 16 characters long"
    );
    config.auth.admin.push(token.clone());
    let auth = app::auth_from(&config)?;

    // Pools for as many runs as its worker may hold at once.
    let runs = app::worker_config(&config)?.most_slots();
    let sandbox = app::sandbox(&config, Some(data.join("cache")), Some(runs))?;
    let core = Core::open(&config, sandbox).await?;
    let bound = core.apply_tasks(&config).await?;

    let mut services = app::host_services(&config).await?;
    let mail_dir = data.join("mail");
    if services.mail.is_none() {
        services.mail = Some(Arc::new(runner_host_fns::mail::Mailer::dry_run(
            &mail_dir,
            runner_host_fns::mail::MailAddress::new("runner@localhost", Some("runner dev")),
            None,
            None,
        )?));
    }
    let worker = core.worker(&config, services)?;
    let queues = app::worker_queues(&config);

    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let mut process = Process::new();
    let stopping = process.stopping();
    process.spawn(
        "worker",
        async move { worker.run(stopping).await.map(drop) },
    );
    let sched = core.scheduler.clone();
    let stopping = process.stopping();
    process.spawn("scheduler", async move {
        sched.run(stopping).await;
        Ok(())
    });
    let ctx = app::api_context(&core, &config, auth)?;
    let stopping = process.stopping();
    process.spawn("API server", async move {
        crate::api::serve(listener, ctx, stopping).await?;
        Ok(())
    });

    println!("runner dev: http://{addr}  ({} broker)", core.broker.kind());
    println!("admin token: {token}");
    println!("  export RUNNER_URL=http://{addr} RUNNER_TOKEN={token}");
    println!("dashboard: http://{addr}/dashboard#token={token}");
    println!("tasks: {}", bound.join(", "));
    println!("queues: {}", queues.join(", "));
    let beats = core.scheduler.list().await.map(|b| b.len()).unwrap_or(0);
    println!("scheduler: {beats} beats (GET /v1/schedules)");
    println!("data: {} (mail in {})", data.display(), mail_dir.display());
    println!("try:  runner call hello --input '{{\"name\":\"world\"}}' --wait");

    process.run_until_shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data directory's path goes into the configuration as written:
    /// before, a `"` in it broke the TOML, and `\u0041` put the file roots
    /// under `xAy`, outside it.
    #[test]
    fn the_data_directory_is_taken_as_written() {
        for data in ["/tmp/x\\u0041y", "/tmp/a\"b", "/tmp/tab\there"] {
            let config = dev_config(Path::new(data)).unwrap_or_else(|e| panic!("{data}: {e:#}"));
            let roots = &config.host.files.as_ref().unwrap().roots;
            assert!(!roots.is_empty());
            for root in roots.values() {
                assert!(root.starts_with(data), "{data}: {}", root.display());
            }
        }
    }
}
