//! `runner revoke <id> [--terminate]`

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::client::{ApiArgs, ApiClient, report};

#[derive(Args, Debug)]
pub struct RevokeArgs {
    pub id: String,
    /// Also stop the job if it is running (at its next epoch check).
    #[arg(long)]
    pub terminate: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn execute(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.api)?;
    match client
        .post_json(
            &format!("/v1/jobs/{}/revoke", args.id),
            &json!({ "terminate": args.terminate }),
        )
        .await
    {
        Ok(v) => {
            let outcome = v["outcome"].as_str().unwrap_or_default();
            match v["state"].as_str() {
                Some(state) => println!("{outcome} ({state})"),
                None => println!("{outcome}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(e)),
    }
}
