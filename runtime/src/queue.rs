//! A bounded, fixed-capacity queue between pipeline threads (heapless storage: no
//! allocation after construction), with the two policies the pipeline needs: drop the oldest
//! item when full (live cameras), or block until there is room (files).

use heapless::Deque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub struct BoundedQueue<T, const N: usize> {
    inner: Mutex<Inner<T, N>>,
    not_empty: Condvar,
    not_full: Condvar,
}

struct Inner<T, const N: usize> {
    q: Deque<T, N>,
    closed: bool,
}

pub enum Pop<T> {
    Item(T),
    Timeout,
    /// Closed and drained.
    Closed,
}

impl<T, const N: usize> Default for BoundedQueue<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> BoundedQueue<T, N> {
    pub fn new() -> Self {
        BoundedQueue {
            inner: Mutex::new(Inner {
                q: Deque::new(),
                closed: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T, N>> {
        // A panicking peer must not take the pipeline down with a poisoned lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Push; when full, evict and return the oldest item (the caller recycles it).
    pub fn push_drop_oldest(&self, item: T) -> Option<T> {
        let mut g = self.lock();
        let evicted = if g.q.is_full() { g.q.pop_front() } else { None };
        let _ = g.q.push_back(item);
        drop(g);
        self.not_empty.notify_one();
        evicted
    }

    /// Push; when full, return the item back (the caller decides what to drop).
    pub fn try_push(&self, item: T) -> Result<(), T> {
        let mut g = self.lock();
        let r = g.q.push_back(item);
        drop(g);
        if r.is_ok() {
            self.not_empty.notify_one();
        }
        r
    }

    /// Push, waiting for room; returns the item if the queue was closed meanwhile.
    pub fn push_blocking(&self, item: T) -> Result<(), T> {
        let mut g = self.lock();
        loop {
            if g.closed {
                return Err(item);
            }
            if !g.q.is_full() {
                let _ = g.q.push_back(item);
                drop(g);
                self.not_empty.notify_one();
                return Ok(());
            }
            g = self.not_full.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Pop, waiting up to `timeout`.
    pub fn pop_timeout(&self, timeout: Duration) -> Pop<T> {
        let mut g = self.lock();
        loop {
            if let Some(x) = g.q.pop_front() {
                drop(g);
                self.not_full.notify_one();
                return Pop::Item(x);
            }
            if g.closed {
                return Pop::Closed;
            }
            let (g2, to) = self
                .not_empty
                .wait_timeout(g, timeout)
                .unwrap_or_else(|e| e.into_inner());
            g = g2;
            if to.timed_out() && g.q.is_empty() {
                return if g.closed { Pop::Closed } else { Pop::Timeout };
            }
        }
    }

    /// Pop without waiting.
    pub fn try_pop(&self) -> Option<T> {
        let mut g = self.lock();
        let x = g.q.pop_front();
        drop(g);
        if x.is_some() {
            self.not_full.notify_one();
        }
        x
    }

    /// No more pushes; poppers drain what is left, then see `Closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    pub fn len(&self) -> usize {
        self.lock().q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_oldest_evicts_front() {
        let q: BoundedQueue<u32, 2> = BoundedQueue::new();
        assert!(q.push_drop_oldest(1).is_none());
        assert!(q.push_drop_oldest(2).is_none());
        assert_eq!(q.push_drop_oldest(3), Some(1));
        assert!(matches!(q.try_pop(), Some(2)));
        assert!(matches!(q.try_pop(), Some(3)));
        assert!(q.try_pop().is_none());
    }

    #[test]
    fn blocking_push_waits_and_close_wakes() {
        use std::sync::Arc;
        let q: Arc<BoundedQueue<u32, 1>> = Arc::new(BoundedQueue::new());
        q.push_blocking(1).unwrap();
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.push_blocking(2));
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(
            q.pop_timeout(Duration::from_millis(100)),
            Pop::Item(1)
        ));
        assert!(t.join().unwrap().is_ok());
        assert!(matches!(
            q.pop_timeout(Duration::from_millis(100)),
            Pop::Item(2)
        ));
        q.close();
        assert!(matches!(
            q.pop_timeout(Duration::from_millis(10)),
            Pop::Closed
        ));
        assert!(q.push_blocking(3).is_err());
    }
}
