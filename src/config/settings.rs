//! The typed settings `serve` runs with, and the types of their values.
//!
//! Owns: [`Settings`], the contract's defaults ([`Settings::default`]), and
//! value types that keep secrets out of logs ([`SecretUrl`], [`ApiToken`]).
//! Must not: read the command line, the environment or a file (that is
//! `config`'s parent module).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

/// Which broker the gateway talks to.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// The embedded in-process broker (one replica only).
    Memory,
    /// RabbitMQ: the nodes of one cluster, one or more. The URLs carry
    /// credentials and are never printed whole.
    Amqp(BrokerNodes),
}

impl BrokerUrl {
    /// Parses `memory://`, or one or more `amqp://` / `amqps://` URLs separated
    /// by commas: the nodes of one RabbitMQ cluster (see [`BrokerNodes`]).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let items = split_nodes(raw);
        if items.is_empty() {
            return Err("no broker given: use memory://, or amqp:// or amqps:// URLs".into());
        }
        Self::assemble(items)
    }

    /// One broker from the values of a repeated `--broker`: their nodes
    /// together, checked as one list.
    pub fn join(parts: Vec<BrokerUrl>) -> Result<Self, String> {
        let mut items = Vec::new();
        for part in parts {
            match part {
                BrokerUrl::Memory => items.push("memory://".to_owned()),
                BrokerUrl::Amqp(nodes) => {
                    items.extend(nodes.0.into_iter().map(|url| url.0));
                }
            }
        }
        match items.len() {
            0 => Err("no broker given: use memory://, or amqp:// or amqps:// URLs".into()),
            _ => Self::assemble(items),
        }
    }

    fn assemble(items: Vec<String>) -> Result<Self, String> {
        let memory = items.iter().any(|i| is_memory(i));
        if memory && items.len() > 1 {
            return Err(
                "memory:// is the embedded broker: it stands alone, not beside RabbitMQ nodes"
                    .into(),
            );
        }
        if memory {
            return Ok(BrokerUrl::Memory);
        }
        let nodes = items
            .iter()
            .map(|item| Node::parse(item))
            .collect::<Result<Vec<_>, _>>()?;
        let first = &nodes[0];
        for (i, node) in nodes.iter().enumerate().skip(1) {
            if node.tls != first.tls {
                return Err(format!(
                    "{} and {} mix amqp:// and amqps://: give every node of the cluster the same scheme",
                    first.url, node.url
                ));
            }
            if node.vhost != first.vhost {
                return Err(format!(
                    "{} names the vhost {:?} and {} the vhost {:?}: the nodes of one cluster share one vhost",
                    first.url, first.vhost, node.url, node.vhost
                ));
            }
            if let Some(same) = nodes[..i].iter().find(|n| n.address == node.address) {
                return Err(format!(
                    "{} and {} are the same node ({})",
                    same.url, node.url, node.address
                ));
            }
        }
        Ok(BrokerUrl::Amqp(BrokerNodes(
            nodes.into_iter().map(|n| n.url).collect(),
        )))
    }
}

fn is_memory(item: &str) -> bool {
    item == "memory://" || item == "memory"
}

/// Splits a list of broker URLs at its commas. A comma starts a new URL only
/// when what follows it does (`scheme://`, or `memory`), so that a comma
/// inside a password (`amqp://u:pa,ss@h/`) stays where it is; a blank item
/// (`a,,b`, a trailing comma) is none.
fn split_nodes(raw: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for piece in raw.split(',') {
        if piece.trim().is_empty() {
            continue;
        }
        let rest = piece.trim_start();
        let starts_url = is_memory(rest.trim_end()) || starts_with_scheme(rest);
        match items.last_mut() {
            // Inside the user information of the URL before: it has no `@`
            // yet, and this piece brings one.
            Some(last) if !starts_url && in_user_info(last) && piece.contains('@') => {
                last.push(',');
                last.push_str(piece);
            }
            _ => items.push(piece.to_owned()),
        }
    }
    items.into_iter().map(|i| i.trim().to_owned()).collect()
}

/// `scheme://…`, as RFC 3986 spells a scheme.
fn starts_with_scheme(text: &str) -> bool {
    let Some((scheme, _)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The URL so far ends inside its user information (`scheme://user:pa`).
fn in_user_info(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(_, rest)| !rest.contains(['@', '/']))
}

/// One node's URL, read and checked.
struct Node {
    url: SecretUrl,
    tls: bool,
    /// `host:port`, the port defaulted by the scheme.
    address: String,
    vhost: String,
}

impl Node {
    /// A refusal names the URL, its password redacted.
    fn parse(raw: &str) -> Result<Self, String> {
        let shown = redact_url(raw);
        let refuse = |why: String| format!("{shown}: {why}");
        if !raw.contains("://") {
            return Err(refuse(
                "not a URL: each node is a whole amqp:// or amqps:// URL".into(),
            ));
        }
        let url = Url::parse(raw).map_err(|e| refuse(format!("not a URL ({e})")))?;
        let tls = match url.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(refuse(format!(
                    "unsupported scheme {other:?}: use memory://, amqp:// or amqps://"
                )));
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(refuse("the URL has no host".into()));
        }
        let amqp = raw
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| refuse(format!("not an AMQP URL ({e})")))?;
        Ok(Node {
            url: SecretUrl(raw.to_owned()),
            tls,
            address: format!("{}:{}", amqp.authority.host, amqp.authority.port),
            vhost: amqp.vhost,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Memory => f.write_str("memory://"),
            BrokerUrl::Amqp(nodes) => nodes.fmt(f),
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The nodes of one RabbitMQ cluster, as `--broker` lists them: at least one,
/// all `amqp://` or all `amqps://`, one vhost, no node twice. Printed as the
/// comma-separated list with every password redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerNodes(Vec<SecretUrl>);

impl BrokerNodes {
    /// The nodes' URLs, in the order given (a node's index in metrics and logs).
    pub fn urls(&self) -> &[SecretUrl] {
        &self.0
    }

    /// How many nodes were given (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: there is always a node.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The nodes are reached over TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.0.iter().all(|u| u.0.starts_with("amqps:"))
    }
}

impl fmt::Display for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, url) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            url.fmt(f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A broker URL that may hold a password: `Display`/`Debug` show it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The full URL, for the AMQP client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Replaces the password of a URL with `***`. Text that is not a URL is
/// redacted by its shape: whatever follows the first `:` of what comes
/// before an `@` (and after `scheme://`) is replaced.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) if url.has_host() || !raw.contains('@') => url.to_string(),
        _ => redact_user_info(raw),
    }
}

fn redact_user_info(raw: &str) -> String {
    let start = raw.find("://").map_or(0, |i| i + 3);
    let rest = &raw[start..];
    let Some(at) = rest.rfind('@') else {
        return raw.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &raw[..start], &rest[..colon], &rest[at..]),
        None => raw.to_owned(),
    }
}

/// The management API's bearer token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        ApiToken(token.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    Topic,
    Direct,
}

impl ExchangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Direct => "direct",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Limits of the embedded broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    pub max_messages_per_queue: usize,
    pub max_queues: usize,
}

/// The history of published events that `resume_after` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySettings {
    /// RabbitMQ: the stream's name.
    pub stream: String,
    /// How far back a resume can reach; zero = no history.
    pub max_age: Duration,
    /// Size bound: the stream's retention, or the embedded broker's memory for it.
    pub max_bytes: u64,
}

impl HistorySettings {
    /// Whether there is a history at all (`--history-max-age` above 0).
    pub fn enabled(&self) -> bool {
        !self.max_age.is_zero()
    }
}

/// Files for the broker connection: TLS material and credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerTls {
    pub ca_file: Option<PathBuf>,
    /// SNI and certificate name, instead of the URL's host.
    pub server_name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
}

/// Connection limits of the public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub http2_max_streams: u32,
}

/// Everything `serve` needs, parsed and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub broker: BrokerUrl,
    pub exchange: String,
    pub exchange_type: ExchangeType,
    pub subscription_expiry: Duration,
    pub queue_prefix: String,
    pub poll_timeout: Duration,
    pub max_polls: usize,
    pub replay_ttl: Duration,
    pub replay_capacity: usize,
    pub api_token: Option<ApiToken>,
    pub channel_pool_size: usize,
    /// Unacked messages per RabbitMQ consumer: the answer held for its
    /// sequence, plus deliveries waiting for the client's next poll.
    pub consumer_prefetch: u16,
    pub log_format: LogFormat,
    pub public_url: Option<Url>,
    pub cors_origins: Vec<String>,
    pub drain_timeout: Duration,
    pub memory: MemoryLimits,
    pub history: HistorySettings,
    pub limits: ConnectionLimits,
    pub broker_tls: BrokerTls,
    /// Lines about the configuration to log once logging is up (keys of a
    /// txlongpoll file that were ignored, its defaults that were taken).
    pub config_notices: Vec<String>,
}

/// Default channel pool size: enough operation channels that declares, binds and
/// publishes seldom wait for one, with 4 consumer channels beside them
/// (`broker::amqp::channels::consumer_channel_count`).
pub const DEFAULT_CHANNEL_POOL_SIZE: usize = 32;

impl Default for Settings {
    /// The contract's defaults.
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            broker: BrokerUrl::Memory,
            exchange: "longpoll".into(),
            exchange_type: ExchangeType::Topic,
            subscription_expiry: Duration::from_secs(300),
            queue_prefix: "longpoll.subscribe.".into(),
            poll_timeout: Duration::from_secs(270),
            max_polls: 100_000,
            replay_ttl: Duration::from_secs(300),
            replay_capacity: 1_000_000,
            api_token: None,
            channel_pool_size: DEFAULT_CHANNEL_POOL_SIZE,
            consumer_prefetch: 1,
            log_format: LogFormat::Text,
            public_url: None,
            cors_origins: Vec::new(),
            drain_timeout: Duration::from_secs(10),
            memory: MemoryLimits {
                max_messages_per_queue: 1_000,
                max_queues: 100_000,
            },
            history: HistorySettings {
                stream: "longpoll.history".into(),
                max_age: Duration::from_secs(3600),
                max_bytes: 1_000_000_000,
            },
            limits: ConnectionLimits {
                header_read_timeout: Duration::from_secs(10),
                max_connections: 110_000,
                max_header_bytes: 16 * 1024,
                max_uri_bytes: 4 * 1024,
                http2_max_streams: 10_000,
            },
            broker_tls: BrokerTls::default(),
            config_notices: Vec::new(),
        }
    }
}

/// Printable ASCII: the bytes txlongpoll accepted in a queue name.
pub fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_password_is_redacted_in_display_and_errors() {
        let b = BrokerUrl::parse("amqp://user:s3cret@localhost:5672/%2f").unwrap();
        assert!(!format!("{b} {b:?}").contains("s3cret"));
        assert!(format!("{b}").contains("user:***@localhost"));
    }

    fn nodes(raw: &str) -> Vec<String> {
        match BrokerUrl::parse(raw) {
            Ok(BrokerUrl::Amqp(nodes)) => {
                nodes.urls().iter().map(|u| u.expose().to_owned()).collect()
            }
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn several_nodes_are_comma_separated_urls() {
        assert_eq!(
            nodes(
                "amqp://u:p@rabbit-0:5672/%2f, amqp://u:p@rabbit-1:5672/%2f,amqp://u:p@rabbit-2/%2f"
            ),
            [
                "amqp://u:p@rabbit-0:5672/%2f",
                "amqp://u:p@rabbit-1:5672/%2f",
                "amqp://u:p@rabbit-2/%2f"
            ]
        );
        // A blank item (a trailing comma, two commas) is no node.
        assert_eq!(nodes("amqp://a/,,amqp://b/,").len(), 2);
        assert_eq!(nodes(" amqps://a/ ").len(), 1);
    }

    #[test]
    fn a_comma_in_a_password_stays_in_the_password() {
        assert_eq!(
            nodes("amqp://u:pa,ss@a:5672/%2f,amqp://u:pa,ss@b:5672/%2f"),
            ["amqp://u:pa,ss@a:5672/%2f", "amqp://u:pa,ss@b:5672/%2f"]
        );
    }

    /// What the chart renders for a RabbitmqCluster: every pod by its stable
    /// name, no credentials (they come from files), `%2F` for the default vhost.
    #[test]
    fn the_charts_list_of_pods_parses() {
        let rendered = (0..3)
            .map(|i| {
                format!("amqp://lp-rabbitmq-server-{i}.lp-rabbitmq-nodes.default.svc:5672/%2F")
            })
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(nodes(&rendered).len(), 3);
    }

    #[test]
    fn memory_stands_alone() {
        assert_eq!(BrokerUrl::parse("memory://"), Ok(BrokerUrl::Memory));
        assert_eq!(BrokerUrl::parse("memory"), Ok(BrokerUrl::Memory));
        let err = BrokerUrl::parse("memory://,amqp://h/").unwrap_err();
        assert!(err.starts_with("memory:// is the embedded broker"), "{err}");
        let err = BrokerUrl::join(vec![
            BrokerUrl::parse("amqp://h/").unwrap(),
            BrokerUrl::Memory,
        ])
        .unwrap_err();
        assert!(err.starts_with("memory:// is the embedded broker"), "{err}");
    }

    #[test]
    fn the_nodes_share_a_scheme_and_a_vhost_and_none_is_given_twice() {
        let err = BrokerUrl::parse("amqp://a/,amqps://b/").unwrap_err();
        assert!(err.contains("mix amqp:// and amqps://"), "{err}");
        let err = BrokerUrl::parse("amqp://a/one,amqp://b/two").unwrap_err();
        assert!(err.contains("share one vhost"), "{err}");
        let err = BrokerUrl::parse("amqp://u:x@a:5672/%2f,amqp://u:y@a/%2f").unwrap_err();
        assert!(err.contains("are the same node (a:5672)"), "{err}");
        assert!(!err.contains(":x@") && !err.contains(":y@"), "{err}");
    }

    #[test]
    fn a_bad_node_is_named_with_its_password_redacted() {
        let err = BrokerUrl::parse("amqp://u:s3cret@a/,amqp://u:s3cret@b:99999/").unwrap_err();
        assert!(err.starts_with("amqp://u:***@b:99999/: not a URL"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = BrokerUrl::parse("amqp://u:s3cret@a/,http://u:s3cret@b/").unwrap_err();
        assert!(
            err.starts_with("http://u:***@b/: unsupported scheme"),
            "{err}"
        );
        // A host without its scheme is no URL (each node is a whole URL).
        let err = BrokerUrl::parse("amqp://u:s3cret@a:5672,b:5672").unwrap_err();
        assert!(err.starts_with("b:5672: not a URL"), "{err}");
        for bad in ["", " , ", "amqp://", "not a url"] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn every_nodes_password_is_redacted_when_printed() {
        let b = BrokerUrl::parse("amqp://u:s3cret@a/%2f,amqp://u:t0p@b/%2f").unwrap();
        let shown = format!("{b} {b:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0p"),
            "{shown}"
        );
        assert_eq!(format!("{b}"), "amqp://u:***@a/%2f,amqp://u:***@b/%2f");
    }

    #[test]
    fn text_that_is_not_a_url_loses_its_password_too() {
        assert_eq!(
            redact_url("amqp://u:s3cret@h:99999/"),
            "amqp://u:***@h:99999/"
        );
        assert_eq!(redact_url("u:s3cret@h"), "u:***@h");
        assert_eq!(redact_url("no password here"), "no password here");
    }

    #[test]
    fn the_values_of_a_repeated_flag_join_into_one_list() {
        let joined = BrokerUrl::join(vec![
            BrokerUrl::parse("amqp://a/,amqp://b/").unwrap(),
            BrokerUrl::parse("amqp://c/").unwrap(),
        ])
        .unwrap();
        assert_eq!(
            joined,
            BrokerUrl::parse("amqp://a/,amqp://b/,amqp://c/").unwrap()
        );
        assert!(
            BrokerUrl::join(vec![
                BrokerUrl::parse("amqp://a/").unwrap(),
                BrokerUrl::parse("amqp://a/").unwrap(),
            ])
            .is_err()
        );
    }

    #[test]
    fn the_api_token_is_never_printed() {
        assert_eq!(
            format!("{:?}", ApiToken::new("s3cret-token")),
            "ApiToken(***)"
        );
    }
}
