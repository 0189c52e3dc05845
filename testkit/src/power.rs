//! Power loss on an in-memory volume, as the simulations model it.

use sharedisk_storage::media::MemMedia;

use crate::Rng;

/// What the disk may hold after a power loss: the durable image plus any
/// subset of the pages dirtied since (write-back starts early, in any order,
/// a page at a time).
pub fn torn_image(media: &MemMedia, rng: &mut Rng) -> Vec<u8> {
    let mut image = media.durable_image().expect("a media with a durable image");
    let now = media.snapshot();
    for (d, v) in image.chunks_mut(4096).zip(now.chunks(4096)) {
        if d != v && rng.percent(50) {
            d.copy_from_slice(v);
        }
    }
    image
}
