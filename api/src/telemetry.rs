//! Logging: one `tracing` subscriber for the whole process, JSON lines when
//! standard output is not a terminal (what log shippers want), text when a
//! person is watching.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (tests): later
/// calls leave the first subscriber in place.
pub fn init(filter: &str, format: LogFormat) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    init_with_writer(filter, json, std::io::stdout);
}

/// Installs the global subscriber writing to `writer` (benchmarks use a
/// sink, to pay for formatting without flooding their output).
pub fn init_with_writer<W>(filter: &str, json: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = env_filter(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    };
    // An error only means a subscriber is already installed.
    drop(result);
}

/// The filter `spec`, with youki's libraries quietened (libcgroups warns
/// about every controller this host lacks at each container deletion)
/// unless `spec` names them itself.
fn env_filter(spec: &str) -> EnvFilter {
    let spec = if spec.contains("libcgroups") || spec.contains("libcontainer") {
        spec.to_owned()
    } else {
        format!("{spec},libcgroups=error,libcontainer=error")
    };
    EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| EnvFilter::new("info,libcgroups=error,libcontainer=error"))
}

/// Installs a text subscriber on standard error, for commands whose
/// standard output is their result.
pub fn init_stderr(filter: &str) {
    let filter = env_filter(filter);
    let result = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    drop(result);
}
