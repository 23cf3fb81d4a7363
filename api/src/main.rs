//! `carapace`: parse the command line, set up logging, run a subcommand.

use std::process::ExitCode;

use carapace_api::audit::Actor;
use carapace_api::bootstrap::{self, Application};
use carapace_api::cli::{Cli, Command, TenantCommand};
use carapace_api::telemetry;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "carapace failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(common) => {
            let settings = common.settings()?;
            telemetry::init(&settings.log, settings.log_format);
            Application::build(&settings).await?.run().await
        }
        Command::Migrate(common) => {
            let settings = common.settings()?;
            telemetry::init(&settings.log, settings.log_format);
            bootstrap::create_data_dir(&settings)?;
            bootstrap::open_database(&settings).await?;
            Ok(())
        }
        Command::Tenant(TenantCommand::Create {
            name,
            owner,
            common,
        }) => {
            let settings = common.settings()?;
            // Logs go to stderr here: stdout is for the key.
            telemetry::init_stderr(&settings.log);
            bootstrap::create_data_dir(&settings)?;
            let db = bootstrap::open_database(&settings).await?;
            let (created, secret) =
                bootstrap::create_tenant(&db, &name, &owner, &Actor::cli()).await?;
            print_created(&created, secret.reveal());
            Ok(())
        }
    }
}

#[allow(clippy::print_stdout, reason = "the key is the command's output")]
fn print_created(created: &carapace_api::db::TenantWithOwner, key: &str) {
    println!("tenant:  {} ({})", created.tenant.id, created.tenant.name);
    println!("owner:   {} ({})", created.owner_email, created.owner_id);
    println!("key id:  {}", created.key.id);
    println!("The API key below is shown once. Store it now:");
    println!("{key}");
}
