//! `runner upload <module.wasm>... [--bind NAME] [--queue Q] [--grants JSON]`:
//! uploads components over HTTP (the server validates and compiles them)
//! and optionally binds a task name to the uploaded module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use reqwest::Method;

use super::bind::BindOpts;
use super::client::{ApiArgs, ApiClient, api_path, report};
use super::out::outln;
use crate::names::ModuleHash;

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// Component files (`cargo build --target wasm32-wasip2` output).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Bind this task name to the uploaded module (one file only).
    #[arg(long)]
    pub bind: Option<String>,
    #[command(flatten)]
    pub opts: BindOpts,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn execute(args: UploadArgs) -> anyhow::Result<ExitCode> {
    if args.bind.is_some() && args.files.len() != 1 {
        anyhow::bail!("--bind takes exactly one file ({} given)", args.files.len());
    }
    if args.bind.is_none()
        && let Some(flag) = args.opts.first_set()
    {
        anyhow::bail!(
            "{flag} sets the binding of --bind NAME: give --bind too, or run `runner bind`"
        );
    }
    let client = ApiClient::new(&args.api)?;
    let bar = (args.files.len() > 1).then(|| {
        let bar = indicatif::ProgressBar::new(args.files.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut last = None;
    for path in &args.files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let hash = ModuleHash::of(&bytes).to_string();
        if let Some(bar) = &bar {
            bar.set_message(path.display().to_string());
        }
        let rb = client
            .request(Method::PUT, &format!("/v1/modules/{hash}"))
            .header("content-type", "application/wasm")
            .body(bytes);
        let info = match client.send(rb).await {
            Ok(v) => v,
            Err(e) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                eprintln!("{}:", path.display());
                return Ok(report(e));
            }
        };
        let caps: Vec<&str> = info["capabilities"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let line = format!(
            "{}  {}  {} bytes  needs: {}",
            hash,
            path.display(),
            info["size"],
            if caps.is_empty() {
                "nothing".to_string()
            } else {
                caps.join(", ")
            }
        );
        match &bar {
            // The lines go to stdout, as with one file: `bar.println`
            // wrote them to stderr, and nowhere when stderr was no
            // terminal (the bar hides itself there).
            Some(bar) => {
                bar.suspend(|| outln!("{line}"))?;
                bar.inc(1);
            }
            None => outln!("{line}")?,
        }
        last = Some(hash);
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let (Some(name), Some(hash)) = (&args.bind, last) {
        let body = args.opts.body(&hash)?;
        match client
            .put_json(&api_path(&["v1", "tasks", name]), &body)
            .await
        {
            Ok(v) => outln!(
                "bound {name} -> {}",
                v["binding"]["module"].as_str().unwrap_or(&hash)
            )?,
            Err(e) => return Ok(report(e)),
        }
    }
    Ok(ExitCode::SUCCESS)
}
