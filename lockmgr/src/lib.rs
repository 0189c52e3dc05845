//! The global lock manager of sharedisk: partition leases with fence tokens,
//! failure detection, reassignment. Not built yet (issue 3); the storage
//! primitives it drives (REGISTER, PREEMPT, claim with fence tokens) live in
//! `sharedisk-storage`.
