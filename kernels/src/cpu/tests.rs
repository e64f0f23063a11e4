//! Every CPU engine kernel against its twin in `reference`, on every instruction set this
//! machine has, over shapes that exercise padding, stride, dilation, channel and pixel
//! remainders and batches.

use super::*;
use crate::params::{ConvParams, act};
use crate::plan::{TensorDesc, TensorId};

fn tensor(
    plan: &mut KernelPlan,
    shape: Vec<usize>,
    dtype: DType,
    quant: Option<(f32, i32)>,
) -> TensorId {
    plan.add_tensor(TensorDesc {
        name: format!("t{}", plan.tensors.len()),
        shape,
        dtype,
        quant,
        view_of: None,
        view_offset: 0,
    })
}

/// Deterministic pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

struct Case {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
    n: usize,
}

impl Case {
    fn params(&self) -> ConvParams {
        let out = |i: usize| (i + 2 * self.pad - self.dil * (self.r - 1) - 1) / self.stride + 1;
        let kdim = self.c / self.groups * self.r * self.r;
        ConvParams {
            n: self.n as i32,
            c: self.c as i32,
            h: self.h as i32,
            w: self.w as i32,
            k: self.k as i32,
            oh: out(self.h) as i32,
            ow: out(self.w) as i32,
            r: self.r as i32,
            s: self.r as i32,
            stride_h: self.stride as i32,
            stride_w: self.stride as i32,
            pad_h: self.pad as i32,
            pad_w: self.pad as i32,
            dil_h: self.dil as i32,
            dil_w: self.dil as i32,
            groups: self.groups as i32,
            kdim: kdim as i32,
            kpad: (kdim.div_ceil(32) * 32) as i32,
            act: act::HARD_SWISH,
            ..Default::default()
        }
    }
}

const CASES: &[Case] = &[
    // 3x3 stride 2 pad 1 on an RGB image (letsmap-lite's first layer shape, smaller)
    Case {
        c: 3,
        h: 17,
        w: 40,
        k: 16,
        r: 3,
        stride: 2,
        pad: 1,
        dil: 1,
        groups: 1,
        n: 1,
    },
    // 1x1 pointwise, channels not a multiple of 8, pixels not a multiple of 32
    Case {
        c: 20,
        h: 7,
        w: 9,
        k: 13,
        r: 1,
        stride: 1,
        pad: 0,
        dil: 1,
        groups: 1,
        n: 2,
    },
    // 3x3 dilated
    Case {
        c: 8,
        h: 12,
        w: 12,
        k: 24,
        r: 3,
        stride: 1,
        pad: 2,
        dil: 2,
        groups: 1,
        n: 1,
    },
    // a wide layer (several tiles, several panels)
    Case {
        c: 32,
        h: 16,
        w: 48,
        k: 40,
        r: 3,
        stride: 1,
        pad: 1,
        dil: 1,
        groups: 1,
        n: 1,
    },
    // a narrow layer with odd sizes: one block of at most 16 tiles, partial tiles at the
    // right and bottom edges (Winograd's half-width path)
    Case {
        c: 8,
        h: 19,
        w: 15,
        k: 8,
        r: 3,
        stride: 1,
        pad: 1,
        dil: 1,
        groups: 1,
        n: 1,
    },
    // depthwise 3x3 stride 2 and 5x5 stride 1
    Case {
        c: 24,
        h: 15,
        w: 22,
        k: 24,
        r: 3,
        stride: 2,
        pad: 1,
        dil: 1,
        groups: 24,
        n: 1,
    },
    Case {
        c: 16,
        h: 9,
        w: 11,
        k: 16,
        r: 5,
        stride: 1,
        pad: 2,
        dil: 1,
        groups: 16,
        n: 2,
    },
    // depthwise on small planes (ShuffleNet's last stages), channels not a multiple of 16:
    // dilated on two images, and strided
    Case {
        c: 20,
        h: 7,
        w: 7,
        k: 20,
        r: 3,
        stride: 1,
        pad: 2,
        dil: 2,
        groups: 20,
        n: 2,
    },
    Case {
        c: 18,
        h: 13,
        w: 13,
        k: 18,
        r: 3,
        stride: 2,
        pad: 1,
        dil: 1,
        groups: 18,
        n: 1,
    },
    // depthwise stride 1 on either side of the row-by-row rule (ow <= 16 sums each row in
    // registers and finishes the plane in one epilogue call; wider planes pass per tap)
    Case {
        c: 8,
        h: 6,
        w: 21,
        k: 8,
        r: 3,
        stride: 1,
        pad: 1,
        dil: 1,
        groups: 8,
        n: 2,
    },
    Case {
        c: 8,
        h: 5,
        w: 16,
        k: 8,
        r: 3,
        stride: 1,
        pad: 1,
        dil: 1,
        groups: 8,
        n: 1,
    },
    // a classifier's fully connected layer: one pixel per image, taps not a multiple of 4
    Case {
        c: 43,
        h: 1,
        w: 1,
        k: 20,
        r: 1,
        stride: 1,
        pad: 0,
        dil: 1,
        groups: 1,
        n: 3,
    },
    // grouped with 64 x 9 taps per output: too many for exact f32 sums, INT8 stays in i32
    Case {
        c: 128,
        h: 5,
        w: 6,
        k: 4,
        r: 3,
        stride: 1,
        pad: 1,
        dil: 1,
        groups: 2,
        n: 1,
    },
    // grouped (2 groups, 2 outputs per input channel): one GEMM per group
    Case {
        c: 8,
        h: 6,
        w: 10,
        k: 16,
        r: 3,
        stride: 1,
        pad: 1,
        dil: 1,
        groups: 2,
        n: 1,
    },
    // rows shorter than a block (7x7 and 5x5 outputs): GEMM blocks run across rows
    Case {
        c: 6,
        h: 7,
        w: 7,
        k: 20,
        r: 3,
        stride: 1,
        pad: 1,
        dil: 1,
        groups: 1,
        n: 2,
    },
    Case {
        c: 12,
        h: 7,
        w: 7,
        k: 9,
        r: 3,
        stride: 1,
        pad: 0,
        dil: 1,
        groups: 1,
        n: 1,
    },
    // ShuffleNet's grouped 1x1 (3 groups), and a grouped 3x3 stride 2 (ResNeXt-like)
    Case {
        c: 12,
        h: 7,
        w: 9,
        k: 24,
        r: 1,
        stride: 1,
        pad: 0,
        dil: 1,
        groups: 3,
        n: 1,
    },
    Case {
        c: 16,
        h: 9,
        w: 11,
        k: 16,
        r: 3,
        stride: 2,
        pad: 1,
        dil: 1,
        groups: 4,
        n: 1,
    },
    // strided layers whose output rows are shorter than a block (taps gathered per output
    // pixel): a dilated 3x3 on two images, and a downsampling 1x1 whose weights are past L2
    // (read panel by panel)
    Case {
        c: 13,
        h: 13,
        w: 14,
        k: 11,
        r: 3,
        stride: 2,
        pad: 2,
        dil: 2,
        groups: 1,
        n: 2,
    },
    Case {
        c: 300,
        h: 14,
        w: 14,
        k: 520,
        r: 1,
        stride: 2,
        pad: 0,
        dil: 1,
        groups: 1,
        n: 1,
    },
];

/// INT8 weights from `wv` (rows of `kpad`, the padding past `kdim` zeroed), their row sums
/// and per-channel multipliers.
fn int8_weights(
    case: &Case,
    wv: &[f32],
    kpad: usize,
    kdim: usize,
) -> (Vec<i8>, Vec<i32>, Vec<f32>) {
    let mut w: Vec<i8> = wv.iter().map(|v| (v * 127.0) as i8).collect();
    for k in 0..case.k {
        w[k * kpad + kdim..(k + 1) * kpad].fill(0);
    }
    let wsum: Vec<i32> = (0..case.k)
        .map(|k| w[k * kpad..k * kpad + kdim].iter().map(|v| *v as i32).sum())
        .collect();
    let mult: Vec<f32> = (0..case.k).map(|k| 0.0004 + k as f32 * 1e-5).collect();
    (w, wsum, mult)
}

/// A one-step plan: input → Conv → output.
fn conv_plan(case: &Case, int8: Option<(i32, bool)>, seed: u32) -> (KernelPlan, Vec<f32>) {
    let mut p = case.params();
    let mut plan = KernelPlan::default();
    let xs = vec![case.n, case.c, case.h, case.w];
    let ys = vec![case.n, case.k, p.oh as usize, p.ow as usize];
    let (kpad, kdim) = (p.kpad as usize, p.kdim as usize);
    let direct = case.groups > 1;
    let bias: Vec<f32> = noise(case.k, seed + 1).iter().map(|v| v * 0.5).collect();
    let bias = plan.add_const(ConstData::F32(bias));
    let wv = noise(case.k * kpad, seed + 2);
    let mut input = noise(case.n * case.c * case.h * case.w, seed + 3);
    let (op, xt, yt) = match int8 {
        None => {
            p.out_mode = out_mode::F32;
            let mut w = wv.clone();
            for k in 0..case.k {
                w[k * kpad + kdim..(k + 1) * kpad].fill(0.0);
            }
            let weights = plan.add_const(ConstData::F32(w));
            let xt = tensor(&mut plan, xs, DType::F32, None);
            let yt = tensor(&mut plan, ys, DType::F32, None);
            let kernel = if direct {
                ConvKernel::DirectF16
            } else {
                ConvKernel::GemmF16
            };
            (
                Op::Conv {
                    kernel,
                    p,
                    weights,
                    bias,
                    wsum: None,
                    mult: None,
                },
                xt,
                yt,
            )
        }
        Some((zp, requant)) => {
            p.in_zp = zp;
            let (w, wsum, mult) = int8_weights(case, &wv, kpad, kdim);
            let q = if requant { Some((0.02, -5)) } else { None };
            p.out_mode = if requant { out_mode::I8 } else { out_mode::F32 };
            p.out_scale = 0.02;
            p.out_zp = -5;
            let weights = plan.add_const(ConstData::I8(w));
            let wsum = Some(plan.add_const(ConstData::I32(wsum)));
            let mult = Some(plan.add_const(ConstData::F32(mult)));
            // the input arrives as floats and is quantized by a first step
            let xf = tensor(&mut plan, xs.clone(), DType::F32, None);
            let xq = tensor(&mut plan, xs, DType::I8, Some((1.0 / 100.0, zp)));
            plan.steps.push(Step {
                name: "q".into(),
                op: Op::Quantize,
                inputs: vec![xf],
                const_inputs: vec![],
                output: xq,
            });
            let yt = tensor(
                &mut plan,
                ys,
                if requant { DType::I8 } else { DType::F32 },
                q,
            );
            input.iter_mut().for_each(|v| *v *= 1.5); // some saturate
            let kernel = if direct {
                ConvKernel::DirectI8
            } else {
                ConvKernel::GemmI8
            };
            (
                Op::Conv {
                    kernel,
                    p,
                    weights,
                    bias,
                    wsum,
                    mult,
                },
                xq,
                yt,
            )
        }
    };
    plan.inputs = vec![if int8.is_some() { 0 } else { xt }];
    plan.steps.push(Step {
        name: "conv".into(),
        op,
        inputs: vec![xt],
        const_inputs: vec![],
        output: yt,
    });
    plan.outputs = vec![yt];
    plan.allocate();
    (plan, input)
}

fn run_engine(plan: &KernelPlan, input: &[f32], isa: Isa, threads: usize) -> Vec<f32> {
    let mut e = CpuPlan::load(plan.clone(), pool::shared(threads), isa).expect("loads");
    e.input_mut(0).copy_from_slice(input);
    e.run();
    let t = plan.outputs[0];
    let mut y = vec![0f32; plan.tensors[t].elems()];
    e.output_into(0, &mut y).unwrap();
    y
}

#[test]
fn float_convolutions_match_the_twin() {
    for (i, case) in CASES.iter().enumerate() {
        let (plan, input) = conv_plan(case, None, i as u32);
        let want = crate::reference::run(&plan, &[&input]).remove(0);
        for isa in Isa::all_available() {
            for threads in [1, 2] {
                let got = run_engine(&plan, &input, isa, threads);
                let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                    / scale;
                let per_group_gemm =
                    case.n == 1 && case.c / case.groups >= 4 && case.k / case.groups >= 4;
                if case.groups > 1 && !per_group_gemm {
                    assert_eq!(got, want, "case {i} {isa:?}: direct FP32 must be bit-exact");
                } else {
                    assert!(
                        err <= 1e-5,
                        "case {i} {isa:?} x{threads}: relative error {err}"
                    );
                }
            }
        }
    }
}

#[test]
fn int8_convolutions_are_bit_exact() {
    for (i, case) in CASES.iter().enumerate() {
        for (zp, requant) in [(0, false), (-7, true), (37, false), (-128, true)] {
            let (plan, input) = conv_plan(case, Some((zp, requant)), 10 + i as u32);
            let want = crate::reference::run(&plan, &[&input]).remove(0);
            for isa in Isa::all_available() {
                for threads in [1, 2] {
                    let got = run_engine(&plan, &input, isa, threads);
                    assert_eq!(
                        got, want,
                        "case {i} zp {zp} requant {requant} {isa:?} x{threads}"
                    );
                }
            }
        }
    }
}

#[test]
fn fp16_plans_are_refused_with_the_tensor_named() {
    let (mut plan, _) = conv_plan(&CASES[0], None, 0);
    plan.tensors[0].dtype = DType::F16;
    let e = CpuPlan::load(plan, pool::shared(1), Isa::Portable)
        .err()
        .unwrap();
    assert!(e.contains("FP16") && e.contains("t"), "{e}");
}

/// CI names the families the machine (or emulator) must offer, so the exactness tests above
/// cannot silently run on fewer (`BEVRT_EXPECT_ISAS=portable,neon,neon-dotprod` under
/// qemu-aarch64).
#[test]
fn the_expected_instruction_set_families_are_all_tested() {
    let Ok(want) = std::env::var("BEVRT_EXPECT_ISAS") else {
        return;
    };
    let have: Vec<&str> = Isa::all_available().iter().map(|i| i.name()).collect();
    assert_eq!(have.join(","), want, "families available here");
}

/// The float-convolution test above covers Winograd only if the engine picks it: on AVX-512
/// and on aarch64 (NEON lanes) for the 3x3 stride-1 cases, nowhere else.
#[test]
fn winograd_runs_where_it_is_meant_to() {
    if std::env::var("BEVRT_CPU_WINOGRAD").is_ok_and(|v| v == "0") {
        return; // turned off on purpose
    }
    let winograd_isas = [Isa::Avx512, Isa::Avx512Vnni, Isa::Neon, Isa::NeonDot];
    let mut seen = 0;
    for (i, case) in CASES.iter().enumerate() {
        let (plan, _) = conv_plan(case, None, i as u32);
        let fits = case.r == 3 && case.stride == 1 && case.dil == 1 && case.groups == 1;
        let out = |x: usize| (x + 2 * case.pad - 3) / case.stride + 1;
        let fits = fits && case.c >= 8 && case.k >= 8 && out(case.h) * out(case.w) >= 256;
        for isa in Isa::all_available() {
            let e = CpuPlan::load(plan.clone(), pool::shared(1), isa).expect("loads");
            let used = e.profile().iter().any(|s| s.kernel == "winograd_f32");
            let want = fits && winograd_isas.contains(&isa);
            assert_eq!(used, want, "case {i} on {isa:?}");
            seen += used as usize;
        }
    }
    if Isa::all_available()
        .iter()
        .any(|i| winograd_isas.contains(i))
    {
        assert!(seen >= 2, "Winograd ran on {seen} case/ISA pairs");
    }
}

/// Grouped convolutions with at least 4 channels per group on each side run as one GEMM per
/// group (what the float and INT8 tests above then check); depthwise ones stay direct.
#[test]
fn grouped_convolutions_run_as_gemms_per_group_where_they_can() {
    let mut grouped = 0;
    for (i, case) in CASES.iter().enumerate().filter(|(_, c)| c.groups > 1) {
        let want = case.n == 1 && case.c / case.groups >= 4 && case.k / case.groups >= 4;
        for int8 in [None, Some((0, false))] {
            let (plan, _) = conv_plan(case, int8, i as u32);
            let e = CpuPlan::load(plan, pool::shared(1), Isa::detect()).expect("loads");
            let kernel = e
                .profile()
                .iter()
                .map(|s| s.kernel.clone())
                .find(|k| k.starts_with("gemm_") || k.starts_with("direct_"))
                .expect("a convolution step");
            assert_eq!(
                kernel.starts_with("gemm_"),
                want,
                "case {i} int8 {}: {kernel}",
                int8.is_some()
            );
            grouped += want as usize;
        }
    }
    assert!(grouped >= 6, "{grouped} grouped GEMM runs");
}

/// The epilogue's vectorisable requantization equals the twin's on ties, saturation, the
/// edges of its rounding trick (|y / s| around 2^22 and 2^23), infinities and NaN.
#[test]
fn epilogue_requantization_equals_the_twin() {
    let mut ys = vec![
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::MAX,
        f32::MIN,
    ];
    for k in -300..300 {
        ys.push(k as f32 * 0.5); // every tie in and around the int8 range
        ys.push(k as f32 * 0.5 + 1e-3);
    }
    for e in [21, 22, 23, 24, 30] {
        let big = (1u64 << e) as f32;
        for d in [-1.5, -0.5, 0.0, 0.5, 1.5] {
            ys.push(big + d);
            ys.push(-big + d);
        }
    }
    let mut s = 1u32;
    for _ in 0..10_000 {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        ys.push((s as i32) as f32 / (1u64 << 24) as f32);
    }
    for scale in [1.0f32, 0.5, 0.0173, 3.0e-5] {
        for zp in [-128, -7, 0, 37, 127] {
            for &y in &ys {
                let y = y * scale; // ties stay ties after the division
                assert_eq!(
                    ops::quantize_i8(y, scale, zp),
                    crate::reference::quantize_i8(y, scale, zp),
                    "y {y} scale {scale} zp {zp}"
                );
            }
        }
    }
}
