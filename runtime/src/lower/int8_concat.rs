//! A plan pass for QDQ graphs: a channel `Concat` of dequantized convolution outputs whose
//! result is quantized again (SqueezeNet's fire modules, Inception's branches, as ONNX
//! Runtime's quantizer writes them: `Conv → Q(a) → DQ → Concat → Q(y)`) runs without the float
//! detour. Each convolution requantizes straight to the Concat's scale and writes its slice
//! of the int8 result; the `Dequantize` steps, the float Concat and its `Quantize` go.
//!
//! A code can differ by one from the graph's: `round(x / y)` against
//! `round(round(x / a) · a / y)`, one rounding instead of the graph's two (ONNX Runtime's
//! `QLinearConcat` rounds twice). The plan stays one plan: its twin
//! (`bevrt_kernels::reference`) runs the rewritten steps, so the engines still equal it bit
//! for bit.

use bevrt_kernels::params::out_mode;
use bevrt_kernels::plan::{DType, KernelPlan, Op, TensorId};

/// One foldable Concat: its `Quantize` step, and for each input the `Dequantize` step and the
/// convolution that wrote the codes.
struct Fold {
    quantize: usize,
    parts: Vec<(usize, usize)>,
}

/// Rewrite every such Concat in `plan` (before it is allocated); returns how many.
pub(super) fn fold_int8_concats(plan: &mut KernelPlan) -> usize {
    let mut folded = 0;
    while let Some(f) = find(plan) {
        apply(plan, &f);
        folded += 1;
    }
    folded
}

fn apply(plan: &mut KernelPlan, f: &Fold) {
    let q = plan.steps[f.quantize].output;
    let y = plan.steps[f.quantize].inputs[0];
    let (scale, zp) = plan.tensors[q].quant.expect("find checked an int8 output");
    let float = plan.tensors[y].dtype.size();
    for &(dq, conv) in &f.parts {
        let codes = plan.steps[dq].inputs[0];
        let slice = plan.steps[dq].output;
        if let Op::Conv { p, .. } = &mut plan.steps[conv].op {
            p.out_scale = scale;
            p.out_zp = zp;
        }
        let elem = plan.tensors[slice].view_offset / float;
        let d = &mut plan.tensors[codes];
        d.quant = Some((scale, zp));
        d.view_of = Some(q);
        d.view_offset = elem;
    }
    let mut gone: Vec<usize> = f.parts.iter().map(|&(dq, _)| dq).collect();
    gone.push(f.quantize);
    gone.sort_unstable();
    for i in gone.into_iter().rev() {
        plan.steps.remove(i);
    }
}

fn find(plan: &KernelPlan) -> Option<Fold> {
    // a slice of the Concat: dequantized from codes that one convolution requantized and
    // nothing else reads
    let part = |slice: TensorId| -> Option<(usize, usize)> {
        if plan.step_readers(slice) != 0 || plan.views_of(slice).next().is_some() {
            return None;
        }
        let dq = plan.producer(slice)?;
        let codes = plan.steps[dq].inputs[0];
        let c = &plan.tensors[codes];
        let conv = plan.producer(codes)?;
        let requantizes =
            matches!(&plan.steps[conv].op, Op::Conv { p, .. } if p.out_mode == out_mode::I8);
        (matches!(plan.steps[dq].op, Op::Dequantize)
            && requantizes
            && c.dtype == DType::I8
            && c.view_of.is_none()
            && plan.step_readers(codes) == 1
            && plan.views_of(codes).next().is_none())
        .then_some((dq, conv))
    };
    plan.steps.iter().enumerate().find_map(|(qi, s)| {
        if !matches!(s.op, Op::Quantize) {
            return None;
        }
        let (y, q) = (s.inputs[0], s.output);
        let (yd, qd) = (&plan.tensors[y], &plan.tensors[q]);
        // the Concat's result: every byte written in place by its inputs (no copy step, no
        // producer of its own), read by this Quantize alone
        let whole = qd.dtype == DType::I8
            && qd.quant.is_some()
            && qd.view_of.is_none()
            && yd.view_of.is_none()
            && plan.producer(y).is_none()
            && !plan.inputs.contains(&y)
            && plan.step_readers(y) == 1;
        if !whole {
            return None;
        }
        let slices: Vec<TensorId> = plan.views_of(y).collect();
        let covered: usize = slices.iter().map(|&t| plan.tensors[t].elems()).sum();
        if slices.is_empty() || covered != yd.elems() {
            return None;
        }
        let parts = slices.into_iter().map(part).collect::<Option<Vec<_>>>()?;
        Some(Fold {
            quantize: qi,
            parts,
        })
    })
}
