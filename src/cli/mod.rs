//! The `longpoll-gateway` command line: `serve`, `subscribe`, `emit`.
//!
//! Owns: the subcommands and how the command line is parsed, configuration
//! files included ([`parse`]). `serve`'s flags are the settings, defined in
//! [`crate::config::ServeArgs`]; `subscribe` and `emit` live in
//! [`publishing`]. Must not: judge a setting's value (that is `config`'s) or
//! run anything but those two commands.

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{ConfigError, ServeArgs};

mod publishing;

pub use publishing::{CliError, EmitArgs, SubscribeArgs, Target, emit, subscribe};

/// The `longpoll-gateway` command line.
#[derive(Debug, Parser)]
#[command(name = "longpoll-gateway", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hold browser long-polls on AMQP queues (the gateway itself).
    Serve(Box<ServeArgs>),
    /// Create a subscription queue bound to event keys; prints {"key": ..., "uri": ...}
    /// (with --resume-after, also "resumed" and "gap").
    Subscribe(SubscribeArgs),
    /// Publish an event (a JSON object) under an event key.
    Emit(EmitArgs),
}

/// Why the command line was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not a command line clap accepts: an unknown flag, a missing value;
    /// also `--help` and `--version` (clap's display "errors").
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    /// A setting's value or a configuration file: one line naming it.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Parses the command line (`argv` with the program's name first).
///
/// For `serve`, the configuration files that the command line (or
/// `LONGPOLL_CONFIG`) names are read, and the command line is parsed again
/// with their values as the flags' defaults: clap then takes a flag over its
/// variable over a file, and reads every value, whatever its source, with
/// the setting's value parser.
pub fn parse<I, T>(argv: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let cli = Cli::try_parse_from(&argv).map_err(setting_error)?;
    let Command::Serve(first) = &cli.command else {
        return Ok(cli);
    };
    let files = first.read_files()?;
    let matches = Cli::command()
        .mut_subcommand("serve", |serve| files.as_defaults(serve))
        .try_get_matches_from(&argv)
        .map_err(setting_error)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Command::Serve(args) = &mut cli.command {
        args.file_notices = files.notices;
    }
    Ok(cli)
}

/// A value that a setting's value parser refused carries the
/// [`ConfigError`] that names it: that line is the whole message.
fn setting_error(e: clap::Error) -> ParseError {
    match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<ConfigError>()) {
        Some(config) => ParseError::Config(config.clone()),
        None => ParseError::CommandLine(e),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::Settings;

    fn serve(args: &[&str]) -> Result<Settings, String> {
        let argv = ["longpoll-gateway", "serve"]
            .into_iter()
            .chain(args.iter().copied());
        match parse(argv).map_err(|e| e.to_string())?.command {
            Command::Serve(args) => args.into_settings().map_err(|e| e.to_string()),
            other => panic!("{other:?}"),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn file_values_apply_below_flags() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "gw.toml",
            "poll-timeout = \"30s\"\nmax_polls = 7\nexchange = \"from-file\"\ncors-origin = [\"https://a.example\", \"https://b.example\"]\n",
        );
        let s = serve(&["--config", &config, "--exchange", "from-flag"]).unwrap();
        assert_eq!(s.poll_timeout, Duration::from_secs(30));
        assert_eq!(s.max_polls, 7);
        assert_eq!(s.exchange, "from-flag");
        assert_eq!(
            s.cors_origins,
            vec!["https://a.example", "https://b.example"]
        );
        // What neither sets is the default.
        assert_eq!(s.replay_ttl, Settings::default().replay_ttl);
    }

    #[test]
    fn a_txlongpoll_value_is_overridden_by_the_config_file_and_by_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = write(
            dir.path(),
            "txlongpoll.yaml",
            "frontend:\n  port: 56100\n  prefix: from.yaml.\nbroker:\n  host: rabbit.internal\n  username: lp\n  password: pw\noops:\n  directory: /var/log/oops\n",
        );
        let toml = write(dir.path(), "gw.toml", "queue-prefix = \"from.toml.\"\n");

        let s = serve(&["--txlongpoll-config", &yaml]).unwrap();
        assert_eq!(s.queue_prefix, "from.yaml.");
        assert_eq!(s.listen.to_string(), "0.0.0.0:56100");
        assert_eq!(
            s.broker.to_string(),
            "amqp://lp:***@rabbit.internal:5672/%2F"
        );
        assert_eq!(
            s.config_notices,
            ["txlongpoll config: oops.directory ignored (errors go to the logs and traces)"]
        );

        let s = serve(&["--txlongpoll-config", &yaml, "--config", &toml]).unwrap();
        assert_eq!(s.queue_prefix, "from.toml.");
        assert_eq!(s.listen.to_string(), "0.0.0.0:56100");

        let s = serve(&[
            "--txlongpoll-config",
            &yaml,
            "--config",
            &toml,
            "--queue-prefix",
            "from.flag.",
            "--listen",
            "127.0.0.1:1",
        ])
        .unwrap();
        assert_eq!(s.queue_prefix, "from.flag.");
        assert_eq!(s.listen.to_string(), "127.0.0.1:1");
    }

    #[test]
    fn a_refused_value_reads_the_same_from_a_flag_or_a_file() {
        let wording = "invalid --max-polls (or LONGPOLL_MAX_POLLS): \"lots\" is not a whole number";
        assert_eq!(serve(&["--max-polls", "lots"]).unwrap_err(), wording);
        let dir = tempfile::tempdir().unwrap();
        let config = write(dir.path(), "gw.toml", "max-polls = \"lots\"\n");
        let err = parse(["longpoll-gateway", "serve", "--config", &config]).unwrap_err();
        assert!(matches!(&err, ParseError::Config(_)), "{err:?}");
        assert_eq!(err.to_string(), wording);
        // A flag given right hides the file's bad value.
        assert_eq!(
            serve(&["--config", &config, "--max-polls", "3"])
                .unwrap()
                .max_polls,
            3
        );
    }

    #[test]
    fn a_file_value_from_the_txlongpoll_file_is_checked_like_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = write(
            dir.path(),
            "t.yaml",
            "frontend:\n  prefix: \"with space\"\n",
        );
        assert_eq!(
            serve(&["--txlongpoll-config", &yaml]).unwrap_err(),
            "invalid --queue-prefix (or LONGPOLL_QUEUE_PREFIX): must be printable ASCII, at most 200 bytes"
        );
    }

    #[test]
    fn an_empty_flag_unsets_what_the_file_set() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "gw.toml",
            "api-token = \"file-token-123\"\npublic-url = \"https://example.com/lp/\"\n",
        );
        let s = serve(&["--config", &config]).unwrap();
        assert_eq!(s.api_token.unwrap().expose(), "file-token-123");
        assert_eq!(s.public_url.unwrap().as_str(), "https://example.com/lp/");
        let s = serve(&["--config", &config, "--api-token", "", "--public-url", ""]).unwrap();
        assert!(s.api_token.is_none());
        assert!(s.public_url.is_none());
    }

    #[test]
    fn cors_origins_come_comma_separated_or_repeated() {
        let s = serve(&[
            "--cors-origin",
            "https://a.example, https://b.example",
            "--cors-origin",
            "https://c.example",
        ])
        .unwrap();
        assert_eq!(
            s.cors_origins,
            [
                "https://a.example",
                "https://b.example",
                "https://c.example"
            ]
        );
    }

    #[test]
    fn broker_nodes_come_comma_separated_repeated_or_as_a_file_array() {
        let listed = |s: Settings| match s.broker {
            crate::config::BrokerUrl::Amqp(nodes) => nodes.to_string(),
            other => panic!("{other:?}"),
        };
        let s = serve(&[
            "--broker",
            "amqp://u:p@a/%2f,amqp://u:p@b/%2f",
            "--broker",
            "amqp://u:p@c/%2f",
        ])
        .unwrap();
        assert_eq!(
            listed(s),
            "amqp://u:***@a/%2f,amqp://u:***@b/%2f,amqp://u:***@c/%2f"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "gw.toml",
            "broker = [\"amqp://u:p@a/%2f\", \"amqp://u:p@b/%2f\"]\n",
        );
        let s = serve(&["--config", &config]).unwrap();
        assert_eq!(listed(s), "amqp://u:***@a/%2f,amqp://u:***@b/%2f");
        // The flag replaces the file's list, as every flag does.
        let s = serve(&["--config", &config, "--broker", "amqp://u:p@c/%2f"]).unwrap();
        assert_eq!(listed(s), "amqp://u:***@c/%2f");
        let err = serve(&["--broker", "amqp://u:p@a/", "--broker", "amqps://u:p@b/"]).unwrap_err();
        assert!(
            err.starts_with(
                "invalid --broker (or LONGPOLL_BROKER): amqp://u:***@a/ and amqps://u:***@b/ mix"
            ),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn an_unknown_flag_or_a_missing_value_is_a_command_line_error() {
        for argv in [
            &["longpoll-gateway", "serve", "--no-such-flag"][..],
            &["longpoll-gateway", "serve", "--poll-timeout"],
            &["longpoll-gateway", "emit", "only-a-key"],
        ] {
            let err = parse(argv).unwrap_err();
            assert!(
                matches!(err, ParseError::CommandLine(_)),
                "{argv:?}: {err:?}"
            );
        }
    }

    #[test]
    fn an_unknown_file_key_and_a_missing_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(dir.path(), "gw.toml", "queue-prefx = \"x.\"\n");
        let err = serve(&["--config", &config]).unwrap_err();
        assert_eq!(
            err,
            format!("config file {config}: unknown key \"queue-prefx\"")
        );
        let err = serve(&["--config", "/nonexistent/gw.toml"]).unwrap_err();
        assert!(
            err.starts_with("cannot read config file /nonexistent/gw.toml: "),
            "{err}"
        );
    }
}
