//! Counting heap allocations per thread, to prove the per-frame path allocates nothing.
//!
//! Install [`CountingAlloc`] as the global allocator (the `bevrt` binary and the allocation
//! tests do); the pipeline then reads [`thread_allocs`] around each stage and reports
//! allocations per frame for bevrt's own stages and for the backend call separately. Without
//! it installed, [`is_active`] is false and the counts are reported as not measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct CountingAlloc;

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Every thread's allocations together (worker pools allocate on their own threads).
static PROCESS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

#[inline]
fn bump() {
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    PROCESS.fetch_add(1, Ordering::Relaxed);
    if !ACTIVE.load(Ordering::Relaxed) {
        ACTIVE.store(true, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations (including reallocations) made by the calling thread so far.
pub fn thread_allocs() -> u64 {
    COUNT.try_with(|c| c.get()).unwrap_or(0)
}

/// Allocations by every thread of the process so far (for code that runs on worker
/// threads, e.g. the CPU engine's pool; meaningful when nothing else runs meanwhile).
pub fn process_allocs() -> u64 {
    PROCESS.load(Ordering::Relaxed)
}

/// Whether a [`CountingAlloc`] is the global allocator of this process.
pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}
