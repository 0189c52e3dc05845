//! Integration tests: real `sharedisk` processes, real volume files.

mod cli;
mod cluster;
mod faults;
mod hashes;
mod lockmgr;
mod lockmgr_ha;
mod page;
mod process;
mod pubsub;
mod security;
mod server;
mod standby;
mod util;
