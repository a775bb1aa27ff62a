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
    /// RabbitMQ; the URL carries credentials and is never printed whole.
    Amqp(SecretUrl),
}

impl BrokerUrl {
    /// Parses `memory://` or an `amqp://` / `amqps://` URL.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw == "memory://" || raw == "memory" {
            return Ok(BrokerUrl::Memory);
        }
        let url = Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
        match url.scheme() {
            "amqp" | "amqps" => {}
            other => {
                return Err(format!(
                    "unsupported scheme {other:?}: use memory://, amqp:// or amqps://"
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".into());
        }
        raw.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| format!("not an AMQP URL ({e})"))?;
        Ok(BrokerUrl::Amqp(SecretUrl(raw.to_owned())))
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Memory => f.write_str("memory://"),
            BrokerUrl::Amqp(url) => url.fmt(f),
        }
    }
}

impl fmt::Debug for BrokerUrl {
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

/// Replaces the password of a URL with `***`.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "<unparsable url>".into(),
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

    #[test]
    fn the_api_token_is_never_printed() {
        assert_eq!(
            format!("{:?}", ApiToken::new("s3cret-token")),
            "ApiToken(***)"
        );
    }
}
