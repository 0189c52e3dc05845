//! What sharedisk's tests, benchmarks and simulations share, once each:
//!
//! * [`history`]: the linearizability checker for register histories;
//! * [`rng`]: the seeded generator every simulation and fault schedule draws from;
//! * [`process`]: run `sharedisk`, guard its children (SIGCONT + SIGKILL on
//!   drop), wait on conditions with deadlines;
//! * [`readiness`]: the lines a lock manager and a server print when they
//!   serve, and the addresses in them;
//! * [`cluster`]: a real cluster on 127.0.0.1 ephemeral ports (a lock manager
//!   and N servers), settled and balanced;
//! * [`router`]: a Redis Cluster router on the `redis` crate's blocking
//!   connections, for the fault harness and the failover benchmark;
//! * [`batch`]: the self-describing keys and values of the `debug writer`;
//! * [`power`]: a power loss torn at page granularity, on an in-memory volume;
//! * [`prefill`]: a loaded volume (distinct keys in every partition).
//!
//! Never used by the server; the `sharedisk` binary takes from it only the
//! batch format its hidden `debug writer` stores (the tests read it back).

pub mod batch;
pub mod cluster;
pub mod history;
pub mod power;
pub mod prefill;
pub mod process;
pub mod readiness;
pub mod rng;
pub mod router;

pub use rng::Rng;
