//! Runs ONNX backend node-test cases (`model.onnx` + `test_data_set_0/{input,output}_*.pb`)
//! through a backend and compares outputs.
//!
//! Many cases pass scales, sizes or zero points as runtime inputs while real exported models
//! hold them as constants; tract needs some of them constant to type the graph. The runner
//! therefore tries, in order: all inputs as typed runtime inputs; inputs after the first
//! folded into constants; all inputs folded. The mode that ran is reported per case.
//! Tolerance: floats `|a - b| <= 1e-5 + 1e-3 |b|` (ONNX's rtol, a looser atol for f32
//! accumulation order), NaN matches NaN; integers and booleans exactly.

use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::bail;
use tract_onnx::tract_hir;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Pass { mode: &'static str },
    Fail { reason: String },
    Skip { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SuiteSummary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

pub fn summarize(results: &[CaseResult]) -> SuiteSummary {
    let mut s = SuiteSummary::default();
    for r in results {
        match r.outcome {
            Outcome::Pass { .. } => s.passed += 1,
            Outcome::Fail { .. } => s.failed += 1,
            Outcome::Skip { .. } => s.skipped += 1,
        }
    }
    s
}

/// Case directories under `suite` whose name contains `filter`, sorted.
pub fn list_cases(suite: &Path, filter: Option<&str>) -> anyhow::Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(suite)
        .map_err(|e| anyhow::anyhow!("{}: cannot read suite directory: {e}", suite.display()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|d| d.path())
        .filter(|p| p.join("model.onnx").is_file())
        .filter(|p| {
            filter.is_none_or(|f| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(f))
            })
        })
        .collect();
    v.sort();
    if v.is_empty() {
        anyhow::bail!(
            "{}: no cases (directories with model.onnx){}",
            suite.display(),
            filter
                .map(|f| format!(" matching '{f}'"))
                .unwrap_or_default()
        );
    }
    Ok(v)
}

fn load_pbs(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    let mut out = vec![];
    for i in 0.. {
        let p = dir.join(format!("{prefix}_{i}.pb"));
        if !p.exists() {
            break;
        }
        let f = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let proto = tract_onnx::tensor::proto_from_reader(f)
            .map_err(|e| format!("{}: {e:#}", p.display()))?;
        let t = tract_onnx::tensor::load_tensor(
            &tract_onnx::data_resolver::MmapDataResolver,
            &proto,
            None,
        )
        .map_err(|e| format!("{}: {e:#}", p.display()))?;
        out.push(t);
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Inputs,
    FoldRest,
    FoldAll,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Inputs => "inputs",
            Mode::FoldRest => "fold-rest",
            Mode::FoldAll => "fold-all",
        }
    }
}

fn prepare(
    model_path: &Path,
    inputs: &[Tensor],
    mode: Mode,
) -> TractResult<(Arc<TypedSimplePlan>, TVec<TValue>)> {
    let mut model = bevrt_models::load_for_tract(model_path, &Default::default())?;
    let outlets = model.input_outlets()?.to_vec();
    if outlets.len() != inputs.len() {
        bail!(
            "model has {} inputs, test data gives {}",
            outlets.len(),
            inputs.len()
        );
    }
    let keep = match mode {
        Mode::Inputs => outlets.len(),
        Mode::FoldRest => 1.min(outlets.len()),
        Mode::FoldAll => 0,
    };
    let mut run_inputs: TVec<TValue> = tvec![];
    let mut kept = vec![];
    for (i, (o, t)) in outlets.iter().zip(inputs).enumerate() {
        if i < keep {
            model.set_input_fact(i, InferenceFact::dt_shape_from_tensor(t))?;
            kept.push(*o);
            run_inputs.push(t.clone().into_tvalue());
        } else {
            let node = model.node_mut(o.node);
            node.op = Box::new(tract_hir::ops::konst::Const::new(
                t.clone().into_arc_tensor(),
            )?);
            node.outputs[0].fact = InferenceFact::from(t.clone());
        }
    }
    if keep < outlets.len() {
        model.set_input_outlets(&kept)?;
    }
    let plan = model.into_optimized()?.into_runnable()?;
    Ok((plan, run_inputs))
}

fn compare(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let dt = want.datum_type();
    if dt == DatumType::String {
        return if got == want {
            Ok(())
        } else {
            Err("string values differ".into())
        };
    }
    let exact = !dt.is_float();
    let a = got
        .cast_to::<f64>()
        .map_err(|e| format!("cannot compare {:?}: {e}", got.datum_type()))?;
    let b = want
        .cast_to::<f64>()
        .map_err(|e| format!("cannot compare {dt:?}: {e}"))?;
    let (av, bv) = (
        a.try_as_plain_ram().map_err(|e| e.to_string())?,
        b.try_as_plain_ram().map_err(|e| e.to_string())?,
    );
    let (a, b) = (
        av.as_slice::<f64>().map_err(|e| e.to_string())?,
        bv.as_slice::<f64>().map_err(|e| e.to_string())?,
    );
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let ok = if exact {
            x == y
        } else {
            (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-5 + 1e-3 * y.abs()
        };
        if !ok {
            return Err(format!("value #{i} is {x}, expected {y}"));
        }
    }
    Ok(())
}

/// Run one case on tract (the CPU backend's engine).
pub fn run_case_cpu(case: &Path) -> Outcome {
    let data = case.join("test_data_set_0");
    if !data.is_dir() {
        return Outcome::Skip {
            reason: "no test_data_set_0".into(),
        };
    }
    let inputs = match load_pbs(&data, "input") {
        Ok(v) => v,
        Err(e) => {
            return Outcome::Skip {
                reason: format!("cannot load inputs: {e}"),
            };
        }
    };
    let expected = match load_pbs(&data, "output") {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => {
            return Outcome::Skip {
                reason: "no expected outputs".into(),
            };
        }
        Err(e) => {
            return Outcome::Skip {
                reason: format!("cannot load outputs: {e}"),
            };
        }
    };
    let model_path = case.join("model.onnx");
    let mut first_err = None;
    for mode in [Mode::Inputs, Mode::FoldRest, Mode::FoldAll] {
        if mode == Mode::FoldRest && inputs.len() < 2 {
            continue;
        }
        let (plan, run_inputs) = match prepare(&model_path, &inputs, mode) {
            Ok(x) => x,
            Err(e) => {
                first_err.get_or_insert_with(|| format!("load: {}", one_line(&format!("{e:#}"))));
                continue;
            }
        };
        let got = match plan.run(run_inputs) {
            Ok(v) => v,
            Err(e) => {
                first_err.get_or_insert_with(|| format!("run: {}", one_line(&format!("{e:#}"))));
                continue;
            }
        };
        if got.len() != expected.len() {
            return Outcome::Fail {
                reason: format!("{} outputs, expected {}", got.len(), expected.len()),
            };
        }
        for (k, (g, w)) in got.iter().zip(&expected).enumerate() {
            if let Err(e) = compare(g, w) {
                return Outcome::Fail {
                    reason: format!("output {k}: {e} (mode {})", mode.name()),
                };
            }
        }
        return Outcome::Pass { mode: mode.name() };
    }
    Outcome::Fail {
        reason: first_err.unwrap_or_else(|| "no mode could run".into()),
    }
}

fn one_line(s: &str) -> String {
    let s = s.replace('\n', " | ");
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

/// Run every case, catching panics inside the engine as failures (the suite never aborts).
pub fn run_suite(cases: &[PathBuf], progress: impl FnMut(&CaseResult)) -> Vec<CaseResult> {
    run_each(cases, run_case_cpu, "engine", progress)
}

/// `run` on every case in order, a panic inside it turned into a failure naming `what`.
fn run_each(
    cases: &[PathBuf],
    mut run: impl FnMut(&Path) -> Outcome,
    what: &str,
    mut progress: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut out = Vec::with_capacity(cases.len());
    for c in cases {
        let name = c
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| run(c))) {
            Ok(o) => o,
            Err(p) => Outcome::Fail {
                reason: format!(
                    "{what} panicked: {}",
                    one_line(&crate::panics::panic_message(p.as_ref()))
                ),
            },
        };
        let r = CaseResult { name, outcome };
        progress(&r);
        out.push(r);
    }
    std::panic::set_hook(prev);
    out
}

/// Runs a kernel plan: the kernels' CPU twins, or the CUDA executor.
pub type PlanExec<'a> =
    dyn FnMut(&bevrt_kernels::plan::KernelPlan, &[&[f32]]) -> Result<Vec<Vec<f32>>, String> + 'a;

fn load_pb_protos(dir: &Path, prefix: &str) -> Result<Vec<tract_onnx::pb::TensorProto>, String> {
    let mut out = vec![];
    for i in 0.. {
        let p = dir.join(format!("{prefix}_{i}.pb"));
        if !p.exists() {
            break;
        }
        let f = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        out.push(
            tract_onnx::tensor::proto_from_reader(f)
                .map_err(|e| format!("{}: {e:#}", p.display()))?,
        );
    }
    Ok(out)
}

/// Run one case through the CUDA executor's lowering and `exec`, with float activations
/// stored as `float`. Cases the executor does not support (an op outside its set, non-f32
/// inputs or outputs) are skipped with the reason; tolerance is the CPU runner's for F32
/// storage and `|a - b| <= 1e-3 + 5e-3 |b|` (a few f16 ulps) for F16.
pub fn run_case_plan(
    case: &Path,
    float: bevrt_kernels::plan::DType,
    exec: &mut PlanExec,
) -> Outcome {
    use crate::lower::{LowerError, LowerOptions, lower_proto};
    let skip = |reason: String| Outcome::Skip { reason };
    let data = case.join("test_data_set_0");
    let (Ok(in_protos), Ok(inputs), Ok(expected)) = (
        load_pb_protos(&data, "input"),
        load_pbs(&data, "input"),
        load_pbs(&data, "output"),
    ) else {
        return skip("cannot load test data".into());
    };
    if expected.is_empty() {
        return skip("no expected outputs".into());
    }
    if let Some(t) = inputs
        .iter()
        .chain(&expected)
        .find(|t| t.datum_type() != f32::datum_type())
    {
        return skip(format!(
            "{:?} tensor: the kernel executor's inputs and outputs are f32",
            t.datum_type()
        ));
    }
    let model_path = case.join("model.onnx");
    let proto = match bevrt_models::read_proto(&model_path) {
        Ok(p) => p,
        Err(e) => return skip(e.to_string()),
    };
    let Some(graph) = proto.graph.as_ref() else {
        return skip("no graph".into());
    };
    let names = runtime_input_names(graph);
    if names.len() != inputs.len() {
        return skip(format!(
            "model has {} inputs, test data {}",
            names.len(),
            inputs.len()
        ));
    }
    let (tol_abs, tol_rel) = if float == bevrt_kernels::plan::DType::F32 {
        (1e-5, 1e-3)
    } else {
        (1e-3, 5e-3)
    };
    let mut first_skip = None;
    // all inputs at run time, then every input after the first folded into a constant
    for (attempt, keep) in [inputs.len(), 1].into_iter().enumerate() {
        if attempt == 1 && inputs.len() < 2 {
            break;
        }
        let mut proto = proto.clone();
        let g = proto.graph.as_mut().expect("checked above");
        for (i, name) in names.iter().enumerate().skip(keep) {
            let mut t = in_protos[i].clone();
            t.name = name.clone();
            g.initializer.push(t);
        }
        let shapes: Vec<(&str, Vec<usize>)> = names
            .iter()
            .zip(&inputs)
            .take(keep)
            .map(|(n, t)| (n.as_str(), t.shape().to_vec()))
            .collect();
        let plan = match lower_proto(
            proto,
            &model_path.display().to_string(),
            &shapes,
            &LowerOptions { float },
        ) {
            Ok(p) => p,
            Err(LowerError::Unsupported { nodes, .. }) => {
                first_skip.get_or_insert(format!("unsupported: {}", nodes.join("; ")));
                continue;
            }
            Err(e) => {
                first_skip.get_or_insert(one_line(&e.to_string()));
                continue;
            }
        };
        let vals: Vec<Vec<f32>> = inputs
            .iter()
            .take(keep)
            .map(|t| {
                t.try_as_plain_ram()
                    .ok()
                    .and_then(|v| v.as_slice::<f32>().ok().map(|s| s.to_vec()))
                    .unwrap_or_default()
            })
            .collect();
        let refs: Vec<&[f32]> = vals.iter().map(|v| v.as_slice()).collect();
        let got = match exec(&plan, &refs) {
            Ok(g) => g,
            Err(e) => {
                return Outcome::Fail {
                    reason: format!("run: {}", one_line(&e)),
                };
            }
        };
        if let Err(reason) = compare_outputs(&got, &expected, (tol_abs, tol_rel), keep) {
            return Outcome::Fail { reason };
        }
        return Outcome::Pass {
            mode: if keep == inputs.len() {
                "inputs"
            } else {
                "fold-rest"
            },
        };
    }
    skip(first_skip.unwrap_or_else(|| "not lowered".into()))
}

/// The graph inputs that are not initializers.
fn runtime_input_names(graph: &tract_onnx::pb::GraphProto) -> Vec<String> {
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| i.name.clone())
        .collect()
}

/// Every output equal to the expected one within `|a - b| <= abs + rel |b|` (NaN matching
/// NaN), or why not.
fn compare_outputs(
    got: &[Vec<f32>],
    expected: &[Tensor],
    (tol_abs, tol_rel): (f32, f32),
    keep: usize,
) -> Result<(), String> {
    if got.len() != expected.len() {
        return Err(format!(
            "{} outputs, expected {}",
            got.len(),
            expected.len()
        ));
    }
    for (k, (g, w)) in got.iter().zip(expected).enumerate() {
        let wv = w.try_as_plain_ram().ok();
        let Some(ws) = wv.as_ref().and_then(|v| v.as_slice::<f32>().ok()) else {
            return Err(format!("output {k}: unreadable"));
        };
        if g.len() != ws.len() {
            return Err(format!(
                "output {k}: {} values, expected {}",
                g.len(),
                ws.len()
            ));
        }
        for (i, (&x, &y)) in g.iter().zip(ws).enumerate() {
            let ok = (x.is_nan() && y.is_nan())
                || x == y
                || (x - y).abs() <= tol_abs + tol_rel * y.abs();
            if !ok {
                return Err(format!(
                    "output {k}: value #{i} is {x}, expected {y} (keep {keep})"
                ));
            }
        }
    }
    Ok(())
}

/// [`run_suite`] for the kernel executor.
pub fn run_suite_plan(
    cases: &[PathBuf],
    float: bevrt_kernels::plan::DType,
    exec: &mut PlanExec,
    progress: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    run_each(
        cases,
        |c| run_case_plan(c, float, exec),
        "executor",
        progress,
    )
}
