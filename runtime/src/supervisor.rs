//! Model updates from an A/B bundle store (`bevrt_models::store`) while the pipeline runs.
//!
//! - **Start**: load the active slot (digests, signature, recorded manifest digest), open its
//!   backend, run its self-test. A slot that fails any of these is rolled back to the previous
//!   one, with the reason in the store's journal; only when nothing loads does `bevrt` stop.
//! - **While running**: the store is polled between frames. A newly deployed slot is loaded,
//!   verified and self-tested on a background thread (frames keep flowing), then swapped in
//!   between two frames. The old backend is kept in memory during the new one's trial.
//! - **Trial**: a new bundle must process `trial_frames` frames with at most `max_errors`
//!   inference errors. Then the store confirms it and the old backend is dropped; otherwise
//!   the old backend is swapped back at once and the store rolls back.
//!
//! The pipeline only calls [`ModelUpdates`]; it knows nothing of stores.

use crate::backend::{self, Backend, BackendKind, BackendOptions};
use crate::selftest;
use bevrt_models::Task;
use bevrt_models::signature::PublicKey;
use bevrt_models::store::{ActiveBundle, Store};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What happened between two frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateEvent {
    /// A new backend took over.
    Swapped,
    /// The backend on trial failed; the previous one runs again (or is loading).
    RolledBack,
    /// A deployed bundle could not be loaded or failed its self-test; it never ran.
    Refused,
    /// The bundle on trial passed it.
    Confirmed,
}

/// The pipeline's view of model updates: called between frames on the inference thread.
pub trait ModelUpdates: Send {
    /// May replace `backend`; returns what happened, if anything.
    fn between_frames(&mut self, backend: &mut Box<dyn Backend>) -> Option<UpdateEvent>;
    /// The outcome of one frame on the current backend.
    fn frame_done(&mut self, ok: bool);
}

/// How backends are opened for store bundles.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub kind: BackendKind,
    pub options: BackendOptions,
    /// The calibration the pipeline watches (applied to every newly loaded backend).
    pub calibration: Option<PathBuf>,
    pub trust: Option<PublicKey>,
    /// Frames a new bundle must process before it is confirmed.
    pub trial_frames: u64,
    /// Inference errors tolerated during the trial.
    pub max_errors: u64,
}

/// A loaded, verified, self-tested slot.
pub struct Loaded {
    pub active: ActiveBundle,
    pub backend: Box<dyn Backend>,
    /// The self-test's summary (`None`: the bundle carries no test vectors).
    pub selftest: Option<String>,
}

/// Load the store's active slot as it is now: verify, open, calibrate, self-test.
pub fn load_active(store: &Store, cfg: &LoadConfig) -> anyhow::Result<Loaded> {
    let active = store.load_active(cfg.trust.as_ref())?;
    open_verified(active, cfg)
}

fn open_verified(active: ActiveBundle, cfg: &LoadConfig) -> anyhow::Result<Loaded> {
    let mut be = backend::open(cfg.kind, &active.bundle, &cfg.options)?;
    if let Some(c) = &cfg.calibration {
        be.set_calibration(c)
            .map_err(|e| anyhow::anyhow!("calibration {}: {e:#}", c.display()))?;
    }
    let selftest = selftest::check(&mut *be, &active.bundle)?.map(|r| r.line());
    Ok(Loaded {
        active,
        backend: be,
        selftest,
    })
}

/// Load the active slot at start, rolling back (and journaling why) while it fails and the
/// store has something to fall back to.
pub fn start(store: &Store, cfg: &LoadConfig) -> anyhow::Result<Loaded> {
    loop {
        let state = store.state()?;
        match load_active(store, cfg) {
            Ok(l) => {
                log::info!(
                    "store: slot {} ({}){}{}",
                    l.active.slot,
                    l.active.bundle.label(),
                    if l.active.trial { ", on trial" } else { "" },
                    l.selftest
                        .as_deref()
                        .map(|s| format!("; self-test passed: {s}"))
                        .unwrap_or_else(|| "; no self-test vectors in the bundle".into())
                );
                return Ok(l);
            }
            Err(e) => {
                let Some(s) = state else { return Err(e) };
                let reason = format!("slot {} failed to load: {e:#}", s.active);
                log::error!("store: {reason}");
                store
                    .rollback(s.generation, &reason)
                    .map_err(|r| anyhow::anyhow!("{r}"))?;
            }
        }
    }
}

struct Trial {
    generation: u64,
    frames: u64,
    errors: u64,
    /// The backend that ran before, kept for an instant rollback.
    previous: Option<Box<dyn Backend>>,
    label: String,
}

/// [`ModelUpdates`] over a bundle store.
pub struct StoreSupervisor {
    store: Store,
    cfg: LoadConfig,
    /// Slot and manifest digest of what runs now.
    running: (String, String),
    task: Task,
    output_lens: Vec<usize>,
    trial: Option<Trial>,
    loader: Option<JoinHandle<anyhow::Result<Loaded>>>,
    last_poll: Instant,
    poll_every: Duration,
}

impl StoreSupervisor {
    /// Supervise `first` (what [`start`] returned, now running in the pipeline).
    pub fn new(store: Store, cfg: LoadConfig, first: &Loaded) -> anyhow::Result<StoreSupervisor> {
        let result = first.backend.new_result();
        let running = running_id(&first.active)?;
        let trial = first.active.trial.then(|| Trial {
            generation: first.active.generation,
            frames: 0,
            errors: 0,
            previous: None,
            label: first.active.bundle.label(),
        });
        Ok(StoreSupervisor {
            store,
            cfg,
            running,
            task: result.task,
            output_lens: result.outputs.iter().map(|o| o.data.len()).collect(),
            trial,
            loader: None,
            last_poll: Instant::now(),
            poll_every: Duration::from_millis(250),
        })
    }

    fn spawn_loader(&mut self) {
        let (store, cfg) = (self.store.clone(), self.cfg.clone());
        self.loader = std::thread::Builder::new()
            .name("bevrt-model-load".into())
            .spawn(move || load_active(&store, &cfg))
            .map_err(|e| log::error!("store: cannot start the loader thread: {e}"))
            .ok();
    }

    /// The trial failed: swap the old backend back (or load the previous slot) and roll back.
    fn roll_back(&mut self, backend: &mut Box<dyn Backend>, reason: String) -> UpdateEvent {
        let t = self.trial.take().expect("on trial");
        log::error!(
            "store: {} failed its trial: {reason}; rolling back",
            t.label
        );
        if let Err(e) = self.store.rollback(t.generation, &reason) {
            log::error!("store: {e}");
        }
        match t.previous {
            Some(prev) => {
                *backend = prev;
                if let Ok(Some(s)) = self.store.state() {
                    self.running = (s.active.clone(), slot_digest(&s, &s.active));
                }
            }
            None => self.spawn_loader(), // started on trial: load the fallback off-thread
        }
        UpdateEvent::RolledBack
    }

    /// A loader finished: swap in its backend (new trial) or record why it was refused.
    fn take_loaded(
        &mut self,
        backend: &mut Box<dyn Backend>,
        r: anyhow::Result<Loaded>,
    ) -> UpdateEvent {
        let loaded = r.and_then(|l| {
            let res = l.backend.new_result();
            let lens: Vec<usize> = res.outputs.iter().map(|o| o.data.len()).collect();
            if res.task != self.task || lens != self.output_lens {
                anyhow::bail!(
                    "{}: task {} with output sizes {lens:?}, the running bundle has {} with {:?}; restart bevrt to switch to it",
                    l.active.bundle.dir.display(),
                    res.task,
                    self.task,
                    self.output_lens
                );
            }
            Ok(l)
        });
        match loaded {
            Ok(l) => {
                log::info!(
                    "store: swapping in slot {} ({}){}",
                    l.active.slot,
                    l.active.bundle.label(),
                    l.selftest
                        .as_deref()
                        .map(|s| format!("; self-test passed: {s}"))
                        .unwrap_or_default()
                );
                self.running = running_id(&l.active).unwrap_or_default();
                let old = std::mem::replace(backend, l.backend);
                self.trial = l.active.trial.then(|| Trial {
                    generation: l.active.generation,
                    frames: 0,
                    errors: 0,
                    previous: Some(old),
                    label: l.active.bundle.label(),
                });
                UpdateEvent::Swapped
            }
            Err(e) => {
                let reason = format!("{e:#}");
                log::error!("store: update refused, the running bundle stays: {reason}");
                if let Ok(Some(s)) = self.store.state()
                    && s.trial
                    && (s.active.clone(), slot_digest(&s, &s.active)) != self.running
                    && let Err(r) = self.store.rollback(s.generation, &reason)
                {
                    log::error!("store: {r}");
                }
                UpdateEvent::Refused
            }
        }
    }

    /// Has the store's active slot moved away from what runs?
    fn store_moved(&mut self) -> bool {
        match self.store.state() {
            Ok(Some(s)) => (s.active.clone(), slot_digest(&s, &s.active)) != self.running,
            Ok(None) => false,
            Err(e) => {
                log::warn!("store: {e}");
                false
            }
        }
    }
}

/// One malloc arena for the whole process. glibc gives each thread that allocates its own
/// arena, and memory freed into one arena is not reused by another: a network built on the
/// loader thread and a sampling table rebuilt on the inference thread leave holes in two
/// arenas, and a long run's resident memory steps up with every calibration reload until the
/// next swap (measured: +776 KiB per reload, ±3 % per swap over a 1-hour soak; with one arena
/// the 2-minute soak returns to the same resident size after every swap). bevrt's threads
/// allocate nothing per frame, so the shared arena costs no contention. Call once at start,
/// before any thread exists.
pub fn single_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; no thread has started yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// After a swap two networks were alive at once; hand the freed pages of the old one back to
/// the system, or glibc keeps them as a high-water mark and a long run's resident memory
/// steps up with every early swap.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn slot_digest(s: &bevrt_models::store::StoreState, slot: &str) -> String {
    s.slots
        .get(slot)
        .map(|r| r.manifest_sha256.clone())
        .unwrap_or_default()
}

fn running_id(a: &ActiveBundle) -> anyhow::Result<(String, String)> {
    let m = a.bundle.dir.join(bevrt_models::bundle::MANIFEST_FILE);
    Ok((a.slot.clone(), bevrt_models::sha256_file(&m)?))
}

impl ModelUpdates for StoreSupervisor {
    fn between_frames(&mut self, backend: &mut Box<dyn Backend>) -> Option<UpdateEvent> {
        if let Some(t) = &self.trial {
            if t.errors > self.cfg.max_errors {
                let reason = format!(
                    "{} inference errors in its first {} frames (at most {} allowed)",
                    t.errors, t.frames, self.cfg.max_errors
                );
                return Some(self.roll_back(backend, reason));
            }
            if t.frames >= self.cfg.trial_frames {
                let t = self.trial.take().expect("on trial");
                let detail = format!("{} frames, {} inference errors", t.frames, t.errors);
                match self.store.confirm(t.generation, &detail) {
                    Ok(true) => log::info!("store: {} confirmed after {detail}", t.label),
                    Ok(false) => log::warn!("store: the store moved on; {} not confirmed", t.label),
                    Err(e) => log::error!("store: cannot confirm: {e}"),
                }
                drop(t); // the previous backend: its network, arena and buffers
                release_freed_memory();
                return Some(UpdateEvent::Confirmed);
            }
        }
        if self.loader.as_ref().is_some_and(|h| h.is_finished()) {
            let h = self.loader.take().expect("checked");
            let r = h.join().unwrap_or_else(|p| {
                Err(anyhow::anyhow!(
                    "loader panicked: {}",
                    crate::panics::panic_message(p.as_ref())
                ))
            });
            return Some(self.take_loaded(backend, r));
        }
        if self.loader.is_none()
            && self.trial.is_none()
            && self.last_poll.elapsed() >= self.poll_every
        {
            self.last_poll = Instant::now();
            if self.store_moved() {
                log::info!("store: a new bundle is active; loading it in the background");
                self.spawn_loader();
            }
        }
        None
    }

    fn frame_done(&mut self, ok: bool) {
        if let Some(t) = self.trial.as_mut() {
            t.frames += 1;
            t.errors += (!ok) as u64;
        }
    }
}
