//! Every `extern "C" __global__` entry point of kernels/cuda, compiled as host C++ and run
//! under the emulation, against its CPU twin, with the launch shapes the Rust launchers use.
//! Shapes cover tile edges (partial M, N and K tiles), padding, stride, dilation, groups,
//! zero points, every output mode and empty tensors; NaN and saturation where the kernel
//! rounds. `.ci/run` also runs this file under AddressSanitizer.

use bevrt_kernels::launch::{
    AfvDims, PreprocessParams, bev_pool_config, conv_gemm_config, elementwise_config,
    preprocess_config,
};
use bevrt_kernels::params::{BinaryParams, ConvParams, PoolParams, ResizeParams, act, out_mode};
use bevrt_kernels::reference::{self, ConvInput, ConvWeights, f2h, h2f};
use bevrt_kernels_emu::{Args, EmuOptions, LaunchConfig, cvt_f32_f16, cvt_rn_f16_f32, entries};
use bevrt_tests::splitmix_bytes as bytes;

fn floats(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    bytes(n, seed)
        .iter()
        .map(|b| lo + (hi - lo) * (*b as f32 / 255.0))
        .collect()
}

const NO: EmuOptions = EmuOptions {
    swap_mma_a_registers: false,
};

fn run(name: &str, cfg: &LaunchConfig, a: &mut Args) {
    // SAFETY: each test passes the kernel's parameters in signature order, with buffers of
    // the sizes the kernel touches (AddressSanitizer checks that in CI).
    unsafe { a.launch(name, cfg, NO) }.unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_kernel_entry_point_is_emulated() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let emu: Vec<String> = entries().into_iter().map(|(n, _)| n).collect();
    let mut nvrtc: Vec<String> = bevrt_kernels::nvrtc::KERNELS
        .iter()
        .flat_map(|k| k.entries.iter().map(|e| e.to_string()))
        .collect();
    let mut sorted = emu.clone();
    sorted.sort();
    nvrtc.sort();
    assert_eq!(sorted, nvrtc, "emulated entry points vs nvrtc::KERNELS");
    let coop: Vec<String> = entries().into_iter().filter(|e| e.1).map(|e| e.0).collect();
    assert_eq!(
        coop,
        [
            "conv_i8_imma",
            "conv_i8_dp4a",
            "conv_f16_mma",
            "fisher_normalise"
        ],
        "kernels that synchronise run with threads"
    );
}

#[test]
fn launch_configurations_are_checked_as_the_driver_does() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let mut x = vec![0u16; 4];
    let mut y = vec![0u16; 4];
    let mut a = Args::new();
    a.ptr(x.as_mut_ptr()).ptr(y.as_mut_ptr()).arg(4i32);
    for (grid, block) in [
        ((0, 1, 1), (256, 1, 1)),
        ((1, 1, 1), (2048, 1, 1)),
        ((1, 1, 1), (0, 1, 1)),
    ] {
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes: 0,
        };
        // SAFETY: cast_f16_f32(x, y, n) with 4 elements each; the launch must be refused.
        let e = unsafe { a.launch("cast_f16_f32", &cfg, NO) }.unwrap_err();
        assert!(e.0.contains("invalid"), "{e}");
    }
    // every launcher shape is valid for empty tensors
    assert_eq!(elementwise_config(0).grid_dim.0, 1);
    let empty = ConvParams {
        n: 1,
        k: 8,
        ..Default::default()
    };
    assert_eq!(conv_gemm_config(&empty).grid_dim, (1, 1, 1));
}

#[test]
fn cvt_f16_follows_the_ptx_rules() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    // every f16 value to f32 and back
    for h in 0..=u16::MAX {
        let f = cvt_f32_f16(h);
        let want = half::f16::from_bits(h);
        if want.is_nan() {
            assert_eq!(f.to_bits(), 0x7fff_ffff, "{h:#06x}: canonical NaN");
            assert_eq!(h2f(h).to_bits(), 0x7fff_ffff, "twin {h:#06x}");
        } else {
            assert_eq!(f.to_bits(), want.to_f32().to_bits(), "{h:#06x}");
            assert_eq!(cvt_rn_f16_f32(f), h, "round trip {h:#06x}");
        }
    }
    // f32 to f16: edges and a million random bit patterns, against the twin
    let mut cases: Vec<f32> = vec![
        65504.0,
        65519.996,
        65520.0,
        f32::INFINITY,
        -f32::INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        6.1035156e-5,
        6.1e-5,
        2.9802322e-8,
        2.9802326e-8,
        1.0e-9,
        -0.0,
        1.0004883,
        1.0014648,
    ];
    let raw = bytes(4 << 20, 99);
    cases.extend(
        raw.chunks_exact(4)
            .map(|b| f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
    );
    for f in cases {
        let got = cvt_rn_f16_f32(f);
        if f.is_nan() {
            assert_eq!(got, 0x7fff, "canonical NaN");
        } else {
            assert_eq!(
                got,
                half::f16::from_f32(f).to_bits(),
                "{f:e} ({:#x})",
                f.to_bits()
            );
        }
        assert_eq!(got, f2h(f), "twin f2h at {f:e}");
        assert_eq!(
            got,
            bevrt_runtime::preprocess::f32_to_f16_bits(f),
            "preprocess twin at {f:e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Convolutions

#[derive(Clone, Copy)]
struct ConvCase {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    k: i32,
    r: i32,
    s: i32,
    stride: (i32, i32),
    pad: (i32, i32),
    dil: (i32, i32),
    groups: i32,
}

fn conv_cases() -> Vec<ConvCase> {
    let base = ConvCase {
        n: 1,
        c: 3,
        h: 5,
        w: 6,
        k: 4,
        r: 3,
        s: 3,
        stride: (2, 2),
        pad: (1, 1),
        dil: (1, 1),
        groups: 1,
    };
    vec![
        // partial M, N and K tiles in one tiny case
        base,
        // two M tiles (batch 2), two N tiles (70 channels), three K tiles (kdim 72 -> 96)
        ConvCase {
            n: 2,
            c: 8,
            h: 9,
            w: 7,
            k: 70,
            stride: (1, 1),
            ..base
        },
        // 1x1, K exactly one tile
        ConvCase {
            c: 32,
            h: 12,
            w: 10,
            k: 64,
            r: 1,
            s: 1,
            stride: (1, 1),
            pad: (0, 0),
            ..base
        },
        // dilation 2 with padding 2
        ConvCase {
            c: 5,
            h: 11,
            w: 13,
            k: 9,
            stride: (1, 1),
            pad: (2, 2),
            dil: (2, 2),
            ..base
        },
        // 5x5 stride 2, and a non-square 3x1 kernel with stride (2, 1)
        ConvCase {
            c: 4,
            h: 8,
            w: 8,
            k: 8,
            r: 5,
            s: 5,
            pad: (2, 2),
            ..base
        },
        ConvCase {
            c: 33,
            h: 6,
            w: 6,
            k: 65,
            r: 3,
            s: 1,
            stride: (2, 1),
            pad: (1, 0),
            ..base
        },
        // over 64 x 64 output pixels in more than one row of blocks
        ConvCase {
            c: 2,
            h: 17,
            w: 15,
            k: 3,
            stride: (1, 1),
            ..base
        },
    ]
}

fn grouped_cases() -> Vec<ConvCase> {
    let dw = ConvCase {
        n: 2,
        c: 6,
        h: 7,
        w: 9,
        k: 6,
        r: 3,
        s: 3,
        stride: (2, 1),
        pad: (1, 1),
        dil: (1, 1),
        groups: 6,
    };
    vec![
        dw,
        ConvCase {
            c: 8,
            k: 4,
            groups: 2,
            dil: (2, 1),
            pad: (2, 0),
            ..dw
        },
        ConvCase {
            c: 4,
            k: 8,
            groups: 4,
            r: 5,
            s: 5,
            pad: (2, 2),
            stride: (1, 1),
            ..dw
        },
    ]
}

/// Output storage and epilogue per case index: every out mode and the exact activations.
fn params(cc: &ConvCase, i: usize, in_zp: i32) -> ConvParams {
    let oh = (cc.h + 2 * cc.pad.0 - cc.dil.0 * (cc.r - 1) - 1) / cc.stride.0 + 1;
    let ow = (cc.w + 2 * cc.pad.1 - cc.dil.1 * (cc.s - 1) - 1) / cc.stride.1 + 1;
    let kdim = cc.c / cc.groups * cc.r * cc.s;
    let acts = [
        (act::NONE, 0.0, 0.0),
        (act::RELU, 0.0, 0.0),
        (act::CLIP, -0.5, 2.0),
        (act::HARD_SWISH, 0.0, 0.0),
        (act::LEAKY_RELU, 0.1, 0.0),
        (act::HARD_SIGMOID, 0.2, 0.5),
    ];
    let (a, aa, ab) = acts[i % acts.len()];
    ConvParams {
        n: cc.n,
        c: cc.c,
        h: cc.h,
        w: cc.w,
        k: cc.k,
        oh,
        ow,
        r: cc.r,
        s: cc.s,
        stride_h: cc.stride.0,
        stride_w: cc.stride.1,
        pad_h: cc.pad.0,
        pad_w: cc.pad.1,
        dil_h: cc.dil.0,
        dil_w: cc.dil.1,
        groups: cc.groups,
        kdim,
        kpad: (kdim + 31) / 32 * 32,
        in_zp,
        act: a,
        act_a: aa,
        act_b: ab,
        out_mode: [out_mode::I8, out_mode::F16, out_mode::F32][i % 3],
        out_scale: 0.05,
        out_zp: -3,
    }
}

struct Int8Conv {
    x: Vec<i8>,
    w: Vec<i8>,
    wsum: Vec<i32>,
    mult: Vec<f32>,
    bias: Vec<f32>,
}

fn int8_conv(p: &ConvParams, seed: u64) -> Int8Conv {
    let x: Vec<i8> = bytes(p.in_elems(), seed).iter().map(|b| *b as i8).collect();
    let (k, kpad, kdim) = (p.k as usize, p.kpad as usize, p.kdim as usize);
    let mut w = vec![0i8; k * kpad];
    let wr = bytes(k * kdim, seed + 1);
    for o in 0..k {
        for j in 0..kdim {
            w[o * kpad + j] = wr[o * kdim + j] as i8;
        }
    }
    let wsum = (0..k)
        .map(|o| w[o * kpad..][..kpad].iter().map(|v| *v as i32).sum())
        .collect();
    Int8Conv {
        x,
        w,
        wsum,
        mult: floats(k, seed + 2, 1e-4, 4e-4),
        bias: floats(k, seed + 3, -1.0, 1.0),
    }
}

fn out_bytes(p: &ConvParams) -> usize {
    p.out_elems()
        * match p.out_mode {
            out_mode::F32 => 4,
            out_mode::F16 => 2,
            _ => 1,
        }
}

fn launch_int8(kernel: &str, p: &ConvParams, d: &Int8Conv, opts: EmuOptions) -> Vec<u8> {
    let mut y = vec![0u8; out_bytes(p)];
    let cfg = if kernel == "conv_direct_i8" {
        elementwise_config(p.out_elems())
    } else {
        conv_gemm_config(p)
    };
    let mut a = Args::new();
    a.arg(*p)
        .ptr(d.x.as_ptr())
        .ptr(d.w.as_ptr())
        .ptr(d.wsum.as_ptr())
        .ptr(d.mult.as_ptr())
        .ptr(d.bias.as_ptr())
        .ptr(y.as_mut_ptr());
    // SAFETY: conv_*_i8(p, x, w, wsum, mult, bias, y), buffers sized from p.
    unsafe { a.launch(kernel, &cfg, opts) }.unwrap_or_else(|e| panic!("{e}"));
    y
}

fn want_int8(p: &ConvParams, d: &Int8Conv) -> Vec<u8> {
    let y = reference::conv(
        p,
        ConvInput::I8(&d.x),
        ConvWeights::I8(&d.w),
        &d.bias,
        Some(&d.mult),
    );
    reference::store_conv(p, &y)
}

fn case_name(p: &ConvParams) -> String {
    format!(
        "n{} c{} {}x{} k{} {}x{} s{}x{} p{}x{} d{}x{} g{} out{}",
        p.n,
        p.c,
        p.h,
        p.w,
        p.k,
        p.r,
        p.s,
        p.stride_h,
        p.stride_w,
        p.pad_h,
        p.pad_w,
        p.dil_h,
        p.dil_w,
        p.groups,
        p.out_mode
    )
}

#[test]
fn int8_convolutions_equal_the_twin_bit_for_bit() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let mut cases = 0;
    for (i, cc) in conv_cases().iter().enumerate() {
        for zp in [0i32, 5, -7] {
            let p = params(cc, i + zp.unsigned_abs() as usize, zp);
            let d = int8_conv(&p, 10 + i as u64);
            let want = want_int8(&p, &d);
            for kernel in ["conv_i8_imma", "conv_i8_dp4a", "conv_direct_i8"] {
                let got = launch_int8(kernel, &p, &d, NO);
                assert!(got == want, "{kernel} {} zp {zp}", case_name(&p));
                cases += 1;
            }
        }
    }
    for (i, cc) in grouped_cases().iter().enumerate() {
        let p = params(cc, i, 3);
        let d = int8_conv(&p, 40 + i as u64);
        assert!(
            launch_int8("conv_direct_i8", &p, &d, NO) == want_int8(&p, &d),
            "conv_direct_i8 {}",
            case_name(&p)
        );
        cases += 1;
    }
    assert!(cases >= 60);
}

#[test]
fn int8_convolution_of_an_empty_batch_launches_and_writes_nothing() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let cc = ConvCase {
        n: 0,
        ..conv_cases()[0]
    };
    let p = params(&cc, 0, 1);
    let d = int8_conv(&p, 3);
    for kernel in ["conv_i8_imma", "conv_i8_dp4a", "conv_direct_i8"] {
        assert!(launch_int8(kernel, &p, &d, NO).is_empty());
    }
}

struct F16Conv {
    x: Vec<u16>,
    w: Vec<u16>,
    bias: Vec<f32>,
}

fn f16_conv(p: &ConvParams, seed: u64) -> F16Conv {
    let x = floats(p.in_elems(), seed, -2.0, 2.0)
        .iter()
        .map(|v| f2h(*v))
        .collect();
    let (k, kpad, kdim) = (p.k as usize, p.kpad as usize, p.kdim as usize);
    let wr = floats(k * kdim, seed + 1, -0.5, 0.5);
    let mut w = vec![0u16; k * kpad];
    for o in 0..k {
        for j in 0..kdim {
            w[o * kpad + j] = f2h(wr[o * kdim + j]);
        }
    }
    F16Conv {
        x,
        w,
        bias: floats(k, seed + 2, -0.5, 0.5),
    }
}

fn launch_f16(kernel: &str, p: &ConvParams, d: &F16Conv, opts: EmuOptions) -> Vec<f32> {
    let mut y = vec![0u8; out_bytes(p)];
    let cfg = if kernel == "conv_direct_f16" {
        elementwise_config(p.out_elems())
    } else {
        conv_gemm_config(p)
    };
    let mut a = Args::new();
    a.arg(*p)
        .ptr(d.x.as_ptr())
        .ptr(d.w.as_ptr())
        .ptr(d.bias.as_ptr())
        .ptr(y.as_mut_ptr());
    // SAFETY: conv_*_f16(p, x, w, bias, y), buffers sized from p.
    unsafe { a.launch(kernel, &cfg, opts) }.unwrap_or_else(|e| panic!("{e}"));
    decode(p, &y)
}

fn decode(p: &ConvParams, y: &[u8]) -> Vec<f32> {
    match p.out_mode {
        out_mode::F32 => y
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => y
            .chunks_exact(2)
            .map(|b| h2f(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
    }
}

fn want_f16(p: &ConvParams, d: &F16Conv) -> Vec<f32> {
    let x: Vec<f32> = d.x.iter().map(|h| h2f(*h)).collect();
    let w: Vec<f32> = d.w.iter().map(|h| h2f(*h)).collect();
    let y = reference::conv(
        p,
        ConvInput::Float(&x),
        ConvWeights::Float(&w),
        &d.bias,
        None,
    );
    decode(p, &reference::store_conv(p, &y))
}

/// Largest difference relative to the reference's largest magnitude.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[test]
fn f16_convolutions_equal_the_twin() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    for (i, cc) in conv_cases().iter().enumerate() {
        // f16 has no int8 output here: the FP16 path stores f16 or f32
        let mut p = params(cc, i, 0);
        if p.out_mode == out_mode::I8 {
            p.out_mode = out_mode::F16;
        }
        let d = f16_conv(&p, 60 + i as u64);
        let want = want_f16(&p, &d);
        // the tensor cores add in another order: 1e-3 of the largest value
        let e = rel_err(&launch_f16("conv_f16_mma", &p, &d, NO), &want);
        assert!(e <= 1e-3, "conv_f16_mma {}: {e}", case_name(&p));
        // the direct kernel adds in the twin's order: bit-exact
        let got = launch_f16("conv_direct_f16", &p, &d, NO);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "conv_direct_f16 {}",
            case_name(&p)
        );
    }
    for (i, cc) in grouped_cases().iter().enumerate() {
        let mut p = params(cc, i, 0);
        p.out_mode = out_mode::F32;
        let d = f16_conv(&p, 80 + i as u64);
        let got = launch_f16("conv_direct_f16", &p, &d, NO);
        let want = want_f16(&p, &d);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "conv_direct_f16 {}",
            case_name(&p)
        );
    }
}

/// The emulation would hide a wrong fragment layout if it shared the kernels' view of it:
/// swapping two A registers in every lane must break both tensor-core kernels.
#[test]
fn swapped_mma_fragment_registers_are_caught() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let swap = EmuOptions {
        swap_mma_a_registers: true,
    };
    let cc = conv_cases()[1];
    let mut p = params(&cc, 2, 4);
    p.out_mode = out_mode::F32;
    p.act = act::NONE;
    let d = int8_conv(&p, 7);
    let want = want_int8(&p, &d);
    assert!(launch_int8("conv_i8_imma", &p, &d, NO) == want);
    assert!(
        launch_int8("conv_i8_imma", &p, &d, swap) != want,
        "imma survived the swap"
    );
    // dp4a uses no fragments: the flag changes nothing there
    assert!(launch_int8("conv_i8_dp4a", &p, &d, swap) == want);
    let f = f16_conv(&p, 8);
    let want = want_f16(&p, &f);
    assert!(rel_err(&launch_f16("conv_f16_mma", &p, &f, NO), &want) <= 1e-3);
    let e = rel_err(&launch_f16("conv_f16_mma", &p, &f, swap), &want);
    assert!(e > 1e-2, "conv_f16_mma survived the swap: {e}");
}

// ---------------------------------------------------------------------------------------------
// ops.cu

fn halves(v: &[f32]) -> Vec<u16> {
    v.iter().map(|x| f2h(*x)).collect()
}

fn unhalve(v: &[u16]) -> Vec<f32> {
    v.iter().map(|h| h2f(*h)).collect()
}

/// Inputs with NaN, infinities, zeros, subnormals, large and ordinary values.
fn special_f16(n: usize, seed: u64) -> Vec<u16> {
    let mut v = halves(&floats(n, seed, -8.0, 8.0));
    let specials = [
        0x7e00u16, 0xfe00, 0x7c00, 0xfc00, 0x0000, 0x8000, 0x0001, 0x7bff, 0xfbff, 0x3c00,
    ];
    for (i, s) in specials.iter().enumerate() {
        if i * 7 < n {
            v[i * 7] = *s;
        }
    }
    v
}

fn same_bits(got: &[u16], want: &[f32]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| *g == f2h(*w))
}

/// `kernel(params, x, y)` over `out` f16 outputs, one thread each (pool, resize).
fn run_params_op<P: Copy>(kernel: &str, p: P, x: &[u16], out: usize) -> Vec<u16> {
    let mut y = vec![0u16; out];
    let mut args = Args::new();
    args.arg(p).ptr(x.as_ptr()).ptr(y.as_mut_ptr());
    run(kernel, &elementwise_config(out), &mut args);
    y
}

#[test]
fn unary_f16_equals_the_twin_for_every_activation() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let n = 1000;
    let x = special_f16(n, 1);
    let xf = unhalve(&x);
    for (code, a, b) in [
        (act::NONE, 0.0, 0.0),
        (act::RELU, 0.0, 0.0),
        (act::CLIP, -1.0, 6.0),
        (act::CLIP, 2.0, 1.0), // min > max: ONNX gives max everywhere
        (act::HARD_SIGMOID, 0.2, 0.5),
        (act::HARD_SWISH, 0.0, 0.0),
        (act::SIGMOID, 0.0, 0.0),
        (act::SILU, 0.0, 0.0),
        (act::LEAKY_RELU, 0.01, 0.0),
    ] {
        let mut y = vec![0u16; n];
        let mut args = Args::new();
        args.ptr(x.as_ptr())
            .ptr(y.as_mut_ptr())
            .arg(n as i32)
            .arg(code)
            .arg(a)
            .arg(b);
        run("unary_f16", &elementwise_config(n), &mut args);
        let want: Vec<f32> = xf
            .iter()
            .map(|v| reference::activate(*v, code, a, b))
            .collect();
        if act::is_exact(code) {
            for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                assert_eq!(
                    *g,
                    f2h(*w),
                    "unary_f16 act {code} at {i}: input {:#06x}",
                    x[i]
                );
            }
        } else {
            // expf: 2 ulp in f32, far below one f16 ulp; allow one f16 ulp of rounding
            for (g, w) in y.iter().zip(&want) {
                let d = (*g as i32 - f2h(*w) as i32).abs();
                assert!(d <= 1, "unary_f16 act {code}: {g:#x} vs {:#x}", f2h(*w));
            }
        }
    }
    // empty tensor: a valid launch that writes nothing
    let mut args = Args::new();
    args.ptr(x.as_ptr())
        .ptr(x.as_ptr())
        .arg(0i32)
        .arg(1i32)
        .arg(0f32)
        .arg(0f32);
    run("unary_f16", &elementwise_config(0), &mut args);
}

#[test]
fn binary_f16_broadcasts_like_the_twin() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    // (2, 3, 4, 5) op (1, 3, 1, 5), and a scalar operand
    let dims = [2, 3, 4, 5];
    let n = 120;
    let a = special_f16(n, 2);
    let b = halves(&floats(30, 3, -3.0, 3.0));
    for (b_strides, blen) in [([0, 5, 0, 1], 15usize), ([0, 0, 0, 0], 1)] {
        for op in 0..5 {
            // op 4 (scale-shift) reads the shifts after the `blen` scales
            let p = BinaryParams {
                n: n as i32,
                dims,
                a_strides: [60, 20, 5, 1],
                b_strides,
                op,
                act: if op == 0 || op == 4 {
                    act::RELU
                } else {
                    act::NONE
                },
                act_a: 0.0,
                act_b: 0.0,
                shift_offset: if op == 4 { blen as i32 } else { 0 },
            };
            let bb = if op == 4 { &b[..2 * blen] } else { &b[..blen] };
            // op 4 reads f32 factors (the same values, widened)
            let b32: Vec<f32> = unhalve(bb);
            let mut y = vec![0u16; n];
            let mut args = Args::new();
            args.arg(p).ptr(a.as_ptr());
            if op == 4 {
                args.ptr(b32.as_ptr());
            } else {
                args.ptr(bb.as_ptr());
            }
            args.ptr(y.as_mut_ptr());
            run("binary_f16", &elementwise_config(n), &mut args);
            let want = reference::binary(&p, &unhalve(&a), &b32);
            assert!(same_bits(&y, &want), "binary_f16 op {op} b {blen}");
        }
    }
}

#[test]
fn pool_f16_equals_the_twin() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let (n, c, h, w) = (2, 3, 9, 7);
    let x = special_f16(n * c * h * w, 4);
    for (mode, k, s, pad, cip) in [
        (0, 3, 2, 1, 0),
        (1, 3, 2, 1, 0),
        (1, 3, 2, 1, 1),
        (0, 2, 2, 0, 0),
        (1, 7, 1, 0, 0),
    ] {
        let oh = (h as i32 + 2 * pad - k) / s + 1;
        let ow = (w as i32 + 2 * pad - k) / s + 1;
        let p = PoolParams {
            n: n as i32,
            c: c as i32,
            h: h as i32,
            w: w as i32,
            oh,
            ow,
            kh: k,
            kw: k,
            stride_h: s,
            stride_w: s,
            pad_h: pad,
            pad_w: pad,
            mode,
            count_include_pad: cip,
        };
        let y = run_params_op("pool_f16", p, &x, (n * c) * (oh * ow) as usize);
        let want = reference::pool(&p, &unhalve(&x));
        assert!(
            same_bits(&y, &want),
            "pool_f16 mode {mode} k{k} s{s} p{pad} cip {cip}"
        );
    }
}

#[test]
fn binary_i8_equals_the_twin() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let n = 65536;
    let a: Vec<i8> = (0..n).map(|i| (i & 255) as u8 as i8).collect();
    let b: Vec<i8> = (0..n).map(|i| (i >> 8) as u8 as i8).collect();
    for (op, code) in [
        (0, act::RELU),
        (1, act::NONE),
        (2, act::HARD_SWISH),
        (3, act::NONE),
    ] {
        let q = [(0.05f32, -3i32), (0.02, 17), (0.06, -128)];
        let p = BinaryParams {
            n: n as i32,
            dims: [1, 1, 256, 256],
            a_strides: [0, 0, 256, 1],
            b_strides: [0, 0, 256, 1],
            op,
            act: code,
            ..Default::default()
        };
        let mut y = vec![0i8; n];
        let mut args = Args::new();
        args.arg(p)
            .ptr(a.as_ptr())
            .ptr(b.as_ptr())
            .ptr(y.as_mut_ptr());
        for (s, zp) in q {
            args.arg(s).arg(zp);
        }
        run("binary_i8", &elementwise_config(n), &mut args);
        assert_eq!(
            y,
            reference::binary_i8(&p, &q, &a, &b),
            "binary_i8 op {op} act {code}"
        );
    }
}

#[test]
fn scale_shift_i8_equals_the_twin() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let a: Vec<i8> = (0..120).map(|i| (i * 37 % 256) as u8 as i8).collect();
    let b: Vec<f32> = (0..6).map(|i| (i as f32 * 0.77).sin() * 2.0).collect();
    let p = BinaryParams {
        n: 120,
        dims: [2, 3, 4, 5],
        a_strides: [60, 20, 5, 1],
        b_strides: [0, 1, 0, 0],
        op: 4,
        act: act::RELU,
        shift_offset: 3,
        ..Default::default()
    };
    let q = [(0.05f32, -7i32), (0.03, 11)];
    let mut y = vec![0i8; 120];
    let mut args = Args::new();
    args.arg(p)
        .ptr(a.as_ptr())
        .ptr(b.as_ptr())
        .ptr(y.as_mut_ptr());
    args.arg(q[0].0).arg(q[0].1).arg(q[1].0).arg(q[1].1);
    run("scale_shift_i8", &elementwise_config(120), &mut args);
    assert_eq!(
        y,
        reference::scale_shift_i8(&p, q, &a, &b),
        "scale_shift_i8"
    );
}

#[test]
fn pool_max_i8_equals_the_twin() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let (n, c, h, w) = (2, 3, 9, 7);
    let x: Vec<i8> = (0..n * c * h * w)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] as i8)
        .collect();
    for (k, s, pad) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (7, 1, 0), (1, 2, 0)] {
        let oh = (h as i32 + 2 * pad - k) / s + 1;
        let ow = (w as i32 + 2 * pad - k) / s + 1;
        let p = PoolParams {
            n: n as i32,
            c: c as i32,
            h: h as i32,
            w: w as i32,
            oh,
            ow,
            kh: k,
            kw: k,
            stride_h: s,
            stride_w: s,
            pad_h: pad,
            pad_w: pad,
            mode: 0,
            count_include_pad: 0,
        };
        let out = (n * c) * (oh * ow) as usize;
        let mut y = vec![0i8; out];
        let mut args = Args::new();
        args.arg(p).ptr(x.as_ptr()).ptr(y.as_mut_ptr());
        run("pool_max_i8", &elementwise_config(out), &mut args);
        assert_eq!(
            y,
            reference::pool_max_i8(&p, &x),
            "pool_max_i8 k{k} s{s} p{pad}"
        );
    }
}

#[test]
fn resize_f16_equals_the_twin_in_every_mode() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let (h, w) = (5, 7);
    let x = halves(&floats(2 * h * w, 5, -4.0, 4.0));
    for (oh, ow) in [(10, 14), (3, 4), (1, 1), (11, 3)] {
        for mode in 0..2 {
            for coord in 0..4 {
                for nearest_mode in 0..4 {
                    if mode == 1 && nearest_mode > 0 {
                        continue;
                    }
                    let p = ResizeParams {
                        n: 1,
                        c: 2,
                        h: h as i32,
                        w: w as i32,
                        oh,
                        ow,
                        mode,
                        coord,
                        nearest_mode,
                        scale_h: oh as f32 / h as f32,
                        scale_w: ow as f32 / w as f32,
                    };
                    let y = run_params_op("resize_f16", p, &x, 2 * (oh * ow) as usize);
                    let want = reference::resize(&p, &unhalve(&x));
                    assert!(
                        same_bits(&y, &want),
                        "resize_f16 {oh}x{ow} mode {mode} coord {coord} nearest {nearest_mode}"
                    );
                }
            }
        }
    }
}

#[test]
fn softmax_and_argmax_f16_equal_the_twins() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let (outer, len, inner) = (3, 19, 7);
    let n = outer * len * inner;
    let x = halves(&floats(n, 6, -6.0, 6.0));
    let mut y = vec![0u16; n];
    let mut args = Args::new();
    args.ptr(x.as_ptr())
        .ptr(y.as_mut_ptr())
        .arg(outer as i32)
        .arg(len as i32)
        .arg(inner as i32);
    run("softmax_f16", &elementwise_config(outer * inner), &mut args);
    let want = reference::softmax(&unhalve(&x), outer, len, inner);
    for (g, w) in y.iter().zip(&want) {
        assert!((*g as i32 - f2h(*w) as i32).abs() <= 1, "softmax_f16");
    }
    // argmax with ties (small integers) and NaN entries
    let (classes, cells) = (6, 333);
    let mut l = halves(
        &bytes(classes * cells, 7)
            .iter()
            .map(|b| (*b % 8) as f32)
            .collect::<Vec<_>>(),
    );
    l[5] = 0x7e00;
    l[cells + 9] = 0x7e00;
    let mut cls = vec![0u8; cells];
    let mut args = Args::new();
    args.ptr(l.as_ptr())
        .ptr(cls.as_mut_ptr())
        .arg(classes as i32)
        .arg(cells as i32);
    run("argmax_f16", &elementwise_config(cells), &mut args);
    assert_eq!(
        cls,
        reference::argmax(&unhalve(&l), classes, cells),
        "argmax_f16"
    );
}

#[test]
fn quantize_dequantize_and_casts_saturate_like_the_twins() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let n = 700;
    let xh = special_f16(n, 8);
    let mut xf = floats(n, 9, -300.0, 300.0);
    xf[0] = f32::NAN;
    xf[1] = f32::INFINITY;
    xf[2] = -f32::INFINITY;
    xf[3] = 3.0e38;
    xf[4] = -3.0e38;
    xf[5] = 1.0e-42;
    for (s, zp) in [(0.05f32, 0), (1.0, 127), (0.5, -128), (1e-30, 3)] {
        let mut q = vec![0i8; n];
        let mut args = Args::new();
        args.ptr(xh.as_ptr())
            .ptr(q.as_mut_ptr())
            .arg(n as i32)
            .arg(s)
            .arg(zp);
        run("quantize_f16", &elementwise_config(n), &mut args);
        let want: Vec<i8> = unhalve(&xh)
            .iter()
            .map(|v| reference::quantize_i8(*v, s, zp))
            .collect();
        assert_eq!(q, want, "quantize_f16 s {s} zp {zp}");
        let mut args = Args::new();
        args.ptr(xf.as_ptr())
            .ptr(q.as_mut_ptr())
            .arg(n as i32)
            .arg(s)
            .arg(zp);
        run("quantize_f32", &elementwise_config(n), &mut args);
        let want: Vec<i8> = xf
            .iter()
            .map(|v| reference::quantize_i8(*v, s, zp))
            .collect();
        assert_eq!(q, want, "quantize_f32 s {s} zp {zp}");
        // dequantize every int8 value
        let all: Vec<i8> = (-128..=127).collect();
        let mut y = vec![0u16; 256];
        let mut args = Args::new();
        args.ptr(all.as_ptr())
            .ptr(y.as_mut_ptr())
            .arg(256i32)
            .arg(s)
            .arg(zp);
        run("dequantize_f16", &elementwise_config(256), &mut args);
        let want: Vec<f32> = all.iter().map(|v| (*v as i32 - zp) as f32 * s).collect();
        assert!(same_bits(&y, &want), "dequantize_f16 s {s} zp {zp}");
    }
    // casts: overflow to infinity, subnormals, canonical NaN both ways
    let mut h = vec![0u16; n];
    let mut args = Args::new();
    args.ptr(xf.as_ptr()).ptr(h.as_mut_ptr()).arg(n as i32);
    run("cast_f32_f16", &elementwise_config(n), &mut args);
    assert!(same_bits(&h, &xf), "cast_f32_f16");
    let mut f = vec![0f32; n];
    let mut args = Args::new();
    args.ptr(xh.as_ptr()).ptr(f.as_mut_ptr()).arg(n as i32);
    run("cast_f16_f32", &elementwise_config(n), &mut args);
    let want = unhalve(&xh);
    assert!(
        f.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
        "cast_f16_f32"
    );
}

#[test]
fn transpose_kernels_move_every_element_like_the_twin() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    use bevrt_kernels::params::TransposeParams;
    // ShuffleNet's channel shuffle (1, 3, 4, 5, 6) [0, 2, 1, 3, 4] and a 3-D reversal
    for (shape, perm) in [
        (vec![1usize, 3, 4, 5, 6], vec![0usize, 2, 1, 3, 4]),
        (vec![4, 5, 6], vec![2, 1, 0]),
    ] {
        let p = TransposeParams::new(&shape, &perm);
        let n = p.n as usize;
        let want = |x: &[u32]| (0..n).map(|i| x[p.source(i)]).collect::<Vec<u32>>();
        let x32: Vec<u32> = (0..n as u32).map(|v| v.wrapping_mul(2654435761)).collect();
        let mut y32 = vec![0u32; n];
        let mut args = Args::new();
        args.arg(p).ptr(x32.as_ptr()).ptr(y32.as_mut_ptr());
        run("transpose_b32", &elementwise_config(n), &mut args);
        assert_eq!(y32, want(&x32), "transpose_b32 {perm:?}");
        let x16: Vec<u16> = x32.iter().map(|v| *v as u16).collect();
        let mut y16 = vec![0u16; n];
        let mut args = Args::new();
        args.arg(p).ptr(x16.as_ptr()).ptr(y16.as_mut_ptr());
        run("transpose_b16", &elementwise_config(n), &mut args);
        let w16: Vec<u16> = want(&x32).iter().map(|v| *v as u16).collect();
        assert_eq!(y16, w16, "transpose_b16 {perm:?}");
        let x8: Vec<i8> = x32.iter().map(|v| *v as i8).collect();
        let mut y8 = vec![0i8; n];
        let mut args = Args::new();
        args.arg(p).ptr(x8.as_ptr()).ptr(y8.as_mut_ptr());
        run("transpose_b8", &elementwise_config(n), &mut args);
        let w8: Vec<i8> = want(&x32).iter().map(|v| *v as i8).collect();
        assert_eq!(y8, w8, "transpose_b8 {perm:?}");
    }
}

#[test]
fn copy_slice_f16_places_each_block() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    // Concat of (2, 3, 4) into (2, 7, 4) at channel offset 2: outer 2, inner 12, dst 28, offset 8
    let x: Vec<u16> = (0..24).collect();
    let mut y = vec![0xffffu16; 56];
    let mut args = Args::new();
    args.ptr(x.as_ptr())
        .ptr(y.as_mut_ptr())
        .arg(2i32)
        .arg(12i32)
        .arg(28i32)
        .arg(8i32);
    run("copy_slice_f16", &elementwise_config(24), &mut args);
    for o in 0..2 {
        for j in 0..28 {
            let want = if (8..20).contains(&j) {
                (o * 12 + j - 8) as u16
            } else {
                0xffff
            };
            assert_eq!(y[o * 28 + j], want, "block {o} element {j}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// preprocess.cu, bev_pool.cu, postprocess.cu, fisher.cu

#[test]
fn preprocess_equals_the_twin_for_every_format_order_layout_and_output() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    use bevrt_runtime::frame::Frame;
    use bevrt_runtime::preprocess::{PreprocessPlan, gpu_params};
    use bevrt_tests::preprocess_cases::{INT8_QUANTS, PreprocessCase, matrix};
    let (iw, ih) = (67u32, 45u32);
    let mut checked = 0;
    for case in matrix() {
        let PreprocessCase {
            fmt_i: fi,
            fmt,
            order,
            layout,
            ..
        } = case;
        let spec = case.spec(40, 19);
        let mut frame = Frame::with_capacity(fmt.frame_bytes(iw, ih));
        frame.reset(fmt, iw, ih);
        let n = frame.data.len();
        frame.data.copy_from_slice(&bytes(n, 30 + fi as u64));
        let plan = PreprocessPlan::new(&spec, iw, ih);
        let mut p = gpu_params(&spec, fmt, iw, ih);
        let len = plan.output_len();
        let cfg = preprocess_config(&p);
        let launch = |kernel: &str, dst: *mut u8, p: &PreprocessParams| {
            let mut a = Args::new();
            a.ptr(frame.data.as_ptr()).ptr(dst).arg(0u64).arg(*p);
            run(kernel, &cfg, &mut a);
        };
        let mut want = vec![0f32; len];
        plan.run(&frame, &mut want);
        let mut got = vec![0f32; len];
        launch("preprocess_f32", got.as_mut_ptr() as *mut u8, &p);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "preprocess_f32 {fmt} {order:?} {layout:?}"
        );
        let mut want16 = vec![0u16; len];
        plan.run_f16(&frame, &mut want16);
        let mut got16 = vec![0u16; len];
        launch("preprocess_f16", got16.as_mut_ptr() as *mut u8, &p);
        assert_eq!(got16, want16, "preprocess_f16 {fmt} {order:?} {layout:?}");
        // int8, once ordinary and once with a zero point at the edge and a scale
        // so small that v / scale is far outside the int range
        for q in INT8_QUANTS {
            p.q_scale = q.scale;
            p.q_zp = q.zero_point;
            let mut want8 = vec![0i8; len];
            plan.run_i8(&frame, &mut want8, q);
            let mut got8 = vec![0i8; len];
            launch("preprocess_i8", got8.as_mut_ptr() as *mut u8, &p);
            assert_eq!(
                got8, want8,
                "preprocess_i8 {fmt} {order:?} {layout:?} {q:?}"
            );
        }
        checked += 4;
    }
    assert_eq!(checked, 120);
}

#[test]
fn preprocess_through_a_source_map_equals_the_twin() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    use bevrt_runtime::frame::{Frame, PixelFormat};
    use bevrt_runtime::preprocess::{PreprocessPlan, gpu_params};
    use bevrt_tests::preprocess_cases::source_map_spec;
    let (iw, ih, ow, oh) = (50u32, 30u32, 24u32, 16u32);
    // positions inside, on the border and outside the frame (clamped)
    let map: Vec<[f32; 2]> = floats((ow * oh * 2) as usize, 40, -3.0, 53.0)
        .chunks_exact(2)
        .map(|v| [v[0], v[1] * 0.6])
        .collect();
    let spec = source_map_spec(ow, oh);
    let mut frame = Frame::with_capacity(PixelFormat::Yuyv.frame_bytes(iw, ih));
    frame.reset(PixelFormat::Yuyv, iw, ih);
    let n = frame.data.len();
    frame.data.copy_from_slice(&bytes(n, 41));
    let plan = PreprocessPlan::new(&spec, iw, ih).with_source_map(map.clone());
    let mut want = vec![0f32; plan.output_len()];
    plan.run(&frame, &mut want);
    let flat: Vec<f32> = map.iter().flatten().copied().collect();
    let p = gpu_params(&spec, PixelFormat::Yuyv, iw, ih);
    let mut got = vec![0f32; want.len()];
    let mut a = Args::new();
    a.ptr(frame.data.as_ptr())
        .ptr(got.as_mut_ptr())
        .ptr(flat.as_ptr())
        .arg(p);
    run("preprocess_f32", &preprocess_config(&p), &mut a);
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn bev_pool_equals_the_view_transform() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    use bevrt_calib::{BevGrid, CameraModel, Extrinsics, SamplingTable, view_transform};
    let cam =
        CameraModel::pinhole(192, 64, 80.0, 80.0, 96.0, 32.0, [-0.05, 0.0, 0.0, 0.0, 0.0]).unwrap();
    let ext = Extrinsics::from_height_pitch_roll_yaw(1.5, 4.0, 0.0, 0.0);
    let grid = BevGrid {
        x_min: 0.0,
        x_max: 20.0,
        y_min: -10.0,
        y_max: 10.0,
        cell: 0.5,
        z_levels: vec![0.0, 1.0, 1.5],
        depth: None,
    };
    let (fw, fh, ch) = (24usize, 8usize, 5usize);
    let table = SamplingTable::try_build(&grid, &cam, &ext, fw, fh, 8).unwrap();
    let cells = table.grid_w * table.grid_h;
    let feat = floats(ch * fw * fh, 50, -3.0, 3.0);
    let mut want = vec![0f32; ch * table.levels * cells];
    view_transform(&table, &feat, &mut want).unwrap();
    let cfg = bev_pool_config(ch as i32, table.levels as i32, cells as i32);
    let taps = table.taps_as_bytes();
    let mut got = vec![0f32; want.len()];
    let mut a = Args::new();
    a.ptr(taps.as_ptr())
        .ptr(feat.as_ptr())
        .ptr(got.as_mut_ptr())
        .arg(ch as i32)
        .arg(table.levels as i32)
        .arg(cells as i32)
        .arg((fw * fh) as i32);
    run("bev_pool_f32", &cfg, &mut a);
    assert!(rel_err(&got, &want) <= 1e-6, "bev_pool_f32");
    // f16 features: the twin on the same (rounded) values
    let fh16 = halves(&feat);
    let mut want16 = vec![0f32; want.len()];
    view_transform(&table, &unhalve(&fh16), &mut want16).unwrap();
    let mut a = Args::new();
    a.ptr(taps.as_ptr())
        .ptr(fh16.as_ptr())
        .ptr(got.as_mut_ptr())
        .arg(ch as i32)
        .arg(table.levels as i32)
        .arg(cells as i32)
        .arg((fw * fh) as i32);
    run("bev_pool_f16", &cfg, &mut a);
    assert!(rel_err(&got, &want16) <= 1e-6, "bev_pool_f16");
}

#[test]
fn depth_lift_equals_the_cpu_lift() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    use bevrt_calib::bev::depth_softmax;
    use bevrt_calib::{
        BevGrid, CameraModel, DepthBins, DepthSpacing, Extrinsics, LiftScratch, SamplingTable, lift,
    };
    let cam =
        CameraModel::pinhole(192, 64, 80.0, 80.0, 96.0, 32.0, [-0.05, 0.0, 0.0, 0.0, 0.0]).unwrap();
    let ext = Extrinsics::from_height_pitch_roll_yaw(1.5, 4.0, 0.0, 0.0);
    let grid = BevGrid {
        x_min: 0.0,
        x_max: 20.0,
        y_min: -10.0,
        y_max: 10.0,
        cell: 0.5,
        z_levels: vec![0.0, 1.0],
        depth: Some(DepthBins {
            min: 2.0,
            max: 25.0,
            bins: 12,
            spacing: DepthSpacing::Log,
        }),
    };
    let (fw, fh, ch, d) = (24usize, 8usize, 5usize, 12usize);
    let plane = fw * fh;
    let table = SamplingTable::try_build(&grid, &cam, &ext, fw, fh, 8).unwrap();
    let cells = table.grid_w * table.grid_h;
    // context features, then depth logits with a spread of several units (peaked pixels)
    let feat = floats((ch + d) * plane, 51, -4.0, 4.0);
    let mut scratch = LiftScratch::new(&table);
    let mut want = vec![0f32; ch * table.levels * cells];
    lift(&table, &feat, &mut scratch, &mut want).unwrap();
    // step 1: depth weights
    let mut want_dw = vec![0f32; d * plane];
    depth_softmax(&feat[ch * plane..], d, &mut want_dw);
    let mut dw = vec![0f32; d * plane];
    let mut a = Args::new();
    a.ptr(feat[ch * plane..].as_ptr())
        .ptr(dw.as_mut_ptr())
        .arg(d as i32)
        .arg(plane as i32);
    run("depth_softmax_f32", &elementwise_config(plane), &mut a);
    assert!(rel_err(&dw, &want_dw) <= 1e-6, "depth_softmax_f32");
    // step 2: the weighted gather, from the kernel's own depth weights
    let mut got = vec![0f32; want.len()];
    let mut a = Args::new();
    a.ptr(table.taps_as_bytes().as_ptr())
        .ptr(table.bins.as_ptr())
        .ptr(dw.as_ptr())
        .ptr(feat.as_ptr())
        .ptr(got.as_mut_ptr())
        .arg(ch as i32)
        .arg(table.levels as i32)
        .arg(cells as i32)
        .arg(plane as i32);
    let cfg = bev_pool_config(ch as i32, table.levels as i32, cells as i32);
    run("bev_lift_f32", &cfg, &mut a);
    assert!(rel_err(&got, &want) <= 1e-5, "bev_lift_f32");
}

#[test]
fn bev_argmax_and_colourise_equal_the_twins() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    use bevrt_runtime::postprocess::{bev_argmax, colourise};
    let (ncls, side) = (5usize, 37usize);
    let n = side * side;
    let logits: Vec<f32> = bytes(ncls * n, 60)
        .iter()
        .map(|b| (*b % 16) as f32)
        .collect();
    let mut want = vec![0u8; n];
    bev_argmax(&logits, ncls, side, side, &mut want);
    let mut got = vec![0u8; n];
    let mut a = Args::new();
    a.ptr(logits.as_ptr())
        .ptr(got.as_mut_ptr())
        .arg(ncls as i32)
        .arg(n as i32);
    run("bev_argmax", &elementwise_config(n), &mut a);
    assert_eq!(got, want, "bev_argmax");
    let classes: Vec<bevrt_models::ClassSpec> = (0..ncls)
        .map(|i| bevrt_models::ClassSpec {
            name: format!("c{i}"),
            color: [i as u8 * 40, 200 - i as u8 * 30, 7 * i as u8],
        })
        .collect();
    let mut map = want.clone();
    map[0] = 255;
    map[3] = ncls as u8;
    let mut want_rgb = vec![0u8; n * 3];
    colourise(&map, &classes, &mut want_rgb);
    let palette: Vec<u8> = classes.iter().flat_map(|c| c.color).collect();
    let mut rgb = vec![0u8; n * 3];
    let mut a = Args::new();
    a.ptr(map.as_ptr())
        .ptr(palette.as_ptr())
        .arg(ncls as i32)
        .ptr(rgb.as_mut_ptr())
        .arg(n as i32);
    run("colourise", &elementwise_config(n), &mut a);
    assert_eq!(rgb, want_rgb, "colourise");
}

#[test]
fn afv_score_and_fisher_normalise_equal_the_twins() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    use bevrt_runtime::afv::{AfvGeometry, afv_score, fisher_normalise};
    for regions in [1, 2, 3] {
        let g = AfvGeometry::k4s2(6, (10, 10), 4, 0.2, regions);
        let d = AfvDims::from(&g);
        let a1 = floats(g.a1_len(), 70, -0.2, 1.0);
        let z2 = floats(g.z2_len(), 71, -1.0, 1.0);
        let w3 = floats(g.z2_len(), 72, -0.1, 0.1);
        let mut delta = vec![0f32; g.z2_len()];
        let mut want = vec![0f32; g.dim()];
        afv_score(&g, &a1, &z2, &w3, &mut delta, &mut want);
        let mut u = vec![0f32; g.dim()];
        let mut dd = vec![0f32; g.z2_len()];
        bevrt_kernels_emu::afv_score(&d, &a1, &z2, &w3, &mut dd, &mut u).unwrap();
        let e = rel_err(&u, &want);
        assert!(e <= 1e-5, "afv score, {regions}x{regions} cells: {e}");
        let mean = floats(g.dim(), 73, -0.05, 0.05);
        let diag = floats(g.dim(), 74, 0.01, 0.5);
        for (power, l2) in [(false, false), (true, false), (true, true)] {
            let mut want_v = want.clone();
            fisher_normalise(&mut want_v, &mean, &diag, 1e-6, power, l2);
            let mut v = want.clone();
            bevrt_kernels_emu::fisher_normalise(&mut v, &mean, &diag, 1e-6, power, l2).unwrap();
            let e = rel_err(&v, &want_v);
            assert!(e <= 1e-5, "fisher_normalise power {power} l2 {l2}: {e}");
        }
    }
}

/// Run on purpose by `.ci/run` under AddressSanitizer, which must stop it with a
/// heap-buffer-overflow report: the sanitized kernels really are checked. (Without the
/// sanitizer it reads past a buffer, so it is ignored in ordinary runs.)
#[test]
#[ignore = "deliberate out-of-bounds read, for the AddressSanitizer run in .ci/run"]
fn asan_sees_a_kernel_reading_past_its_buffer() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    // on the heap on purpose: the sanitizer's redzones are around heap blocks (the Rust side
    // is not instrumented)
    #[allow(clippy::useless_vec)]
    let x = vec![0u16; 100];
    let mut y = vec![0f32; 101];
    let mut a = Args::new();
    a.ptr(x.as_ptr()).ptr(y.as_mut_ptr()).arg(101i32);
    run("cast_f16_f32", &elementwise_config(101), &mut a);
}

// ---------------------------------------------------------------------------------------------
// The f32 variants (FP32 plans: the AFV discriminator)

#[test]
fn f32_convolution_equals_the_twin_bit_for_bit() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let cases: Vec<ConvCase> = conv_cases().into_iter().chain(grouped_cases()).collect();
    for (i, cc) in cases.iter().enumerate() {
        let mut p = params(cc, i, 0);
        p.out_mode = out_mode::F32;
        let x = floats(p.in_elems(), 90 + i as u64, -2.0, 2.0);
        let (k, kpad, kdim) = (p.k as usize, p.kpad as usize, p.kdim as usize);
        let wr = floats(k * kdim, 91 + i as u64, -0.5, 0.5);
        let mut w = vec![0f32; k * kpad];
        for o in 0..k {
            w[o * kpad..][..kdim].copy_from_slice(&wr[o * kdim..][..kdim]);
        }
        let bias = floats(k, 92 + i as u64, -0.5, 0.5);
        let want = reference::conv(
            &p,
            ConvInput::Float(&x),
            ConvWeights::Float(&w),
            &bias,
            None,
        );
        let mut y = vec![0f32; p.out_elems()];
        let mut a = Args::new();
        a.arg(p)
            .ptr(x.as_ptr())
            .ptr(w.as_ptr())
            .ptr(bias.as_ptr())
            .ptr(y.as_mut_ptr());
        run(
            "conv_direct_f32",
            &elementwise_config(p.out_elems()),
            &mut a,
        );
        assert!(
            y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "conv_direct_f32 {}",
            case_name(&p)
        );
    }
}

#[test]
fn unary_and_binary_f32_equal_the_twins() {
    if !bevrt_kernels_emu::available() {
        return;
    }
    let n = 500;
    let mut x = floats(n, 95, -8.0, 8.0);
    x[0] = f32::NAN;
    x[1] = -0.0;
    x[2] = f32::INFINITY;
    for (code, a, b) in [
        (act::RELU, 0.0, 0.0),
        (act::CLIP, 0.0, 6.0),
        (act::HARD_SIGMOID, 0.2, 0.5),
        (act::HARD_SWISH, 0.0, 0.0),
        (act::LEAKY_RELU, 0.2, 0.0),
    ] {
        let mut y = vec![0f32; n];
        let mut args = Args::new();
        args.ptr(x.as_ptr())
            .ptr(y.as_mut_ptr())
            .arg(n as i32)
            .arg(code)
            .arg(a)
            .arg(b);
        run("unary_f32", &elementwise_config(n), &mut args);
        for (i, (g, v)) in y.iter().zip(&x).enumerate() {
            let w = reference::activate(*v, code, a, b);
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "unary_f32 act {code} at {i} ({v})"
            );
        }
    }
    let p = BinaryParams {
        n: 120,
        dims: [2, 3, 4, 5],
        a_strides: [60, 20, 5, 1],
        b_strides: [0, 5, 0, 1],
        op: 3,
        act: act::NONE,
        act_a: 0.0,
        act_b: 0.0,
        shift_offset: 0,
    };
    let a = floats(120, 96, -3.0, 3.0);
    let b = floats(15, 97, -3.0, 3.0);
    let mut y = vec![0f32; 120];
    let mut args = Args::new();
    args.arg(p)
        .ptr(a.as_ptr())
        .ptr(b.as_ptr())
        .ptr(y.as_mut_ptr());
    run("binary_f32", &elementwise_config(120), &mut args);
    let want = reference::binary(&p, &a, &b);
    assert!(
        y.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
        "binary_f32"
    );
}
