//! Configuration: the command line, its environment variables and the TOML file,
//! read once into the typed [`Settings`].
//!
//! Owns: flag names, environment names, defaults and validation. Precedence is
//! flag > environment > `--config` file > default (clap resolves flag > env; the
//! file and the defaults are merged here). Nothing else reads the environment.
//!
//! Must not: be consulted from anywhere but `main`; everything downstream gets a
//! [`Settings`] (or the part of it it needs) passed in.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use url::Url;

mod settings;
pub mod txlongpoll;

pub use settings::{
    ApiToken, BrokerTls, BrokerUrl, ConnectionLimits, DEFAULT_CHANNEL_POOL_SIZE, ExchangeType,
    LogFormat, MemoryLimits, SecretUrl, Settings, is_printable_ascii, redact_url,
};

/// One line saying what is wrong with the configuration.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn invalid(name: &str, why: impl fmt::Display) -> Self {
        let env = env_name(name);
        ConfigError(format!("invalid --{name} (or {env}): {why}"))
    }
}

/// `serve` flags. Every value is kept as text here and parsed in one place
/// ([`ServeArgs::into_settings`]) so that a flag, an environment variable and a
/// file entry get the same validation and the same error wording.
#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// TOML file that may set any of the settings below (keys named like the flags).
    #[arg(long, value_name = "FILE", env = "LONGPOLL_CONFIG")]
    pub config: Option<PathBuf>,
    /// A txlongpoll YAML configuration read as a drop-in (frontend port and
    /// prefix, broker host/port/username/password/vhost), below --config.
    #[arg(long, value_name = "FILE")]
    pub txlongpoll_config: Option<PathBuf>,
    /// Public listener: long-polls, JS client, demo, management API.
    #[arg(long, value_name = "ADDR", env = "LONGPOLL_LISTEN")]
    pub listen: Option<String>,
    /// Admin listener: /metrics, /healthz, /readyz (never behind the ingress).
    #[arg(long, value_name = "ADDR", env = "LONGPOLL_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// `memory://` (embedded broker, one replica) or `amqp://user:pass@host:5672/vhost`.
    #[arg(long, value_name = "URL", env = "LONGPOLL_BROKER")]
    pub broker: Option<String>,
    /// Exchange that events are published to and subscription queues are bound to.
    #[arg(long, value_name = "NAME", env = "LONGPOLL_EXCHANGE")]
    pub exchange: Option<String>,
    /// `topic` or `direct`; an existing exchange is used as it is.
    #[arg(long, value_name = "TYPE", env = "LONGPOLL_EXCHANGE_TYPE")]
    pub exchange_type: Option<String>,
    /// Subscription queues are deleted by the broker after this long unused.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_SUBSCRIPTION_EXPIRY")]
    pub subscription_expiry: Option<String>,
    /// Only queues whose name starts with this may be polled.
    #[arg(long, value_name = "PREFIX", env = "LONGPOLL_QUEUE_PREFIX")]
    pub queue_prefix: Option<String>,
    /// How long a poll is held before 408.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_POLL_TIMEOUT")]
    pub poll_timeout: Option<String>,
    /// Polls held at once by this replica; beyond it: 503 + Retry-After.
    #[arg(long, value_name = "N", env = "LONGPOLL_MAX_POLLS")]
    pub max_polls: Option<String>,
    /// How long an answered (uuid, sequence) is kept for an identical retry.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_REPLAY_TTL")]
    pub replay_ttl: Option<String>,
    /// Most (uuid, sequence) answers kept for replay; the oldest are requeued beyond it.
    #[arg(long, value_name = "N", env = "LONGPOLL_REPLAY_CAPACITY")]
    pub replay_capacity: Option<String>,
    /// Bearer token for the management API; unset = management API disabled.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LONGPOLL_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// AMQP channels pooled per replica.
    #[arg(long, value_name = "N", env = "LONGPOLL_CHANNEL_POOL_SIZE")]
    pub channel_pool_size: Option<String>,
    /// `text` or `json`.
    #[arg(long, value_name = "FORMAT", env = "LONGPOLL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Poll URI handed to browsers in `uri` (default: from the API request).
    #[arg(long, value_name = "URL", env = "LONGPOLL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Origin allowed to poll from another origin (repeatable).
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "LONGPOLL_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Shutdown drain window: held polls are answered 503 and the process exits within it.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,
    /// Embedded broker: messages kept per queue (the oldest are dropped beyond it).
    #[arg(long, value_name = "N", env = "LONGPOLL_MEMORY_MAX_MESSAGES_PER_QUEUE")]
    pub memory_max_messages_per_queue: Option<String>,
    /// Embedded broker: subscription queues at most (new subscriptions are refused beyond it).
    #[arg(long, value_name = "N", env = "LONGPOLL_MEMORY_MAX_QUEUES")]
    pub memory_max_queues: Option<String>,
    /// Time a client has to send a request head; also the idle keep-alive limit.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// Open connections per replica at most; beyond it new ones are closed at once.
    #[arg(long, value_name = "N", env = "LONGPOLL_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Largest request head (request line and headers) in bytes; beyond: 431.
    #[arg(long, value_name = "BYTES", env = "LONGPOLL_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<String>,
    /// Longest request URI in bytes; beyond: 414.
    #[arg(long, value_name = "BYTES", env = "LONGPOLL_MAX_URI_BYTES")]
    pub max_uri_bytes: Option<String>,
    /// HTTP/2: concurrent streams (held polls) per connection.
    #[arg(long, value_name = "N", env = "LONGPOLL_HTTP2_MAX_STREAMS")]
    pub http2_max_streams: Option<String>,
    /// amqps: PEM file of the CA certificates that signed the broker's certificate.
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_CA_FILE")]
    pub broker_ca_file: Option<String>,
    /// amqps: the name sent as SNI and verified in the broker's certificate, when
    /// it is not the URL's host (a broker reached by IP or through a tunnel).
    #[arg(long, value_name = "NAME", env = "LONGPOLL_BROKER_TLS_SERVER_NAME")]
    pub broker_tls_server_name: Option<String>,
    /// amqps: PEM client certificate (with --broker-key-file).
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_CERT_FILE")]
    pub broker_cert_file: Option<String>,
    /// amqps: PEM (PKCS#8) private key of the client certificate.
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_KEY_FILE")]
    pub broker_key_file: Option<String>,
    /// Broker username read from a file at each connection (a Secret mount).
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_USERNAME_FILE")]
    pub broker_username_file: Option<String>,
    /// Broker password read from a file at each connection (a Secret mount).
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_PASSWORD_FILE")]
    pub broker_password_file: Option<String>,
}

/// Keys accepted in the `--config` file: the flag names.
const FILE_KEYS: &[&str] = &[
    "listen",
    "admin-listen",
    "broker",
    "exchange",
    "exchange-type",
    "subscription-expiry",
    "queue-prefix",
    "poll-timeout",
    "max-polls",
    "replay-ttl",
    "replay-capacity",
    "api-token",
    "channel-pool-size",
    "log-format",
    "public-url",
    "cors-origin",
    "drain-timeout",
    "memory-max-messages-per-queue",
    "memory-max-queues",
    "header-read-timeout",
    "max-connections",
    "max-header-bytes",
    "max-uri-bytes",
    "http2-max-streams",
    "broker-ca-file",
    "broker-tls-server-name",
    "broker-cert-file",
    "broker-key-file",
    "broker-username-file",
    "broker-password-file",
];

fn env_name(flag: &str) -> String {
    if flag == "cors-origin" {
        return "LONGPOLL_CORS_ORIGINS".into();
    }
    format!("LONGPOLL_{}", flag.replace('-', "_").to_uppercase())
}

/// Values read from the `--config` file, as text, keyed by flag name.
#[derive(Debug, Default)]
struct FileValues(BTreeMap<String, String>);

impl FileValues {
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|why| ConfigError(format!("config file {}: {why}", path.display())))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        let mut values = BTreeMap::new();
        for (key, value) in table {
            let key = key.replace('_', "-");
            let key = if key == "cors-origins" {
                "cors-origin".to_owned()
            } else {
                key
            };
            if !FILE_KEYS.contains(&key.as_str()) {
                return Err(format!("unknown key {key:?}"));
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s),
                        other => Err(format!("{key}: expected strings, found {other}")),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
                other => return Err(format!("{key}: unsupported value {other}")),
            };
            values.insert(key, text);
        }
        Ok(FileValues(values))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Parses a duration: `270s`, `5m`, `1h 30m`, `500ms`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration ({e})"))
}

impl ServeArgs {
    /// Merges flag/env, file and defaults, and validates everything.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let mut file = match &self.config {
            Some(path) => FileValues::load(path)?,
            None => FileValues::default(),
        };
        // A txlongpoll file sits below the --config file.
        let mut config_notices = Vec::new();
        if let Some(path) = &self.txlongpoll_config {
            let legacy = txlongpoll::TxlongpollConfig::load(path)?;
            for (key, value) in legacy.values {
                file.0.entry(key).or_insert(value);
            }
            config_notices = legacy.notices;
        }
        let d = Settings::default();
        // flag/env (already merged by clap) first, then the file.
        let pick = |cli: &Option<String>, key: &str| -> Option<String> {
            cli.clone().or_else(|| file.get(key).map(str::to_owned))
        };

        let listen = match pick(&self.listen, "listen") {
            Some(v) => parse_addr("listen", &v)?,
            None => d.listen,
        };
        let admin_listen = match pick(&self.admin_listen, "admin-listen") {
            Some(v) => parse_addr("admin-listen", &v)?,
            None => d.admin_listen,
        };
        let broker = match pick(&self.broker, "broker") {
            Some(v) => BrokerUrl::parse(&v).map_err(|why| ConfigError::invalid("broker", why))?,
            None => d.broker,
        };
        let exchange = match pick(&self.exchange, "exchange") {
            Some(v) if v.is_empty() || v.len() > 255 => {
                return Err(ConfigError::invalid("exchange", "must be 1 to 255 bytes"));
            }
            Some(v) => v,
            None => d.exchange,
        };
        let exchange_type = match pick(&self.exchange_type, "exchange-type").as_deref() {
            None => d.exchange_type,
            Some("topic") => ExchangeType::Topic,
            Some("direct") => ExchangeType::Direct,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "exchange-type",
                    format!("{other:?}: expected topic or direct"),
                ));
            }
        };
        let subscription_expiry = duration(
            "subscription-expiry",
            pick(&self.subscription_expiry, "subscription-expiry"),
            d.subscription_expiry,
        )?;
        let queue_prefix = match pick(&self.queue_prefix, "queue-prefix") {
            Some(v) if v.is_empty() => {
                return Err(ConfigError::invalid(
                    "queue-prefix",
                    "must not be empty (it is what keeps browsers out of other queues)",
                ));
            }
            Some(v) if !is_printable_ascii(&v) || v.len() > 200 => {
                return Err(ConfigError::invalid(
                    "queue-prefix",
                    "must be printable ASCII, at most 200 bytes",
                ));
            }
            Some(v) => v,
            None => d.queue_prefix,
        };
        let poll_timeout = duration(
            "poll-timeout",
            pick(&self.poll_timeout, "poll-timeout"),
            d.poll_timeout,
        )?;
        let max_polls = count("max-polls", pick(&self.max_polls, "max-polls"), d.max_polls)?;
        let replay_ttl = duration(
            "replay-ttl",
            pick(&self.replay_ttl, "replay-ttl"),
            d.replay_ttl,
        )?;
        let replay_capacity = count(
            "replay-capacity",
            pick(&self.replay_capacity, "replay-capacity"),
            d.replay_capacity,
        )?;
        let api_token = match pick(&self.api_token, "api-token") {
            Some(v) if v.is_empty() => None,
            Some(v) if v.len() < 8 || !is_printable_ascii(&v) => {
                return Err(ConfigError::invalid(
                    "api-token",
                    "must be at least 8 printable ASCII characters",
                ));
            }
            Some(v) => Some(ApiToken::new(v)),
            None => None,
        };
        let channel_pool_size = count(
            "channel-pool-size",
            pick(&self.channel_pool_size, "channel-pool-size"),
            d.channel_pool_size,
        )?;
        if channel_pool_size > 2000 {
            return Err(ConfigError::invalid(
                "channel-pool-size",
                "at most 2000 (RabbitMQ allows 2047 channels per connection)",
            ));
        }
        let log_format = match pick(&self.log_format, "log-format").as_deref() {
            None => d.log_format,
            Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "log-format",
                    format!("{other:?}: expected text or json"),
                ));
            }
        };
        let public_url = match pick(&self.public_url, "public-url") {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => {
                let url = Url::parse(&v)
                    .map_err(|e| ConfigError::invalid("public-url", format!("{v:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::invalid("public-url", "must be http or https"));
                }
                Some(url)
            }
        };
        let cors_origins = if self.cors_origins.is_empty() {
            file.get("cors-origin")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default()
        } else {
            self.cors_origins.clone()
        };
        let cors_origins = cors_origins
            .into_iter()
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .map(|o| validate_origin(&o).map(|()| o))
            .collect::<Result<Vec<_>, _>>()?;
        let drain_timeout = duration(
            "drain-timeout",
            pick(&self.drain_timeout, "drain-timeout"),
            d.drain_timeout,
        )?;
        let memory = MemoryLimits {
            max_messages_per_queue: count(
                "memory-max-messages-per-queue",
                pick(
                    &self.memory_max_messages_per_queue,
                    "memory-max-messages-per-queue",
                ),
                d.memory.max_messages_per_queue,
            )?,
            max_queues: count(
                "memory-max-queues",
                pick(&self.memory_max_queues, "memory-max-queues"),
                d.memory.max_queues,
            )?,
        };

        let max_header_bytes = count(
            "max-header-bytes",
            pick(&self.max_header_bytes, "max-header-bytes"),
            d.limits.max_header_bytes,
        )?;
        if max_header_bytes < 8192 {
            return Err(ConfigError::invalid(
                "max-header-bytes",
                "at least 8192 (hyper's smallest read buffer)",
            ));
        }
        let limits = ConnectionLimits {
            header_read_timeout: duration(
                "header-read-timeout",
                pick(&self.header_read_timeout, "header-read-timeout"),
                d.limits.header_read_timeout,
            )?,
            max_connections: count(
                "max-connections",
                pick(&self.max_connections, "max-connections"),
                d.limits.max_connections,
            )?,
            max_header_bytes,
            max_uri_bytes: count(
                "max-uri-bytes",
                pick(&self.max_uri_bytes, "max-uri-bytes"),
                d.limits.max_uri_bytes,
            )?,
            http2_max_streams: u32::try_from(count(
                "http2-max-streams",
                pick(&self.http2_max_streams, "http2-max-streams"),
                d.limits.http2_max_streams as usize,
            )?)
            .map_err(|_| ConfigError::invalid("http2-max-streams", "too large"))?,
        };

        let file = |name: &str, v: &Option<String>| -> Result<Option<PathBuf>, ConfigError> {
            match pick(v, name) {
                None => Ok(None),
                Some(p) if p.is_empty() => Ok(None),
                Some(p) => {
                    let path = PathBuf::from(&p);
                    std::fs::metadata(&path)
                        .map_err(|e| ConfigError::invalid(name, format!("{p}: {e}")))?;
                    Ok(Some(path))
                }
            }
        };
        let broker_tls = BrokerTls {
            ca_file: file("broker-ca-file", &self.broker_ca_file)?,
            server_name: match pick(&self.broker_tls_server_name, "broker-tls-server-name") {
                None => None,
                Some(n) if n.is_empty() => None,
                Some(n) => Some(tls_server_name(&n)?),
            },
            cert_file: file("broker-cert-file", &self.broker_cert_file)?,
            key_file: file("broker-key-file", &self.broker_key_file)?,
            username_file: file("broker-username-file", &self.broker_username_file)?,
            password_file: file("broker-password-file", &self.broker_password_file)?,
        };
        if broker_tls.cert_file.is_some() != broker_tls.key_file.is_some() {
            return Err(ConfigError::invalid(
                "broker-cert-file",
                "a client certificate needs both --broker-cert-file and --broker-key-file",
            ));
        }
        // The first TLS setting given names the error.
        let tls_setting = [
            ("broker-ca-file", broker_tls.ca_file.is_some()),
            ("broker-cert-file", broker_tls.cert_file.is_some()),
            ("broker-tls-server-name", broker_tls.server_name.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name));
        let amqps = matches!(&broker, BrokerUrl::Amqp(u) if u.expose().starts_with("amqps:"));
        if let Some(name) = tls_setting
            && !amqps
        {
            return Err(ConfigError::invalid(
                name,
                "TLS settings need an amqps:// --broker",
            ));
        }

        Ok(Settings {
            listen,
            admin_listen,
            broker,
            exchange,
            exchange_type,
            subscription_expiry,
            queue_prefix,
            poll_timeout,
            max_polls,
            replay_ttl,
            replay_capacity,
            api_token,
            channel_pool_size,
            log_format,
            public_url,
            cors_origins,
            drain_timeout,
            memory,
            limits,
            broker_tls,
            config_notices,
        })
    }
}

fn parse_addr(name: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|_| {
        ConfigError::invalid(name, format!("{v:?} is not an address like 0.0.0.0:8080"))
    })
}

fn duration(name: &str, v: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let d = parse_duration(&v).map_err(|why| ConfigError::invalid(name, why))?;
    if d.is_zero() {
        return Err(ConfigError::invalid(name, "must be greater than 0"));
    }
    Ok(d)
}

fn count(name: &str, v: Option<String>, default: usize) -> Result<usize, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let n: usize = v
        .trim()
        .parse()
        .map_err(|_| ConfigError::invalid(name, format!("{v:?} is not a whole number")))?;
    if n == 0 {
        return Err(ConfigError::invalid(name, "must be greater than 0"));
    }
    Ok(n)
}

/// A DNS name or an IP address, as rustls accepts it for SNI and verification.
fn tls_server_name(name: &str) -> Result<String, ConfigError> {
    rustls::pki_types::ServerName::try_from(name)
        .map(|_| name.to_owned())
        .map_err(|_| {
            ConfigError::invalid(
                "broker-tls-server-name",
                format!("{name:?}: expected a DNS name or an IP address"),
            )
        })
}

fn validate_origin(origin: &str) -> Result<(), ConfigError> {
    if origin == "*" {
        return Ok(());
    }
    let url = Url::parse(origin)
        .map_err(|e| ConfigError::invalid("cors-origin", format!("{origin:?}: {e}")))?;
    let bare = url.path() == "/" && url.query().is_none() && !origin.ends_with('/');
    if !matches!(url.scheme(), "http" | "https") || !bare {
        return Err(ConfigError::invalid(
            "cors-origin",
            format!("{origin:?}: expected an origin like https://example.com"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut ServeArgs)) -> ServeArgs {
        let mut a = ServeArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = ServeArgs::default().into_settings().unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(s.broker, BrokerUrl::Memory);
        assert_eq!(s.exchange, "longpoll");
        assert_eq!(s.exchange_type, ExchangeType::Topic);
        assert_eq!(s.subscription_expiry, Duration::from_secs(300));
        assert_eq!(s.queue_prefix, "longpoll.subscribe.");
        assert_eq!(s.poll_timeout, Duration::from_secs(270));
        assert_eq!(s.max_polls, 100_000);
        assert_eq!(s.replay_ttl, Duration::from_secs(300));
        assert!(s.api_token.is_none());
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn zero_poll_timeout_is_refused_with_its_name() {
        let err = args(|a| a.poll_timeout = Some("0".into()))
            .into_settings()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--poll-timeout"), "{err}");
        assert!(err.contains("greater than 0"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn unparsable_broker_url_is_refused() {
        for bad in ["http://x", "amqp//nohost", "not a url", "amqp://"] {
            let err = args(|a| a.broker = Some(bad.into())).into_settings();
            assert!(err.is_err(), "{bad} was accepted");
            assert!(err.unwrap_err().to_string().contains("--broker"));
        }
    }

    #[test]
    fn broker_password_is_redacted_in_display_and_errors() {
        let b = BrokerUrl::parse("amqp://user:s3cret@localhost:5672/%2f").unwrap();
        assert!(!format!("{b} {b:?}").contains("s3cret"));
        assert!(format!("{b}").contains("user:***@localhost"));
    }

    #[test]
    fn file_values_apply_below_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "poll-timeout = \"30s\"\nmax_polls = 7\nexchange = \"from-file\"\ncors-origin = [\"https://a.example\", \"https://b.example\"]\n",
        )
        .unwrap();
        let s = args(|a| {
            a.config = Some(path.clone());
            a.exchange = Some("from-flag".into());
        })
        .into_settings()
        .unwrap();
        assert_eq!(s.poll_timeout, Duration::from_secs(30));
        assert_eq!(s.max_polls, 7);
        assert_eq!(s.exchange, "from-flag");
        assert_eq!(
            s.cors_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn unknown_file_key_is_refused_by_name() {
        let err = FileValues::parse("pol-timeout = \"3s\"").unwrap_err();
        assert!(err.contains("pol-timeout"), "{err}");
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("270s").unwrap(), Duration::from_secs(270));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("12").unwrap(), Duration::from_secs(12));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cors_origins_must_be_origins() {
        assert!(validate_origin("https://example.com").is_ok());
        assert!(validate_origin("http://127.0.0.1:8000").is_ok());
        assert!(validate_origin("https://example.com/path").is_err());
        assert!(validate_origin("example.com").is_err());
    }
}
