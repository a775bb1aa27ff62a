//! `longpoll-gateway`: `serve`, `subscribe`, `emit`. Parses the command line,
//! reads the configuration once, and hands over; no logic lives here.

use std::process::ExitCode;

use longpoll_gateway::cli::{self, Command, ParseError};
use longpoll_gateway::{gateway, telemetry};

// Every poll allocates and frees many small objects across threads: glibc's
// allocator took a quarter of the CPU under load. jemalloc gave +33% deliveries/s
// and -72% p99 at 5,000/s, for ~4 KB (+17%) more per held poll; mimalloc was
// faster still but cost ~14 KB more per held poll (benches/README.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc returns freed pages to the system only when the process allocates
// again, and a replica holding polls is mostly idle: what a burst freed (on
// RabbitMQ, the setup of thousands of consumers) stayed resident, ~3.4 KB per
// held poll. A background thread purges pages unused for a second instead
// (benches/README.md). `_RJEM_MALLOC_CONF` in the environment still overrides it.
// jemalloc reads this C string (`const char *`) before the first allocation.
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 85] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Returns the allocator's unused dirty pages to the system once a second, on
/// a thread of its own (a purge after a burst can take milliseconds: not on a
/// runtime worker). While jemalloc's background thread is on, no other thread
/// purges, and it wakes for an arena only once that arena has 1,024 new dirty
/// pages, so what stayed below that stayed resident for good: on RabbitMQ, where setting up thousands of consumers
/// frees pages on several threads' arenas, ~2 KB per held poll (8,000 held:
/// 13.0–14.8 KB without this, 12.3–12.6 KB with it; benches/README.md). A
/// page freed within the last second and allocated again is faulted in anew:
/// measured within noise, also for 200 KB events. (`dirty_decay_ms:0` frees
/// as much but purges on every free: +80% CPU per delivery for 200 KB events.)
#[cfg(feature = "jemalloc")]
fn spawn_page_purger() {
    // `MALLCTL_ARENAS_ALL` (4096): every arena.
    const PURGE_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";
    let spawned = std::thread::Builder::new()
        .name("jemalloc-purge".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                // SAFETY: `arena.<i>.purge` takes and returns nothing (no old
                // value to read, no new value to write); the name is a C string.
                unsafe {
                    tikv_jemalloc_sys::mallctl(
                        PURGE_ALL_ARENAS.as_ptr(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        0,
                    );
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the allocator's page purger");
    }
}

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseError::Config(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Err(ParseError::CommandLine(e)) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line that names the problem (clap's first line), not the usage dump.
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid command line");
            eprintln!("{line} (see --help)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The gRPC span exporter needs the runtime's context when it is built.
    let _runtime_context = runtime.enter();
    let result = match cli.command {
        Command::Serve(args) => {
            let settings = match args.into_settings() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            // Flushed below, outside block_on but with the runtime still alive.
            let telemetry = telemetry::init(Some(settings.log_format));
            for notice in &settings.config_notices {
                tracing::info!("{notice}");
            }
            #[cfg(feature = "jemalloc")]
            spawn_page_purger();
            let result = runtime.block_on(gateway::serve(settings));
            telemetry.shutdown();
            result.map_err(|e| e.to_string())
        }
        Command::Subscribe(args) => {
            let telemetry = telemetry::init(None);
            let result = runtime.block_on(cli::subscribe(args));
            telemetry.shutdown();
            result.map_err(|e| e.to_string())
        }
        Command::Emit(args) => {
            let telemetry = telemetry::init(None);
            let result = runtime.block_on(cli::emit(args));
            telemetry.shutdown();
            result.map_err(|e| e.to_string())
        }
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    // Exit with the runtime still alive. Dropping it cancels its tasks, and if
    // a broker connection attempt is still in flight (an unreachable broker),
    // lapin's I/O thread panics on the cancelled task it waits for: a second
    // message after the one line a failed command prints. Telemetry is flushed
    // above; stdout is flushed here.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code)
}
