//! `--txlongpoll-config FILE`: a txlongpoll deployment's YAML configuration read
//! as a drop-in, so that a Launchpad or MAAS installation moves over with the
//! file it already has.
//!
//! Owns: the mapping from txlongpoll's keys to the gateway's settings
//! (`frontend.port` → `--listen`, `frontend.prefix` → `--queue-prefix`,
//! `broker.*` → `--broker`) and txlongpoll's own defaults for what the file
//! leaves out. Every other key is ignored with one notice each, logged once
//! logging is up. Must not: know the gateway's other settings or judge a value;
//! it hands back text keyed by flag name, which [`super::FileValues`] puts
//! below the `--config` file's, and clap reads as it reads the flags.

use std::collections::BTreeMap;
use std::path::Path;

use yaml_serde::Value;

use super::ConfigError;

/// What the file says, as values keyed by flag name, and what it ignored.
#[derive(Debug, Default)]
pub struct TxlongpollConfig {
    pub values: BTreeMap<String, String>,
    /// One line per key read but not used, or per default taken from txlongpoll.
    pub notices: Vec<String>,
}

impl TxlongpollConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read txlongpoll config file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text)
            .map_err(|why| ConfigError(format!("txlongpoll config file {}: {why}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let root: Value = yaml_serde::from_str(text).map_err(|e| one_line(&e.to_string()))?;
        let root = match root {
            Value::Null => return Ok(TxlongpollConfig::default()),
            Value::Mapping(m) => m,
            _ => return Err("expected a mapping of sections (frontend, broker, …)".into()),
        };
        let mut out = TxlongpollConfig::default();
        let mut frontend = Section::default();
        let mut broker = Section::default();
        for (key, value) in root {
            let key = scalar_text(&key).ok_or("a key that is not text")?;
            match key.as_str() {
                "frontend" => frontend = Section::read("frontend", value)?,
                "broker" => broker = Section::read("broker", value)?,
                "oops" => out.ignore_section(&key, &value, "errors go to the logs and traces"),
                "logfile" => out.ignored(&key, "the gateway logs to standard error"),
                _ => out.ignored(&key, "not a txlongpoll setting"),
            }
        }
        out.frontend(frontend)?;
        out.broker(broker)?;
        Ok(out)
    }

    fn ignored(&mut self, key: &str, why: &str) {
        self.notices
            .push(format!("txlongpoll config: {key} ignored ({why})"));
    }

    fn ignore_section(&mut self, name: &str, value: &Value, why: &str) {
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                for key in m.keys() {
                    let key = scalar_text(key).unwrap_or_else(|| "?".into());
                    self.ignored(&format!("{name}.{key}"), why);
                }
            }
            _ => self.ignored(name, why),
        }
    }

    fn frontend(&mut self, mut section: Section) -> Result<(), String> {
        if let Some(port) = section.take("port") {
            let port = port_number("frontend.port", &port)?;
            self.values
                .insert("listen".into(), format!("0.0.0.0:{port}"));
        }
        match section.take("prefix") {
            Some(prefix) => {
                self.values.insert("queue-prefix".into(), prefix);
            }
            None => self.notices.push(
                "txlongpoll config: frontend.prefix not set; txlongpoll then served any \
                 queue, the gateway serves only queues named after --queue-prefix"
                    .into(),
            ),
        }
        for key in section.rest() {
            self.ignored(&format!("frontend.{key}"), "not a txlongpoll setting");
        }
        Ok(())
    }

    /// txlongpoll always spoke to a broker: the URL is built whenever the file
    /// has a `broker` section, with txlongpoll's defaults for what it leaves out.
    fn broker(&mut self, mut section: Section) -> Result<(), String> {
        if !section.present {
            return Ok(());
        }
        let host = section.take("host").unwrap_or_else(|| "localhost".into());
        let port = match section.take("port") {
            Some(p) => port_number("broker.port", &p)?,
            None => 5672,
        };
        let username = match section.take("username") {
            Some(u) => u,
            None => {
                let user = std::env::var("USER")
                    .or_else(|_| std::env::var("LOGNAME"))
                    .unwrap_or_else(|_| "guest".into());
                self.notices.push(
                    "txlongpoll config: broker.username not set; using the current user, as \
                     txlongpoll did"
                        .into(),
                );
                user
            }
        };
        let password = match section.take("password") {
            Some(p) => p,
            None => {
                self.notices.push(
                    "txlongpoll config: broker.password not set; using txlongpoll's default".into(),
                );
                "test".into()
            }
        };
        let vhost = section.take("vhost").unwrap_or_else(|| "/".into());
        let mut url = url::Url::parse("amqp://localhost/").map_err(|e| e.to_string())?;
        url.set_host(Some(&host))
            .map_err(|e| format!("broker.host {host:?}: {e}"))?;
        let _ = url.set_port(Some(port));
        url.set_username(&username)
            .and_then(|()| url.set_password(Some(&password)))
            .map_err(|()| "broker.username: cannot be put in a URL".to_owned())?;
        // The vhost is one path segment: "/" becomes %2F, as AMQP URLs spell it.
        url.path_segments_mut()
            .map_err(|()| "broker.host: cannot be put in a URL".to_owned())?
            .clear()
            .push(&vhost);
        self.values.insert("broker".into(), url.to_string());
        for key in section.rest() {
            self.ignored(&format!("broker.{key}"), "not a txlongpoll setting");
        }
        Ok(())
    }
}

/// One section's scalar values (a section whose keys are all commented out is
/// `null` in YAML: present, and empty).
#[derive(Debug, Default)]
struct Section {
    present: bool,
    values: BTreeMap<String, String>,
}

impl Section {
    fn read(name: &str, value: Value) -> Result<Self, String> {
        let mut section = Section {
            present: true,
            values: BTreeMap::new(),
        };
        let map = match value {
            Value::Null => return Ok(section),
            Value::Mapping(m) => m,
            _ => return Err(format!("{name}: expected a mapping")),
        };
        for (key, value) in map {
            let key = scalar_text(&key).ok_or_else(|| format!("{name}: a key that is not text"))?;
            if value.is_null() {
                continue;
            }
            let text = scalar_text(&value)
                .ok_or_else(|| format!("{name}.{key}: expected a single value"))?;
            section.values.insert(key, text);
        }
        Ok(section)
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    fn rest(self) -> impl Iterator<Item = String> {
        self.values.into_keys()
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn port_number(name: &str, text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{name}: {text:?} is not a port number")),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// txlongpoll's own sample file (etc/txlongpoll.yaml), with values set.
    const SAMPLE: &str = "\
##
## txlongpoll configuration.
##
frontend:
  # The port on which to serve.
  port: 56100
  # If specified, the queue name requested must have the given prefix.
  prefix: longpoll.subscribe.
oops:
  directory: \"/var/log/oops\"
  reporter: \"LONGPOLL\"
broker:
  host: \"rabbit.internal\"
  port: 5673
  username: launchpad
  password: \"s3cret/with@odd:chars\"
  vhost: \"/\"
logfile: \"txlongpoll.log\"
";

    #[test]
    fn txlongpolls_keys_become_the_gateways_settings() {
        let c = TxlongpollConfig::parse(SAMPLE).unwrap();
        assert_eq!(c.values["listen"], "0.0.0.0:56100");
        assert_eq!(c.values["queue-prefix"], "longpoll.subscribe.");
        let broker = url::Url::parse(&c.values["broker"]).unwrap();
        assert_eq!(broker.host_str(), Some("rabbit.internal"));
        assert_eq!(broker.port(), Some(5673));
        assert_eq!(broker.username(), "launchpad");
        let password = broker.password().unwrap();
        let decoded = percent_decode(password);
        assert_eq!(decoded, "s3cret/with@odd:chars");
        assert_eq!(broker.path(), "/%2F");
        // The URL is one the gateway accepts.
        assert!(super::super::BrokerUrl::parse(&c.values["broker"]).is_ok());
    }

    #[test]
    fn every_value_is_keyed_by_a_flag_the_config_file_may_set() {
        let c = TxlongpollConfig::parse(SAMPLE).unwrap();
        let keys = super::super::file_keys();
        assert_eq!(c.values.len(), 3);
        for flag in c.values.keys() {
            assert!(keys.contains(flag), "{flag} is not a flag");
        }
    }

    #[test]
    fn every_other_key_is_ignored_with_one_notice_each() {
        let c = TxlongpollConfig::parse(SAMPLE).unwrap();
        assert_eq!(
            c.notices,
            [
                "txlongpoll config: oops.directory ignored (errors go to the logs and traces)",
                "txlongpoll config: oops.reporter ignored (errors go to the logs and traces)",
                "txlongpoll config: logfile ignored (the gateway logs to standard error)",
            ]
        );
        // No notice names a secret.
        assert!(!c.notices.concat().contains("s3cret"));
    }

    #[test]
    fn the_sample_as_shipped_takes_txlongpolls_defaults() {
        // Everything but the port commented out, as in txlongpoll's etc/.
        let c = TxlongpollConfig::parse(
            "frontend:\n  port: 56100\n  # prefix:\noops:\n  # directory: \"\"\nbroker:\n  # host: \"localhost\"\n",
        )
        .unwrap();
        assert_eq!(c.values["listen"], "0.0.0.0:56100");
        assert!(!c.values.contains_key("queue-prefix"));
        let broker = url::Url::parse(&c.values["broker"]).unwrap();
        assert_eq!(broker.host_str(), Some("localhost"));
        assert_eq!(broker.port(), Some(5672));
        assert_eq!(broker.password(), Some("test"));
        assert_eq!(broker.path(), "/%2F");
        assert!(
            c.notices
                .iter()
                .any(|n| n.contains("frontend.prefix not set"))
        );
        assert!(
            c.notices
                .iter()
                .any(|n| n.contains("broker.username not set"))
        );
    }

    #[test]
    fn bad_values_are_refused_in_one_line() {
        for (text, named) in [
            ("frontend:\n  port: seventy\n", "frontend.port"),
            ("broker:\n  port: 70000\n", "broker.port"),
            ("broker: [a, b]\n", "broker"),
            ("frontend:\n  port: [1]\n", "frontend.port"),
            ("- just\n- a list\n", "mapping"),
            ("frontend: {port: 1\n", ""),
        ] {
            let err = TxlongpollConfig::parse(text).unwrap_err();
            assert!(err.contains(named), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    fn percent_decode(text: &str) -> String {
        url::form_urlencoded::parse(format!("x={text}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }
}
