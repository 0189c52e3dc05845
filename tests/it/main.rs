//! Integration tests: real `sharedisk` processes, real volume files.

mod cli;
mod process;
mod util;
