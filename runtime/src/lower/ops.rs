//! Every other op the plan runs: binary elementwise, pools, resize, softmax, concat,
//! quantize and dequantize.

use super::attrs::*;
use super::lowering::Lowering;
use super::lowering::QConst;
use bevrt_kernels::params::{BinaryParams, PoolParams, ResizeParams, binary_op, out_mode};
use bevrt_kernels::plan::{ConstData, DType, Op};
use bevrt_kernels::reference::f2h;
use tract_onnx::pb;

impl Lowering<'_> {
    pub(super) fn binary(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        if n.op_type != "Div"
            && let Some(done) = self.binary_as_affine(n, name)
        {
            return done;
        }
        let op = match n.op_type.as_str() {
            "Add" => binary_op::ADD,
            "Sub" => binary_op::SUB,
            "Mul" => binary_op::MUL,
            _ => binary_op::DIV,
        };
        if n.input.len() != 2 {
            return Err(format!("{} inputs", n.input.len()));
        }
        let out_shape = self.shape(&n.output[0])?;
        self.binary_step(
            name,
            op,
            [&n.input[0], &n.input[1]],
            &n.output[0],
            out_shape,
        )
    }

    /// `Sum` of any number of inputs: a chain of additions, each one step (a following
    /// activation fuses into the last, as after any binary op).
    pub(super) fn sum(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let out = &n.output[0];
        let Some((first, rest)) = n.input.split_first() else {
            return Err("Sum without inputs".into());
        };
        if rest.is_empty() {
            return self.view(n);
        }
        let mut acc = first.clone();
        for (i, inp) in rest.iter().enumerate() {
            let last = i + 1 == rest.len();
            let (to, shape) = if last {
                (out.clone(), self.shape(out)?)
            } else {
                let (a, b) = (self.operand_shape(&acc)?, self.operand_shape(inp)?);
                (format!("{out}__sum{}", i + 1), broadcast(&a, &b)?)
            };
            let step = if rest.len() == 1 {
                name.to_string()
            } else {
                format!("{name} [{}]", i + 1)
            };
            self.binary_step(&step, binary_op::ADD, [&acc, inp], &to, shape)?;
            acc = to;
        }
        Ok(())
    }

    fn operand_shape(&self, name: &str) -> Result<Vec<usize>, String> {
        match self.tensor.get(name) {
            Some(&t) => Ok(self.plan.tensors[t].shape.clone()),
            None => self.shape(name),
        }
    }

    /// One broadcasting binary step `out = a op b` (either operand may be a constant).
    fn binary_step(
        &mut self,
        name: &str,
        op: i32,
        operands: [&str; 2],
        out: &str,
        out_shape: Vec<usize>,
    ) -> Result<(), String> {
        if out_shape.len() > 4 {
            return Err(format!("rank {} > 4", out_shape.len()));
        }
        let mut inputs = vec![];
        let mut consts = vec![];
        let mut strides = [[0i32; 4]; 2];
        for (pos, inp) in operands.into_iter().enumerate() {
            let shape = if self.is_const(inp) {
                let v = self.const_f32(inp)?;
                let shape = self
                    .facts
                    .value(inp)
                    .map(|t| t.shape().to_vec())
                    .unwrap_or(vec![v.len()]);
                let c = self.plan.add_const(match self.float {
                    DType::F32 => ConstData::F32(v),
                    _ => ConstData::F16(v.iter().map(|x| f2h(*x)).collect()),
                });
                consts.push((pos, c));
                inputs.push(usize::MAX); // placeholder: the constant replaces it
                shape
            } else {
                let t = self.float_tensor(inp)?;
                inputs.push(t);
                self.plan.tensors[t].shape.clone()
            };
            if shape.len() > 4 {
                return Err(format!("rank {} > 4", shape.len()));
            }
            strides[pos] = broadcast_strides(&shape, &out_shape);
        }
        // a constant input has no tensor: point it at the other input (never read)
        let first = inputs
            .iter()
            .copied()
            .find(|t| *t != usize::MAX)
            .ok_or("both operands are constant")?;
        for t in inputs.iter_mut() {
            if *t == usize::MAX {
                *t = first;
            }
        }
        let p = BinaryParams {
            n: out_shape.iter().product::<usize>() as i32,
            dims: right_aligned(&out_shape),
            a_strides: strides[0],
            b_strides: strides[1],
            op,
            ..Default::default()
        };
        let y = self.new_tensor(out, out_shape, self.float, None);
        self.tensor.insert(out.to_string(), y);
        self.push_with_consts(name, Op::Binary(p), inputs, consts, y);
        Ok(())
    }

    pub(super) fn pool(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        // a max pool of a dequantized int8 activation runs on the codes (quantization is
        // monotone) and its output stays int8, behind the same scale, for what reads it
        let codes = self
            .dq_of
            .get(&n.input[0])
            .copied()
            .filter(|_| n.op_type.contains("Max"));
        let x = match codes {
            Some(q) => q,
            None => self.float_tensor(&n.input[0])?,
        };
        let xs = self.plan.tensors[x].shape.clone();
        let ys = self.shape(&n.output[0])?;
        if xs.len() != 4 {
            return Err("only 2-D pooling".into());
        }
        if n.output.len() > 1 && !n.output[1].is_empty() {
            return Err("MaxPool indices output".into());
        }
        let global = n.op_type.starts_with("Global");
        let (k, strides, pads) = if global {
            (
                vec![xs[2] as i64, xs[3] as i64],
                vec![1, 1],
                vec![0, 0, 0, 0],
            )
        } else {
            if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|v| *v != 1)) {
                return Err("dilated pooling".into());
            }
            if attr_s(n, "auto_pad", "NOTSET") != "NOTSET" {
                return Err("auto_pad pooling".into());
            }
            (
                attr_ints(n, "kernel_shape").ok_or("no kernel_shape")?,
                attr_ints(n, "strides").unwrap_or(vec![1, 1]),
                attr_ints(n, "pads").unwrap_or(vec![0, 0, 0, 0]),
            )
        };
        let p = PoolParams {
            n: xs[0] as i32,
            c: xs[1] as i32,
            h: xs[2] as i32,
            w: xs[3] as i32,
            oh: ys[2] as i32,
            ow: ys[3] as i32,
            kh: k[0] as i32,
            kw: k[1] as i32,
            stride_h: strides[0] as i32,
            stride_w: strides[1] as i32,
            pad_h: pads[0] as i32,
            pad_w: pads[1] as i32,
            mode: if n.op_type.contains("Max") { 0 } else { 1 },
            count_include_pad: attr_i(n, "count_include_pad", 0) as i32,
        };
        if p.mode == 1 && p.count_include_pad != 0 && attr_i(n, "ceil_mode", 0) != 0 {
            return Err("ceil_mode with count_include_pad".into());
        }
        if codes.is_some() {
            let quant = self.plan.tensors[x].quant;
            let y = self.new_tensor(&n.output[0], ys, DType::I8, quant);
            self.push(name, Op::Pool(p), vec![x], y);
            self.dq_of.insert(n.output[0].clone(), y);
            return Ok(());
        }
        let y = self.out_tensor(n, self.float, None)?;
        self.push(name, Op::Pool(p), vec![x], y);
        Ok(())
    }

    pub(super) fn resize(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let x = self.float_tensor(&n.input[0])?;
        let xs = self.plan.tensors[x].shape.clone();
        let ys = self.shape(&n.output[0])?;
        if xs.len() != 4 || xs[0] != ys[0] || xs[1] != ys[1] {
            return Err("only spatial resizing of NCHW".into());
        }
        let mode = attr_s(n, "mode", "nearest");
        let upsample = n.op_type == "Upsample";
        let coord = if upsample {
            "asymmetric".to_string()
        } else {
            attr_s(n, "coordinate_transformation_mode", "half_pixel")
        };
        // scales: Upsample input 1 / Resize input 2, else output size / input size
        let scales_input = if upsample {
            n.input.get(1)
        } else {
            n.input.get(2)
        };
        let scales = scales_input
            .filter(|s| !s.is_empty())
            .and_then(|s| self.const_f32(s).ok())
            .filter(|v| v.len() == 4);
        let (sh, sw) = match scales {
            Some(v) => (v[2], v[3]),
            None => (ys[2] as f32 / xs[2] as f32, ys[3] as f32 / xs[3] as f32),
        };
        if !upsample && attr_i(n, "antialias", 0) != 0 {
            return Err("antialias".into());
        }
        let p = ResizeParams {
            n: xs[0] as i32,
            c: xs[1] as i32,
            h: xs[2] as i32,
            w: xs[3] as i32,
            oh: ys[2] as i32,
            ow: ys[3] as i32,
            mode: match mode.as_str() {
                "nearest" => 0,
                "linear" | "bilinear" => 1,
                m => return Err(format!("mode {m}")),
            },
            coord: match coord.as_str() {
                "half_pixel" => 0,
                "align_corners" => 1,
                "asymmetric" => 2,
                "pytorch_half_pixel" => 3,
                c => return Err(format!("coordinate_transformation_mode {c}")),
            },
            nearest_mode: if upsample {
                1
            } else {
                match attr_s(n, "nearest_mode", "round_prefer_floor").as_str() {
                    "round_prefer_floor" => 0,
                    "floor" => 1,
                    "ceil" => 2,
                    _ => 3,
                }
            },
            scale_h: sh,
            scale_w: sw,
        };
        let y = self.out_tensor(n, self.float, None)?;
        self.push(name, Op::Resize(p), vec![x], y);
        Ok(())
    }

    pub(super) fn softmax(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let x = self.float_tensor(&n.input[0])?;
        let s = self.plan.tensors[x].shape.clone();
        let default_axis = if self.opset < 13 { 1 } else { -1 };
        let mut axis = attr_i(n, "axis", default_axis);
        if axis < 0 {
            axis += s.len() as i64;
        }
        let a = axis as usize;
        let (outer, len, inner) = if self.opset < 13 {
            (s[..a].iter().product(), s[a..].iter().product(), 1)
        } else {
            (s[..a].iter().product(), s[a], s[a + 1..].iter().product())
        };
        let y = self.out_tensor(n, self.float, None)?;
        self.push(name, Op::Softmax { outer, len, inner }, vec![x], y);
        Ok(())
    }

    pub(super) fn concat(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let ys = self.shape(&n.output[0])?;
        let mut axis = attr_i(n, "axis", 0);
        if axis < 0 {
            axis += ys.len() as i64;
        }
        let a = axis as usize;
        let outer: usize = ys[..a].iter().product();
        let after: usize = ys[a + 1..].iter().product();
        let y = self.out_tensor(n, self.float, None)?;
        let mut off = 0usize;
        for (i, inp) in n.input.iter().enumerate() {
            if self.is_const(inp) {
                return Err("a constant Concat input".into());
            }
            let x = self.float_tensor(inp)?;
            let xs = self.plan.tensors[x].shape.clone();
            let src_inner = xs[a] * after;
            if outer == 1
                && self.place_inside(x, y, off, n.input.iter().filter(|s| *s == inp).count())
            {
                off += src_inner;
                continue;
            }
            self.push(
                &format!("{name} [{i}]"),
                Op::CopySlice {
                    outer,
                    src_inner,
                    dst_inner: ys[a] * after,
                    dst_offset: off,
                },
                vec![x],
                y,
            );
            off += src_inner;
        }
        Ok(())
    }

    /// `Transpose`: a data move in the tensor's own type (an int8 activation behind a
    /// DequantizeLinear stays int8: the permutation commutes with quantization); one that
    /// keeps the order of the elements (it moves only axes of size 1) is a view.
    pub(super) fn transpose(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let (x, int8) = match self.dq_of.get(&n.input[0]) {
            Some(&q) => (q, true),
            None => (self.float_tensor(&n.input[0])?, false),
        };
        let xs = self.plan.tensors[x].shape.clone();
        if xs.len() > 6 {
            return Err(format!("rank {} > 6", xs.len()));
        }
        let perm: Vec<usize> = match attr_ints(n, "perm") {
            Some(p) => p.iter().map(|&a| a as usize).collect(),
            None => (0..xs.len()).rev().collect(),
        };
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..xs.len()).collect::<Vec<_>>() {
            return Err(format!("perm {perm:?} of a rank-{} tensor", xs.len()));
        }
        let moved: Vec<usize> = perm.iter().copied().filter(|&a| xs[a] != 1).collect();
        if moved.windows(2).all(|w| w[0] < w[1]) {
            return self.view(n);
        }
        let ys: Vec<usize> = perm.iter().map(|&a| xs[a]).collect();
        let mut d = self.plan.tensors[x].clone();
        d.name = n.output[0].clone();
        d.shape = ys;
        d.view_of = None;
        d.view_offset = 0;
        let y = self.plan.add_tensor(d);
        let p = bevrt_kernels::params::TransposeParams::new(&xs, &perm);
        self.push(name, Op::Transpose(p), vec![x], y);
        if int8 {
            self.dq_of.insert(n.output[0].clone(), y);
        } else {
            self.tensor.insert(n.output[0].clone(), y);
        }
        Ok(())
    }

    /// Put Concat input `x` inside output `y` at element `off`, so the step that writes `x`
    /// writes its slice of `y` and no copy runs: possible when the slice is contiguous (one
    /// outer block: batch 1 along channels), `x` is computed by the plan (not a graph
    /// input; an earlier Concat written in place counts, so DenseNet's chain of Concats
    /// becomes one buffer), owns its bytes (not a view, not already inside another Concat), has
    /// `y`'s type and appears once in this Concat.
    fn place_inside(&mut self, x: usize, y: usize, off: usize, uses: usize) -> bool {
        let (xd, yd) = (&self.plan.tensors[x], &self.plan.tensors[y]);
        if uses != 1
            || xd.view_of.is_some()
            || xd.dtype != yd.dtype
            || xd.quant != yd.quant
            || self.plan.inputs.contains(&x)
        {
            return false;
        }
        let bytes = off * yd.dtype.size();
        let xd = &mut self.plan.tensors[x];
        xd.view_of = Some(y);
        xd.view_offset = bytes;
        true
    }

    /// (scale, zero point) of a per-tensor Q/DQ, as constants.
    pub(super) fn scalar_q(&self, n: &pb::NodeProto) -> Result<(f32, i32), String> {
        let s = self.const_f32(&n.input[1])?;
        let zp = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(z) => signed_zp(&*self.facts.value(z).ok_or("zero point is not constant")?)?,
            // no zero point: uint8 with zero point 0, i.e. -128 in the signed domain
            None => vec![-128],
        };
        if s.len() != 1 || zp.len() != 1 {
            return Err("per-axis quantization of an activation".into());
        }
        Ok((s[0], zp[0]))
    }

    pub(super) fn quantize(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let (s, zp) = self.scalar_q(n)?;
        let x = &n.input[0];
        // the codes of a dequantized int8 tensor (or of an op that ran on them), quantized
        // again with the same scale and zero point: the same codes
        if let Some(&q) = self.dq_of.get(x)
            && self.plan.tensors[q].quant == Some((s, zp))
        {
            self.tensor.insert(n.output[0].clone(), q);
            return Ok(());
        }
        // requantizing epilogue: the convolution before writes int8 directly
        if let Some(si) = self.fusable_producer(x) {
            let out = self.plan.steps[si].output;
            if let Op::Conv { p, .. } = &mut self.plan.steps[si].op
                && p.out_mode != out_mode::I8
            {
                p.out_mode = out_mode::I8;
                p.out_scale = s;
                p.out_zp = zp;
                let d = &mut self.plan.tensors[out];
                d.dtype = DType::I8;
                d.quant = Some((s, zp));
                d.name = n.output[0].clone();
                self.plan.steps[si].name.push_str(&format!(" + {name}"));
                self.tensor.insert(n.output[0].clone(), out);
                return Ok(());
            }
        }
        let xt = self.float_tensor(x)?;
        let y = self.out_tensor(n, DType::I8, Some((s, zp)))?;
        self.push(name, Op::Quantize, vec![xt], y);
        Ok(())
    }

    pub(super) fn dequantize(&mut self, n: &pb::NodeProto, _name: &str) -> Result<(), String> {
        let q = &n.input[0];
        if let Some(v) = self.facts.value(q).filter(|_| !self.tensor.contains_key(q)) {
            // a quantized constant (weights, bias)
            let scales = self.const_f32(&n.input[1])?;
            let zps = match n.input.get(2).filter(|s| !s.is_empty()) {
                Some(z) => to_i32(&*self.facts.value(z).ok_or("zero point is not constant")?)?,
                None => vec![0; scales.len()],
            };
            let mut axis = attr_i(n, "axis", 1);
            if axis < 0 {
                axis += v.rank() as i64;
            }
            self.qconst.insert(
                n.output[0].clone(),
                QConst {
                    values: to_i32(&v)?,
                    shape: v.shape().to_vec(),
                    scales,
                    zps,
                    axis: axis as usize,
                },
            );
            return Ok(());
        }
        let (s, zp) = self.scalar_q(n)?;
        let &qt = self
            .tensor
            .get(q)
            .ok_or_else(|| format!("'{q}' is not computed by the plan"))?;
        if self.plan.tensors[qt].dtype != DType::I8 || self.plan.tensors[qt].quant != Some((s, zp))
        {
            return Err("DequantizeLinear of a tensor its QuantizeLinear did not write".into());
        }
        self.dq_of.insert(n.output[0].clone(), qt);
        Ok(())
    }
}

/// The numpy broadcast of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect()
}

/// A shape of rank ≤ 4 right-aligned to 4 dims (the binary kernels' layout).
pub(super) fn right_aligned(shape: &[usize]) -> [i32; 4] {
    let mut dims = [1i32; 4];
    for (d, v) in shape.iter().rev().enumerate() {
        dims[3 - d] = *v as i32;
    }
    dims
}

/// Element strides of a dense operand of `shape` read over `out_shape` (both rank ≤ 4),
/// right-aligned to 4 dims; a broadcast dim gets stride 0.
pub(super) fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> [i32; 4] {
    let mut strides = [0i32; 4];
    let mut st = 1i32;
    for d in 0..shape.len() {
        let dim = shape[shape.len() - 1 - d];
        let od = out_shape[out_shape.len() - 1 - d];
        strides[3 - d] = if dim == 1 && od != 1 { 0 } else { st };
        st *= dim as i32;
    }
    strides
}
