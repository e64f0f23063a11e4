//! A plan pass for QDQ graphs: `Dequantize` x2 → binary op (→ its fused activation) →
//! `Quantize`, the pattern ONNX Runtime's quantizer writes around every residual `Add`, becomes
//! one step on the int8 codes (`binary_i8`; twin `bevrt_kernels::reference::binary_i8`, which
//! computes the same f32 values in the same order, so the plan's results do not change). Four
//! passes over the tensor, three of them in f32, become one over bytes. Likewise `Dequantize`
//! → per-channel scale-shift (a BatchNormalization after no convolution: DenseNet's
//! pre-activations) → `Quantize` (`scale_shift_i8`).

use bevrt_kernels::params::binary_op;
use bevrt_kernels::plan::{ConstData, DType, KernelPlan, Op, Step, TensorId};
use bevrt_kernels::reference::const_f32;

/// Rewrite every such pattern in `plan` (before it is allocated); returns how many.
pub(super) fn fuse_int8_binaries(plan: &mut KernelPlan) -> usize {
    let mut fused = 0;
    while let Some((b, dq_a, dq_b, q)) = find(plan) {
        // a Dequantize that only the binary step read goes with it (not one that writes into
        // a slot of another tensor, a Concat's)
        let only_for_b = |d: usize| {
            let t = plan.steps[d].output;
            plan.tensors[t].view_of.is_none() && readers(plan, t) == 1
        };
        let (drop_a, drop_b) = (only_for_b(dq_a), dq_b.is_some_and(only_for_b));
        let qa = plan.steps[dq_a].inputs[0];
        // a constant second operand keeps its place in `inputs`
        let qb = dq_b.map_or(plan.steps[b].inputs[1], |d| plan.steps[d].inputs[0]);
        let out = plan.steps[q].output;
        let q_name = plan.steps[q].name.clone();
        as_scale_shift(plan, b);
        let step = &mut plan.steps[b];
        step.inputs = vec![qa, qb];
        step.output = out;
        step.name.push_str(&format!(" + {q_name}"));
        let mut gone: Vec<usize> = [drop_a.then_some(dq_a), dq_b.filter(|_| drop_b), Some(q)]
            .into_iter()
            .flatten()
            .collect();
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            plan.steps.remove(i);
        }
        fused += 1;
    }
    fused
}

/// A Mul / Add / Sub by a constant as the scale-shift `x * m + c` (the one int8 kernel with a
/// constant operand): `x * v + 0` and `x * 1 + v` are `x * v` and `x + v` up to the sign of a
/// zero, which quantization does not see (`x - v` is `x + (-v)` exactly).
fn as_scale_shift(plan: &mut KernelPlan, b: usize) {
    let Step {
        op: Op::Binary(p),
        const_inputs,
        ..
    } = &plan.steps[b]
    else {
        return;
    };
    let (Some(&(1, c)), [_]) = (const_inputs.first(), const_inputs.as_slice()) else {
        return;
    };
    let v = const_f32(&plan.consts[c]);
    let (m, shift): (Vec<f32>, Vec<f32>) = match p.op {
        binary_op::MUL => (v.clone(), vec![0.0; v.len()]),
        binary_op::ADD => (vec![1.0; v.len()], v.clone()),
        binary_op::SUB => (vec![1.0; v.len()], v.iter().map(|x| -x).collect()),
        _ => return,
    };
    let n = v.len() as i32;
    let id = plan.add_const(ConstData::F32([m, shift].concat()));
    let step = &mut plan.steps[b];
    step.const_inputs = vec![(1, id)];
    if let Op::Binary(p) = &mut step.op {
        p.op = binary_op::SCALE_SHIFT;
        p.shift_offset = n;
    }
}

/// What reads tensor `t`: steps (once per operand), the plan's outputs, and views of it.
fn readers(plan: &KernelPlan, t: TensorId) -> usize {
    plan.step_readers(t) + plan.views_of(t).count()
}

/// The next pattern: (binary step, the dequantize step of each tensor operand, the quantize
/// step).
fn find(plan: &KernelPlan) -> Option<(usize, usize, Option<usize>, usize)> {
    let readers = |t: TensorId| readers(plan, t);
    // a float tensor dequantized from int8 by its producer (which stays if others read it)
    let dequantized = |t: TensorId| -> Option<usize> {
        let p = plan.producer(t)?;
        let s = &plan.steps[p];
        (matches!(s.op, Op::Dequantize) && plan.tensors[s.inputs[0]].dtype == DType::I8)
            .then_some(p)
    };
    plan.steps.iter().enumerate().find_map(|(b, s)| {
        let Op::Binary(p) = &s.op else { return None };
        // two tensors of one shape (no broadcast, no constant operand)
        let elementwise = (0..=3).contains(&p.op)
            && s.const_inputs.is_empty()
            && s.inputs.len() == 2
            && s.inputs[0] != s.inputs[1]
            && p.a_strides == p.b_strides
            && p.a_strides[3] == 1
            && plan.tensors[s.inputs[0]].elems() == plan.tensors[s.output].elems();
        // per-channel f32 factors as the second operand, or a Mul / Add / Sub by a constant
        // (rewritten as one, `as_scale_shift`)
        let by_const = [
            binary_op::SCALE_SHIFT,
            binary_op::MUL,
            binary_op::ADD,
            binary_op::SUB,
        ];
        let scale_shift =
            by_const.contains(&p.op) && s.const_input(0).is_none() && s.const_input(1).is_some();
        if !(elementwise || scale_shift) || plan.tensors[s.inputs[0]].dtype == DType::I8 {
            return None;
        }
        let dq_a = dequantized(s.inputs[0])?;
        let dq_b = match scale_shift {
            true => None,
            false => Some(dequantized(s.inputs[1])?),
        };
        if readers(s.output) != 1 || plan.tensors[s.output].view_of.is_some() {
            return None;
        }
        let q = plan
            .steps
            .iter()
            .position(|r| matches!(r.op, Op::Quantize) && r.inputs[0] == s.output)?;
        // the codes must exist before the binary step runs, and its result before the Q
        (dq_a < b && dq_b.is_none_or(|d| d < b) && q > b).then_some((b, dq_a, dq_b, q))
    })
}
