//! The `carapace` command line: subcommands and their arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::SettingsArgs;

/// Carapace runs autonomous AI agents for many tenants, each in a hardened
/// sandbox, behind an authenticated, audited API.
#[derive(Debug, Parser)]
#[command(name = "carapace", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this machine: API, portal and (later) scheduler,
    /// gateway and a local worker.
    Serve(Common),
    /// Apply database migrations and exit.
    Migrate(Common),
    /// Manage tenants from the operator's shell.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage the master key.
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
    /// Manage sandbox images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run a worker node that joins a control plane and runs what it
    /// places here.
    Worker(crate::worker_node::WorkerArgs),
    /// Manage worker join tokens.
    #[command(subcommand)]
    WorkerToken(WorkerTokenCommand),
}

/// Worker join tokens.
#[derive(Debug, Subcommand)]
pub enum WorkerTokenCommand {
    /// Create a one-time join token for a new worker node; prints it alone
    /// on the last line. A worker spends it on its node credential with
    /// `carapace worker --join-token`.
    Create {
        /// Seconds the token stays valid. [default: 3600]
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        ttl_secs: u64,
        /// Settings (the database).
        #[command(flatten)]
        common: Common,
    },
}

/// Sandbox image administration.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Unpack an OCI image layout directory into the image cache ahead of
    /// use, showing progress, every blob checked against its digest. Prints
    /// the directories a sandbox's root stacks, top first: the agent's
    /// layer, then the image's layers (shared with other images).
    Unpack {
        /// The OCI image layout directory (e.g. from `skopeo copy ... oci:DIR`).
        layout: PathBuf,
        /// Which image of the layout (its `org.opencontainers.image.ref.name`),
        /// if it holds several.
        #[arg(long = "ref", value_name = "NAME")]
        reference: Option<String>,
        /// Settings (`[sandbox] image_dir` names the cache).
        #[command(flatten)]
        common: Common,
    },
}

/// Master key administration.
#[derive(Debug, Subcommand)]
pub enum MasterKeyCommand {
    /// Re-wrap every tenant's data key under a new master key, without
    /// rewriting any data. Creates the new key file (mode 0600) if it does
    /// not exist. Safe to run again after an interruption. Afterwards, set
    /// `master_key_file` to the new file and restart; until then, servers
    /// on the old key cannot open tenants' secrets.
    Rotate {
        /// The new master key file.
        #[arg(long, value_name = "PATH")]
        new_key_file: PathBuf,
        /// Settings.
        #[command(flatten)]
        common: Common,
    },
}

/// Tenant administration.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant with an owner; prints the owner's API key once, alone
    /// on the last line.
    Create {
        /// The tenant's display name.
        name: String,
        /// The owner's email address.
        #[arg(long, value_name = "EMAIL")]
        owner: String,
        /// Settings.
        #[command(flatten)]
        common: Common,
    },
    /// Delete a tenant for good: destroys its data key first (its memory
    /// and secrets become unreadable at once, in backups too), then removes
    /// its agents' memory objects and its rows. The audit log is kept.
    Delete {
        /// The tenant's id (`tnt_…`).
        id: String,
        /// Confirms the deletion; nothing happens without it.
        #[arg(long)]
        yes: bool,
        /// Settings.
        #[command(flatten)]
        common: Common,
    },
}

/// Arguments every subcommand that touches state takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// TOML settings file; flags and `CARAPACE_*` variables override it.
    #[arg(long, env = "CARAPACE_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The settings.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

impl Common {
    /// Flags and environment over the settings file over defaults.
    pub fn settings(&self) -> anyhow::Result<crate::config::Settings> {
        let file = match &self.config {
            Some(path) => SettingsArgs::from_file(path)?,
            None => SettingsArgs::default(),
        };
        self.settings.clone().over(file).resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_help_documents_every_setting() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let help = serve.render_long_help().to_string();
        for env in [
            "CARAPACE_LISTEN",
            "CARAPACE_DATA_DIR",
            "CARAPACE_DATABASE_URL",
            "CARAPACE_OBJECT_STORE_URL",
            "CARAPACE_MASTER_KEY_FILE",
            "CARAPACE_LOG",
            "CARAPACE_MAX_JSON_BYTES",
            "CARAPACE_SHUTDOWN_TIMEOUT_SECS",
            "CARAPACE_AUTH_CACHE_TTL_MS",
            "CARAPACE_CONFIG",
        ] {
            assert!(help.contains(env), "{env} missing from `serve --help`");
        }
    }
}
