//! The process allocator of the `sharedisk` binary: the system allocator
//! for everything, except large blocks (the index's hash tables, of tens or
//! hundreds of MB on a loaded server), which get their own anonymous
//! mapping, aligned to 2 MiB and marked `MADV_HUGEPAGE`.
//!
//! Why: a kill -9 is seen by the lock manager (and by clients) when the
//! killed process's sockets close, and the kernel closes them only after it
//! has torn down the process's memory, page by page: about 25–30 ms per GB of
//! 4 KiB pages on the 2-core VM of README's numbers, ~3 ms per GB of
//! transparent huge pages (a probe freeing 1 GB: 25 ms against 2.9 ms). A
//! server's anonymous memory is mostly its indexes (its partitions' and its
//! standbys'), so in huge pages its failover no longer grows with its data.
//! The TLB covers more of the index too.
//!
//! `MADV_HUGEPAGE` is a hint: with transparent huge pages `never` (or not
//! built), the mapping is ordinary 4 KiB pages and everything still works.
//! With `enabled=madvise`, the usual default, a fault in such a region takes
//! a huge page, compacting memory first if `defrag` says so.
//!
//! Large means at least [`LARGE_BYTES_MIN`], 1 MiB: a hash table of about
//! 16 thousand keys or more (a partition of 50 MB of 1 KB values has 50
//! thousand). A block is rounded up to whole 2 MiB pages, so it wastes less
//! than 1 MiB at that size and less than 2 MiB (a smaller share) above; a
//! hash table's sizes are near powers of two (57 bytes a bucket here), so a
//! table wastes about a tenth.
//!
//! # Safety
//! The `GlobalAlloc` contract: `dealloc` and `realloc` receive a pointer
//! this allocator returned with the same layout, so whether a block is
//! large is decided by its layout alone, the same way at allocation and at
//! release. A large block is a mapping of exactly `round_up(size, 2 MiB)`
//! bytes starting at the returned (2 MiB-aligned) pointer; nothing else maps
//! or unmaps there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::ptr;

use rustix::mm::{Advice, MapFlags, ProtFlags, madvise, mmap_anonymous, munmap};

/// The size of a transparent huge page on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Blocks of at least this many bytes are mapped on their own, in huge pages.
pub const LARGE_BYTES_MIN: usize = 1 << 20;

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct HugePageAlloc;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE_BYTES_MIN && layout.align() <= HUGE_PAGE_BYTES
}

/// The mapped length of a large block of `size` bytes (None on overflow).
fn mapped_bytes(size: usize) -> Option<usize> {
    size.checked_next_multiple_of(HUGE_PAGE_BYTES)
}

/// A fresh, zeroed, 2 MiB-aligned mapping of `mapped_bytes(size)`, or null.
fn map_large(size: usize) -> *mut u8 {
    let Some(len) = mapped_bytes(size) else { return ptr::null_mut() };
    // Over-map by one huge page, then trim both ends to the aligned span.
    let Some(span) = len.checked_add(HUGE_PAGE_BYTES) else { return ptr::null_mut() };
    // SAFETY: a new private anonymous mapping, at an address of the kernel's choice.
    let base = match unsafe { mmap_anonymous(ptr::null_mut(), span, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE) } {
        Ok(p) => p as usize,
        Err(_) => return ptr::null_mut(),
    };
    let start = base.next_multiple_of(HUGE_PAGE_BYTES);
    let (head, tail) = (start - base, base + span - (start + len));
    // SAFETY: both trimmed ranges lie inside the mapping just made, outside
    // [start, start + len), and nothing has seen them. A failed trim only
    // leaves address space mapped (untouched, so no memory).
    unsafe {
        if head > 0 {
            let _ = munmap(base as *mut c_void, head);
        }
        if tail > 0 {
            let _ = munmap((start + len) as *mut c_void, tail);
        }
        // Best effort: EINVAL where transparent huge pages are not built.
        let _ = madvise(start as *mut c_void, len, Advice::LinuxHugepage);
    }
    start as *mut u8
}

/// # Safety
/// `ptr` came from [`map_large`] with this `size`, and is not used again.
unsafe fn unmap_large(ptr: *mut u8, size: usize) {
    let len = mapped_bytes(size).expect("a mapped block's size rounds up");
    // SAFETY: exactly the mapping `map_large` made for this block (caller's contract).
    let unmapped = unsafe { munmap(ptr.cast(), len) };
    assert!(unmapped.is_ok(), "munmap of a {len}-byte block failed: {unmapped:?}");
}

// SAFETY: see the module documentation: small blocks are System's, large
// ones are mappings of their own, told apart by layout alone.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) { map_large(layout.size()) } else { unsafe { System.alloc(layout) } }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A fresh anonymous mapping reads as zeros.
        if is_large(&layout) { map_large(layout.size()) } else { unsafe { System.alloc_zeroed(layout) } }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) { unsafe { unmap_large(ptr, layout.size()) } } else { unsafe { System.dealloc(ptr, layout) } }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded to the alignment, fits isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(&layout), is_large(&new_layout)) {
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            // The mapping already covers the new size.
            (true, true) if mapped_bytes(new_size) == mapped_bytes(layout.size()) => ptr,
            _ => {
                // SAFETY: `new_layout` has a non-zero size (large or not, it
                // was asked for by a caller that must not pass zero).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: distinct blocks, each valid for the bytes copied.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn large_blocks_are_aligned_zeroed_mappings_and_small_ones_are_the_systems() {
        let a = HugePageAlloc;
        for size in [LARGE_BYTES_MIN, LARGE_BYTES_MIN + 1, 3 * HUGE_PAGE_BYTES - 1, 37 << 20] {
            let l = layout(size, 16);
            let p = unsafe { a.alloc_zeroed(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE_PAGE_BYTES, 0, "{size}");
            let block = unsafe { std::slice::from_raw_parts_mut(p, size) };
            assert!(block.iter().all(|&b| b == 0));
            block.fill(0xa5);
            unsafe { a.dealloc(p, l) };
        }
        let l = layout(100, 8);
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        unsafe { a.dealloc(p, l) };
    }

    #[test]
    fn realloc_keeps_the_bytes_across_every_pair_of_kinds() {
        let a = HugePageAlloc;
        let sizes = [1000, LARGE_BYTES_MIN - 1, LARGE_BYTES_MIN, LARGE_BYTES_MIN + 5, 11 << 20, 3000];
        let mut size = sizes[0];
        let mut p = unsafe { a.alloc(layout(size, 8)) };
        let pattern = |i: usize| (i % 251) as u8;
        for i in 0..size {
            unsafe { *p.add(i) = pattern(i) };
        }
        for &next in &sizes[1..] {
            p = unsafe { a.realloc(p, layout(size, 8), next) };
            assert!(!p.is_null());
            let kept = size.min(next);
            let block = unsafe { std::slice::from_raw_parts_mut(p, next) };
            assert!(block[..kept].iter().enumerate().all(|(i, &b)| b == pattern(i)), "{size} -> {next}");
            for (i, b) in block.iter_mut().enumerate().skip(kept) {
                *b = pattern(i);
            }
            size = next;
        }
        unsafe { a.dealloc(p, layout(size, 8)) };
    }

    #[test]
    fn a_size_that_cannot_be_rounded_is_refused_not_wrapped() {
        assert_eq!(mapped_bytes(usize::MAX - 5), None);
        assert!(map_large(usize::MAX - HUGE_PAGE_BYTES).is_null());
    }

    #[test]
    fn an_over_aligned_large_block_is_left_to_the_system() {
        assert!(!is_large(&layout(LARGE_BYTES_MIN, 2 * HUGE_PAGE_BYTES)));
        assert!(is_large(&layout(LARGE_BYTES_MIN, HUGE_PAGE_BYTES)));
        assert!(!is_large(&layout(LARGE_BYTES_MIN - 1, 8)));
    }
}
