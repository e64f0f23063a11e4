//! Steady-state rendering allocates nothing (buffers are sized at construction).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn render_and_bev_allocate_nothing_per_frame() {
    let mut sim = bevrt_sim::Simulator::new(bevrt_sim::SimConfig::with_seed(4)).unwrap();
    let mut rgb = vec![0u8; sim.frame_bytes()];
    sim.render_frame(0, &mut rgb).unwrap();
    sim.bev_ground_truth();
    let before = ALLOCS.load(Ordering::Relaxed);
    let frames = 100u64;
    for n in 1..=frames {
        sim.render_frame(n * 3, &mut rgb).unwrap();
        sim.bev_ground_truth();
    }
    let n = ALLOCS.load(Ordering::Relaxed) - before;
    println!("{n} allocations in {frames} frames");
    assert_eq!(n, 0, "{n} allocations in {frames} frames");
}
