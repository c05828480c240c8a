//! The operator configuration and the grants read from TOML, the way
//! `runner.toml` holds them.

use std::time::Duration;

use runner_host_fns::files::{Access, FilesConfig, FilesGrant};
use runner_host_fns::http::{HttpConfig, HttpGrant};
use runner_host_fns::kv::KvQuota;
use runner_host_fns::mail::{MailConfig, MailGrant, TlsMode};
use runner_host_fns::pdf::PdfConfig;
use serde::Deserialize;

#[derive(Deserialize)]
struct Host {
    files: FilesConfig,
    mail: MailConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    pdf: PdfConfig,
}

#[derive(Deserialize)]
struct Grant {
    files: FilesGrant,
    mail: MailGrant,
    http: HttpGrant,
    kv: KvQuota,
}

#[test]
fn host_configuration_from_toml() {
    let host: Host = toml::from_str(
        r#"
        [files.roots]
        reports = "/var/lib/runner/reports"
        logs = "/var/log/app"

        [mail]
        host = "smtp.example.com"
        port = 465
        username = "runner"
        password = "secret"
        timeout = 20
        from = { email = "noreply@example.com", name = "進捗リマインダー" }
        reply_to = { email = "support@example.com" }
        return_path = "bounces@example.com"

        [http]
        max_redirects = 3
        default_timeout = 10
        "#,
    )
    .expect("parse");
    assert_eq!(host.files.roots.len(), 2);
    assert_eq!(host.mail.tls, TlsMode::Auto);
    assert_eq!(host.mail.timeout, Duration::from_secs(20));
    assert_eq!(host.mail.pool_max_size, 4);
    assert_eq!(host.mail.from.name.as_deref(), Some("進捗リマインダー"));
    assert_eq!(host.http.max_redirects, 3);
    assert_eq!(host.http.default_timeout, Duration::from_secs(10));
    assert_eq!(
        host.http.max_response_bytes,
        HttpConfig::default().max_response_bytes
    );
    assert!(!host.pdf.font_dirs.is_empty());
}

#[test]
fn grants_from_toml() {
    let grant: Grant = toml::from_str(
        r#"
        [files.roots]
        reports = "read-write"
        logs = "read-only"

        [mail]
        allowed_senders = ["reports@example.com", "*@alerts.example.com"]

        [http]
        allow = ["https://*.webhook.office.com", "https://hooks.slack.com", "http://127.0.0.1:8080"]
        private_networks = ["10.20.0.0/16"]

        [kv]
        max_keys = 1000
        max_bytes = 65536
        "#,
    )
    .expect("parse");
    assert_eq!(grant.files.roots.get("logs"), Some(&Access::ReadOnly));
    assert_eq!(grant.mail.allowed_senders.len(), 2);
    assert_eq!(grant.http.private_networks[0].to_string(), "10.20.0.0/16");
    assert_eq!(grant.kv.max_keys, 1000);
}

/// A misspelt grant field is refused, not read as "nothing granted"
/// (before, `private_network` and `allowed_sender` were ignored).
#[test]
fn grants_refuse_unknown_fields() {
    let e = toml::from_str::<HttpGrant>("allow = [\"https://x.example\"]\nprivate_network = []")
        .unwrap_err();
    assert!(
        e.to_string().contains("unknown field `private_network`"),
        "{e}"
    );
    let e = toml::from_str::<MailGrant>("allowed_sender = [\"a@example.com\"]").unwrap_err();
    assert!(
        e.to_string().contains("unknown field `allowed_sender`"),
        "{e}"
    );
}
