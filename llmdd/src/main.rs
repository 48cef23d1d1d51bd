//! The `llmdd` binary: parse the command line, run the subcommand, turn errors into one
//! clear line and a non-zero exit.

use clap::{parser::ValueSource, ArgMatches, CommandFactory, FromArgMatches};
use llmdd::{cli, config_file, doctor, live};

/// Applies the configuration file and `--set` to a subcommand's run options; flags given on
/// the command line (per `matches`) keep their values.
fn configure(
    config: Option<&std::path::Path>,
    sets: &[String],
    matches: Option<&ArgMatches>,
    run: &mut cli::RunArgs,
) -> Result<(), config_file::ConfigError> {
    let path = config_file::locate(config);
    let file = match &path {
        Some(p) => config_file::load(p)?,
        None => config_file::FileConfig::default(),
    };
    let shown = path.clone().unwrap_or_else(|| "llmdd.toml".into());
    let given = |id: &str| {
        matches.is_some_and(|m| {
            m.try_get_raw(id).is_ok_and(|v| v.is_some())
                && m.value_source(id) == Some(ValueSource::CommandLine)
        })
    };
    config_file::apply_run(&file, &shown, run, &given)?;
    run.engine_config = Some(config_file::engine_config(&file, sets)?);
    Ok(())
}

fn main() {
    let matches = cli::Cli::command().get_matches();
    let mut cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    // Which subcommand's flags were given, for the configuration file's "flags win".
    let sub = matches.subcommand().map(|(_, m)| m.clone());
    let (config, sets) = (cli.config.clone(), cli.sets.clone());
    let conf = |run: &mut cli::RunArgs| configure(config.as_deref(), &sets, sub.as_ref(), run);
    let configured = match &mut cli.command {
        cli::Command::Attach(a) => conf(&mut a.run),
        cli::Command::Top(t) => conf(&mut t.run),
        cli::Command::Record(r) => conf(&mut r.attach.run),
        cli::Command::Report(r) => {
            // Offline: the thresholds only (outputs are given with the command).
            let mut run = cli::RunArgs::defaults();
            let res = configure(config.as_deref(), &sets, None, &mut run);
            r.engine_config = run.engine_config;
            res
        }
        _ => Ok(()),
    };
    if let Err(e) = configured {
        eprintln!("llmdd: error: {e}");
        std::process::exit(1);
    }

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
        cli::Command::Ras { addr, json } => {
            match llmdd::ras::query(&addr, std::time::Duration::from_secs(10)) {
                Ok(llmdd::ras::RasReport::Json(s)) if json => {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                    0
                }
                Ok(llmdd::ras::RasReport::Json(s)) => {
                    for l in llmdd::ras::compare(&s, &[]) {
                        if !l.starts_with("  llmdd:") {
                            println!("{l}");
                        }
                    }
                    0
                }
                Ok(llmdd::ras::RasReport::Text(t)) => {
                    print!("{t}");
                    0
                }
                Err(e) => {
                    eprintln!("llmdd: error: {e}");
                    1
                }
            }
        }
        cli::Command::Loadgen(a) => match llmdd::loadgen::run(a) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("llmdd: error: {e:#}");
                1
            }
        },
        cli::Command::LoadgenWorker => match llmdd::loadgen::run_worker() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("llmdd loadgen-worker: error: {e:#}");
                1
            }
        },
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
        cli::Command::Config(cmd) => config_command(cmd, cli.config.as_deref()),
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

/// `llmdd config check|show`.
fn config_command(cmd: cli::ConfigCommand, given: Option<&std::path::Path>) -> i32 {
    let (path, check) = match cmd {
        cli::ConfigCommand::Check { file } => (Some(file), true),
        cli::ConfigCommand::Show { file } => (file.or_else(|| config_file::locate(given)), false),
    };
    let Some(path) = path else {
        println!(
            "# no configuration file (none given, {} absent): defaults",
            config_file::DEFAULT_PATH
        );
        print!("{}", config_file::show(&config_file::FileConfig::default()));
        return 0;
    };
    match config_file::load(&path) {
        Ok(cfg) if check => {
            println!("{}: ok", path.display());
            let _ = cfg;
            0
        }
        Ok(cfg) => {
            println!("# {}", path.display());
            print!("{}", config_file::show(&cfg));
            0
        }
        Err(e) => {
            eprintln!("llmdd: error: {e}");
            1
        }
    }
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
            match rt.block_on(live::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("llmdd: error: {e:#}");
                    1
                }
            }
        }
    }
}
