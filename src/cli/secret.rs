//! `sharedisk secret new FILE`, and `--secret-file` as every command that
//! talks to the lock manager takes it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use sharedisk_lockmgr::Secret;

#[derive(Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// The cluster secret (64 hex digits, mode 0600; `sharedisk secret new
    /// FILE` makes one). The lock manager then refuses every connection
    /// that does not prove it knows it, and proves it back; it never
    /// crosses the wire.
    #[arg(long, env = "SHAREDISK_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
}

impl SecretArgs {
    pub fn load(&self) -> Result<Option<Secret>> {
        Ok(self.secret_file.as_deref().map(Secret::load).transpose()?)
    }
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Write a new random cluster secret to FILE (mode 0600; never overwrites).
    New { file: PathBuf },
}

pub fn run(cmd: SecretCommand) -> Result<ExitCode> {
    match cmd {
        SecretCommand::New { file } => {
            Secret::create_file(&file)?;
            println!("wrote a new cluster secret to {}", file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub use sharedisk_server::peer::beyond_loopback;
