//! Outgoing HTTP requests (webhooks, APIs), with the task's allow-list and
//! defences against server-side request forgery.
//!
//! A request is sent only if its URL matches a rule of the task's
//! [`HttpGrant`] (scheme, host — exact, `*.domain` or `*` — and port).
//! Whatever the rule, an address that is not plainly public (loopback,
//! private, link-local, unique-local, cloud metadata, IPv4-mapped IPv6,
//! multicast, reserved...) is refused unless the grant names it explicitly:
//! as the IP literal of a rule that allows the URL (its scheme and port
//! too), or inside one of its `private_networks`.
//! This is checked
//! - for IP-literal URLs, before anything is sent;
//! - after DNS resolution, by the client's resolver, which drops refused
//!   addresses and hands the connector only the checked ones (so a second
//!   lookup cannot rebind the name to another address);
//! - on every redirect hop: redirects are followed here, one hop at a time,
//!   each hop checked like the first request.
//!
//! No proxy is ever used (an environment `HTTP_PROXY` would otherwise
//! receive every request and make the address checks moot). Response
//! bodies are capped.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::HostError;
use crate::trace::traced;

const CAPABILITY: &str = "http";

/// Operator limits for outgoing requests. Durations are in seconds in
/// configuration files; every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Largest response body returned to a task; larger is `invalid`.
    pub max_response_bytes: usize,
    /// Largest request body accepted from a task.
    pub max_request_bytes: usize,
    /// Redirects followed at most per request.
    pub max_redirects: usize,
    /// Timeout when the task gives none.
    #[serde(with = "crate::serde_secs")]
    pub default_timeout: Duration,
    /// Upper bound on any task's timeout (the sandbox adapter further caps
    /// it at the job's time left).
    #[serde(with = "crate::serde_secs")]
    pub max_timeout: Duration,
    /// The User-Agent sent unless the task sets one.
    pub user_agent: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_response_bytes: 10 * 1024 * 1024,
            max_request_bytes: 10 * 1024 * 1024,
            max_redirects: 5,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            user_agent: concat!("runner/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// What one task may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Allowed destinations, e.g. `https://hooks.slack.com`,
    /// `https://*.example.com:8443`, `http://127.0.0.1:8080`, `https://*`.
    /// See [`HostRule::parse`].
    pub allow: Vec<String>,
    /// Non-public networks this task may reach anyway (`10.1.0.0/16`,
    /// `127.0.0.1/32`); an IP-literal rule names its own address already.
    #[serde(default)]
    pub private_networks: Vec<IpNet>,
}

impl HttpGrant {
    /// Checks every rule, so that a bad grant is refused when it is bound
    /// rather than on the first request.
    pub fn validate(&self) -> Result<(), String> {
        self.allow
            .iter()
            .try_for_each(|r| HostRule::parse(r).map(drop))
    }
}

/// One parsed `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    scheme: String,
    host: HostPattern,
    /// `None`: any port (`host:*`).
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Any host name or address.
    Any,
    /// `*.example.com`: any name below the domain, not the domain itself.
    Suffix(String),
    Exact(String),
    Ip(IpAddr),
}

impl HostRule {
    /// Parses `[scheme://]host[:port]`; the scheme defaults to `https`, the
    /// port to the scheme's; `:*` allows any port. The host is a name, `*.domain`, `*`, an IPv4
    /// address or a bracketed IPv6 address.
    pub fn parse(rule: &str) -> Result<Self, String> {
        let rule = rule.trim();
        let (scheme, rest) = match rule.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("https".to_owned(), rule),
        };
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            other => {
                return Err(format!(
                    "rule '{rule}': scheme '{other}' is not http or https"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.is_empty() {
            return Err(format!("rule '{rule}': expected [scheme://]host[:port]"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("rule '{rule}': unclosed '['"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("rule '{rule}': junk after the address")),
            };
            let ip: Ipv6Addr = addr
                .parse()
                .map_err(|_| format!("rule '{rule}': bad IPv6 address"))?;
            (HostPattern::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            let host = host.to_ascii_lowercase();
            let pattern = if host == "*" {
                HostPattern::Any
            } else if let Some(domain) = host.strip_prefix("*.") {
                if domain.is_empty() || domain.contains('*') {
                    return Err(format!("rule '{rule}': bad wildcard"));
                }
                HostPattern::Suffix(domain.to_owned())
            } else if host.contains('*') {
                return Err(format!("rule '{rule}': '*' only as '*' or '*.domain'"));
            } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
                HostPattern::Ip(IpAddr::V4(ip))
            } else {
                HostPattern::Exact(host)
            };
            (pattern, port)
        };
        let port = match port {
            None => Some(default_port),
            Some("*") => None,
            Some(p) => Some(
                p.parse()
                    .map_err(|_| format!("rule '{rule}': bad port '{p}'"))?,
            ),
        };
        Ok(Self { scheme, host, port })
    }

    fn matches(&self, url: &Url) -> bool {
        if url.scheme() != self.scheme
            || self
                .port
                .is_some_and(|p| url.port_or_known_default() != Some(p))
        {
            return false;
        }
        match (&self.host, url.host()) {
            (HostPattern::Any, Some(_)) => true,
            (HostPattern::Exact(name), Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case(name),
            (HostPattern::Suffix(domain), Some(url::Host::Domain(d))) => {
                let d = d.to_ascii_lowercase();
                d.len() > domain.len() + 1
                    && d.ends_with(domain.as_str())
                    && d[..d.len() - domain.len()].ends_with('.')
            }
            (HostPattern::Ip(ip), Some(url::Host::Ipv4(v4))) => *ip == IpAddr::V4(v4),
            (HostPattern::Ip(ip), Some(url::Host::Ipv6(v6))) => *ip == IpAddr::V6(v6),
            _ => false,
        }
    }
}

/// A request as a task hands it over (mirrors WIT `http.request`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Name resolution, replaceable so that tests and operator host overrides
/// can decide what a name resolves to.
#[async_trait]
pub trait Lookup: Send + Sync + 'static {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The system resolver (getaddrinfo on tokio's blocking pool).
pub struct SystemLookup;

#[async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0))
            .await?
            .map(|a| a.ip())
            .collect())
    }
}

/// A fixed table of names; names not in it do not resolve.
#[derive(Debug, Clone, Default)]
pub struct StaticLookup(pub HashMap<String, Vec<IpAddr>>);

#[async_trait]
impl Lookup for StaticLookup {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.0
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no address for '{host}'"))
            })
    }
}

/// The resolver's refusal, found again in the reqwest error's source chain
/// to answer `denied` rather than `transient`.
#[derive(Debug)]
struct AddressRefused {
    host: String,
    addrs: Vec<IpAddr>,
}

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "'{}' resolves only to addresses this task may not reach ({:?})",
            self.host, self.addrs
        )
    }
}

impl std::error::Error for AddressRefused {}

struct FilteringResolver {
    lookup: Arc<dyn Lookup>,
    allowed: Arc<Vec<IpNet>>,
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.lookup.clone();
        let allowed = self.allowed.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = lookup.lookup(&host).await?;
            let usable: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|ip| address_allowed(*ip, &allowed, &[]))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if usable.is_empty() {
                return Err(Box::new(AddressRefused { host, addrs })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The http capability; one per process, shared by every task.
pub struct HttpService {
    config: HttpConfig,
    lookup: Arc<dyn Lookup>,
    /// One client per set of private networks granted (most grants have
    /// none, so most tasks share one client and its connection pool).
    clients: Mutex<HashMap<Vec<IpNet>, reqwest::Client>>,
}

impl HttpService {
    pub fn new(config: HttpConfig) -> Self {
        Self::with_lookup(config, Arc::new(SystemLookup))
    }

    pub fn with_lookup(config: HttpConfig, lookup: Arc<dyn Lookup>) -> Self {
        Self {
            config,
            lookup,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, private: &[IpNet]) -> Result<reqwest::Client, HostError> {
        let mut key = private.to_vec();
        key.sort();
        key.dedup();
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| HostError::transient("http client cache lock poisoned"))?;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(FilteringResolver {
                lookup: self.lookup.clone(),
                allowed: Arc::new(key.clone()),
            }))
            .user_agent(self.config.user_agent.clone())
            .build()
            .map_err(|e| HostError::unavailable(format!("http client set-up failed: {e}")))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Sends the request, following allowed redirects, and returns the final
    /// response whatever its status.
    pub async fn send(
        &self,
        grant: &HttpGrant,
        request: &HttpRequest,
    ) -> Result<HttpResponse, HostError> {
        traced(CAPABILITY, "send", async {
            let rules = grant
                .allow
                .iter()
                .map(|r| HostRule::parse(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| HostError::denied(format!("bad http grant: {e}")))?;
            let method = parse_method(&request.method)?;
            let headers = parse_headers(&request.headers)?;
            if let Some(body) = &request.body
                && body.len() > self.config.max_request_bytes
            {
                return Err(HostError::invalid(format!(
                    "request body of {} bytes exceeds {} bytes",
                    body.len(),
                    self.config.max_request_bytes
                )));
            }
            let url = Url::parse(&request.url)
                .map_err(|e| HostError::invalid(format!("bad URL '{}': {e}", request.url)))?;
            let timeout = request
                .timeout
                .unwrap_or(self.config.default_timeout)
                .min(self.config.max_timeout);
            let client = self.client(&grant.private_networks)?;
            let hops = self.follow(
                &client,
                &rules,
                grant,
                method,
                url,
                headers,
                request.body.clone(),
            );
            match tokio::time::timeout(timeout, hops).await {
                Ok(result) => result,
                Err(_) => Err(HostError::transient(format!(
                    "request timed out after {timeout:?}"
                ))),
            }
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        client: &reqwest::Client,
        rules: &[HostRule],
        grant: &HttpGrant,
        mut method: Method,
        mut url: Url,
        mut headers: HeaderMap,
        mut body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, HostError> {
        let mut redirects = 0;
        loop {
            check_url(&url, rules, grant)?;
            let mut req = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let response = req.send().await.map_err(request_error)?;
            let status = response.status();
            let location = response.headers().get(reqwest::header::LOCATION).cloned();
            let is_redirect = matches!(
                status,
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            );
            let Some(location) = location.filter(|_| is_redirect) else {
                return self.read(response).await;
            };
            redirects += 1;
            if redirects > self.config.max_redirects {
                return Err(HostError::permanent(format!(
                    "more than {} redirects",
                    self.config.max_redirects
                )));
            }
            let location = location
                .to_str()
                .map_err(|_| HostError::permanent("redirect with a non-ASCII Location"))?;
            let next = url.join(location).map_err(|e| {
                HostError::permanent(format!("redirect to a bad URL '{location}': {e}"))
            })?;
            // 303, and 301/302 after a POST, continue as GET without a body
            // (what browsers and curl do); 307/308 repeat the request.
            if status == StatusCode::SEE_OTHER && method != Method::HEAD
                || matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && method == Method::POST
            {
                method = Method::GET;
                body = None;
                headers.remove(reqwest::header::CONTENT_TYPE);
            }
            if next.origin() != url.origin() {
                // Credentials meant for one origin are not handed to another.
                for h in [
                    reqwest::header::AUTHORIZATION,
                    reqwest::header::COOKIE,
                    reqwest::header::PROXY_AUTHORIZATION,
                ] {
                    headers.remove(h);
                }
            }
            tracing::debug!(from = %url, to = %next, status = status.as_u16(), "following a redirect");
            url = next;
        }
    }

    async fn read(&self, mut response: reqwest::Response) -> Result<HttpResponse, HostError> {
        let cap = self.config.max_response_bytes;
        if let Some(len) = response.content_length()
            && len > cap as u64
        {
            return Err(HostError::invalid(format!(
                "response body of {len} bytes exceeds {cap} bytes"
            )));
        }
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > cap {
                return Err(HostError::invalid(format!(
                    "response body exceeds {cap} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// Checks one hop: scheme, grant rule, and for IP literals the address.
fn check_url(url: &Url, rules: &[HostRule], grant: &HttpGrant) -> Result<(), HostError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HostError::invalid(format!(
            "'{url}': only http and https are supported"
        )));
    }
    let host = url
        .host()
        .ok_or_else(|| HostError::invalid(format!("'{url}' has no host")))?;
    if !rules.iter().any(|r| r.matches(url)) {
        return Err(HostError::denied(format!(
            "{}://{}:{} is not in this task's allowed hosts",
            url.scheme(),
            host,
            url.port_or_known_default().unwrap_or(0)
        )));
    }
    let literal = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    };
    if let Some(ip) = literal {
        // Named by a rule that allows this very URL (its scheme and port
        // too): `http://10.0.0.5:8080` beside `http://*:*` opens that
        // address on port 8080, not on every port.
        let named: Vec<IpAddr> = rules
            .iter()
            .filter(|r| r.matches(url))
            .filter_map(|r| match r.host {
                HostPattern::Ip(ip) => Some(ip),
                _ => None,
            })
            .collect();
        if !address_allowed(ip, &grant.private_networks, &named) {
            return Err(HostError::denied(format!(
                "{ip} is a non-public address this task's grant does not name"
            )));
        }
    }
    Ok(())
}

/// Whether `ip` may be connected to: public addresses always; others only
/// if named exactly or inside a granted network. An IPv4-mapped IPv6
/// address is never treated as its IPv4 twin: it must be named itself.
pub fn address_allowed(ip: IpAddr, private_networks: &[IpNet], named: &[IpAddr]) -> bool {
    is_public(ip) || named.contains(&ip) || private_networks.iter().any(|n| n.contains(&ip))
}

/// Plainly public unicast addresses only.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0 // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes the metadata service 169.254.169.254
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || ip.is_multicast()
        || a >= 240) // reserved and broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d): they
    // reach IPv4 hosts, so never treat them as public.
    if s[0..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        return false;
    }
    match s[0] {
        0xfc00..=0xfdff => return false, // unique local, incl. fd00:ec2::254
        0xfe80..=0xfebf => return false, // link-local
        0xfec0..=0xfeff => return false, // site-local (deprecated)
        0x0064 if s[1] == 0xff9b => return false, // NAT64 (64:ff9b::/96 and /48)
        0x0100 if s[1..4] == [0, 0, 0] => return false, // discard-only
        0x2001 if s[1] == 0x0db8 => return false, // documentation
        0x2001 if s[1] < 0x0200 => return false, // Teredo, benchmarking, ORCHID...
        0x2002 => {
            // 6to4 carries an IPv4 address in bits 16..48.
            let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
            return is_public_v4(v4);
        }
        _ => {}
    }
    // Only global unicast (2000::/3) is public.
    (s[0] & 0xe000) == 0x2000
}

fn parse_method(method: &str) -> Result<Method, HostError> {
    match method.to_ascii_uppercase().as_str() {
        "GET" => Ok(Method::GET),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        "HEAD" => Ok(Method::HEAD),
        "OPTIONS" => Ok(Method::OPTIONS),
        other => Err(HostError::invalid(format!("unsupported method '{other}'"))),
    }
}

/// Headers the client owns: the task may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];

/// The most headers a task's request may carry (many more made the header
/// map panic; a server such as hyper's takes 100 in all, the client's own
/// among them).
pub const MAX_REQUEST_HEADERS: usize = 100;
/// The most bytes of header names and values a task's request may carry.
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

fn parse_headers(headers: &[(String, String)]) -> Result<HeaderMap, HostError> {
    if headers.len() > MAX_REQUEST_HEADERS {
        return Err(HostError::invalid(format!(
            "{} headers: at most {MAX_REQUEST_HEADERS}",
            headers.len()
        )));
    }
    let bytes = headers.iter().fold(0usize, |n, (k, v)| {
        n.saturating_add(k.len()).saturating_add(v.len())
    });
    if bytes > MAX_REQUEST_HEADER_BYTES {
        return Err(HostError::invalid(format!(
            "headers of {bytes} bytes: at most {MAX_REQUEST_HEADER_BYTES}"
        )));
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| HostError::invalid(format!("bad header name '{name}'")))?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(HostError::invalid(format!(
                "header '{name}' is set by the host, not the task"
            )));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| HostError::invalid(format!("bad value for header '{name}'")))?;
        map.append(name, value);
    }
    Ok(map)
}

fn request_error(e: reqwest::Error) -> HostError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<AddressRefused>() {
            return HostError::denied(refused.to_string());
        }
        source = err.source();
    }
    if e.is_builder() {
        return HostError::invalid(format!("bad request: {e}"));
    }
    HostError::transient(crate::error::error_chain(&e))
}
