//! A persistent fork-join pool for the CPU engine: workers are spawned once, at load, and
//! every parallel step hands them one job (a function of the task index) without allocating
//! or spawning. The calling thread works too, so a pool of N threads has N - 1 workers.
//!
//! Workers spin briefly after a job (the next layer usually follows within microseconds),
//! then sleep on a condition variable, so an idle pipeline costs no CPU.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A job: called once per task index, with the index of the thread running it (0 is the
/// caller), so each thread can use its own scratch buffer.
pub type Job<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// How long an idle worker polls before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

struct Shared {
    generation: AtomicU64,
    /// The job of the current generation; written by `run` only while every worker is idle
    /// (see the protocol in `run`).
    job: UnsafeCell<Option<*const Job<'static>>>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that have not finished the current generation.
    busy: AtomicUsize,
    sleepers: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written by the thread inside `run` while no worker reads it (every
// worker has finished the previous generation: `busy` is 0), and only read by workers between
// the generation bump that publishes it (Release/Acquire) and their `busy` decrement.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct WorkerPool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Serialises callers: one job at a time (two networks of a bundle may share a pool).
    caller: Mutex<()>,
}

impl WorkerPool {
    /// A pool of `threads` threads in all (the caller included); 0 or 1 runs every job
    /// inline.
    pub fn new(threads: usize) -> WorkerPool {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .map(|w| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("bevrt-cpu-{w}"))
                    .spawn(move || worker(&s, w))
                    .expect("spawn a CPU engine worker")
            })
            .collect();
        WorkerPool {
            shared,
            workers,
            caller: Mutex::new(()),
        }
    }

    /// Threads that run a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Call `job(task, thread)` for every task in `0..tasks`, spread over the pool; returns
    /// when all are done. Allocates nothing.
    pub fn run(&self, tasks: usize, job: &Job<'_>) {
        if self.workers.is_empty() || tasks <= 1 {
            for t in 0..tasks {
                job(t, 0);
            }
            return;
        }
        let _one_caller = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: `busy` is 0 here (the previous `run` waited for it), so no worker reads
        // `job`; the lifetime is erased, but `run` does not return before every worker has
        // stopped using the job (the wait on `busy` below).
        unsafe {
            let erased: *const Job<'static> =
                std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job);
            *s.job.get() = Some(erased);
        }
        s.tasks.store(tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.busy.store(self.workers.len(), Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        take_tasks(s, job, 0);
        let mut spins = 0u32;
        while s.busy.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a CPU engine worker panicked inside a kernel");
        }
    }
}

/// The process's pool of `threads` threads, created on first use and kept: the networks of
/// a bundle (and every bundle loaded with the same count) share it, so their workers never
/// compete for cores.
pub fn shared(threads: usize) -> Arc<WorkerPool> {
    use std::collections::HashMap;
    static POOLS: Mutex<Option<HashMap<usize, Arc<WorkerPool>>>> = Mutex::new(None);
    let mut g = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(HashMap::new)
        .entry(threads.max(1))
        .or_insert_with(|| Arc::new(WorkerPool::new(threads)))
        .clone()
}

impl WorkerPool {
    /// `f(i, chunk)` for every `chunk`-long piece of `data` (the last may be shorter), spread
    /// over the pool; the pieces are disjoint, so each task gets its own `&mut`.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let n = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.run(n.div_ceil(chunk), &|i, _| {
            let (a, b) = (i * chunk, ((i + 1) * chunk).min(n));
            // SAFETY: task i alone touches data[a..b]; `run` returns after every task.
            let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(a), b - a) };
            f(i, piece)
        });
    }
}

/// A pointer handed to the pool's tasks, each of which uses a disjoint part of it.
struct SendPtr<T>(*mut T);
// SAFETY: see `for_each_chunk_mut`: every task works on its own range.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

fn take_tasks(s: &Shared, job: &Job<'_>, thread: usize) {
    let tasks = s.tasks.load(Ordering::Relaxed);
    loop {
        let t = s.next.fetch_add(1, Ordering::Relaxed);
        if t >= tasks {
            break;
        }
        job(t, thread);
    }
}

fn worker(s: &Shared, me: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new generation: spin a little, then sleep.
        let t0 = Instant::now();
        let mut polls = 0u32;
        loop {
            if s.generation.load(Ordering::Acquire) != seen || s.stop.load(Ordering::Relaxed) {
                break;
            }
            polls += 1;
            if !polls.is_multiple_of(64) || t0.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.generation.load(Ordering::SeqCst) == seen && !s.stop.load(Ordering::SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            break;
        }
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        seen = s.generation.load(Ordering::Acquire);
        // SAFETY: published before the generation bump we just observed; valid until we
        // decrement `busy` (see `WorkerPool::run`).
        let job = unsafe { (*s.job.get()).expect("a job is set with every generation") };
        let job: &Job<'_> = unsafe { &*job };
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            take_tasks(s, job, me);
        }));
        if ran.is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.busy.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_over_many_jobs() {
        let pool = WorkerPool::new(3);
        for round in 0..200 {
            let tasks = round % 17;
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|t, thread| {
                assert!(thread < 3);
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            if round % 50 == 0 {
                // let the workers fall asleep, then wake them
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}
