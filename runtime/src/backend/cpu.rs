//! The CPU backends: the networks run on one of two engines ([`CpuEngine`]), bevrt's CPU
//! references do preprocess, the view transform and postprocess.
//!
//! - `cpu-plan`: each network lowered to the kernel plan (FP32 activations, INT8 where Q/DQ
//!   quantized) on bevrt's own CPU kernels ([`bevrt_kernels::cpu`]); nothing allocated per
//!   frame, per-layer times for `bevrt bench`.
//! - `cpu`: tract-onnx (shapes fixed and optimised once at load); every ONNX op it knows.
//!
//! `auto` takes the plan when every network of the bundle lowers, else tract, naming the
//! nodes that kept it off the plan.

use super::{Backend, BackendOptions};
use crate::frame::Frame;
use crate::postprocess::{self, FrameResult, OutputTensor};
use crate::preprocess::PreprocessPlan;
use anyhow::Context;
use bevrt_models::{Bundle, EmbeddingNorm, InputSpec, OutputKind, Task};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// A network loaded for the bundle's fixed input shape, ready to run, on one of two engines.
pub struct CpuNetwork {
    engine: Engine,
    pub threads: usize,
    pub input_shape: Vec<usize>,
    pub output_names: Vec<String>,
    pub output_shapes: Vec<Vec<usize>>,
    pub ops: Vec<String>,
}

/// Which engine runs a network on the CPU.
enum Engine {
    /// tract-onnx: typed and optimised once at load; every ONNX op it knows.
    Tract {
        plan: Arc<TypedSimplePlan>,
        state: Box<TypedSimpleState>,
        executor: Executor,
    },
    /// bevrt's kernel plan on its own CPU kernels ([`bevrt_kernels::cpu`]): the ops the
    /// plan lowers, no allocation per run.
    Plan(Box<bevrt_kernels::cpu::CpuPlan>),
}

use tract_linalg::multithread::{Executor, multithread_tract_scope};

/// Run a plan network on the input in its arena and read every output.
fn run_plan(
    p: &mut bevrt_kernels::cpu::CpuPlan,
    outputs: &mut [OutputTensor],
) -> anyhow::Result<()> {
    p.run();
    for (k, o) in outputs.iter_mut().enumerate() {
        p.output_into(k, &mut o.data)
            .map_err(|e| anyhow::anyhow!("output '{}': {e}", o.name))?;
    }
    Ok(())
}

/// A rayon pool of `threads` for tract's matrix kernels (one per thread count per process).
fn executor(threads: usize) -> Executor {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static POOLS: Mutex<Option<HashMap<usize, Executor>>> = Mutex::new(None);
    if threads <= 1 {
        return Executor::SingleThread;
    }
    let mut g = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(HashMap::new)
        .entry(threads)
        .or_insert_with(|| Executor::multithread_with_name(threads, "bevrt-cpu"))
        .clone()
}

impl CpuNetwork {
    /// Load an ONNX file with input 0 fixed to `shape` (f32).
    pub fn load(path: &Path, shape: &[usize]) -> anyhow::Result<CpuNetwork> {
        Self::load_with(path, shape, &Default::default())
    }

    /// [`CpuNetwork::load`] with front-end choices (e.g. integer kernels for Q/DQ convs).
    pub fn load_with(
        path: &Path,
        shape: &[usize],
        opts: &bevrt_models::LegalizeOptions,
    ) -> anyhow::Result<CpuNetwork> {
        if !path.is_file() {
            anyhow::bail!("{}: model file not found", path.display());
        }
        let model = bevrt_models::load_for_tract(path, opts)?;
        let ops: Vec<String> = {
            let mut v: Vec<String> = vec![];
            for n in model.nodes() {
                let name = n.op().name().to_string();
                if !v.contains(&name) {
                    v.push(name);
                }
            }
            v
        };
        // A panic inside tract's optimiser on a malformed graph is an error, not an abort.
        let model = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model
                .with_input_fact(0, f32::fact(shape).into())
                .and_then(|m| m.into_optimized())
        }))
        .unwrap_or_else(|p| {
            Err(tract_onnx::prelude::TractError::msg(format!(
                "the ONNX engine failed on this graph: {}",
                crate::panics::panic_message(p.as_ref())
            )))
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot prepare for input shape {shape:?}: {e:#}",
                path.display()
            )
        })?;
        let mut output_names = vec![];
        let mut output_shapes = vec![];
        for o in model.output_outlets()? {
            output_names.push(model.node(o.node).name.clone());
            let fact = model.outlet_fact(*o)?;
            let s = fact
                .shape
                .as_concrete()
                .with_context(|| {
                    format!(
                        "{}: output shape {:?} is not static",
                        path.display(),
                        fact.shape
                    )
                })?
                .to_vec();
            output_shapes.push(s);
        }
        let plan = model.into_runnable()?;
        let state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
        Ok(CpuNetwork {
            engine: Engine::Tract {
                plan,
                state: Box::new(state),
                executor: Executor::SingleThread,
            },
            threads: 1,
            input_shape: shape.to_vec(),
            output_names,
            output_shapes,
            ops,
        })
    }

    /// Lower an ONNX file to a kernel plan (FP32 activations, INT8 where it is Q/DQ
    /// quantized) with input 0 fixed to `shape`, for bevrt's CPU kernels. Refuses, naming
    /// the nodes, what the plan cannot run.
    pub fn load_plan(path: &Path, shape: &[usize]) -> anyhow::Result<CpuNetwork> {
        use bevrt_kernels::cpu::{CpuPlan, isa::Isa, pool};
        if !path.is_file() {
            anyhow::bail!("{}: model file not found", path.display());
        }
        let plan = crate::lower::lower_network(
            path,
            shape.to_vec(),
            &crate::lower::LowerOptions {
                float: bevrt_kernels::plan::DType::F32,
            },
        )?;
        let output_names = plan
            .outputs
            .iter()
            .map(|&t| plan.tensors[t].name.clone())
            .collect();
        let output_shapes = plan
            .outputs
            .iter()
            .map(|&t| plan.tensors[t].shape.clone())
            .collect();
        let ops = plan
            .kernel_counts()
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect();
        let engine = CpuPlan::load(plan, pool::shared(1), Isa::detect())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(CpuNetwork {
            engine: Engine::Plan(Box::new(engine)),
            threads: 1,
            input_shape: shape.to_vec(),
            output_names,
            output_shapes,
            ops,
        })
    }

    pub fn is_plan(&self) -> bool {
        matches!(self.engine, Engine::Plan(_))
    }

    /// Which engine runs this network, for logs: `tract` or `plan (ISA)`.
    pub fn engine_name(&self) -> String {
        match &self.engine {
            Engine::Tract { .. } => "tract".into(),
            Engine::Plan(p) => format!("plan ({})", p.isa().name()),
        }
    }

    /// The plan engine's worker pool (`None` on tract), for stages around the networks.
    pub fn worker_pool(&self) -> Option<&bevrt_kernels::cpu::pool::WorkerPool> {
        match &self.engine {
            Engine::Plan(p) => Some(p.pool()),
            Engine::Tract { .. } => None,
        }
    }

    /// Per-step time of a plan network since load (`None` on tract).
    pub fn profile(&self) -> Option<Vec<bevrt_kernels::cpu::StepProfile>> {
        match &self.engine {
            Engine::Plan(p) => Some(p.profile()),
            Engine::Tract { .. } => None,
        }
    }

    /// Forget the per-step times so far (after warm-up).
    pub fn reset_profile(&mut self) {
        if let Engine::Plan(p) = &mut self.engine {
            p.reset_profile();
        }
    }

    /// Where the plan engine reads the network's input, so the stage before it (preprocess,
    /// the view transform) writes there and no copy is made; `None` on tract, which takes
    /// its input per run.
    pub fn input_slot(&mut self) -> Option<&mut [f32]> {
        match &mut self.engine {
            Engine::Plan(p) => Some(p.input_mut(0)),
            Engine::Tract { .. } => None,
        }
    }

    /// Run on what was written into [`CpuNetwork::input_slot`] (plan engine), or on
    /// `staged` (tract, which has no slot: its input lives in the caller's buffer).
    pub fn run_staged(
        &mut self,
        staged: &[f32],
        outputs: &mut [OutputTensor],
    ) -> anyhow::Result<()> {
        match &mut self.engine {
            Engine::Plan(p) => run_plan(p, outputs),
            Engine::Tract { .. } => self.run(staged, outputs),
        }
    }

    /// Run on `input` (length = product of the input shape), copying outputs into `outputs`.
    pub fn run(&mut self, input: &[f32], outputs: &mut [OutputTensor]) -> anyhow::Result<()> {
        match &mut self.engine {
            Engine::Plan(p) => {
                let dst = p.input_mut(0);
                if dst.len() != input.len() {
                    anyhow::bail!(
                        "input has {} values, the network expects {}",
                        input.len(),
                        dst.len()
                    );
                }
                dst.copy_from_slice(input);
                run_plan(p, outputs)
            }
            Engine::Tract {
                state, executor, ..
            } => {
                let t = Tensor::from_shape(&self.input_shape, input)?;
                let ex = executor.clone();
                let res = multithread_tract_scope(ex, || state.run(tvec![t.into()]))?;
                for (o, r) in outputs.iter_mut().zip(res.iter()) {
                    let r = r.cast_to::<f32>()?;
                    let view = r.try_as_plain_ram()?;
                    let s = view.as_slice::<f32>()?;
                    if o.data.len() != s.len() {
                        anyhow::bail!(
                            "output '{}' has {} values, expected {}",
                            o.name,
                            s.len(),
                            o.data.len()
                        );
                    }
                    o.data.copy_from_slice(s);
                }
                Ok(())
            }
        }
    }

    /// Use `threads` for the matrix kernels; 0 = measure 1 against all cores on this machine
    /// now and keep the faster (small networks on a busy 2-core box often lose with threads).
    pub fn set_threads(&mut self, threads: usize) -> anyhow::Result<()> {
        let all = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if threads > 0 {
            self.threads = threads;
            match &mut self.engine {
                Engine::Tract { executor: e, .. } => *e = executor(threads),
                Engine::Plan(p) => p.set_pool(bevrt_kernels::cpu::pool::shared(threads)),
            }
            return Ok(());
        }
        if all == 1 {
            return self.set_threads(1);
        }
        let input = vec![0f32; self.input_shape.iter().product()];
        let mut outs = self.output_buffers();
        let mut best = (f64::INFINITY, 1);
        for t in [1, all] {
            self.set_threads(t)?;
            let mut times = vec![];
            let start = std::time::Instant::now();
            while times.len() < 5 || (times.len() < 40 && start.elapsed().as_millis() < 300) {
                let t0 = std::time::Instant::now();
                self.run(&input, &mut outs)?;
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(|a, b| a.total_cmp(b));
            let median = times[times.len() / 2];
            log::debug!("cpu threads {t}: median {:.3} ms", median * 1e3);
            if median < best.0 {
                best = (median, t);
            }
        }
        log::info!(
            "cpu backend: {} thread(s) is faster here ({:.2} ms)",
            best.1,
            best.0 * 1e3
        );
        self.set_threads(best.1)
    }

    /// tract's runnable plan (`None` on the plan engine).
    pub fn tract_plan(&self) -> Option<&Arc<TypedSimplePlan>> {
        match &self.engine {
            Engine::Tract { plan, .. } => Some(plan),
            Engine::Plan(_) => None,
        }
    }

    /// Empty output tensors sized for this network.
    pub fn output_buffers(&self) -> Vec<OutputTensor> {
        self.output_names
            .iter()
            .zip(&self.output_shapes)
            .map(|(n, s)| OutputTensor {
                name: n.clone(),
                shape: s.clone(),
                data: vec![0.0; s.iter().product()],
            })
            .collect()
    }
}

/// Which engine runs the bundle's networks on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuEngine {
    /// tract-onnx (every ONNX op it knows; the conformance oracle).
    Tract,
    /// bevrt's kernel plan on its own CPU kernels; an error when a network does not lower.
    Plan,
    /// The plan when every network of the bundle lowers, else tract (saying why).
    PlanOrTract,
}

/// Load one network of a bundle on `engine` (`Tract` or `Plan`).
fn load_net(
    engine: CpuEngine,
    path: &Path,
    shape: &[usize],
    legal: &bevrt_models::LegalizeOptions,
) -> anyhow::Result<CpuNetwork> {
    match engine {
        CpuEngine::Plan => CpuNetwork::load_plan(path, shape),
        _ => CpuNetwork::load_with(path, shape, legal),
    }
}

pub struct CpuBackend {
    engine: CpuEngine,
    task: Task,
    spec: InputSpec,
    output_kind: OutputKind,
    norm: EmbeddingNorm,
    plan: Option<PreprocessPlan>,
    /// tract's input tensor (empty on the plan engine, which keeps its own).
    input: Vec<f32>,
    net: CpuNetwork,
    outputs: Vec<OutputTensor>,
    threads: usize,
    /// `bev` bundles: view transform and head after the encoder (`net`).
    bev: Option<BevStage>,
    /// `features`/`classify` bundles with an AFV tail or a probe head after `net`.
    feature: Option<FeatureStage>,
    /// `embedding_stats`: per-dimension mean and std.
    stats: Option<super::EmbeddingStats>,
}

/// What turns the network's outputs into the vector of a `features` bundle with an AFV tail
/// (the Fisher op of [`crate::afv`]), and, for probe bundles, the classifier on that vector.
pub struct FeatureStage {
    net_out: Vec<OutputTensor>,
    afv: Option<AfvOp>,
    probe: Option<CpuNetwork>,
    /// The vector when a probe reads it (empty otherwise: it is written to the output).
    vector: Vec<f32>,
    dim: usize,
}

struct AfvOp {
    tail: super::AfvTail,
    /// ∂D/∂z2 scratch.
    delta: Vec<f32>,
}

impl FeatureStage {
    fn load(
        bundle: &Bundle,
        net: &CpuNetwork,
        engine: CpuEngine,
        opts: &bevrt_models::LegalizeOptions,
    ) -> anyhow::Result<Option<FeatureStage>> {
        let m = &bundle.manifest;
        let probe_path = bundle.model_path("probe");
        if m.afv.is_none() && probe_path.is_none() {
            return Ok(None);
        }
        let net_out = net.output_buffers();
        let afv = match &m.afv {
            None => None,
            Some(_) => {
                let tail = super::AfvTail::load(bundle, &net.output_shapes)?;
                Some(AfvOp {
                    delta: vec![0.0; tail.geom.z2_len()],
                    tail,
                })
            }
        };
        let dim = match &afv {
            Some(a) => a.tail.geom.dim(),
            None => net_out[0].data.len(),
        };
        let probe = match probe_path {
            Some(p) => Some(load_net(engine, &p, &[1, dim], opts)?),
            None => None,
        };
        Ok(Some(FeatureStage {
            net_out,
            afv,
            vector: vec![0.0; if probe.is_some() { dim } else { 0 }],
            probe,
            dim,
        }))
    }

    /// The bundle's outputs: the probe's, else the vector as `[1, dim]`.
    fn output_buffers(&self) -> Vec<OutputTensor> {
        match &self.probe {
            Some(p) => p.output_buffers(),
            None => vec![OutputTensor {
                name: if self.afv.is_some() {
                    "afv".into()
                } else {
                    self.net_out[0].name.clone()
                },
                shape: vec![1, self.dim],
                data: vec![0.0; self.dim],
            }],
        }
    }

    fn run(
        &mut self,
        net: &mut CpuNetwork,
        input: &[f32],
        out: &mut [OutputTensor],
    ) -> anyhow::Result<()> {
        net.run_staged(input, &mut self.net_out)?;
        // The vector goes straight into the bundle's output unless a probe reads it.
        let dst: &mut [f32] = match self.probe {
            Some(_) => &mut self.vector,
            None => &mut out[0].data,
        };
        match &mut self.afv {
            Some(a) => {
                let t = &a.tail;
                crate::afv::afv_score(
                    &t.geom,
                    &self.net_out[1].data,
                    &self.net_out[2].data,
                    &t.w3,
                    &mut a.delta,
                    dst,
                );
                if let Some((mean, diag)) = &t.fisher {
                    crate::afv::fisher_normalise(dst, mean, diag, t.eps, t.power, t.l2);
                }
            }
            None => dst.copy_from_slice(&self.net_out[0].data),
        }
        match &mut self.probe {
            Some(p) => p.run(&self.vector, out),
            None => Ok(()),
        }
    }
}

/// The part of a `bev` bundle after the encoder: the calibration-derived sampling table
/// (rebuilt in place when the calibration changes), the BEV feature buffer and the head.
pub struct BevStage {
    grid: bevrt_calib::BevGrid,
    classes: Vec<bevrt_models::ClassSpec>,
    geometry: super::CameraGeometry,
    features: Vec<OutputTensor>,
    bev_features: Vec<f32>,
    /// The depth-weighted lift's per-frame weights and taps (empty without depth bins).
    lift: bevrt_calib::LiftScratch,
    head: CpuNetwork,
    /// Total ns and calls of encoder, view transform and head.
    timing: [(u64, u64); 3],
}

impl BevStage {
    fn load(
        bundle: &Bundle,
        encoder: &CpuNetwork,
        engine: CpuEngine,
        opts: &bevrt_models::LegalizeOptions,
    ) -> anyhow::Result<BevStage> {
        let m = &bundle.manifest;
        let fshape = encoder
            .output_shapes
            .first()
            .context("encoder has no output")?;
        let super::BevGeometry {
            grid,
            table,
            channels: c,
            calibration,
        } = super::BevGeometry::load(bundle, fshape)?;
        let (gh, gw, z) = (grid.height(), grid.width(), grid.levels());
        let head_path = bundle
            .model_path("head")
            .context("bundle has no 'head' file")?;
        let head = load_net(engine, &head_path, &[1, c * z, gh, gw], opts)?;
        let hs = head.output_shapes.first().context("head has no output")?;
        if hs[..] != [1, m.classes.len(), gh, gw] {
            anyhow::bail!(
                "{}: head output {hs:?} is not (1, {} classes, {gh}, {gw})",
                head_path.display(),
                m.classes.len()
            );
        }
        Ok(BevStage {
            features: encoder.output_buffers(),
            // the plan engine's head reads the view transform's output in place
            bev_features: if head.is_plan() {
                vec![]
            } else {
                vec![0.0; c * z * gh * gw]
            },
            lift: bevrt_calib::LiftScratch::new(&table),
            grid,
            classes: m.classes.clone(),
            geometry: super::CameraGeometry::new(table, calibration),
            head,
            timing: [(0, 0); 3],
        })
    }

    pub fn table(&self) -> &bevrt_calib::SamplingTable {
        &self.geometry.table
    }
}

/// The view transform (plain or depth-weighted, as the table says) from the encoder's output
/// `f` into the head's input `bev`, the channels split over the plan engine's threads. The
/// lift's per-frame weights are one pass over the table; the gather is the plain transform's.
fn lift_to_bev(
    t: &bevrt_calib::SamplingTable,
    f: &[f32],
    lift: &mut bevrt_calib::LiftScratch,
    pool: Option<&bevrt_kernels::cpu::pool::WorkerPool>,
    bev: &mut [f32],
) -> anyhow::Result<()> {
    use bevrt_calib::bev;
    let plane = t.feat_w * t.feat_h;
    let context = bev::lift_context_channels(t, f.len())?;
    if context * t.levels * t.grid_w * t.grid_h != bev.len() {
        anyhow::bail!("encoder output does not match the sampling table and the head");
    }
    let taps = if t.depth_bins > 0 {
        lift.fit(t);
        bev::depth_softmax(&f[context * plane..], t.depth_bins, &mut lift.depth_weight);
        let dw = &lift.depth_weight;
        match pool {
            Some(pool) if pool.threads() > 1 => {
                let chunk = t.len().div_ceil(pool.threads());
                pool.for_each_chunk_mut(&mut lift.taps, chunk, &|i, out| {
                    bev::depth_weighted_taps_from(t, dw, i * chunk, out)
                });
            }
            _ => bev::depth_weighted_taps(t, dw, &mut lift.taps),
        }
        &lift.taps
    } else {
        &t.taps
    };
    match pool {
        Some(pool) if pool.threads() > 1 => {
            let per_channel = t.levels * t.grid_w * t.grid_h;
            let block = bev::VIEW_TRANSFORM_BLOCK;
            pool.for_each_chunk_mut(bev, per_channel * block, &|i, out| {
                bev::gather_channels(t, taps, f, i * block, out)
            });
        }
        _ => bev::gather_channels(t, taps, f, 0, bev),
    }
    Ok(())
}

impl CpuBackend {
    /// The bundle on tract.
    pub fn load(bundle: &Bundle, opts: &BackendOptions) -> anyhow::Result<CpuBackend> {
        Self::load_engine(bundle, opts, CpuEngine::Tract)
    }

    /// The bundle on `engine`; `PlanOrTract` logs which nodes kept it off the plan.
    pub fn load_engine(
        bundle: &Bundle,
        opts: &BackendOptions,
        engine: CpuEngine,
    ) -> anyhow::Result<CpuBackend> {
        if engine != CpuEngine::PlanOrTract {
            return Self::load_one(bundle, opts, engine);
        }
        match Self::load_one(bundle, opts, CpuEngine::Plan) {
            Ok(b) => Ok(b),
            Err(e) => {
                log::info!("cpu: bevrt's kernel plan cannot run this bundle ({e:#}); using tract");
                Self::load_one(bundle, opts, CpuEngine::Tract)
            }
        }
    }

    fn load_one(
        bundle: &Bundle,
        opts: &BackendOptions,
        engine: CpuEngine,
    ) -> anyhow::Result<CpuBackend> {
        let m = &bundle.manifest;
        let role = if m.task == Task::Bev {
            "encoder"
        } else {
            "model"
        };
        let path = bundle
            .model_path(role)
            .with_context(|| format!("bundle has no '{role}' file"))?;
        let legal = bevrt_models::LegalizeOptions {
            integer_kernels: opts.int8_kernels,
        };
        let mut net = load_net(engine, &path, &m.input.shape(), &legal)?;
        net.set_threads(opts.threads)?;
        let mut bev = None;
        if m.task == Task::Bev {
            let mut stage = BevStage::load(bundle, &net, engine, &legal)?;
            stage.head.set_threads(net.threads)?;
            bev = Some(stage);
        }
        let mut feature = match m.task {
            Task::Bev => None,
            _ => FeatureStage::load(bundle, &net, engine, &legal)?,
        };
        if let Some(p) = feature.as_mut().and_then(|f| f.probe.as_mut()) {
            p.set_threads(net.threads)?;
        }
        let stats = super::EmbeddingStats::load(bundle)?;
        let outputs = match (&bev, &feature) {
            (Some(b), _) => b.head.output_buffers(),
            (None, Some(f)) => f.output_buffers(),
            (None, None) => net.output_buffers(),
        };
        Ok(CpuBackend {
            engine,
            task: m.task,
            spec: m.input.clone(),
            output_kind: m.outputs[0].kind,
            norm: m.embedding_norm,
            plan: None,
            // tract's input; the plan engine keeps its own (see `input_buffer`)
            input: if net.is_plan() {
                vec![]
            } else {
                vec![0.0; m.input.numel()]
            },
            threads: net.threads,
            net,
            outputs,
            bev,
            feature,
            stats,
        })
    }

    /// The latest raw outputs of each network by role (`model`, or `encoder` then `head`),
    /// extra outputs included: tools that observe activations (the quantizer's calibration)
    /// read them after `infer`.
    pub fn network_outputs(&self) -> Vec<(&'static str, &[OutputTensor])> {
        match (&self.bev, &self.feature) {
            (Some(b), _) => vec![("encoder", &b.features), ("head", &self.outputs)],
            (None, Some(f)) => vec![("model", &f.net_out)],
            (None, None) => vec![("model", &self.outputs)],
        }
    }

    /// Take an already preprocessed tensor (the bundle's input shape) as the next input,
    /// instead of `preprocess` on a frame.
    pub fn set_input(&mut self, tensor: &[f32]) -> anyhow::Result<()> {
        let shape = self.spec.shape();
        let dst = self.input_buffer();
        if tensor.len() != dst.len() {
            anyhow::bail!(
                "input tensor has {} values, the bundle's input {shape:?} needs {}",
                tensor.len(),
                dst.len()
            );
        }
        dst.copy_from_slice(tensor);
        Ok(())
    }

    /// Where the next input goes: the plan engine's own input tensor, or (tract) `input`.
    fn input_buffer(&mut self) -> &mut [f32] {
        match self.net.input_slot() {
            Some(slot) => slot,
            None => &mut self.input,
        }
    }

    /// The BEV stage (`bev` bundles only), for tools that inspect the sampling table.
    pub fn bev_stage(&self) -> Option<&BevStage> {
        self.bev.as_ref()
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        let engine = match self.engine {
            CpuEngine::Plan => format!("cpu-plan (bevrt kernels, {}", self.net.engine_name()),
            _ => "cpu (tract-onnx 0.23".to_string(),
        };
        format!(
            "{engine}, {} thread{}, input {:?})",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.net.input_shape
        )
    }

    fn layer_profile(&self) -> Vec<(&'static str, bevrt_kernels::cpu::StepProfile)> {
        let mut nets: Vec<(&'static str, &CpuNetwork)> = vec![];
        match (&self.bev, &self.feature) {
            (Some(b), _) => nets.extend([("encoder", &self.net), ("head", &b.head)]),
            (None, Some(f)) => {
                nets.push(("model", &self.net));
                if let Some(p) = &f.probe {
                    nets.push(("probe", p));
                }
            }
            (None, None) => nets.push(("model", &self.net)),
        }
        nets.into_iter()
            .flat_map(|(role, n)| {
                n.profile()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |p| (role, p))
            })
            .collect()
    }

    fn cpu_threads(&self) -> Option<usize> {
        Some(self.threads)
    }

    fn reset_layer_profile(&mut self) {
        self.net.reset_profile();
        if let Some(b) = &mut self.bev {
            b.head.reset_profile();
        }
        if let Some(p) = self.feature.as_mut().and_then(|f| f.probe.as_mut()) {
            p.reset_profile();
        }
    }

    fn preprocess(&mut self, frame: &Frame) -> anyhow::Result<()> {
        let size = (frame.width, frame.height);
        if self.plan.as_ref().map(|p| p.input_size()) != Some(size) {
            // First frame, or the camera changed resolution: new taps (allocates, rare).
            log::info!(
                "preprocess: frames are {}x{} {}",
                size.0,
                size.1,
                frame.format
            );
            self.plan = Some(PreprocessPlan::new(&self.spec, size.0, size.1));
        }
        let dst = match self.net.input_slot() {
            Some(slot) => slot,
            None => &mut self.input,
        };
        self.plan.as_ref().expect("plan set above").run(frame, dst);
        Ok(())
    }

    fn infer(&mut self) -> anyhow::Result<()> {
        if let Some(f) = &mut self.feature {
            return f.run(&mut self.net, &self.input, &mut self.outputs);
        }
        match &mut self.bev {
            None => self.net.run_staged(&self.input, &mut self.outputs),
            Some(b) => {
                let t0 = std::time::Instant::now();
                self.net.run_staged(&self.input, &mut b.features)?;
                let t1 = std::time::Instant::now();
                // straight into the head's input on the plan engine
                let bev = match b.head.input_slot() {
                    Some(slot) => slot,
                    None => &mut b.bev_features,
                };
                let (t, f) = (&b.geometry.table, &b.features[0].data);
                lift_to_bev(t, f, &mut b.lift, self.net.worker_pool(), bev)?;
                let t2 = std::time::Instant::now();
                b.head.run_staged(&b.bev_features, &mut self.outputs)?;
                let t3 = std::time::Instant::now();
                for (acc, d) in b.timing.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                    acc.0 += d.as_nanos() as u64;
                    acc.1 += 1;
                }
                Ok(())
            }
        }
    }

    fn postprocess(&mut self, out: &mut FrameResult) -> anyhow::Result<()> {
        for (d, s) in out.outputs.iter_mut().zip(&self.outputs) {
            d.data.copy_from_slice(&s.data);
        }
        let first = &self.outputs[0].data;
        if self.task != Task::Bev {
            // classify / features report a vector; a BEV map's logits stay in `outputs` only.
            if out.vector.len() != first.len() {
                out.vector.resize(first.len(), 0.0); // only for a result made elsewhere
            }
            out.vector.copy_from_slice(first);
        }
        match self.task {
            Task::Classify => {
                if self.output_kind == OutputKind::Logits {
                    postprocess::softmax_in_place(&mut out.vector);
                }
                out.top = postprocess::argmax(&out.vector);
            }
            Task::Features => {
                if let Some(st) = &self.stats {
                    st.apply(&mut out.vector)?;
                }
                postprocess::normalise_embedding(&mut out.vector, self.norm)
            }
            Task::Bev => {
                let b = self
                    .bev
                    .as_ref()
                    .expect("bev stage loaded with a bev bundle");
                let (h, w) = (b.grid.height(), b.grid.width());
                out.map_width = w;
                out.map_height = h;
                postprocess::bev_argmax(first, b.classes.len(), h, w, &mut out.class_map);
                for (c, &v) in out.class_map.iter_mut().zip(&b.geometry.visible) {
                    if !v {
                        *c = postprocess::UNSEEN;
                    }
                }
                postprocess::colourise(&out.class_map, &b.classes, &mut out.color_map);
            }
        }
        Ok(())
    }

    fn new_result(&self) -> FrameResult {
        let outs = match (&self.bev, &self.feature) {
            (Some(b), _) => b.head.output_buffers(),
            (None, Some(f)) => f.output_buffers(),
            (None, None) => self.net.output_buffers(),
        };
        let mut r = FrameResult::new(self.task, outs);
        if self.bev.is_none() {
            r.vector = vec![0.0; self.outputs[0].data.len()];
        }
        if let Some(b) = &self.bev {
            let cells = b.grid.height() * b.grid.width();
            r.class_map = vec![0; cells];
            r.color_map = vec![0; cells * 3];
            r.map_width = b.grid.width();
            r.map_height = b.grid.height();
        }
        r
    }

    fn sub_stages(&self) -> Vec<(&'static str, u64, u64)> {
        match &self.bev {
            Some(b) => ["encoder", "view_transform", "bev_head"]
                .into_iter()
                .zip(b.timing)
                .map(|(n, (ns, c))| (n, ns, c))
                .collect(),
            None => Vec::new(),
        }
    }

    fn apply_calibration(
        &mut self,
        c: &bevrt_calib::Calibration,
        origin: &str,
    ) -> anyhow::Result<String> {
        let (_, _, height, pitch, _, _) = c.extrinsics.to_angles();
        let summary = format!(
            "{origin}: camera {}x{} fx {:.2}, mounted {height:.3} m high, pitch {pitch:.2} deg",
            c.camera.width(),
            c.camera.height(),
            c.camera.fx(),
        );
        let Some(b) = &mut self.bev else {
            return Ok(format!(
                "{summary}; a {} bundle uses no camera geometry",
                self.task
            ));
        };
        let t0 = std::time::Instant::now();
        b.geometry
            .rebuild(&b.grid, c)
            .with_context(|| format!("{origin}: sampling table"))?;
        Ok(format!(
            "{summary}; sampling table rebuilt in {:.1} ms ({:.0} % valid)",
            t0.elapsed().as_secs_f64() * 1e3,
            b.geometry.table.valid_fraction() * 100.0
        ))
    }

    fn calibration(&self) -> Option<&bevrt_calib::Calibration> {
        self.bev.as_ref().map(|b| &b.geometry.calibration)
    }
}
