//! The binary: parse the command line, set up logging, run until a signal.

use std::process::ExitCode;

use solar_charging_backend::cli::{Cli, Command};
use solar_charging_backend::{logging, run};

fn main() -> ExitCode {
    let cli = Cli::from_command_line();
    match cli.command {
        Some(Command::CheckConfig) => run::check_config(&cli.config),
        Some(Command::Discover(args)) => run::discover(&cli.config, &args),
        Some(Command::Healthcheck { url }) => run::healthcheck(url),
        command => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                match command {
                    Some(Command::Demo(args)) => run::demo(args).await,
                    Some(Command::Simulate(args)) => run::simulate(args).await,
                    _ => run::serve(&cli.config, &cli.data_dir).await,
                }
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    logging::report_fatal(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}
