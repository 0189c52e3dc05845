//! Integration tests: real `sharedisk` processes, real volume files.

mod cli;
mod lockmgr;
mod process;
mod util;
