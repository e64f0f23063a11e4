//! A plan pass for QDQ graphs: `Dequantize` x2 → binary op (→ its fused activation) →
//! `Quantize`, the pattern ONNX Runtime's quantizer writes around every residual `Add`, becomes
//! one step on the int8 codes (`binary_i8`; twin `bevrt_kernels::reference::binary_i8`, which
//! computes the same f32 values in the same order, so the plan's results do not change). Four
//! passes over the tensor, three of them in f32, become one over bytes.

use bevrt_kernels::plan::{DType, KernelPlan, Op, TensorId};

/// Rewrite every such pattern in `plan` (before it is allocated); returns how many.
pub(super) fn fuse_int8_binaries(plan: &mut KernelPlan) -> usize {
    let mut fused = 0;
    while let Some((b, dq_a, dq_b, q)) = find(plan) {
        let (qa, qb) = (plan.steps[dq_a].inputs[0], plan.steps[dq_b].inputs[0]);
        let out = plan.steps[q].output;
        let q_name = plan.steps[q].name.clone();
        let step = &mut plan.steps[b];
        step.inputs = vec![qa, qb];
        step.output = out;
        step.name.push_str(&format!(" + {q_name}"));
        let mut gone = [dq_a, dq_b, q];
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            plan.steps.remove(i);
        }
        fused += 1;
    }
    fused
}

/// The next pattern: (binary step, the two dequantize steps, the quantize step).
fn find(plan: &KernelPlan) -> Option<(usize, usize, usize, usize)> {
    let readers = |t: TensorId| -> usize {
        plan.steps
            .iter()
            .map(|s| s.inputs.iter().filter(|&&i| i == t).count())
            .sum::<usize>()
            + plan.outputs.iter().filter(|&&o| o == t).count()
            + plan.tensors.iter().filter(|d| d.view_of == Some(t)).count()
    };
    let producer = |t: TensorId| plan.steps.iter().position(|s| s.output == t);
    // a float tensor read by the binary step alone, dequantized from int8 by its producer
    let dequantized = |t: TensorId| -> Option<usize> {
        let p = producer(t)?;
        let s = &plan.steps[p];
        (matches!(s.op, Op::Dequantize)
            && plan.tensors[t].view_of.is_none()
            && readers(t) == 1
            && plan.tensors[s.inputs[0]].dtype == DType::I8)
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
        if !elementwise || plan.tensors[s.inputs[0]].dtype == DType::I8 {
            return None;
        }
        let (dq_a, dq_b) = (dequantized(s.inputs[0])?, dequantized(s.inputs[1])?);
        if readers(s.output) != 1 || plan.tensors[s.output].view_of.is_some() {
            return None;
        }
        let q = plan
            .steps
            .iter()
            .position(|r| matches!(r.op, Op::Quantize) && r.inputs[0] == s.output)?;
        // the codes must exist before the binary step runs, and its result before the Q
        (dq_a < b && dq_b < b && q > b).then_some((b, dq_a, dq_b, q))
    })
}
