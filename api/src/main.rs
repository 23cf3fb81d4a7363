//! `carapace`: parse the command line, set up logging, run a subcommand.

use std::process::ExitCode;

use carapace_api::audit::Actor;
use carapace_api::bootstrap::{self, Application};
use carapace_api::cli::{
    Cli, Command, ImageCommand, MasterKeyCommand, TenantCommand, WorkerTokenCommand,
};
use carapace_api::ids::TenantId;
use carapace_api::master_key::MasterKey;
use carapace_api::memory::MemoryStore;
use carapace_api::storage;
use carapace_api::telemetry;
use clap::Parser;

fn main() -> ExitCode {
    // The container helper must stay single-threaded: dispatch to it before
    // anything else (argument parsing included) runs.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "sandbox-helper") {
        let code = carapace_runtime::sandbox::helper::main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
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
        Command::Tenant(TenantCommand::Delete { id, yes, common }) => {
            let settings = common.settings()?;
            telemetry::init_stderr(&settings.log);
            let tenant =
                TenantId::parse(&id).map_err(|_| anyhow::anyhow!("`{id}` is not a tenant id"))?;
            if !yes {
                anyhow::bail!("deleting {tenant} cannot be undone; add --yes to confirm");
            }
            let master_key = MasterKey::load(&settings.master_key_file)?;
            let db = bootstrap::open_database(&settings).await?;
            let memory = MemoryStore::new(storage::open(&settings.object_store_url)?);
            let report =
                bootstrap::delete_tenant(&db, &memory, &master_key, &tenant, &Actor::cli()).await?;
            print_deleted(&tenant, &report);
            Ok(())
        }
        Command::Image(ImageCommand::Unpack {
            layout,
            reference,
            common,
        }) => {
            let settings = common.settings()?;
            telemetry::init_stderr(&settings.log);
            let mut last = (0, 0u64);
            let root = carapace_runtime::image::ensure_oci(
                &settings.sandbox.image_dir,
                &layout,
                reference.as_deref(),
                &carapace_runtime::oci::Limits::default(),
                &mut |layer, layers, read, size| {
                    // One line per layer and per 10%: readable in a log too.
                    let tenth = (read * 10).checked_div(size).unwrap_or(10);
                    if (layer, tenth) != last {
                        last = (layer, tenth);
                        eprintln!(
                            "layer {layer}/{layers}: {:.1} / {:.1} MiB",
                            read as f64 / 1048576.0,
                            size as f64 / 1048576.0
                        );
                    }
                },
            )?;
            print_image(&root);
            Ok(())
        }
        Command::Worker(args) => {
            telemetry::init(&args.log, carapace_api::config::LogFormat::Auto);
            carapace_api::worker_node::run(args).await
        }
        Command::WorkerToken(WorkerTokenCommand::Create { ttl_secs, common }) => {
            let settings = common.settings()?;
            telemetry::init_stderr(&settings.log);
            if !(60..=30 * 86_400).contains(&ttl_secs) {
                anyhow::bail!("--ttl-secs must be between 60 and 2592000");
            }
            bootstrap::create_data_dir(&settings)?;
            let db = bootstrap::open_database(&settings).await?;
            let token = carapace_scheduler::store::create_join_token(
                &db,
                std::time::Duration::from_secs(ttl_secs),
            )
            .await?;
            print_join_token(token.reveal(), ttl_secs);
            Ok(())
        }
        Command::MasterKey(MasterKeyCommand::Rotate {
            new_key_file,
            common,
        }) => {
            let settings = common.settings()?;
            telemetry::init_stderr(&settings.log);
            let old = MasterKey::load(&settings.master_key_file)?;
            let (new, created) = MasterKey::load_or_create(&new_key_file)?;
            let db = bootstrap::open_database(&settings).await?;
            let (rewrapped, skipped) = bootstrap::rotate_master_key(&db, &old, &new).await?;
            print_rotated(
                &new_key_file,
                created,
                rewrapped,
                skipped,
                &new.fingerprint(),
            );
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

#[allow(clippy::print_stdout, reason = "the token is the command's output")]
fn print_join_token(token: &str, ttl_secs: u64) {
    println!("A one-time worker join token, valid for {ttl_secs} s. Start the worker with");
    println!("  carapace worker --control-plane URL --join-token TOKEN");
    println!("{token}");
}

#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn print_rotated(
    path: &std::path::Path,
    created: bool,
    rewrapped: u64,
    skipped: u64,
    fingerprint: &str,
) {
    let made = if created { "created" } else { "existing" };
    println!(
        "new master key: {} ({made}, fingerprint {fingerprint})",
        path.display()
    );
    println!("tenant data keys re-wrapped: {rewrapped}; already done or absent: {skipped}");
    println!("Now set master_key_file (CARAPACE_MASTER_KEY_FILE) to the new file and restart.");
}

#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn print_deleted(tenant: &TenantId, report: &bootstrap::TenantDeletion) {
    println!(
        "deleted {tenant}: data key {}, {} agent(s), {} object(s) removed",
        if report.data_key_destroyed {
            "destroyed"
        } else {
            "absent"
        },
        report.agents,
        report.objects
    );
}

#[allow(clippy::print_stdout, reason = "the paths are the command's output")]
fn print_image(layers: &[std::path::PathBuf]) {
    // The directories an overlay of the image stacks, top first.
    for layer in layers {
        println!("{}", layer.display());
    }
}
