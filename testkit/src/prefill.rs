//! A loaded volume for tests and benchmarks: distinct keys written into
//! every partition straight through the storage crate, the way a volume
//! looks after clients wrote it, before any server starts.

use std::sync::Arc;

use sharedisk_lockmgr::core::slot_range;
use sharedisk_storage::{Result, Volume};

use crate::router::key_slot;

/// Bytes of each prefilled value.
pub const PREFILL_VALUE_BYTES: usize = 1000;

/// Write `mb` MB of distinct keys into every partition of `volume`, straight
/// through the storage crate (the way a loaded volume looks after a client
/// wrote it), committed in 4 MiB groups; then hand the partitions back.
pub fn prefill(volume: &std::path::Path, partitions: u32, mb: u64) -> Result<u64> {
    use sharedisk_storage::{Op, Partition, ProcessIdentity};
    let vol = Arc::new(Volume::open(volume)?);
    let reg = vol.register(0xf111_0000_0000_0001, ProcessIdentity::current())?;
    let max = vol.geometry().record_bytes_max();
    let mut written = 0;
    for partition in 0..partitions {
        let mut p = Partition::claim(vol.clone(), reg, partition)?;
        let (mut batch, mut batch_bytes, mut staged) = (Vec::new(), 0usize, 0usize);
        for key in keys(partitions, partition, mb) {
            let op = Op::Put { key: key.into_bytes(), value: vec![b'x'; PREFILL_VALUE_BYTES].into(), expire_at_ms: 0 };
            if batch_bytes + op.encoded_bytes() > max {
                p.append(&batch, 0)?;
                staged += batch_bytes;
                (batch, batch_bytes) = (Vec::new(), 0);
                if staged >= 4 << 20 {
                    p.commit()?;
                    staged = 0;
                }
            }
            batch_bytes += op.encoded_bytes();
            batch.push(op);
            written += 1;
        }
        if !batch.is_empty() {
            p.append(&batch, 0)?;
        }
        p.release()?;
    }
    vol.unregister(reg)?;
    Ok(written)
}

/// The keys [`prefill`] writes into `partition` (of `partitions`) for `mb`
/// MB, in order; each holds [`PREFILL_VALUE_BYTES`] of `x`.
pub fn keys(partitions: u32, partition: u32, mb: u64) -> impl Iterator<Item = String> {
    let [first, last] = slot_range(partition, partitions);
    let tag =
        (0..).map(|i| format!("f{partition}t{i}")).find(|t| (first..=last).contains(&u32::from(key_slot(t.as_bytes())))).expect("a tag");
    (0..mb * 1_000_000 / PREFILL_VALUE_BYTES as u64).map(move |i| format!("{{{tag}}}:fill:{i}"))
}
