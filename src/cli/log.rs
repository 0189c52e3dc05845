//! `--log-format`, shared by the long-running commands.

use sharedisk_lockmgr::logging::{self, LogFormat};

#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// How to log: `text` (a line per event, as a person reads it) or
    /// `json` (an object per line: timestamp, level, message, and fields
    /// named as the metrics' labels: server, partition, epoch, term, addr,
    /// error). Events go to stdout, warnings and errors to stderr.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub log_format: Format,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl LogArgs {
    /// Install the logger.
    pub fn init(&self) {
        logging::init(match self.log_format {
            Format::Text => LogFormat::Text,
            Format::Json => LogFormat::Json,
        });
    }
}
