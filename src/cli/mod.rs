//! The `longpoll-gateway` command line: `serve`, `subscribe`, `emit`.
//!
//! Owns: the subcommands and how the command line is parsed. `serve`'s
//! flags are the settings, defined in [`crate::config::ServeArgs`];
//! `subscribe` and `emit` live in [`publishing`]. Must not: validate a
//! setting (that is `config`'s) or run anything but those two commands.

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

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
    /// Create a subscription queue bound to event keys; prints {"key": ..., "uri": ...}.
    Subscribe(SubscribeArgs),
    /// Publish an event (a JSON object) under an event key.
    Emit(EmitArgs),
}
