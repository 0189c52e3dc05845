//! The command families of the `sharedisk` binary, one file each.

pub mod debug;
pub mod lockmgr;
pub mod log;
pub mod secret;
pub mod server;
pub mod units;
pub mod up;
pub mod volume;
