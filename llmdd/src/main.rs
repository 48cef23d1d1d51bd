//! The `llmdd` binary: parse the command line, run the subcommand, turn errors into one
//! clear line and a non-zero exit.

use clap::Parser;
use llmdd::{attach, cli, doctor};

fn main() {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let code = match cli.command {
        cli::Command::Doctor => {
            if doctor::run() {
                0
            } else {
                1
            }
        }
        cli::Command::Attach(args) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("llmdd: error: cannot start the runtime: {e}");
                    std::process::exit(1);
                }
            };
            match rt.block_on(attach::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("llmdd: error: {e:#}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
