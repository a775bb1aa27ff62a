//! How each kind of setting is read from text: one function per kind
//! (durations, counts, addresses, URLs, files…), used for a flag, an
//! environment variable and a file entry alike.
//!
//! Owns: what a valid value of each kind is, and [`Setting`], the clap value
//! parser that runs one of these functions and words a refusal as
//! `invalid --{flag} (or {ENV}): {why}`. Must not: know which setting uses
//! which kind (that is [`super::ServeArgs`]), or check one setting against
//! another (that is `into_settings`).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use url::Url;

use super::{ApiToken, BrokerUrl, ConfigError, ExchangeType, LogFormat, is_printable_ascii};

/// The value parser of a `serve` setting: reads the text with `self.0`, and
/// turns its refusal into a [`ConfigError`] naming the flag and its variable.
/// clap keeps that error as the source of its own, from which
/// `cli::parse` takes it back whole: one line, whether the text came from a
/// flag, the environment or a configuration file.
pub struct Setting<T>(pub fn(&str) -> Result<T, String>);

impl<T> Clone for Setting<T> {
    fn clone(&self) -> Self {
        Setting(self.0)
    }
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Setting<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let flag = arg.and_then(clap::Arg::get_long).unwrap_or("?").to_owned();
        let read = self.0;
        let named = move |text: &str| read(text).map_err(|why| ConfigError::invalid(&flag, why));
        named.parse_ref(cmd, arg, value)
    }
}

/// A setting that an empty value leaves unset: `--api-token ''` (or an empty
/// variable) also clears what a configuration file below it set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clearable<T>(pub Option<T>);

impl<T> Clearable<T> {
    fn unless_empty(
        text: &str,
        read: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(Clearable(None));
        }
        read(text).map(|v| Clearable(Some(v)))
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

/// A duration greater than 0.
pub fn duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d)
}

/// A whole number greater than 0.
pub fn count(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if n == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(n)
}

pub fn channel_pool_size(text: &str) -> Result<usize, String> {
    match count(text)? {
        n if n > 2000 => Err("at most 2000 (RabbitMQ allows 2047 channels per connection)".into()),
        n => Ok(n),
    }
}

/// Prefetch per consumer: 1 to 100 — the most one answer may hold (`max`);
/// a deeper window only keeps messages away from the queue longer.
pub fn consumer_prefetch(text: &str) -> Result<u16, String> {
    match count(text)? {
        n if n > 100 => Err("at most 100 (the most messages one answer holds)".into()),
        n => u16::try_from(n).map_err(|e| e.to_string()),
    }
}

pub fn max_header_bytes(text: &str) -> Result<usize, String> {
    match count(text)? {
        n if n < 8192 => Err("at least 8192 (hyper's smallest read buffer)".into()),
        n => Ok(n),
    }
}

pub fn http2_max_streams(text: &str) -> Result<u32, String> {
    u32::try_from(count(text)?).map_err(|_| "too large".into())
}

/// A socket address such as `0.0.0.0:8080`.
pub fn address(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not an address like 0.0.0.0:8080"))
}

pub fn broker(text: &str) -> Result<BrokerUrl, String> {
    BrokerUrl::parse(text)
}

/// An AMQP exchange name: 1 to 255 bytes.
pub fn exchange(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 255 {
        return Err("must be 1 to 255 bytes".into());
    }
    Ok(text.to_owned())
}

/// A queue (stream) name: 1 to 255 bytes, not in RabbitMQ's reserved `amq.` space.
pub fn stream_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 255 {
        return Err("must be 1 to 255 bytes".into());
    }
    if text.starts_with("amq.") {
        return Err("names starting with amq. are reserved by RabbitMQ".into());
    }
    Ok(text.to_owned())
}

/// The history's reach: `0` (no history) or at least a second (RabbitMQ's
/// `x-max-age` counts in whole seconds).
pub fn history_max_age(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err("must be 0 (no history) or at least 1s".into());
    }
    Ok(d)
}

/// A size in bytes: a bare number, or with a unit as RabbitMQ writes them —
/// `kB`/`MB`/`GB`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (of 1024).
/// Greater than 0.
pub fn byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1GB, 500MB or 1048576"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    match number.checked_mul(scale) {
        Some(0) => Err("must be greater than 0".into()),
        Some(bytes) => Ok(bytes),
        None => Err("too large".into()),
    }
}

pub fn exchange_type(text: &str) -> Result<ExchangeType, String> {
    match text {
        "topic" => Ok(ExchangeType::Topic),
        "direct" => Ok(ExchangeType::Direct),
        other => Err(format!("{other:?}: expected topic or direct")),
    }
}

pub fn queue_prefix(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty (it is what keeps browsers out of other queues)".into());
    }
    if !is_printable_ascii(text) || text.len() > 200 {
        return Err("must be printable ASCII, at most 200 bytes".into());
    }
    Ok(text.to_owned())
}

pub fn api_token(text: &str) -> Result<Clearable<ApiToken>, String> {
    Clearable::unless_empty(text, |token| {
        if token.len() < 8 || !is_printable_ascii(token) {
            return Err("must be at least 8 printable ASCII characters".into());
        }
        Ok(ApiToken::new(token))
    })
}

pub fn log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?}: expected text or json")),
    }
}

/// An `http` or `https` URL.
pub fn public_url(text: &str) -> Result<Clearable<Url>, String> {
    Clearable::unless_empty(text, |text| {
        let url = Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be http or https".into());
        }
        Ok(url)
    })
}

/// An origin such as `https://example.com` (no path, no trailing slash), or `*`.
/// Blanks around it are dropped; a blank item (`a,,b`) is no origin.
pub fn origin(text: &str) -> Result<Clearable<String>, String> {
    Clearable::unless_empty(text.trim(), |origin| {
        if origin == "*" {
            return Ok(origin.to_owned());
        }
        let url = Url::parse(origin).map_err(|e| format!("{origin:?}: {e}"))?;
        let bare = url.path() == "/" && url.query().is_none() && !origin.ends_with('/');
        if !matches!(url.scheme(), "http" | "https") || !bare {
            return Err(format!(
                "{origin:?}: expected an origin like https://example.com"
            ));
        }
        Ok(origin.to_owned())
    })
}

/// A file that exists (checked now, so that a typo fails at start).
pub fn file(text: &str) -> Result<Clearable<PathBuf>, String> {
    Clearable::unless_empty(text, |text| {
        let path = PathBuf::from(text);
        std::fs::metadata(&path).map_err(|e| format!("{text}: {e}"))?;
        Ok(path)
    })
}

/// A DNS name or an IP address, as rustls accepts it for SNI and verification.
pub fn tls_server_name(text: &str) -> Result<Clearable<String>, String> {
    Clearable::unless_empty(text, |name| {
        rustls::pki_types::ServerName::try_from(name)
            .map(|_| name.to_owned())
            .map_err(|_| format!("{name:?}: expected a DNS name or an IP address"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("270s").unwrap(), Duration::from_secs(270));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("12").unwrap(), Duration::from_secs(12));
        assert!(parse_duration("soon").is_err());
        assert_eq!(duration("0").unwrap_err(), "must be greater than 0");
    }

    #[test]
    fn counts_are_whole_numbers_above_0() {
        assert_eq!(count(" 7 ").unwrap(), 7);
        assert_eq!(count("0").unwrap_err(), "must be greater than 0");
        assert_eq!(count("lots").unwrap_err(), "\"lots\" is not a whole number");
        assert!(channel_pool_size("2001").is_err());
        assert_eq!(consumer_prefetch("10").unwrap(), 10);
        assert!(consumer_prefetch("0").is_err());
        assert!(consumer_prefetch("101").is_err());
        assert!(max_header_bytes("8191").is_err());
        assert_eq!(http2_max_streams("5000000000").unwrap_err(), "too large");
    }

    #[test]
    fn history_settings_read_rabbitmq_style_values() {
        assert_eq!(byte_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(byte_size("500 MB").unwrap(), 500_000_000);
        assert_eq!(byte_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(byte_size("1048576").unwrap(), 1_048_576);
        assert_eq!(byte_size("0").unwrap_err(), "must be greater than 0");
        assert!(byte_size("1XB").is_err());
        assert!(byte_size("GB").is_err());
        assert!(byte_size("99999999999TB").is_err());
        assert_eq!(history_max_age("0").unwrap(), Duration::ZERO);
        assert_eq!(history_max_age("1h").unwrap(), Duration::from_secs(3600));
        assert!(history_max_age("500ms").is_err());
        assert!(stream_name("amq.history").is_err());
        assert!(stream_name("").is_err());
        assert_eq!(stream_name("longpoll.history").unwrap(), "longpoll.history");
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let origin = |o| origin(o).map(|c| c.0);
        assert_eq!(
            origin(" https://example.com "),
            Ok(Some("https://example.com".into()))
        );
        assert!(origin("http://127.0.0.1:8000").is_ok());
        assert_eq!(origin("*"), Ok(Some("*".into())));
        assert_eq!(origin(" "), Ok(None));
        assert!(origin("https://example.com/path").is_err());
        assert!(origin("https://example.com/").is_err());
        assert!(origin("example.com").is_err());
    }

    #[test]
    fn an_empty_value_clears_only_the_settings_that_may_be_unset() {
        assert_eq!(api_token("").unwrap(), Clearable(None));
        assert_eq!(public_url("").unwrap(), Clearable(None));
        assert_eq!(file("").unwrap(), Clearable(None));
        assert_eq!(tls_server_name("").unwrap(), Clearable(None));
        assert!(exchange("").is_err());
        assert!(queue_prefix("").is_err());
        assert!(address("").is_err());
        assert!(broker("").is_err());
    }
}
