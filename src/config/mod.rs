//! Configuration: `serve`'s flags, their environment variables and the
//! configuration files, read once into the typed [`Settings`].
//!
//! **One definition per setting.** A setting is one field of [`ServeArgs`]:
//! its flag (`long`), its variable (`env`, `LONGPOLL_` + the flag in capitals,
//! which a test holds every field to), its type, and its kind's value parser
//! ([`value::Setting`] over one function of [`value`] per kind). The
//! configuration file's keys are the flags themselves ([`file_keys`]), so a
//! setting cannot be a flag without being a file key or the reverse. A serde
//! struct for the file would be a second list of the same thirty settings
//! with a second set of types and errors; a table beside clap, a third.
//!
//! **Precedence** is clap's own: flag > environment > default. `cli::parse`
//! reads the files the first parse names ([`FileValues`]: the
//! `--config` TOML file over the `--txlongpoll-config` file) and parses again
//! with their values as the flags' defaults. So a value from any source goes
//! through the same value parser and is refused with the same line,
//! `invalid --{flag} (or {ENV}): {why}`; what no source gives is the
//! contract's default ([`Settings::default`]), applied in
//! [`ServeArgs::into_settings`], which also checks the settings that depend
//! on one another.
//!
//! Must not: be consulted from anywhere but `main`; everything downstream gets a
//! [`Settings`] (or the part of it it needs) passed in. Nothing else reads the
//! environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use url::Url;

mod file;
mod settings;
pub mod txlongpoll;
pub mod value;

pub use file::FileValues;
pub use settings::{
    ApiToken, BrokerNodes, BrokerTls, BrokerUrl, ConnectionLimits, DEFAULT_CHANNEL_POOL_SIZE,
    ExchangeType, HistorySettings, LogFormat, MemoryLimits, SecretUrl, Settings,
    is_printable_ascii, redact_url,
};
pub use value::parse_duration;
use value::{Clearable, Setting};

/// One line saying what is wrong with the configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// The one wording of a refused value, wherever it came from.
    fn invalid(flag: &str, why: impl fmt::Display) -> Self {
        let env = env_name(flag);
        ConfigError(format!("invalid --{flag} (or {env}): {why}"))
    }
}

/// The environment variable of a flag.
fn env_name(flag: &str) -> String {
    if flag == "cors-origin" {
        return "LONGPOLL_CORS_ORIGINS".into();
    }
    format!("LONGPOLL_{}", flag.replace('-', "_").to_uppercase())
}

/// `serve`'s flags: every setting, defined once (see the module's docs).
/// `None` is "not given anywhere": [`ServeArgs::into_settings`] then takes
/// the contract's default.
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
    #[arg(long, value_name = "ADDR", env = "LONGPOLL_LISTEN",
          value_parser = Setting(value::address))]
    pub listen: Option<SocketAddr>,
    /// Admin listener: /metrics, /healthz, /readyz (never behind the ingress).
    #[arg(long, value_name = "ADDR", env = "LONGPOLL_ADMIN_LISTEN",
          value_parser = Setting(value::address))]
    pub admin_listen: Option<SocketAddr>,
    /// `memory://` (embedded broker, one replica) or `amqp://user:pass@host:5672/vhost`;
    /// the nodes of one RabbitMQ cluster comma-separated, or the flag repeated.
    #[arg(long, value_name = "URL", env = "LONGPOLL_BROKER",
          value_parser = Setting(value::broker))]
    pub broker: Vec<BrokerUrl>,
    /// Exchange that events are published to and subscription queues are bound to.
    #[arg(long, value_name = "NAME", env = "LONGPOLL_EXCHANGE",
          value_parser = Setting(value::exchange))]
    pub exchange: Option<String>,
    /// `topic` or `direct`; an existing exchange is used as it is.
    #[arg(long, value_name = "TYPE", env = "LONGPOLL_EXCHANGE_TYPE",
          value_parser = Setting(value::exchange_type))]
    pub exchange_type: Option<ExchangeType>,
    /// Subscription queues are deleted by the broker after this long unused.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_SUBSCRIPTION_EXPIRY",
          value_parser = Setting(value::duration))]
    pub subscription_expiry: Option<Duration>,
    /// Only queues whose name starts with this may be polled.
    #[arg(long, value_name = "PREFIX", env = "LONGPOLL_QUEUE_PREFIX",
          value_parser = Setting(value::queue_prefix))]
    pub queue_prefix: Option<String>,
    /// How long a poll is held before 408.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_POLL_TIMEOUT",
          value_parser = Setting(value::duration))]
    pub poll_timeout: Option<Duration>,
    /// Polls held at once by this replica; beyond it: 503 + Retry-After.
    #[arg(long, value_name = "N", env = "LONGPOLL_MAX_POLLS",
          value_parser = Setting(value::count))]
    pub max_polls: Option<usize>,
    /// How long an answered (uuid, sequence) is kept for an identical retry.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_REPLAY_TTL",
          value_parser = Setting(value::duration))]
    pub replay_ttl: Option<Duration>,
    /// Most (uuid, sequence) answers kept for replay; the oldest are requeued beyond it.
    #[arg(long, value_name = "N", env = "LONGPOLL_REPLAY_CAPACITY",
          value_parser = Setting(value::count))]
    pub replay_capacity: Option<usize>,
    /// Bearer token for the management API; unset = management API disabled.
    #[arg(long, value_name = "TOKEN", env = "LONGPOLL_API_TOKEN", hide_env_values = true,
          value_parser = Setting(value::api_token))]
    pub api_token: Option<Clearable<ApiToken>>,
    /// AMQP channels pooled per replica.
    #[arg(long, value_name = "N", env = "LONGPOLL_CHANNEL_POOL_SIZE",
          value_parser = Setting(value::channel_pool_size))]
    pub channel_pool_size: Option<usize>,
    /// RabbitMQ: messages a queue's consumer may hold unacked (1 = the answer
    /// alone); the rest wait in the gateway for that client's next poll.
    #[arg(long, value_name = "N", env = "LONGPOLL_CONSUMER_PREFETCH",
          value_parser = Setting(value::consumer_prefetch))]
    pub consumer_prefetch: Option<u16>,
    /// `text` or `json`.
    #[arg(long, value_name = "FORMAT", env = "LONGPOLL_LOG_FORMAT",
          value_parser = Setting(value::log_format))]
    pub log_format: Option<LogFormat>,
    /// Poll URI handed to browsers in `uri` (default: from the API request).
    #[arg(long, value_name = "URL", env = "LONGPOLL_PUBLIC_URL",
          value_parser = Setting(value::public_url))]
    pub public_url: Option<Clearable<Url>>,
    /// Origin allowed to poll from another origin (repeatable).
    #[arg(long = "cors-origin", value_name = "ORIGIN", env = "LONGPOLL_CORS_ORIGINS",
          value_delimiter = ',', value_parser = Setting(value::origin))]
    pub cors_origins: Vec<Clearable<String>>,
    /// Shutdown drain window: held polls are answered 503 and the process exits within it.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_DRAIN_TIMEOUT",
          value_parser = Setting(value::duration))]
    pub drain_timeout: Option<Duration>,
    /// Embedded broker: messages kept per queue (the oldest are dropped beyond it).
    #[arg(long, value_name = "N", env = "LONGPOLL_MEMORY_MAX_MESSAGES_PER_QUEUE",
          value_parser = Setting(value::count))]
    pub memory_max_messages_per_queue: Option<usize>,
    /// Embedded broker: subscription queues at most (new subscriptions are refused beyond it).
    #[arg(long, value_name = "N", env = "LONGPOLL_MEMORY_MAX_QUEUES",
          value_parser = Setting(value::count))]
    pub memory_max_queues: Option<usize>,
    /// RabbitMQ stream that keeps recent events for `resume_after`.
    #[arg(long, value_name = "NAME", env = "LONGPOLL_HISTORY_STREAM",
          value_parser = Setting(value::stream_name))]
    pub history_stream: Option<String>,
    /// How far back a resume can reach; `0` = no history (`resume_after` is refused).
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_HISTORY_MAX_AGE",
          value_parser = Setting(value::history_max_age))]
    pub history_max_age: Option<Duration>,
    /// Size bound of the history: the stream's retention on RabbitMQ, the
    /// memory it may take on the embedded broker (`1GB`, `500MB`, `2GiB`, bytes).
    #[arg(long, value_name = "BYTES", env = "LONGPOLL_HISTORY_MAX_BYTES",
          value_parser = Setting(value::byte_size))]
    pub history_max_bytes: Option<u64>,
    /// Time a client has to send a request head; also the idle keep-alive limit.
    #[arg(long, value_name = "DURATION", env = "LONGPOLL_HEADER_READ_TIMEOUT",
          value_parser = Setting(value::duration))]
    pub header_read_timeout: Option<Duration>,
    /// Open connections per replica at most; beyond it new ones are closed at once.
    #[arg(long, value_name = "N", env = "LONGPOLL_MAX_CONNECTIONS",
          value_parser = Setting(value::count))]
    pub max_connections: Option<usize>,
    /// Largest request head (request line and headers) in bytes; beyond: 431.
    #[arg(long, value_name = "BYTES", env = "LONGPOLL_MAX_HEADER_BYTES",
          value_parser = Setting(value::max_header_bytes))]
    pub max_header_bytes: Option<usize>,
    /// Longest request URI in bytes; beyond: 414.
    #[arg(long, value_name = "BYTES", env = "LONGPOLL_MAX_URI_BYTES",
          value_parser = Setting(value::count))]
    pub max_uri_bytes: Option<usize>,
    /// HTTP/2: concurrent streams (held polls) per connection.
    #[arg(long, value_name = "N", env = "LONGPOLL_HTTP2_MAX_STREAMS",
          value_parser = Setting(value::http2_max_streams))]
    pub http2_max_streams: Option<u32>,
    /// amqps: PEM file of the CA certificates that signed the broker's certificate.
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_CA_FILE",
          value_parser = Setting(value::file))]
    pub broker_ca_file: Option<Clearable<PathBuf>>,
    /// amqps: the name sent as SNI and verified in the broker's certificate, when
    /// it is not the URL's host (a broker reached by IP or through a tunnel).
    #[arg(long, value_name = "NAME", env = "LONGPOLL_BROKER_TLS_SERVER_NAME",
          value_parser = Setting(value::tls_server_name))]
    pub broker_tls_server_name: Option<Clearable<String>>,
    /// amqps: PEM client certificate (with --broker-key-file).
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_CERT_FILE",
          value_parser = Setting(value::file))]
    pub broker_cert_file: Option<Clearable<PathBuf>>,
    /// amqps: PEM (PKCS#8) private key of the client certificate.
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_KEY_FILE",
          value_parser = Setting(value::file))]
    pub broker_key_file: Option<Clearable<PathBuf>>,
    /// Broker username read from a file at each connection (a Secret mount).
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_USERNAME_FILE",
          value_parser = Setting(value::file))]
    pub broker_username_file: Option<Clearable<PathBuf>>,
    /// Broker password read from a file at each connection (a Secret mount).
    #[arg(long, value_name = "FILE", env = "LONGPOLL_BROKER_PASSWORD_FILE",
          value_parser = Setting(value::file))]
    pub broker_password_file: Option<Clearable<PathBuf>>,

    /// Lines about the configuration files to log once logging is up; set by
    /// `cli::parse` from the files it read, not a flag.
    #[arg(skip)]
    pub file_notices: Vec<String>,
}

/// The keys a configuration file may set: every `serve` flag but the two
/// that name the files.
pub fn file_keys() -> Vec<String> {
    ServeArgs::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .filter_map(clap::Arg::get_long)
        .filter(|flag| !matches!(*flag, "config" | "txlongpoll-config"))
        .map(str::to_owned)
        .collect()
}

impl ServeArgs {
    /// Reads the configuration files these flags name.
    pub fn read_files(&self) -> Result<FileValues, ConfigError> {
        FileValues::read(self.config.as_deref(), self.txlongpoll_config.as_deref())
    }

    /// The settings: each value as a flag, a variable or a file gave it
    /// (already read and checked by its value parser), else the contract's
    /// default; then the checks that involve more than one setting.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        let broker = match self.broker.len() {
            0 => d.broker,
            1 => self.broker.into_iter().next().unwrap_or(d.broker),
            _ => BrokerUrl::join(self.broker).map_err(|why| ConfigError::invalid("broker", why))?,
        };
        let settings = Settings {
            listen: self.listen.unwrap_or(d.listen),
            admin_listen: self.admin_listen.unwrap_or(d.admin_listen),
            broker,
            exchange: self.exchange.unwrap_or(d.exchange),
            exchange_type: self.exchange_type.unwrap_or(d.exchange_type),
            subscription_expiry: self.subscription_expiry.unwrap_or(d.subscription_expiry),
            queue_prefix: self.queue_prefix.unwrap_or(d.queue_prefix),
            poll_timeout: self.poll_timeout.unwrap_or(d.poll_timeout),
            max_polls: self.max_polls.unwrap_or(d.max_polls),
            replay_ttl: self.replay_ttl.unwrap_or(d.replay_ttl),
            replay_capacity: self.replay_capacity.unwrap_or(d.replay_capacity),
            api_token: set(self.api_token),
            channel_pool_size: self.channel_pool_size.unwrap_or(d.channel_pool_size),
            consumer_prefetch: self.consumer_prefetch.unwrap_or(d.consumer_prefetch),
            log_format: self.log_format.unwrap_or(d.log_format),
            public_url: set(self.public_url),
            cors_origins: self.cors_origins.into_iter().filter_map(|o| o.0).collect(),
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            memory: MemoryLimits {
                max_messages_per_queue: self
                    .memory_max_messages_per_queue
                    .unwrap_or(d.memory.max_messages_per_queue),
                max_queues: self.memory_max_queues.unwrap_or(d.memory.max_queues),
            },
            history: HistorySettings {
                stream: self.history_stream.unwrap_or(d.history.stream),
                max_age: self.history_max_age.unwrap_or(d.history.max_age),
                max_bytes: self.history_max_bytes.unwrap_or(d.history.max_bytes),
            },
            limits: ConnectionLimits {
                header_read_timeout: self
                    .header_read_timeout
                    .unwrap_or(d.limits.header_read_timeout),
                max_connections: self.max_connections.unwrap_or(d.limits.max_connections),
                max_header_bytes: self.max_header_bytes.unwrap_or(d.limits.max_header_bytes),
                max_uri_bytes: self.max_uri_bytes.unwrap_or(d.limits.max_uri_bytes),
                http2_max_streams: self.http2_max_streams.unwrap_or(d.limits.http2_max_streams),
            },
            broker_tls: BrokerTls {
                ca_file: set(self.broker_ca_file),
                server_name: set(self.broker_tls_server_name),
                cert_file: set(self.broker_cert_file),
                key_file: set(self.broker_key_file),
                username_file: set(self.broker_username_file),
                password_file: set(self.broker_password_file),
            },
            config_notices: self.file_notices,
        };
        check_broker_tls(&settings.broker, &settings.broker_tls)?;
        Ok(settings)
    }
}

/// A value that may have been given empty to unset it.
fn set<T>(value: Option<Clearable<T>>) -> Option<T> {
    value.and_then(|v| v.0)
}

/// A client certificate comes with its key, and TLS settings need TLS.
fn check_broker_tls(broker: &BrokerUrl, tls: &BrokerTls) -> Result<(), ConfigError> {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(ConfigError::invalid(
            "broker-cert-file",
            "a client certificate needs both --broker-cert-file and --broker-key-file",
        ));
    }
    // The first TLS setting given names the error.
    let tls_setting = [
        ("broker-ca-file", tls.ca_file.is_some()),
        ("broker-cert-file", tls.cert_file.is_some()),
        ("broker-tls-server-name", tls.server_name.is_some()),
    ]
    .into_iter()
    .find_map(|(name, set)| set.then_some(name));
    let amqps = matches!(broker, BrokerUrl::Amqp(nodes) if nodes.is_tls());
    if let Some(name) = tls_setting
        && !amqps
    {
        return Err(ConfigError::invalid(
            name,
            "TLS settings need an amqps:// --broker",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `serve`'s flags alone, without the files `cli::parse` adds.
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn serve(flags: &[&str]) -> Result<Settings, String> {
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        let args = Serve::try_parse_from(argv).map_err(|e| {
            match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<ConfigError>()) {
                Some(config) => config.to_string(),
                None => e.to_string(),
            }
        })?;
        args.args.into_settings().map_err(|e| e.to_string())
    }

    fn flags() -> Vec<clap::Arg> {
        ServeArgs::augment_args(clap::Command::new("serve"))
            .get_arguments()
            .cloned()
            .collect()
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
        assert_eq!(s.history.stream, "longpoll.history");
        assert_eq!(s.history.max_age, Duration::from_secs(3600));
        assert_eq!(s.history.max_bytes, 1_000_000_000);
        assert!(s.history.enabled());
        assert_eq!(format!("{s:?}"), format!("{:?}", Settings::default()));
    }

    #[test]
    fn zero_poll_timeout_is_refused_with_its_name() {
        let err = serve(&["--poll-timeout", "0"]).unwrap_err();
        assert_eq!(
            err,
            "invalid --poll-timeout (or LONGPOLL_POLL_TIMEOUT): must be greater than 0"
        );
    }

    #[test]
    fn unparsable_broker_url_is_refused() {
        for bad in ["http://x", "amqp//nohost", "not a url", "amqp://"] {
            let err = serve(&["--broker", bad]);
            assert!(err.is_err(), "{bad} was accepted");
            assert!(
                err.unwrap_err()
                    .starts_with("invalid --broker (or LONGPOLL_BROKER): ")
            );
        }
    }

    #[test]
    fn every_flag_has_the_variable_its_name_gives() {
        for arg in flags() {
            let flag = arg.get_long().unwrap();
            let env = arg.get_env().and_then(|e| e.to_str());
            match flag {
                // A drop-in for one migration, named on the command line only.
                "txlongpoll-config" => assert_eq!(env, None),
                _ => assert_eq!(env, Some(env_name(flag).as_str()), "--{flag}"),
            }
        }
        assert_eq!(env_name("cors-origin"), "LONGPOLL_CORS_ORIGINS");
        assert_eq!(env_name("max-polls"), "LONGPOLL_MAX_POLLS");
    }

    #[test]
    fn every_setting_flag_is_a_file_key() {
        let keys = file_keys();
        let settings = flags().len() - 2; // all but --config and --txlongpoll-config
        assert_eq!(keys.len(), settings, "{keys:?}");
        for key in keys {
            FileValues::parse(&format!("{key} = \"x\""))
                .unwrap_or_else(|e| panic!("--{key} is not a file key: {e}"));
        }
    }

    /// A setting given alone, with a value other than its default, changes
    /// the settings: it is wired from its flag through to [`Settings`].
    #[test]
    fn every_setting_reaches_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let [cert, key, other] = ["cert.pem", "key.pem", "other.pem"].map(|name| {
            let path = dir.path().join(name);
            std::fs::write(&path, "").unwrap();
            path.to_str().unwrap().to_owned()
        });
        // TLS settings need an amqps broker, and a certificate its key.
        let base: [(&str, &str); 3] = [
            ("broker", "amqps://base.example/"),
            ("broker-cert-file", &cert),
            ("broker-key-file", &key),
        ];
        // The base, with `given` instead of the base's own value of that flag.
        let argv = |given: Option<(&str, &str)>| -> Vec<String> {
            let kept = base
                .iter()
                .copied()
                .filter(|(flag, _)| given.is_none_or(|(g, _)| g != *flag));
            kept.chain(given)
                .flat_map(|(flag, value)| [format!("--{flag}"), value.to_owned()])
                .collect()
        };
        let samples: &[(&str, &str)] = &[
            ("listen", "127.0.0.1:1"),
            ("admin-listen", "127.0.0.1:2"),
            ("broker", "amqps://other.example/"),
            ("exchange", "other"),
            ("exchange-type", "direct"),
            ("subscription-expiry", "1s"),
            ("queue-prefix", "other."),
            ("poll-timeout", "1s"),
            ("max-polls", "1"),
            ("replay-ttl", "1s"),
            ("replay-capacity", "1"),
            ("api-token", "12345678"),
            ("channel-pool-size", "1"),
            ("consumer-prefetch", "10"),
            ("log-format", "json"),
            ("public-url", "https://example.com/"),
            ("cors-origin", "https://example.com"),
            ("drain-timeout", "1s"),
            ("memory-max-messages-per-queue", "1"),
            ("memory-max-queues", "1"),
            ("history-stream", "other.history"),
            ("history-max-age", "0"),
            ("history-max-bytes", "1MB"),
            ("header-read-timeout", "1s"),
            ("max-connections", "1"),
            ("max-header-bytes", "9000"),
            ("max-uri-bytes", "1"),
            ("http2-max-streams", "1"),
            ("broker-ca-file", &other),
            ("broker-tls-server-name", "other.example"),
            ("broker-cert-file", &other),
            ("broker-key-file", &other),
            ("broker-username-file", &other),
            ("broker-password-file", &other),
        ];
        let mut sampled: Vec<String> = samples.iter().map(|(f, _)| (*f).to_owned()).collect();
        let mut keys = file_keys();
        sampled.sort();
        keys.sort();
        assert_eq!(sampled, keys, "a sample for each setting");

        let settings = |argv: Vec<String>| {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            format!("{:?}", serve(&argv).unwrap())
        };
        let unchanged = settings(argv(None));
        for &(flag, value) in samples {
            let changed = settings(argv(Some((flag, value))));
            assert_ne!(changed, unchanged, "--{flag} {value} changed nothing");
        }
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_tls_needs_amqps() {
        let err = serve(&["--broker", "amqps://h/", "--broker-cert-file", "/etc/hosts"]);
        assert_eq!(
            err.unwrap_err(),
            "invalid --broker-cert-file (or LONGPOLL_BROKER_CERT_FILE): a client certificate \
             needs both --broker-cert-file and --broker-key-file"
        );
        let err = serve(&["--broker-tls-server-name", "h.example"]);
        assert_eq!(
            err.unwrap_err(),
            "invalid --broker-tls-server-name (or LONGPOLL_BROKER_TLS_SERVER_NAME): TLS \
             settings need an amqps:// --broker"
        );
    }

    #[test]
    fn every_refusal_is_one_line_naming_the_flag_and_its_variable() {
        for (flag, bad) in [
            ("listen", "8080"),
            ("max-polls", "lots"),
            ("channel-pool-size", "3000"),
            ("consumer-prefetch", "0"),
            ("exchange", ""),
            ("queue-prefix", "with space"),
            ("api-token", "short"),
            ("public-url", "ftp://x"),
            ("cors-origin", "example.com"),
            ("broker-ca-file", "/nonexistent/ca.pem"),
            ("broker-tls-server-name", "not a name"),
            ("history-stream", "amq.history"),
            ("history-max-age", "500ms"),
            ("history-max-bytes", "1XB"),
        ] {
            let err = serve(&[&format!("--{flag}"), bad]).unwrap_err();
            let prefix = format!("invalid --{flag} (or {}): ", env_name(flag));
            assert!(err.starts_with(&prefix), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
