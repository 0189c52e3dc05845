//! The parts of sharedisk that tests and benchmarks use from outside the
//! binary. The binary itself is `src/main.rs`.

pub mod history;
