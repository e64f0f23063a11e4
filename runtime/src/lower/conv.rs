//! Convolutions and matrix products: implicit-GEMM steps (INT8 with Q/DQ around them,
//! else float), grouped and depthwise ones on the direct kernel, `Gemm`/`MatMul` as 1x1
//! convolutions.

use super::attrs::*;
use super::lowering::Lowering;
use bevrt_kernels::params::{ConvParams, out_mode};
use bevrt_kernels::plan::{ConstData, ConstId, ConvKernel, DType, Op, TensorId};
use bevrt_kernels::reference::f2h;
use tract_onnx::pb;

impl Lowering<'_> {
    /// Weights as the kernels want them: rows of kdim values padded to a multiple of 32.
    pub(super) fn pad_rows<T: Copy + Default>(
        v: &[T],
        rows: usize,
        kdim: usize,
    ) -> (Vec<T>, usize) {
        let kpad = kdim.div_ceil(32) * 32;
        let mut out = vec![T::default(); rows * kpad];
        for r in 0..rows {
            out[r * kpad..r * kpad + kdim].copy_from_slice(&v[r * kdim..(r + 1) * kdim]);
        }
        (out, kpad)
    }

    /// The convolution step for input `x` (an ONNX name), weights `w` (rows = output
    /// channels, `kdim` each) and float bias; INT8 when both are quantized.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_step(
        &mut self,
        name: &str,
        x: &str,
        w: &str,
        w_scale: f32,
        bias: Vec<f32>,
        p: ConvParams,
        out_name: &str,
        transpose: Option<(usize, usize)>,
    ) -> Result<(), String> {
        let out_shape = self.shape(out_name)?;
        self.conv_step_shaped(
            name,
            x,
            w,
            w_scale,
            bias,
            p,
            (out_name, out_shape),
            transpose,
        )
    }

    /// [`Self::conv_step`] into a tensor the ONNX graph does not name (its shape given).
    #[allow(clippy::too_many_arguments)]
    fn conv_step_shaped(
        &mut self,
        name: &str,
        x: &str,
        w: &str,
        w_scale: f32,
        bias: Vec<f32>,
        p: ConvParams,
        (out_name, out_shape): (&str, Vec<usize>),
        transpose: Option<(usize, usize)>,
    ) -> Result<(), String> {
        let int8 = self
            .dq_of
            .get(x)
            .copied()
            .filter(|_| self.qconst.contains_key(w));
        let (kernel_i8, kernel_f) = if p.groups == 1 {
            (ConvKernel::GemmI8, ConvKernel::GemmF16)
        } else {
            (ConvKernel::DirectI8, ConvKernel::DirectF16)
        };
        let bias_c = self.plan.add_const(ConstData::F32(bias));
        let y = (out_name, out_shape);
        match int8 {
            Some(xq) => {
                self.conv_step_int8(name, xq, w, w_scale, bias_c, p, y, transpose, kernel_i8)
            }
            None => self.conv_step_float(name, x, w, w_scale, bias_c, p, y, transpose, kernel_f),
        }
    }

    /// The INT8 step: int8 weights (symmetric, per tensor or per output channel) on an int8
    /// input, with the per-row weight sums and output multipliers the epilogue needs.
    #[allow(clippy::too_many_arguments)]
    fn conv_step_int8(
        &mut self,
        name: &str,
        xq: TensorId,
        w: &str,
        w_scale: f32,
        bias_c: ConstId,
        mut p: ConvParams,
        (out_name, out_shape): (&str, Vec<usize>),
        transpose: Option<(usize, usize)>,
        kernel: ConvKernel,
    ) -> Result<(), String> {
        let (rows, kdim) = (p.k as usize, p.kdim as usize);
        let q = self.qconst[w].clone();
        if q.zps.iter().any(|z| *z != 0) {
            return Err("int8 weights with a non-zero zero point".into());
        }
        if q.scales.len() != 1 && (q.axis != 0 || q.scales.len() != rows)
            || transpose.is_some() && q.scales.len() != 1
        {
            return Err(
                "int8 weights quantized along another axis than the output channels".into(),
            );
        }
        let vals = match transpose {
            Some((r, c)) => transposed(&q.values, r, c),
            None => q.values.clone(),
        };
        if vals.iter().any(|v| *v < -128 || *v > 127) {
            return Err("weights outside int8".into());
        }
        let wi8: Vec<i8> = vals.iter().map(|v| *v as i8).collect();
        let (wpad, kpad) = Self::pad_rows(&wi8, rows, kdim);
        let (sx, zpx) = self.plan.tensors[xq]
            .quant
            .expect("int8 tensors carry scales");
        let wsum: Vec<i32> = (0..rows)
            .map(|r| {
                wi8[r * kdim..(r + 1) * kdim]
                    .iter()
                    .map(|v| *v as i32)
                    .sum()
            })
            .collect();
        let mult: Vec<f32> = (0..rows)
            .map(|r| sx * (q.scales[if q.scales.len() == 1 { 0 } else { r }] * w_scale))
            .collect();
        p.kpad = kpad as i32;
        p.in_zp = zpx;
        p.out_mode = if self.float == DType::F32 {
            out_mode::F32
        } else {
            out_mode::F16
        };
        let weights = self.plan.add_const(ConstData::I8(wpad));
        let wsum = Some(self.plan.add_const(ConstData::I32(wsum)));
        let mult = Some(self.plan.add_const(ConstData::F32(mult)));
        let y = self.new_tensor(out_name, out_shape, self.float, None);
        self.tensor.insert(out_name.to_string(), y);
        self.push(
            name,
            Op::Conv {
                kernel,
                p,
                weights,
                bias: bias_c,
                wsum,
                mult,
            },
            vec![xq],
            y,
        );
        Ok(())
    }

    /// The float step: weights dequantized or as they are, stored as the activations are.
    #[allow(clippy::too_many_arguments)]
    fn conv_step_float(
        &mut self,
        name: &str,
        x: &str,
        w: &str,
        w_scale: f32,
        bias_c: ConstId,
        mut p: ConvParams,
        (out_name, out_shape): (&str, Vec<usize>),
        transpose: Option<(usize, usize)>,
        kernel: ConvKernel,
    ) -> Result<(), String> {
        let (rows, kdim) = (p.k as usize, p.kdim as usize);
        let xt = self.float_tensor(x)?;
        let mut wf = self.const_f32(w)?;
        if let Some((r, c)) = transpose {
            wf = transposed(&wf, r, c);
        }
        if w_scale != 1.0 {
            wf.iter_mut().for_each(|v| *v *= w_scale);
        }
        if wf.len() != rows * kdim {
            return Err(format!(
                "weights have {} values, expected {}",
                wf.len(),
                rows * kdim
            ));
        }
        let (wpad, kpad) = Self::pad_rows(&wf, rows, kdim);
        p.kpad = kpad as i32;
        p.out_mode = if self.float == DType::F32 {
            out_mode::F32
        } else {
            out_mode::F16
        };
        let weights = self.plan.add_const(match self.float {
            DType::F32 => ConstData::F32(wpad),
            _ => ConstData::F16(wpad.iter().map(|v| f2h(*v)).collect()),
        });
        let y = self.new_tensor(out_name, out_shape, self.float, None);
        self.tensor.insert(out_name.to_string(), y);
        self.push(
            name,
            Op::Conv {
                kernel,
                p,
                weights,
                bias: bias_c,
                wsum: None,
                mult: None,
            },
            vec![xt],
            y,
        );
        Ok(())
    }

    pub(super) fn conv(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let (x, w) = (&n.input[0], &n.input[1]);
        if !self.is_const(w) {
            return Err("weights are not constant".into());
        }
        let xs = self.shape(x)?;
        let ys = self.shape(&n.output[0])?;
        if xs.len() != 4 {
            return Err(format!("only 2-D convolution (input rank {})", xs.len()));
        }
        let ws = self.const_shape(w);
        if ws.len() != 4 {
            return Err("weights are not 4-D".into());
        }
        let groups = attr_i(n, "group", 1) as usize;
        let strides = attr_ints(n, "strides").unwrap_or(vec![1, 1]);
        let dil = attr_ints(n, "dilations").unwrap_or(vec![1, 1]);
        let pads = attr_ints(n, "pads").unwrap_or(vec![0, 0, 0, 0]);
        let auto_pad = attr_s(n, "auto_pad", "NOTSET");
        let (kh, kw) = (ws[2], ws[3]);
        // top/left padding; SAME_* from the output size tract inferred
        let (pad_h, pad_w) = match auto_pad.as_str() {
            "NOTSET" => (pads[0], pads[1]),
            "VALID" => (0, 0),
            mode => {
                let total = |i: usize, o: usize, k: usize, s: i64, d: i64| {
                    ((o as i64 - 1) * s + (k as i64 - 1) * d + 1 - i as i64).max(0)
                };
                let th = total(xs[2], ys[2], kh, strides[0], dil[0]);
                let tw = total(xs[3], ys[3], kw, strides[1], dil[1]);
                if mode == "SAME_UPPER" {
                    (th / 2, tw / 2)
                } else {
                    (th - th / 2, tw - tw / 2)
                }
            }
        };
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => self.const_f32(b)?,
            None => vec![0.0; ws[0]],
        };
        let p = ConvParams {
            n: xs[0] as i32,
            c: xs[1] as i32,
            h: xs[2] as i32,
            w: xs[3] as i32,
            k: ys[1] as i32,
            oh: ys[2] as i32,
            ow: ys[3] as i32,
            r: kh as i32,
            s: kw as i32,
            stride_h: strides[0] as i32,
            stride_w: strides[1] as i32,
            pad_h: pad_h as i32,
            pad_w: pad_w as i32,
            dil_h: dil[0] as i32,
            dil_w: dil[1] as i32,
            groups: groups as i32,
            kdim: (ws[1] * kh * kw) as i32,
            ..Default::default()
        };
        self.conv_step(name, x, w, 1.0, bias, p, &n.output[0], None)
    }

    /// `ConvTranspose` whose kernel equals its stride (no overlap: U-Net and DB-head
    /// upsampling, PP-OCR's detector): output pixel (s·i + a, s·j + b) is input pixel (i, j)
    /// times tap (a, b), so it is a 1x1 convolution to `C_out·kh·kw` channels (the weights
    /// `[C_in, C_out·kh·kw]` transposed) and one Transpose that puts each tap at its place,
    /// `[N, C_out, kh, kw, H, W] → [N, C_out, H, kh, W, kw]`. Overlapping kernels are refused.
    pub(super) fn conv_transpose(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let (x, w) = (&n.input[0], &n.input[1]);
        if !self.is_const(w) || self.qconst.contains_key(w) {
            return Err("weights that are not a float constant".into());
        }
        let xs = self
            .float_tensor(x)
            .map(|t| self.plan.tensors[t].shape.clone())?;
        let ys = self.shape(&n.output[0])?;
        let ws = self.const_shape(w);
        if xs.len() != 4 || ws.len() != 4 {
            return Err("only 2-D ConvTranspose".into());
        }
        let (kh, kw) = (ws[2], ws[3]);
        let ones = |a: &str| attr_ints(n, a).is_none_or(|v| v.iter().all(|&d| d == 1));
        let zeros = |a: &str| attr_ints(n, a).is_none_or(|v| v.iter().all(|&d| d == 0));
        let strides = attr_ints(n, "strides").unwrap_or(vec![1, 1]);
        if attr_i(n, "group", 1) != 1
            || !ones("dilations")
            || !zeros("pads")
            || !zeros("output_padding")
            || attr_s(n, "auto_pad", "NOTSET") != "NOTSET"
            || strides != [kh as i64, kw as i64]
        {
            return Err(format!(
                "only kernel = stride, no padding, groups or dilation (kernel {kh}x{kw}, strides {strides:?})"
            ));
        }
        let (cin, cout) = (ws[0], ws[1]);
        if ys != [xs[0], cout, xs[2] * kh, xs[3] * kw] || xs[1] != cin {
            return Err(format!("output shape {ys:?} for input {xs:?}"));
        }
        let taps = kh * kw;
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => self.const_f32(b)?,
            None => vec![0.0; cout],
        };
        let bias: Vec<f32> = (0..cout * taps).map(|r| bias[r / taps]).collect();
        let p = ConvParams {
            n: xs[0] as i32,
            c: cin as i32,
            h: xs[2] as i32,
            w: xs[3] as i32,
            k: (cout * taps) as i32,
            oh: xs[2] as i32,
            ow: xs[3] as i32,
            r: 1,
            s: 1,
            stride_h: 1,
            stride_w: 1,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
            kdim: cin as i32,
            ..Default::default()
        };
        let mid = format!("{}__taps", n.output[0]);
        let mid_shape = vec![xs[0], cout * taps, xs[2], xs[3]];
        let step = format!("{name} (taps)");
        self.conv_step_shaped(
            &step,
            x,
            w,
            1.0,
            bias,
            p,
            (&mid, mid_shape),
            Some((cin, cout * taps)),
        )?;
        let t = self.tensor[&mid];
        let y = self.out_tensor(n, self.float, None)?;
        let six = [xs[0], cout, kh, kw, xs[2], xs[3]];
        let tp = bevrt_kernels::params::TransposeParams::new(&six, &[0, 1, 4, 2, 5, 3]);
        self.push(name, Op::Transpose(tp), vec![t], y);
        Ok(())
    }

    pub(super) fn matmul(&mut self, n: &pb::NodeProto, name: &str) -> Result<(), String> {
        let (a, b) = (&n.input[0], &n.input[1]);
        if !self.is_const(b) {
            return Err("the right operand is not constant".into());
        }
        let gemm = n.op_type == "Gemm";
        if gemm && attr_i(n, "transA", 0) != 0 {
            return Err("transA".into());
        }
        let a_shape = self.shape(a)?;
        let bs = self.const_shape(b);
        if bs.len() != 2 {
            return Err("the right operand is not 2-D".into());
        }
        let trans_b = gemm && attr_i(n, "transB", 0) != 0;
        let (kdim, nout) = if trans_b {
            (bs[1], bs[0])
        } else {
            (bs[0], bs[1])
        };
        let m: usize = a_shape[..a_shape.len() - 1].iter().product();
        if *a_shape.last().unwrap_or(&0) != kdim {
            return Err("inner dimensions differ".into());
        }
        let alpha = if gemm { attr_f(n, "alpha", 1.0) } else { 1.0 };
        let mut bias = vec![0f32; nout];
        if gemm && let Some(c) = n.input.get(2).filter(|s| !s.is_empty()) {
            let beta = attr_f(n, "beta", 1.0);
            let cv = self.const_f32(c)?;
            if cv.len() != 1 && cv.len() != nout {
                return Err("C is not a row vector".into());
            }
            for (j, b) in bias.iter_mut().enumerate() {
                *b = beta * cv[if cv.len() == 1 { 0 } else { j }];
            }
        }
        let p = ConvParams {
            n: m as i32,
            c: kdim as i32,
            h: 1,
            w: 1,
            k: nout as i32,
            oh: 1,
            ow: 1,
            r: 1,
            s: 1,
            stride_h: 1,
            stride_w: 1,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
            kdim: kdim as i32,
            ..Default::default()
        };
        let transpose = if trans_b { None } else { Some((bs[0], bs[1])) };
        self.conv_step(name, a, b, alpha, bias, p, &n.output[0], transpose)
    }
}

/// A row-major `r x c` matrix transposed (`c x r`).
fn transposed<T: Copy>(v: &[T], r: usize, c: usize) -> Vec<T> {
    (0..c)
        .flat_map(|j| (0..r).map(move |i| (i, j)))
        .map(|(i, j)| v[i * c + j])
        .collect()
}
