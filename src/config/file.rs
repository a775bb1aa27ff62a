//! The configuration files: `--config FILE` (TOML, keys named like the flags)
//! and, below it, `--txlongpoll-config FILE`; and how their values reach clap.
//!
//! Owns: reading the TOML file into text keyed by flag name (`_` or `-` in a
//! key, `cors-origins` for `cors-origin`, an array for a repeatable flag),
//! refusing a key that is not a flag, and layering the two files. Must not:
//! judge a value (clap reads it with the setting's own value parser, as it
//! does a flag's) or know a setting by name: the keys are
//! [`super::ServeArgs`]'s flags.

use std::collections::BTreeMap;
use std::path::Path;

use super::ConfigError;
use super::txlongpoll::TxlongpollConfig;

/// What the configuration files set, as text keyed by flag name: the
/// `--config` file's values over the `--txlongpoll-config` file's.
#[derive(Debug, Default)]
pub struct FileValues {
    values: BTreeMap<String, String>,
    /// Lines to log once logging is up (what a txlongpoll file had that the
    /// gateway does not use, and the txlongpoll defaults it took).
    pub notices: Vec<String>,
}

/// Other names a file key may have.
const KEY_ALIASES: &[(&str, &str)] = &[("cors-origins", "cors-origin")];

impl FileValues {
    /// Reads the files; either may be absent.
    pub fn read(config: Option<&Path>, txlongpoll: Option<&Path>) -> Result<Self, ConfigError> {
        let mut files = match config {
            Some(path) => Self::load(path)?,
            None => FileValues::default(),
        };
        if let Some(path) = txlongpoll {
            let below = TxlongpollConfig::load(path)?;
            for (flag, value) in below.values {
                files.values.entry(flag).or_insert(value);
            }
            files.notices = below.notices;
        }
        Ok(files)
    }

    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|why| ConfigError(format!("config file {}: {why}", path.display())))
    }

    /// Reads a TOML file's text; refuses a key that is not a flag of `serve`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        let flags = super::file_keys();
        let mut values = BTreeMap::new();
        for (key, value) in table {
            let key = key.replace('_', "-");
            let key = match KEY_ALIASES.iter().find(|(alias, _)| *alias == key) {
                Some((_, flag)) => (*flag).to_owned(),
                None => key,
            };
            if !flags.contains(&key) {
                return Err(format!("unknown key {key:?}"));
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                // Items are joined as the comma-separated variable would be.
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
        Ok(FileValues {
            values,
            notices: Vec::new(),
        })
    }

    /// Makes these values the defaults of `serve`'s flags. clap then takes a
    /// flag over its variable over the file, and reads a file's value with
    /// the flag's own value parser (the same check, the same error).
    pub fn as_defaults(&self, serve: clap::Command) -> clap::Command {
        serve.mut_args(
            |arg| match arg.get_long().and_then(|flag| self.values.get(flag)) {
                Some(value) => arg.default_value(value.clone()),
                None => arg,
            },
        )
    }

    #[cfg(test)]
    pub fn get(&self, flag: &str) -> Option<&str> {
        self.values.get(flag).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_dashes_or_underscores_and_the_plural_of_cors_origin() {
        let f = FileValues::parse(
            "max_polls = 7\npoll-timeout = \"30s\"\ncors-origins = [\"https://a.example\", \"https://b.example\"]\n",
        )
        .unwrap();
        assert_eq!(f.get("max-polls"), Some("7"));
        assert_eq!(f.get("poll-timeout"), Some("30s"));
        assert_eq!(
            f.get("cors-origin"),
            Some("https://a.example,https://b.example")
        );
    }

    #[test]
    fn unknown_file_key_is_refused_by_name() {
        let err = FileValues::parse("pol-timeout = \"3s\"").unwrap_err();
        assert_eq!(err, "unknown key \"pol-timeout\"");
    }

    #[test]
    fn the_files_themselves_are_not_file_keys() {
        for key in ["config", "txlongpoll-config", "help", "version"] {
            let err = FileValues::parse(&format!("{key} = \"x\"")).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn a_table_or_a_list_of_numbers_is_refused_by_key() {
        let err = FileValues::parse("[listen]\nport = 1\n").unwrap_err();
        assert!(err.starts_with("listen: unsupported value"), "{err}");
        let err = FileValues::parse("cors-origin = [1, 2]\n").unwrap_err();
        assert!(err.starts_with("cors-origin: expected strings"), "{err}");
    }

    #[test]
    fn the_config_file_sits_above_the_txlongpoll_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("gw.toml");
        std::fs::write(&toml, "queue-prefix = \"from.toml.\"\n").unwrap();
        let yaml = dir.path().join("txlongpoll.yaml");
        std::fs::write(
            &yaml,
            "frontend:\n  port: 56100\n  prefix: from.yaml.\nlogfile: x.log\n",
        )
        .unwrap();
        let f = FileValues::read(Some(&toml), Some(&yaml)).unwrap();
        assert_eq!(f.get("queue-prefix"), Some("from.toml."));
        assert_eq!(f.get("listen"), Some("0.0.0.0:56100"));
        assert_eq!(f.notices.len(), 1, "{:?}", f.notices);
    }
}
