//! The HTTP client against a real loopback server (axum on 127.0.0.1:0),
//! with the grant and the address checks.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use runner_host_fns::HostError;
use runner_host_fns::http::{
    HttpConfig, HttpGrant, HttpRequest, HttpService, StaticLookup, is_public,
};

use crate::support::install_crypto_provider;

#[derive(Debug, Clone)]
struct Hit {
    method: Method,
    path: String,
    content_type: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Hits(Arc<Mutex<Vec<Hit>>>);

impl Hits {
    fn all(&self) -> Vec<Hit> {
        self.0.lock().expect("hits").clone()
    }
}

async fn record(
    State(hits): State<Hits>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let get = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    hits.0.lock().expect("hits").push(Hit {
        method,
        path: uri.path().to_owned(),
        content_type: get(header::CONTENT_TYPE),
        authorization: get(header::AUTHORIZATION),
        body: body.to_vec(),
    });
    (StatusCode::OK, [("x-test", "yes")], "received").into_response()
}

/// A webhook receiver with a few redirecting routes; returns its port.
async fn start_server(hits: Hits) -> u16 {
    start_server_on("127.0.0.1:0", hits).await
}

async fn start_server_on(addr: &str, hits: Hits) -> u16 {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app =
        Router::new()
            .route("/hook", any(record))
            .route("/landing", any(record))
            .route("/see-other", any(|| async { Redirect::to("/landing") }))
            .route(
                "/temporary",
                any(|| async { Redirect::temporary("/landing") }),
            )
            .route(
                "/to-private",
                get(|| async { Redirect::temporary("http://10.1.2.3/steal") }),
            )
            .route(
                "/to-metadata",
                get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data/") }),
            )
            .route(
                "/to-mapped",
                get(move || async move {
                    Redirect::temporary(&format!("http://[::ffff:127.0.0.1]:{port}/hook"))
                }),
            )
            .route(
                "/to-other-host",
                get(move || async move {
                    Redirect::temporary(&format!("http://localhost:{port}/hook"))
                }),
            )
            .route("/loop", get(|| async { Redirect::temporary("/loop") }))
            .route("/big", get(|| async { vec![b'x'; 2 * 1024 * 1024] }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .with_state(hits);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

fn service() -> HttpService {
    install_crypto_provider();
    let mut table = HashMap::new();
    table.insert(
        "localhost".to_owned(),
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    );
    table.insert(
        "internal.test".to_owned(),
        vec!["10.0.0.5".parse().expect("ip")],
    );
    table.insert(
        "mixed.test".to_owned(),
        vec![
            "127.0.0.2".parse().expect("ip"),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ],
    );
    let config = HttpConfig {
        max_response_bytes: 1024 * 1024,
        ..HttpConfig::default()
    };
    HttpService::with_lookup(config, Arc::new(StaticLookup(table)))
}

fn grant(allow: &[&str]) -> HttpGrant {
    HttpGrant {
        allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        private_networks: vec![],
    }
}

fn post(url: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".to_owned(),
        url: url.to_owned(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: Some(br#"{"text":"backup verified"}"#.to_vec()),
        timeout: Some(Duration::from_secs(10)),
    }
}

fn get_req(url: &str) -> HttpRequest {
    HttpRequest {
        method: "GET".to_owned(),
        url: url.to_owned(),
        ..Default::default()
    }
}

fn assert_denied(result: Result<runner_host_fns::http::HttpResponse, HostError>, what: &str) {
    match result {
        Err(HostError::Denied(_)) => {}
        other => panic!("{what}: expected denied, got {other:?}"),
    }
}

#[tokio::test]
async fn webhook_reaches_loopback_only_when_the_grant_allows_it() {
    let hits = Hits::default();
    let port = start_server(hits.clone()).await;
    let http = service();
    let hook = format!("http://127.0.0.1:{port}/hook");

    // Every public host allowed, but loopback not named: refused, nothing sent.
    assert_denied(
        http.send(&grant(&["http://*"]), &post(&hook)).await,
        "wildcard grant",
    );
    // A name resolving to loopback is refused the same way.
    assert_denied(
        http.send(
            &grant(&[&format!("http://localhost:{port}")]),
            &post(&format!("http://localhost:{port}/hook")),
        )
        .await,
        "localhost by name",
    );
    // Host not in the grant at all.
    assert_denied(
        http.send(&grant(&["https://hooks.example.com"]), &post(&hook))
            .await,
        "other host",
    );
    // Wrong port.
    assert_denied(
        http.send(&grant(&["http://127.0.0.1:1"]), &post(&hook))
            .await,
        "other port",
    );
    // Named on another port beside a rule for every host and port: the
    // address is not opened on every port. (Before, any rule naming the
    // address counted, whatever its port or scheme.)
    assert_denied(
        http.send(&grant(&["http://127.0.0.1:1", "http://*:*"]), &post(&hook))
            .await,
        "named on another port",
    );
    assert_denied(
        http.send(
            &grant(&[&format!("https://127.0.0.1:{port}"), "http://*:*"]),
            &post(&hook),
        )
        .await,
        "named for another scheme",
    );
    assert!(hits.all().is_empty(), "nothing reached the server");

    // The grant names the loopback address: delivered.
    let response = http
        .send(&grant(&[&format!("http://127.0.0.1:{port}")]), &post(&hook))
        .await
        .expect("explicitly granted");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"received");
    assert!(
        response
            .headers
            .iter()
            .any(|(k, v)| k == "x-test" && v == "yes")
    );

    // By name, with the loopback network granted.
    let by_name = HttpGrant {
        allow: vec![format!("http://localhost:{port}")],
        private_networks: vec!["127.0.0.0/8".parse().expect("net")],
    };
    http.send(&by_name, &post(&format!("http://localhost:{port}/hook")))
        .await
        .expect("granted network");

    let received = hits.all();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].method, Method::POST);
    assert_eq!(
        received[0].content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(received[0].body, br#"{"text":"backup verified"}"#);
}

#[tokio::test]
async fn metadata_and_mapped_addresses_are_refused() {
    let http = service();
    let everything = grant(&["http://*", "https://*"]);
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fd00:ec2::254]/",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[fe80::1]/",
        "https://127.0.0.1/",
        // Other spellings of loopback that URL parsers accept.
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://127.1/",
        "http://[0:0:0:0:0:ffff:7f00:1]/",
    ] {
        assert_denied(http.send(&everything, &get_req(url)).await, url);
    }
    // Naming 127.0.0.1 does not name its IPv4-mapped twin.
    let named = grant(&["http://127.0.0.1", "http://*"]);
    assert_denied(
        http.send(&named, &get_req("http://[::ffff:127.0.0.1]/"))
            .await,
        "mapped twin",
    );
}

#[tokio::test]
async fn a_name_resolving_to_a_private_address_is_refused() {
    let http = service();
    let g = grant(&["http://*"]);
    assert_denied(
        http.send(&g, &get_req("http://internal.test/")).await,
        "internal.test -> 10.0.0.5",
    );
    let err = http
        .send(&g, &get_req("http://internal.test/"))
        .await
        .expect_err("denied");
    assert!(err.message().contains("10.0.0.5"), "{err}");
}

#[tokio::test]
async fn resolved_addresses_are_filtered_and_pinned() {
    let hits = Hits::default();
    let port = start_server(hits.clone()).await;
    // Another receiver on the same port of 127.0.0.2, which is not granted.
    let decoy = Hits::default();
    start_server_on(&format!("127.0.0.2:{port}"), decoy.clone()).await;
    let http = service();
    // mixed.test resolves to 127.0.0.2 first, then 127.0.0.1; only
    // 127.0.0.1 is granted, so the connection goes there and never to
    // 127.0.0.2, although it comes first and accepts connections.
    let g = HttpGrant {
        allow: vec![format!("http://mixed.test:{port}")],
        private_networks: vec!["127.0.0.1/32".parse().expect("net")],
    };
    for _ in 0..3 {
        let response = http
            .send(&g, &get_req(&format!("http://mixed.test:{port}/hook")))
            .await
            .expect("via the granted address");
        assert_eq!(response.status, 200);
    }
    assert_eq!(hits.all().len(), 3);
    assert!(decoy.all().is_empty(), "the refused address was used");

    // Granting 127.0.0.2 as well lets the first address be used.
    let both = HttpGrant {
        allow: vec![format!("http://mixed.test:{port}")],
        private_networks: vec!["127.0.0.0/8".parse().expect("net")],
    };
    http.send(&both, &get_req(&format!("http://mixed.test:{port}/hook")))
        .await
        .expect("both granted");
    assert_eq!(decoy.all().len(), 1);
}

#[tokio::test]
async fn every_redirect_hop_is_checked() {
    let hits = Hits::default();
    let port = start_server(hits.clone()).await;
    let http = service();
    let g = grant(&[
        &format!("http://127.0.0.1:{port}"),
        "http://*",
        &format!("http://*:{port}"),
    ]);
    let base = format!("http://127.0.0.1:{port}");

    assert_denied(
        http.send(&g, &get_req(&format!("{base}/to-private"))).await,
        "redirect to 10.1.2.3",
    );
    assert_denied(
        http.send(&g, &get_req(&format!("{base}/to-metadata")))
            .await,
        "redirect to metadata",
    );
    assert_denied(
        http.send(&g, &get_req(&format!("{base}/to-mapped"))).await,
        "redirect to ::ffff:127.0.0.1",
    );
    // localhost resolves to loopback, which this grant names only as a literal.
    assert_denied(
        http.send(&g, &get_req(&format!("{base}/to-other-host")))
            .await,
        "redirect to localhost",
    );
    assert!(hits.all().is_empty());

    // Allowed redirects are followed; 303 turns a POST into a GET without
    // a body, 307 repeats it.
    let mut with_auth = post(&format!("{base}/see-other"));
    with_auth
        .headers
        .push(("authorization".to_owned(), "Bearer t".to_owned()));
    let response = http.send(&g, &with_auth).await.expect("303");
    assert_eq!(response.status, 200);
    let response = http
        .send(&g, &post(&format!("{base}/temporary")))
        .await
        .expect("307");
    assert_eq!(response.status, 200);
    let received = hits.all();
    assert_eq!(received.len(), 2);
    assert_eq!(
        (received[0].method.clone(), received[0].path.as_str()),
        (Method::GET, "/landing")
    );
    assert!(received[0].body.is_empty());
    // Same origin: the Authorization header is kept.
    assert_eq!(received[0].authorization.as_deref(), Some("Bearer t"));
    assert_eq!(received[1].method, Method::POST);
    assert_eq!(received[1].body, br#"{"text":"backup verified"}"#);

    let err = http
        .send(&g, &get_req(&format!("{base}/loop")))
        .await
        .expect_err("loop");
    assert!(
        matches!(err, HostError::Permanent(ref m) if m.contains("redirects")),
        "{err}"
    );
}

#[tokio::test]
async fn size_cap_timeout_and_bad_input() {
    let hits = Hits::default();
    let port = start_server(hits.clone()).await;
    let http = service();
    let base = format!("http://127.0.0.1:{port}");
    let g = grant(&[&base]);

    let err = http
        .send(&g, &get_req(&format!("{base}/big")))
        .await
        .expect_err("too big");
    assert!(matches!(err, HostError::Invalid(_)), "{err}");

    let mut slow = get_req(&format!("{base}/slow"));
    slow.timeout = Some(Duration::from_millis(200));
    let err = http.send(&g, &slow).await.expect_err("timeout");
    assert!(matches!(err, HostError::Transient(_)), "{err}");

    let mut bad_method = get_req(&format!("{base}/hook"));
    bad_method.method = "TRACE".to_owned();
    assert!(matches!(
        http.send(&g, &bad_method).await,
        Err(HostError::Invalid(_))
    ));
    assert!(matches!(
        http.send(&g, &get_req("not a url")).await,
        Err(HostError::Invalid(_))
    ));
    assert!(matches!(
        http.send(&grant(&["*"]), &get_req("ftp://example.com/"))
            .await,
        Err(HostError::Invalid(_) | HostError::Denied(_))
    ));
    let mut host_header = get_req(&format!("{base}/hook"));
    host_header
        .headers
        .push(("Host".to_owned(), "example.com".to_owned()));
    assert!(matches!(
        http.send(&g, &host_header).await,
        Err(HostError::Invalid(_))
    ));

    // Too many headers, or too long: refused before anything is sent.
    // (24,577 names made the header map panic.)
    for (count, len) in [(24_577, 1), (101, 1), (2, 40 * 1024)] {
        let mut many = get_req(&format!("{base}/hook"));
        many.headers = (0..count)
            .map(|i| (format!("x-{i}"), "a".repeat(len)))
            .collect();
        let err = http.send(&g, &many).await.expect_err("too many headers");
        assert!(matches!(err, HostError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("at most"), "{err}");
    }
    // Below the cap, they are sent (90: the receiver, hyper, takes 100 in
    // all, the client's own among them).
    let mut ninety = get_req(&format!("{base}/hook"));
    ninety.headers = (0..90).map(|i| (format!("x-{i}"), "a".into())).collect();
    let res = http.send(&g, &ninety).await.expect("90 headers are sent");
    assert_eq!(res.status, 200);

    // Connection refused is transient.
    let closed = crate::support::free_port();
    let err = http
        .send(
            &grant(&[&format!("http://127.0.0.1:{closed}")]),
            &get_req(&format!("http://127.0.0.1:{closed}/")),
        )
        .await
        .expect_err("refused");
    assert!(matches!(err, HostError::Transient(_)), "{err}");
}

#[test]
fn address_classes() {
    for public in [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
    ] {
        assert!(is_public(public.parse().expect("ip")), "{public}");
    }
    for private in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.100.100.200",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "::1",
        "::",
        "::ffff:8.8.8.8",
        "fd00:ec2::254",
        "fc00::1",
        "fe80::1",
        "ff02::1",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
        "2001:db8::1",
    ] {
        assert!(!is_public(private.parse().expect("ip")), "{private}");
    }
}

#[test]
fn grant_rules_are_validated() {
    let good = grant(&[
        "https://hooks.slack.com",
        "*.webhook.office.com",
        "http://127.0.0.1:8080",
        "http://[::1]:9000",
        "https://*",
        "http://*:8080",
    ]);
    good.validate().expect("good rules");
    for bad in [
        "ftp://example.com",
        "https://example.com/path",
        "https://user@example.com",
        "https://ex*ample.com",
        "https://*.",
        "https://example.com:http",
        "http://[::1",
        "",
    ] {
        assert!(grant(&[bad]).validate().is_err(), "{bad:?} must be refused");
    }
}
