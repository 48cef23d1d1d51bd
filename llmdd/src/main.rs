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
        cli::Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = cli::Cli::command();
            clap_complete::generate(shell, &mut cmd, "llmdd", &mut std::io::stdout());
            0
        }
        cli::Command::Man => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(cli::Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                // `llmdd man | head`: the reader leaving is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => {
                    eprintln!("llmdd: error: writing the man page: {e}");
                    1
                }
            }
        }
        cli::Command::Top(args) => run_attach(args.into_attach()),
        cli::Command::Record(args) => run_attach(args.into_attach()),
        cli::Command::Report(args) => edge(llmdd::offline::report(args)),
        cli::Command::Export(args) => edge(llmdd::offline::export(args)),
        cli::Command::Diff(args) => {
            match llmdd::diff::run(&args.baseline, &args.current, args.threshold) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("llmdd: error: {e:#}");
                    1
                }
            }
        }
        cli::Command::Attach(args) => run_attach(args),
    };
    std::process::exit(code);
}

/// The exit code of a subcommand, its error printed as one line.
fn edge(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("llmdd: error: {e:#}");
            1
        }
    }
}

/// Runs `attach` on a single-threaded runtime; the exit code.
fn run_attach(args: cli::AttachArgs) -> i32 {
    {
        {
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
    }
}
