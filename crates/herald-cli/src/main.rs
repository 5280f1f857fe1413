//! `herald`: the command-line program of the Herald workspace.
//!
//! Each area lives in its own module: `wire_cmd` (envelope, frame), `node_cmd`
//! (tell, and the transport part of `up`), `registry_cmd`, `mesh_cmd`, and `up`
//! which starts everything on embedded defaults.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` for the program's output: when standard output is closed (`herald ... |
/// head`), the program ends quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

mod error;
mod mesh_cmd;
mod node_cmd;
mod registry_cmd;
mod shutdown;
mod text;
mod up;
mod values;
mod wire_cmd;

pub use error::{BadInput, bad_input};

/// Writes one line of output (see `outln!`). A reader that went away ends the program
/// with status 0, as the default SIGPIPE action would; another write error (a full
/// disk) is reported and ends it with status 1.
pub(crate) fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("herald: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Writes the JSON line of a failure to standard output. The failure is reported anyway
/// (its message on stderr, its exit status), so a write error here is ignored instead
/// of ending the program with status 0 as [`print_line`] does for a reader that went
/// away.
pub(crate) fn print_failure_line(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Herald: messaging and service discovery between distributed services.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info`, `herald_transport=debug`).
    /// Also read from `RUST_LOG`.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a Herald node on embedded defaults: TCP transport, rpyc-compatible
    /// registry on 18811 and the in-process mesh with the example service.
    Up(up::UpArgs),
    /// Send one message (casty tagged-JSON payload) to an actor URI and exit.
    Tell(node_cmd::TellArgs),
    /// Encode or decode a casty message envelope.
    #[command(subcommand)]
    Envelope(wire_cmd::EnvelopeCommand),
    /// Decode a stream of casty TCP frames (a capture file).
    #[command(subcommand)]
    Frame(wire_cmd::FrameCommand),
    /// rpyc-compatible name registry: serve, register, discover, list, unregister.
    #[command(subcommand)]
    Registry(registry_cmd::RegistryCommand),
    /// nuropb-style RPC service mesh: serve the example, call, describe, listen, demo.
    #[command(subcommand)]
    Mesh(mesh_cmd::MeshCommand),
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let result = match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Tell(args) => node_cmd::run_tell(args).await,
        Command::Envelope(cmd) => wire_cmd::run_envelope(cmd),
        Command::Frame(cmd) => wire_cmd::run_frame(cmd),
        Command::Registry(cmd) => registry_cmd::run(cmd).await,
        Command::Mesh(cmd) => mesh_cmd::run(cmd).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain of causes joined by ": ".
            eprintln!("herald: error: {}", error::one_line(&err));
            if err.downcast_ref::<BadInput>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn every_flag_is_well_formed_and_documented() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{path}: argument {id} has no help text"
                );
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {}: no help text",
                    sub.get_name()
                );
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&cmd, "herald");
    }
}
