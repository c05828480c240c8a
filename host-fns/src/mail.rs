//! Sending mail over the operator's SMTP server (lettre), or into a
//! directory of `.eml` files for `runner dev`.
//!
//! The operator configures the server and the identity ([`MailConfig`]):
//! the default From, Reply-To, and the Return-Path (the envelope sender,
//! `MAIL FROM`, where bounces go). A task's [`MailGrant`] lists the senders
//! it may put in From; without a From the configured sender is used.
//!
//! TLS: port 465 means implicit TLS; otherwise STARTTLS when the server
//! offers it, or always (`starttls-required`), or never (`none`, for a
//! local relay). Subjects and display names are UTF-8, RFC 2047-encoded by
//! lettre. CR and LF in any header value are replaced by spaces, so a task
//! can never add a header.
//!
//! Sizes: at most [`MAX_RECIPIENTS`] recipients (to, cc and bcc), a
//! subject of [`MAX_SUBJECT_BYTES`], text and HTML bodies of
//! [`MAX_BODY_BYTES`] together, [`MAX_ATTACHMENTS`] attachments of
//! [`MAX_ATTACHMENT_BYTES`] together, and addresses, display names,
//! attachment file names and content types of [`MAX_HEADER_VALUE_BYTES`]
//! each; more is `invalid`, checked before the message is built.
//!
//! Errors: SMTP 4xx, timeouts and connection or TLS failures are
//! `transient`; SMTP 5xx (including a recipient the server refuses) is
//! `permanent`; an address that does not parse, no recipient or no body is
//! `invalid`, as the WIT contract says.
//!
//! rustls needs a process-wide crypto provider: see the crate docs.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, Message};
use serde::{Deserialize, Serialize};

use crate::HostError;
use crate::trace::traced;

const CAPABILITY: &str = "mail";

/// Largest total size of attachments in one message.
pub const MAX_ATTACHMENT_BYTES: usize = 20 * 1024 * 1024;
/// Largest total size of the text and HTML bodies of one message.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Longest subject, in bytes (RFC 5322 lines are at most 998 characters).
pub const MAX_SUBJECT_BYTES: usize = 998;
/// Most recipients (to, cc and bcc together) of one message: what every
/// SMTP server must accept (RFC 5321 4.5.3.1.8).
pub const MAX_RECIPIENTS: usize = 100;
/// Most attachments of one message.
pub const MAX_ATTACHMENTS: usize = 100;
/// Longest address, display name, attachment file name or content type, in
/// bytes (each goes into one header line).
pub const MAX_HEADER_VALUE_BYTES: usize = 998;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Implicit TLS on port 465; otherwise STARTTLS when offered, and
    /// required when credentials are configured (so a password never
    /// travels in clear text because STARTTLS was stripped).
    #[default]
    Auto,
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
    /// STARTTLS; fail if the server does not offer it.
    StarttlsRequired,
    /// STARTTLS if the server offers it, plain text otherwise.
    StarttlsOpportunistic,
    /// Plain text (a relay on localhost).
    None,
}

/// A mailbox: `name <email>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailAddress {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

impl MailAddress {
    pub fn new(email: impl Into<String>, name: Option<&str>) -> Self {
        Self {
            email: email.into(),
            name: name.map(str::to_owned),
        }
    }
}

/// Where messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailTransport {
    /// The SMTP server at `host`:`port`.
    #[default]
    Smtp,
    /// Nowhere: each message is written to `<dir>/<message id>.eml`
    /// ([`Mailer::dry_run`]); for `runner dev` and trying tasks out.
    DryRun,
}

/// The operator's mail settings (`[host.mail]`): the SMTP server, or the
/// dry-run transport with `transport = "dry-run"` and `dir`. Unknown keys
/// are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    #[serde(default)]
    pub transport: MailTransport,
    /// Where the dry-run transport writes `.eml` files (created if absent).
    /// Only with `transport = "dry-run"`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The SMTP server. Required for SMTP; ignored by the dry-run transport,
    /// so that one line switches a configuration between the two.
    #[serde(default)]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: TlsMode,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Connect, TLS and command timeout: each step of a send (connecting
    /// and logging in take up to four, sending up to three plus one per
    /// recipient and per MiB). In seconds in configuration files.
    #[serde(default = "default_timeout", with = "crate::serde_secs")]
    pub timeout: Duration,
    /// Most SMTP connections kept open and shared by all tasks.
    #[serde(default = "default_pool_size")]
    pub pool_max_size: u32,
    /// The From used when a task does not give one.
    pub from: MailAddress,
    #[serde(default)]
    pub reply_to: Option<MailAddress>,
    /// The envelope sender (MAIL FROM) that receives bounces; the From
    /// address when absent.
    #[serde(default)]
    pub return_path: Option<String>,
    /// PEM certificates trusted as roots besides the system's (a private CA,
    /// or a self-signed test server).
    #[serde(default)]
    pub extra_root_certs_pem: Vec<String>,
    /// The name sent in EHLO; the machine's host name when absent.
    #[serde(default)]
    pub hello_name: Option<String>,
}

fn default_port() -> u16 {
    587
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_pool_size() -> u32 {
    4
}

/// What one task may send as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailGrant {
    /// Allowed From addresses: exact (`noreply@example.com`) or a whole
    /// domain (`*@example.com`). The configured sender is always allowed.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
}

impl MailGrant {
    fn allows(&self, email: &str) -> bool {
        let email = email.to_ascii_lowercase();
        self.allowed_senders.iter().any(|rule| {
            let rule = rule.to_ascii_lowercase();
            match rule.strip_prefix("*@") {
                Some(domain) => email.rsplit_once('@').is_some_and(|(_, d)| d == domain),
                None => rule == email,
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAttachment {
    pub filename: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// A message as a task hands it over (mirrors WIT `mail.message`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMail {
    pub to: Vec<MailAddress>,
    pub cc: Vec<MailAddress>,
    pub bcc: Vec<MailAddress>,
    pub from: Option<MailAddress>,
    pub reply_to: Option<MailAddress>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<MailAttachment>,
}

enum Transport {
    Smtp(SmtpPool),
    /// Writes each message to `<dir>/<message id>.eml`.
    DryRun(PathBuf),
}

/// The mail capability; one per process, shared by every task.
pub struct Mailer {
    transport: Transport,
    from: MailAddress,
    reply_to: Option<MailAddress>,
    return_path: Option<String>,
}

impl Mailer {
    /// The mailer `config.transport` names: [`Mailer::smtp`] or
    /// [`Mailer::dry_run`] into `config.dir`.
    pub fn from_config(config: &MailConfig) -> anyhow::Result<Self> {
        match config.transport {
            MailTransport::Smtp => Self::smtp(config),
            MailTransport::DryRun => {
                let dir = config.dir.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("mail.dir: required with transport = \"dry-run\"")
                })?;
                Self::dry_run(
                    dir,
                    config.from.clone(),
                    config.reply_to.clone(),
                    config.return_path.clone(),
                )
                .map_err(|e| anyhow::anyhow!("mail.dir {}: {e:#}", dir.display()))
            }
        }
    }

    /// An SMTP mailer with a connection pool. Connects lazily, on the first
    /// message.
    pub fn smtp(config: &MailConfig) -> anyhow::Result<Self> {
        if config.host.trim().is_empty() {
            anyhow::bail!("mail.host: required for the SMTP transport");
        }
        if config.dir.is_some() {
            anyhow::bail!("mail.dir: only used with transport = \"dry-run\"");
        }
        parse_address(&config.from.email)
            .map_err(|e| anyhow::anyhow!("mail.from: {}", e.message()))?;
        if let Some(rp) = &config.return_path {
            parse_address(rp).map_err(|e| anyhow::anyhow!("mail.return_path: {}", e.message()))?;
        }
        let mode = match config.tls {
            TlsMode::Auto if config.port == 465 => TlsMode::Implicit,
            // lettre would send AUTH in clear text to a server (or a
            // man in the middle) that does not offer STARTTLS: with
            // credentials, STARTTLS is required unless `none` is explicit.
            TlsMode::Auto if config.username.is_some() => TlsMode::StarttlsRequired,
            TlsMode::Auto => TlsMode::StarttlsOpportunistic,
            other => other,
        };
        let tls = if mode == TlsMode::None {
            Tls::None
        } else {
            let mut params = TlsParameters::builder(config.host.clone());
            for pem in &config.extra_root_certs_pem {
                let cert = Certificate::from_pem(pem.as_bytes())
                    .map_err(|e| anyhow::anyhow!("mail: bad extra root certificate: {e}"))?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| anyhow::anyhow!("mail: TLS set-up failed: {e}"))?;
            match mode {
                TlsMode::Implicit => Tls::Wrapper(params),
                TlsMode::StarttlsRequired => Tls::Required(params),
                _ => Tls::Opportunistic(params),
            }
        };
        let pool = SmtpPool {
            host: config.host.clone(),
            port: config.port,
            tls,
            timeout: config.timeout,
            credentials: config.username.as_ref().map(|user| {
                Credentials::new(user.clone(), config.password.clone().unwrap_or_default())
            }),
            hello: config
                .hello_name
                .clone()
                .map_or_else(ClientId::default, ClientId::Domain),
            idle: Mutex::default(),
            max_idle: config.pool_max_size.max(1) as usize,
        };
        Ok(Self {
            transport: Transport::Smtp(pool),
            from: config.from.clone(),
            reply_to: config.reply_to.clone(),
            return_path: config.return_path.clone(),
        })
    }

    /// A mailer that sends nothing and writes every message, as it would
    /// have been sent, to `<dir>/<message id>.eml` (with a `Return-Path`
    /// and `X-Envelope-To` header block on top, the way a delivering MTA
    /// records the envelope).
    pub fn dry_run(
        dir: impl Into<PathBuf>,
        from: MailAddress,
        reply_to: Option<MailAddress>,
        return_path: Option<String>,
    ) -> anyhow::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        parse_address(&from.email).map_err(|e| anyhow::anyhow!("mail.from: {}", e.message()))?;
        Ok(Self {
            transport: Transport::DryRun(dir),
            from,
            reply_to,
            return_path,
        })
    }

    /// Sends the message; returns its Message-ID (`<...@domain>`).
    pub async fn send(&self, grant: &MailGrant, mail: &OutgoingMail) -> Result<String, HostError> {
        traced(CAPABILITY, "send", async {
            let built = self.build(grant, mail)?;
            match &self.transport {
                Transport::Smtp(pool) => pool.send(&built).await?,
                Transport::DryRun(dir) => {
                    let mut bytes = format!("Return-Path: <{}>\r\n", built.envelope_from);
                    for rcpt in &built.envelope_to {
                        bytes.push_str(&format!("X-Envelope-To: <{rcpt}>\r\n"));
                    }
                    let mut bytes = bytes.into_bytes();
                    bytes.extend_from_slice(&built.message.formatted());
                    let name = built
                        .message_id
                        .trim_matches(|c| c == '<' || c == '>')
                        .replace(['/', '\\'], "_");
                    let path = dir.join(format!("{name}.eml"));
                    tokio::fs::write(&path, bytes).await.map_err(|e| {
                        HostError::transient(format!(
                            "dry-run mail: cannot write {}: {e}",
                            path.display()
                        ))
                    })?;
                    tracing::info!(path = %path.display(), "dry-run mail written");
                }
            }
            Ok(built.message_id)
        })
        .await
    }

    fn build(&self, grant: &MailGrant, mail: &OutgoingMail) -> Result<Built, HostError> {
        let from = match &mail.from {
            None => self.from.clone(),
            Some(f) if f.email.eq_ignore_ascii_case(&self.from.email) || grant.allows(&f.email) => {
                f.clone()
            }
            Some(f) => {
                return Err(HostError::denied(format!(
                    "sender '{}' is not allowed for this task",
                    f.email
                )));
            }
        };
        if mail.to.is_empty() && mail.cc.is_empty() && mail.bcc.is_empty() {
            return Err(HostError::invalid("the message has no recipient"));
        }
        if mail.text.is_none() && mail.html.is_none() {
            return Err(HostError::invalid(
                "the message has neither a text nor an HTML body",
            ));
        }
        let recipients = mail.to.len() + mail.cc.len() + mail.bcc.len();
        if recipients > MAX_RECIPIENTS {
            return Err(HostError::invalid(format!(
                "{recipients} recipients, more than {MAX_RECIPIENTS}"
            )));
        }
        if mail.subject.len() > MAX_SUBJECT_BYTES {
            return Err(HostError::invalid(format!(
                "the subject is {} bytes, more than {MAX_SUBJECT_BYTES}",
                mail.subject.len()
            )));
        }
        let body =
            mail.text.as_ref().map_or(0, String::len) + mail.html.as_ref().map_or(0, String::len);
        if body > MAX_BODY_BYTES {
            return Err(HostError::invalid(format!(
                "the bodies total {body} bytes, more than {MAX_BODY_BYTES}"
            )));
        }
        if mail.attachments.len() > MAX_ATTACHMENTS {
            return Err(HostError::invalid(format!(
                "{} attachments, more than {MAX_ATTACHMENTS}",
                mail.attachments.len()
            )));
        }
        let addresses = [&mail.to, &mail.cc, &mail.bcc].into_iter().flatten();
        for a in addresses.chain(&mail.from).chain(&mail.reply_to) {
            header_value("an address", &a.email)?;
            header_value("a display name", a.name.as_deref().unwrap_or_default())?;
        }
        for a in &mail.attachments {
            header_value("an attachment's file name", &a.filename)?;
            header_value("an attachment's content type", &a.content_type)?;
        }
        let attached: usize = mail.attachments.iter().map(|a| a.data.len()).sum();
        if attached > MAX_ATTACHMENT_BYTES {
            return Err(HostError::invalid(format!(
                "attachments total {attached} bytes, more than {MAX_ATTACHMENT_BYTES}"
            )));
        }

        let from_box = mailbox(&from)?;
        let from_domain = from_box.email.domain().to_owned();
        let envelope_from = match &self.return_path {
            Some(rp) => parse_address(rp)?,
            None => from_box.email.clone(),
        };
        let message_id = format!("<{}@{}>", uuid::Uuid::now_v7().simple(), from_domain);

        let mut builder = Message::builder()
            .from(from_box)
            .subject(one_line(&mail.subject))
            .message_id(Some(message_id.clone()));
        if let Some(reply_to) = mail.reply_to.as_ref().or(self.reply_to.as_ref()) {
            builder = builder.reply_to(mailbox(reply_to)?);
        }
        let mut envelope_to = Vec::new();
        for a in &mail.to {
            let m = mailbox(a)?;
            envelope_to.push(m.email.clone());
            builder = builder.to(m);
        }
        for a in &mail.cc {
            let m = mailbox(a)?;
            envelope_to.push(m.email.clone());
            builder = builder.cc(m);
        }
        for a in &mail.bcc {
            // Bcc goes into the envelope only, never into a header.
            envelope_to.push(mailbox(a)?.email);
        }
        let envelope =
            lettre::address::Envelope::new(Some(envelope_from.clone()), envelope_to.clone())
                .map_err(|e| HostError::invalid(format!("bad envelope: {e}")))?;
        builder = builder.envelope(envelope);

        let body = match (&mail.text, &mail.html) {
            (Some(text), Some(html)) => Body::Multi(
                MultiPart::alternative()
                    .singlepart(SinglePart::plain(text.clone()))
                    .singlepart(SinglePart::html(html.clone())),
            ),
            (Some(text), None) => Body::Single(SinglePart::plain(text.clone())),
            (None, Some(html)) => Body::Single(SinglePart::html(html.clone())),
            (None, None) => return Err(HostError::invalid("no body")),
        };
        let message = if mail.attachments.is_empty() {
            match body {
                Body::Multi(m) => builder.multipart(m),
                Body::Single(s) => builder.singlepart(s),
            }
        } else {
            let mut mixed = match body {
                Body::Multi(m) => MultiPart::mixed().multipart(m),
                Body::Single(s) => MultiPart::mixed().singlepart(s),
            };
            for a in &mail.attachments {
                let content_type = ContentType::parse(&a.content_type).map_err(|e| {
                    HostError::invalid(format!(
                        "attachment '{}': bad content type '{}': {e}",
                        a.filename, a.content_type
                    ))
                })?;
                let name = one_line(&a.filename).replace(['/', '\\'], "_");
                mixed = mixed.singlepart(Attachment::new(name).body(a.data.clone(), content_type));
            }
            builder.multipart(mixed)
        }
        .map_err(|e| HostError::invalid(format!("cannot build the message: {e}")))?;

        Ok(Built {
            message,
            message_id,
            envelope_from,
            envelope_to,
        })
    }
}

/// SMTP connections kept open between sends and shared by all tasks.
///
/// A connection goes back to the pool only after a send that completed. A
/// send dropped half way (its task hit its time limit, or was revoked,
/// while the server answered) closes its connection: reused, it would give
/// the next send the answers meant for this one, one step late. (lettre's
/// own pool takes such a connection back.) Every step has a deadline, so
/// a server that stops answering fails the send as `transient`.
struct SmtpPool {
    host: String,
    port: u16,
    tls: Tls,
    /// For each step: connecting, TLS, each command, and each MiB of data.
    timeout: Duration,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// Connections kept, with when each went idle (newest last).
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    max_idle: usize,
}

/// How long a connection is kept idle (as lettre's pool does): servers
/// and NATs drop idle connections, and a dropped one costs the next send
/// a timeout to find out.
const IDLE_MAX: Duration = Duration::from_secs(60);

impl SmtpPool {
    async fn send(&self, built: &Built) -> Result<(), HostError> {
        let kept = match self.take_idle() {
            // A kept connection the server may have closed meanwhile.
            Some(mut conn) => {
                let alive = self.step(1, conn.test_connected()).await;
                alive.unwrap_or(false).then_some(conn)
            }
            None => None,
        };
        let mut conn = match kept {
            Some(conn) => conn,
            None => self.step(4, self.connect()).await?.map_err(smtp_error)?,
        };
        let raw = built.message.formatted();
        // The envelope's commands, then the data at one step per MiB.
        let steps = 3 + built.envelope_to.len() as u32 + (raw.len() >> 20) as u32;
        let envelope = built.message.envelope();
        self.step(steps, conn.send(envelope, &raw))
            .await?
            .map_err(smtp_error)?;
        if !conn.has_broken() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.max_idle {
                idle.push((conn, Instant::now()));
            } else {
                drop(idle);
                self.quit(conn);
            }
        }
        Ok(())
    }

    /// The newest kept connection idle for less than [`IDLE_MAX`]; older
    /// ones are closed.
    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stale = idle
            .iter()
            .position(|(_, since)| since.elapsed() < IDLE_MAX)
            .unwrap_or(idle.len());
        let stale: Vec<_> = idle.drain(..stale).collect();
        let conn = idle.pop().map(|(conn, _)| conn);
        drop(idle);
        for (conn, _) in stale {
            self.quit(conn);
        }
        conn
    }

    /// Says QUIT and closes, in the background (one timeout at most).
    fn quit(&self, mut conn: AsyncSmtpConnection) {
        let limit = self.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(limit, conn.abort()).await;
        });
    }

    /// Connects, secures the connection as configured, and logs in.
    async fn connect(&self) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        let implicit = match &self.tls {
            Tls::Wrapper(params) => Some(params.clone()),
            _ => None,
        };
        let server = (self.host.as_str(), self.port);
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            server,
            Some(self.timeout),
            &self.hello,
            implicit,
            None,
        )
        .await?;
        match &self.tls {
            Tls::Opportunistic(params) if conn.can_starttls() => {
                conn.starttls(params.clone(), &self.hello).await?;
            }
            Tls::Required(params) => conn.starttls(params.clone(), &self.hello).await?,
            _ => {}
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(conn)
    }

    /// `f`, given `steps` timeouts; past them, a `transient` error (and
    /// `f`, with its connection, dropped).
    async fn step<T>(&self, steps: u32, f: impl Future<Output = T>) -> Result<T, HostError> {
        let limit = self.timeout.saturating_mul(steps);
        tokio::time::timeout(limit, f).await.map_err(|_| {
            HostError::transient(format!(
                "SMTP: {}:{} did not answer within {limit:?}",
                self.host, self.port
            ))
        })
    }
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

struct Built {
    message: Message,
    message_id: String,
    envelope_from: Address,
    envelope_to: Vec<Address>,
}

/// A task's text for a header: refused when longer than one header line
/// may be (the error names `what` and gives the length, not the text).
fn header_value(what: &str, value: &str) -> Result<(), HostError> {
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(HostError::invalid(format!(
            "{what} is {} bytes, more than {MAX_HEADER_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// Header values are single lines: a CR or LF from a task would start a
/// new header.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn parse_address(email: &str) -> Result<Address, HostError> {
    email
        .trim()
        .parse::<Address>()
        .map_err(|e| HostError::invalid(format!("bad address '{email}': {e}")))
}

fn mailbox(a: &MailAddress) -> Result<Mailbox, HostError> {
    let email = parse_address(&a.email)?;
    let name = a
        .name
        .as_deref()
        .map(one_line)
        .filter(|n| !n.trim().is_empty());
    Ok(Mailbox::new(name, email))
}

fn smtp_error(e: lettre::transport::smtp::Error) -> HostError {
    let code = e.status().map(|c| c.to_string());
    let what = match &code {
        Some(code) => format!("SMTP server answered {code}: {e}"),
        None => format!("SMTP: {e}"),
    };
    if e.is_permanent() {
        HostError::permanent(what)
    } else {
        // 4xx, timeouts, refused connections, TLS failures and dropped
        // connections: the server or the network may be back later.
        HostError::transient(what)
    }
}
