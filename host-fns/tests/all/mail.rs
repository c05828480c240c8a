//! The mailer against real SMTP servers: mailin-embedded with STARTTLS and
//! AUTH, and an implicit-TLS ("465") server built from mailin's session
//! over tokio-rustls. Both use a self-signed certificate made here that the
//! mailer is configured to trust.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_parser::MimeHeaders;
use mailin_embedded::response::{AUTH_OK, INVALID_CREDENTIALS, OK};
use mailin_embedded::{AuthMechanism, Handler, Response, Server, SslConfig};
use runner_host_fns::HostError;
use runner_host_fns::mail::{
    MailAddress, MailAttachment, MailConfig, MailGrant, MailTransport, Mailer, OutgoingMail,
    TlsMode,
};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::install_crypto_provider;

const USER: &str = "runner";
const PASSWORD: &str = "s3cret";

/// One message as the server received it.
#[derive(Debug, Clone, Default)]
struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
    authenticated: bool,
}

/// Records what clients send; rejects recipients with `reject` if set.
#[derive(Clone)]
struct Recorder {
    inbox: Arc<Mutex<Vec<Received>>>,
    current: Received,
    reject: Option<(u16, &'static str)>,
}

impl Recorder {
    fn new(reject: Option<(u16, &'static str)>) -> Self {
        Self {
            inbox: Arc::default(),
            current: Received::default(),
            reject,
        }
    }

    fn messages(&self) -> Vec<Received> {
        self.inbox.lock().expect("inbox").clone()
    }
}

impl Handler for Recorder {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        self.current.mail_from = from.to_owned();
        self.current.rcpt_to.clear();
        self.current.data.clear();
        OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        if to.starts_with("slow@") {
            // A server slow to answer: the client may give up meanwhile.
            std::thread::sleep(Duration::from_millis(700));
        }
        if let Some((code, text)) = self.reject {
            return Response::custom(code, text.to_owned());
        }
        self.current.rcpt_to.push(to.to_owned());
        OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.inbox.lock().expect("inbox").push(self.current.clone());
        OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        if user == USER && password == PASSWORD {
            self.current.authenticated = true;
            AUTH_OK
        } else {
            INVALID_CREDENTIALS
        }
    }
}

struct TestCert {
    cert_pem: String,
    key_pem: String,
    dir: tempfile::TempDir,
}

fn test_cert() -> TestCert {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    TestCert {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

/// mailin-embedded with STARTTLS and AUTH PLAIN (which mailin allows only
/// after STARTTLS), on a free loopback port. The server thread lives until
/// the test process ends.
fn start_starttls_server(recorder: Recorder, cert: &TestCert) -> u16 {
    install_crypto_provider();
    let cert_path = cert.dir.path().join("cert.pem");
    let key_path = cert.dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert.cert_pem).expect("write cert");
    std::fs::write(&key_path, &cert.key_pem).expect("write key");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut server = Server::new(recorder);
    server
        .with_name("localhost")
        .with_ssl(SslConfig::SelfSigned {
            cert_path: cert_path.to_string_lossy().into_owned(),
            key_path: key_path.to_string_lossy().into_owned(),
        })
        .expect("ssl")
        .with_auth(AuthMechanism::Plain)
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    port
}

/// An SMTPS server: TLS from the first byte (tokio-rustls), then mailin's
/// SMTP session with AUTH PLAIN.
async fn start_implicit_tls_server(recorder: Recorder, cert: &TestCert) -> u16 {
    install_crypto_provider();
    let certs = vec![
        rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
            .expect("cert der"),
    ];
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key der");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let recorder = recorder.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut builder = mailin::SessionBuilder::new("localhost");
                builder.enable_auth(AuthMechanism::Plain);
                let mut session = builder.build(peer.ip(), recorder);
                session.tls_active();
                let mut stream = BufReader::new(tls);
                let greeting = session.greeting().buffer().expect("greeting");
                if stream.get_mut().write_all(&greeting).await.is_err() {
                    return;
                }
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match stream.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let response = session.process(&line);
                    match response.action {
                        mailin::Action::NoReply => continue,
                        mailin::Action::Reply
                        | mailin::Action::Close
                        | mailin::Action::UpgradeTls => {
                            let bytes = response.buffer().expect("response");
                            if stream.get_mut().write_all(&bytes).await.is_err() {
                                return;
                            }
                            let _ = stream.get_mut().flush().await;
                            if response.action != mailin::Action::Reply {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

fn config(port: u16, tls: TlsMode, cert: &TestCert) -> MailConfig {
    MailConfig {
        transport: MailTransport::Smtp,
        dir: None,
        host: "localhost".to_owned(),
        port,
        tls,
        username: Some(USER.to_owned()),
        password: Some(PASSWORD.to_owned()),
        timeout: Duration::from_secs(10),
        pool_max_size: 2,
        from: MailAddress::new("noreply@example.com", Some("進捗リマインダー")),
        reply_to: Some(MailAddress::new(
            "support@example.com",
            Some("サポート窓口"),
        )),
        return_path: Some("bounces@example.com".to_owned()),
        extra_root_certs_pem: vec![cert.cert_pem.clone()],
        hello_name: Some("runner.test".to_owned()),
    }
}

fn fake_pdf() -> Vec<u8> {
    let mut pdf = b"%PDF-1.7\n".to_vec();
    // Every byte value, so that any transfer-encoding damage shows.
    pdf.extend((0..=255u8).cycle().take(70_000));
    pdf.extend_from_slice(b"\n%%EOF\n");
    pdf
}

fn report_mail() -> OutgoingMail {
    OutgoingMail {
        to: vec![MailAddress::new("taro@example.org", Some("山田 太郎"))],
        cc: vec![MailAddress::new("hanako@example.org", None)],
        bcc: vec![MailAddress::new("audit@example.org", None)],
        subject: "【進捗報告】本日の未報告タスクがあります".to_owned(),
        text: Some("山田さん、本日の進捗を報告してください。".to_owned()),
        html: Some("<p>山田さん、本日の<b>進捗</b>を報告してください。</p>".to_owned()),
        attachments: vec![MailAttachment {
            filename: "報告書.pdf".to_owned(),
            content_type: "application/pdf".to_owned(),
            data: fake_pdf(),
        }],
        ..Default::default()
    }
}

fn check_received(received: &Received, message_id: &str) {
    assert!(received.authenticated, "the client authenticated");
    // Return-Path is the envelope sender.
    assert_eq!(
        received.mail_from.trim_matches(['<', '>']),
        "bounces@example.com"
    );
    let mut rcpts: Vec<&str> = received
        .rcpt_to
        .iter()
        .map(|r| r.trim_matches(['<', '>']))
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "audit@example.org",
            "hanako@example.org",
            "taro@example.org"
        ]
    );

    let raw = String::from_utf8_lossy(&received.data);
    assert!(
        !raw.contains("audit@example.org"),
        "Bcc must not appear in the headers"
    );
    assert!(
        raw.contains("=?utf-8?"),
        "the subject is RFC 2047-encoded:\n{raw}"
    );

    let parsed = mail_parser::MessageParser::default()
        .parse(&received.data)
        .expect("parse the received message");
    assert_eq!(
        parsed.subject(),
        Some("【進捗報告】本日の未報告タスクがあります")
    );
    assert_eq!(
        parsed.message_id(),
        Some(message_id.trim_matches(['<', '>']))
    );
    let from = parsed.from().and_then(|a| a.first()).expect("from");
    assert_eq!(from.address(), Some("noreply@example.com"));
    assert_eq!(from.name(), Some("進捗リマインダー"));
    let reply_to = parsed.reply_to().and_then(|a| a.first()).expect("reply-to");
    assert_eq!(reply_to.address(), Some("support@example.com"));
    assert_eq!(reply_to.name(), Some("サポート窓口"));
    let to = parsed.to().and_then(|a| a.first()).expect("to");
    assert_eq!(to.name(), Some("山田 太郎"));
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim),
        Some("山田さん、本日の進捗を報告してください。")
    );
    assert!(parsed.body_html(0).expect("html").contains("<b>進捗</b>"));
    let attachments: Vec<_> = parsed.attachments().collect();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].attachment_name(), Some("報告書.pdf"));
    assert_eq!(
        attachments[0].contents(),
        fake_pdf().as_slice(),
        "the PDF arrives intact"
    );
}

#[tokio::test]
async fn sends_over_starttls_with_auth() {
    let cert = test_cert();
    let recorder = Recorder::new(None);
    let port = start_starttls_server(recorder.clone(), &cert);
    let mailer = Mailer::smtp(&config(port, TlsMode::StarttlsRequired, &cert)).expect("mailer");
    let id = mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect("send");
    let inbox = recorder.messages();
    assert_eq!(inbox.len(), 1);
    check_received(&inbox[0], &id);

    // The pooled connection is reused for the next message.
    mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect("second send");
    assert_eq!(recorder.messages().len(), 2);
}

#[tokio::test]
async fn auto_mode_uses_starttls_when_offered() {
    let cert = test_cert();
    let recorder = Recorder::new(None);
    let port = start_starttls_server(recorder.clone(), &cert);
    // AUTH is only possible after STARTTLS on this server, so delivery
    // proves the upgrade happened.
    let mailer = Mailer::smtp(&config(port, TlsMode::Auto, &cert)).expect("mailer");
    let id = mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect("send");
    check_received(&recorder.messages()[0], &id);
}

#[tokio::test]
async fn sends_over_implicit_tls_with_auth() {
    let cert = test_cert();
    let recorder = Recorder::new(None);
    let port = start_implicit_tls_server(recorder.clone(), &cert).await;
    let mailer = Mailer::smtp(&config(port, TlsMode::Implicit, &cert)).expect("mailer");
    let id = mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect("send");
    let inbox = recorder.messages();
    assert_eq!(inbox.len(), 1);
    check_received(&inbox[0], &id);
}

#[tokio::test]
async fn untrusted_certificate_is_transient() {
    let cert = test_cert();
    let other = test_cert();
    let port = start_starttls_server(Recorder::new(None), &cert);
    // Trusts a different certificate than the server's.
    let mailer = Mailer::smtp(&config(port, TlsMode::StarttlsRequired, &other)).expect("mailer");
    let err = mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect_err("bad cert");
    assert!(matches!(err, HostError::Transient(_)), "{err}");
}

#[tokio::test]
async fn smtp_451_is_transient_and_550_permanent() {
    let cert = test_cert();
    let port = start_starttls_server(Recorder::new(Some((451, "try again later"))), &cert);
    let mailer = Mailer::smtp(&config(port, TlsMode::StarttlsRequired, &cert)).expect("mailer");
    let err = mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect_err("451");
    assert!(
        matches!(err, HostError::Transient(ref m) if m.contains("451")),
        "{err}"
    );

    let port = start_starttls_server(Recorder::new(Some((550, "no such user"))), &cert);
    let mailer = Mailer::smtp(&config(port, TlsMode::StarttlsRequired, &cert)).expect("mailer");
    let err = mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect_err("550");
    assert!(
        matches!(err, HostError::Permanent(ref m) if m.contains("550")),
        "{err}"
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    install_crypto_provider();
    let cert = test_cert();
    let port = crate::support::free_port();
    let mailer = Mailer::smtp(&config(port, TlsMode::StarttlsRequired, &cert)).expect("mailer");
    let err = mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, HostError::Transient(_)), "{err}");
}

#[tokio::test]
async fn sender_grant_and_bad_messages() {
    install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let mailer = Mailer::dry_run(
        dir.path(),
        MailAddress::new("noreply@example.com", None),
        None,
        None,
    )
    .expect("mailer");
    let grant = MailGrant {
        allowed_senders: vec![
            "reports@example.com".to_owned(),
            "*@alerts.example.com".to_owned(),
        ],
    };
    let with_from = |email: &str| OutgoingMail {
        from: Some(MailAddress::new(email, None)),
        ..report_mail()
    };
    mailer
        .send(&grant, &with_from("reports@example.com"))
        .await
        .expect("exact sender");
    mailer
        .send(&grant, &with_from("Pager@Alerts.Example.com"))
        .await
        .expect("domain sender");
    mailer
        .send(&grant, &with_from("noreply@example.com"))
        .await
        .expect("configured sender");
    for bad in [
        "ceo@example.com",
        "x@evil-alerts.example.com",
        "x@alerts.example.com.evil",
    ] {
        let err = mailer.send(&grant, &with_from(bad)).await.expect_err(bad);
        assert!(matches!(err, HostError::Denied(_)), "{bad}: {err}");
    }

    let no_rcpt = OutgoingMail {
        to: vec![],
        cc: vec![],
        bcc: vec![],
        ..report_mail()
    };
    assert!(matches!(
        mailer.send(&grant, &no_rcpt).await,
        Err(HostError::Invalid(_))
    ));
    let no_body = OutgoingMail {
        text: None,
        html: None,
        ..report_mail()
    };
    assert!(matches!(
        mailer.send(&grant, &no_body).await,
        Err(HostError::Invalid(_))
    ));
    let bad_addr = OutgoingMail {
        to: vec![MailAddress::new("not an address", None)],
        ..report_mail()
    };
    assert!(matches!(
        mailer.send(&grant, &bad_addr).await,
        Err(HostError::Invalid(_))
    ));

    // Over the caps: refused, saying which, and nothing written. Before,
    // only attachments were capped: a task's 100 MB body was copied four
    // or five times by the host and sent.
    let written = || std::fs::read_dir(dir.path()).unwrap().count();
    let before = written();
    let someone = |i: usize| MailAddress::new(format!("r{i}@example.org"), None);
    for (mail, said) in [
        (
            OutgoingMail {
                text: Some("a".repeat(runner_host_fns::mail::MAX_BODY_BYTES / 2 + 1)),
                html: Some("b".repeat(runner_host_fns::mail::MAX_BODY_BYTES / 2)),
                ..report_mail()
            },
            "the bodies total",
        ),
        (
            OutgoingMail {
                subject: "s".repeat(runner_host_fns::mail::MAX_SUBJECT_BYTES + 1),
                ..report_mail()
            },
            "the subject is",
        ),
        (
            OutgoingMail {
                to: (0..60).map(someone).collect(),
                cc: vec![],
                bcc: (60..101).map(someone).collect(),
                ..report_mail()
            },
            "101 recipients",
        ),
        // Before, neither the number of attachments nor these strings
        // were capped: a million empty attachments, or a 20 MB file name,
        // took hundreds of MB of the host's memory to build.
        (
            OutgoingMail {
                attachments: vec![
                    MailAttachment {
                        filename: "a.txt".to_owned(),
                        content_type: "text/plain".to_owned(),
                        data: vec![],
                    };
                    runner_host_fns::mail::MAX_ATTACHMENTS + 1
                ],
                ..report_mail()
            },
            "101 attachments",
        ),
        (
            OutgoingMail {
                attachments: vec![MailAttachment {
                    filename: "é".repeat(500),
                    content_type: "text/plain".to_owned(),
                    data: vec![],
                }],
                ..report_mail()
            },
            "an attachment's file name is 1000 bytes",
        ),
        (
            OutgoingMail {
                attachments: vec![MailAttachment {
                    filename: "a.txt".to_owned(),
                    content_type: format!("text/plain; x={}", "y".repeat(1000)),
                    data: vec![],
                }],
                ..report_mail()
            },
            "an attachment's content type is",
        ),
        (
            OutgoingMail {
                cc: vec![MailAddress::new("c@example.org", Some(&"n".repeat(999)))],
                ..report_mail()
            },
            "a display name is 999 bytes",
        ),
    ] {
        match mailer.send(&grant, &mail).await {
            Err(HostError::Invalid(m)) => assert!(m.contains(said), "{m}"),
            other => panic!("{said}: {other:?}"),
        }
    }
    assert_eq!(written(), before);
    // At the caps: sent.
    let full = OutgoingMail {
        subject: "s".repeat(runner_host_fns::mail::MAX_SUBJECT_BYTES),
        to: (0..runner_host_fns::mail::MAX_RECIPIENTS)
            .map(someone)
            .collect(),
        cc: vec![],
        bcc: vec![],
        ..report_mail()
    };
    mailer.send(&grant, &full).await.expect("at the caps");
}

#[tokio::test]
async fn dry_run_writes_eml_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mailer = Mailer::dry_run(
        dir.path(),
        MailAddress::new("noreply@example.com", Some("進捗リマインダー")),
        Some(MailAddress::new("support@example.com", None)),
        Some("bounces@example.com".to_owned()),
    )
    .expect("mailer");
    // A header injection attempt stays inside the subject.
    let mail = OutgoingMail {
        subject: "hello\r\nBcc: victim@example.net".to_owned(),
        ..report_mail()
    };
    let id = mailer
        .send(&MailGrant::default(), &mail)
        .await
        .expect("send");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    let bytes = std::fs::read(files[0].path()).expect("eml");
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("Return-Path: <bounces@example.com>\r\n"),
        "{text}"
    );
    assert!(!text.contains("\r\nBcc:"), "no injected header");
    let parsed = mail_parser::MessageParser::default()
        .parse(&bytes)
        .expect("parse");
    assert_eq!(parsed.message_id(), Some(id.trim_matches(['<', '>'])));
    assert_eq!(parsed.subject(), Some("hello  Bcc: victim@example.net"));
    assert_eq!(parsed.attachments().count(), 1);
}

/// mailin-embedded without TLS or AUTH (a local relay).
fn start_plain_server(recorder: Recorder) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut server = Server::new(recorder);
    server.with_name("localhost").with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    port
}

#[tokio::test]
async fn auto_mode_never_sends_a_password_without_tls() {
    install_crypto_provider();
    let cert = test_cert();
    // No credentials: a relay without STARTTLS is used in plain text.
    let recorder = Recorder::new(None);
    let port = start_plain_server(recorder.clone());
    let mut plain = config(port, TlsMode::Auto, &cert);
    plain.username = None;
    plain.password = None;
    let mailer = Mailer::smtp(&plain).expect("mailer");
    mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect("plain relay");
    assert_eq!(recorder.messages().len(), 1);
    assert!(!recorder.messages()[0].authenticated);

    // With credentials, a server that does not offer STARTTLS is refused
    // before any password is sent.
    let recorder = Recorder::new(None);
    let port = start_plain_server(recorder.clone());
    let mailer = Mailer::smtp(&config(port, TlsMode::Auto, &cert)).expect("mailer");
    let err = mailer
        .send(&MailGrant::default(), &report_mail())
        .await
        .expect_err("no STARTTLS offered");
    assert!(matches!(err, HostError::Transient(_)), "{err}");
    assert!(recorder.messages().is_empty());
}

/// A send dropped half way (its task hit its time limit while the server
/// answered) closes its connection, and the next send has a clean one.
/// Before, lettre's pool took the connection back: the next send read the
/// answers meant for the dropped one, one step late, and failed (or was
/// told of another message's fate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_dropped_half_way_leaves_no_connection_behind() {
    install_crypto_provider();
    let cert = test_cert();
    let recorder = Recorder::new(None);
    let port = start_starttls_server(recorder.clone(), &cert);
    let mailer = Mailer::smtp(&MailConfig {
        pool_max_size: 1,
        ..config(port, TlsMode::StarttlsRequired, &cert)
    })
    .expect("mailer");
    let grant = MailGrant::default();
    // Connected and logged in: the connection is kept.
    mailer.send(&grant, &report_mail()).await.expect("first");
    let slow = OutgoingMail {
        to: vec![MailAddress::new("slow@example.org", None)],
        cc: vec![],
        bcc: vec![],
        ..report_mail()
    };
    let cut = tokio::time::timeout(Duration::from_millis(300), mailer.send(&grant, &slow)).await;
    assert!(cut.is_err(), "the send was not cut: {cut:?}");
    // The server answers the dropped send's RCPT meanwhile.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let next = OutgoingMail {
        subject: "the next one".to_owned(),
        to: vec![MailAddress::new("next@example.org", None)],
        cc: vec![],
        bcc: vec![],
        ..report_mail()
    };
    let id = mailer.send(&grant, &next).await.expect("the next send");
    let got = recorder.messages();
    let last = got.last().expect("received");
    assert_eq!(last.rcpt_to, ["next@example.org"], "{got:?}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&last.data)
        .expect("parse");
    assert_eq!(parsed.subject(), Some("the next one"));
    assert_eq!(parsed.message_id(), Some(id.trim_matches(['<', '>'])));
}

/// A server that accepts the connection and then says nothing fails the
/// send as `transient` within its timeouts. Before, only connecting had a
/// deadline: the send waited for the greeting for ever (in a job, until
/// its time limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_a_transient_error() {
    install_crypto_provider();
    let cert = test_cert();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let mailer = Mailer::smtp(&MailConfig {
        host: "127.0.0.1".to_owned(),
        timeout: Duration::from_millis(300),
        username: None,
        password: None,
        ..config(port, TlsMode::None, &cert)
    })
    .expect("mailer");
    let sent = tokio::time::timeout(
        Duration::from_secs(20),
        mailer.send(&MailGrant::default(), &report_mail()),
    )
    .await
    .expect("the send never ended");
    match sent {
        Err(HostError::Transient(m)) => assert!(m.contains("did not answer"), "{m}"),
        other => panic!("{other:?}"),
    }
}
