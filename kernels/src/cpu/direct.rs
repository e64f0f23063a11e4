//! [`DirectConv`]: grouped and depthwise convolutions, one output channel per task, every
//! tap one contiguous pass over a padded, phase-split copy of its input channels (see the
//! [`super::conv`] overview).

use super::conv::{Acc, Epilogue, InBuf, OutBuf, as_f32, as_i32};
use super::gemm::split_phases;
use super::isa::Isa;
use crate::params::ConvParams;

pub enum DirectWeights {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

pub struct DirectConv {
    pub p: ConvParams,
    /// `[k][kpad]` as in the plan.
    weights: DirectWeights,
    epi: Epilogue,
    isa: Isa,
    /// INT8 weights widened once at load (`[k][kdim]`): as f32 for sums exact in f32 (see
    /// `int8_in_f32`), else as i32.
    w_f32: Vec<f32>,
    w_i32: Vec<i32>,
    /// Padded rows of the task's input channels, each split into `stride_w` phases (as
    /// [`RowSource`]): every tap of every output row is then one contiguous run.
    hp: usize,
    row: usize,
    wph: usize,
}

impl DirectConv {
    pub fn new_f32(p: ConvParams, w: &[f32], bias: &[f32], isa: Isa) -> DirectConv {
        Self::with(p, DirectWeights::F32(w.to_vec()), bias, vec![], isa)
    }

    pub fn new_i8(p: ConvParams, w: &[i8], mult: &[f32], bias: &[f32], isa: Isa) -> DirectConv {
        Self::with(p, DirectWeights::I8(w.to_vec()), bias, mult.to_vec(), isa)
    }

    fn with(
        p: ConvParams,
        weights: DirectWeights,
        bias: &[f32],
        mult: Vec<f32>,
        isa: Isa,
    ) -> DirectConv {
        let (h, w) = (p.h as usize, p.w as usize);
        let (ph, pw, sw) = (p.pad_h as usize, p.pad_w as usize, p.stride_w as usize);
        let hp = (h + ph).max(
            (p.oh as usize - 1) * p.stride_h as usize + (p.r as usize - 1) * p.dil_h as usize + 1,
        );
        let wp = (w + pw).max((p.ow as usize - 1) * sw + (p.s as usize - 1) * p.dil_w as usize + 1);
        let wph = wp.div_ceil(sw);
        let (kdim, kpad) = (p.kdim as usize, p.kpad as usize);
        let widened: Vec<i32> = match &weights {
            DirectWeights::I8(w) => (0..p.k as usize)
                .flat_map(|k| w[k * kpad..k * kpad + kdim].iter().map(|v| *v as i32))
                .collect(),
            DirectWeights::F32(_) => vec![],
        };
        DirectConv {
            p,
            w_f32: widened.iter().map(|v| *v as f32).collect(),
            w_i32: widened,
            weights,
            epi: Epilogue {
                bias: bias.to_vec(),
                mult,
                corr: vec![],
            },
            isa,
            hp,
            row: sw * wph,
            wph,
        }
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.weights, DirectWeights::I8(_))
    }

    /// One task per (image, output channel).
    pub fn tasks(&self) -> usize {
        (self.p.n * self.p.k) as usize
    }

    fn cpg(&self) -> usize {
        (self.p.c / self.p.groups) as usize
    }

    /// Values of the padded input channels: their planes plus one row of slack (a flat
    /// pass's last row reads past the plane into columns it discards).
    fn padded_len(&self) -> usize {
        self.cpg() * self.hp * self.row + self.acc_stride()
    }

    pub fn scratch_bytes(&self) -> usize {
        // padded input channels (4 bytes per value, int8 widened) and the accumulators
        let acc = (self.p.oh as usize * self.acc_stride()).max(self.p.ow as usize);
        (self.padded_len() + acc) * 4 + 64
    }

    /// # Safety
    /// As [`GemmConv::run_task`](super::gemm::GemmConv::run_task).
    pub unsafe fn run_task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        per_isa!(
            self.isa,
            direct_task_avx512,
            direct_task_avx2,
            direct_task_portable,
            (self, t, x, y, scratch)
        )
    }

    /// Copy input channel plane `src` into a padded, phase-split plane (`pad` outside).
    #[inline(always)]
    fn pad_plane<T: Copy, U: Copy>(&self, src: &[T], dst: &mut [U], pad: U, conv: impl Fn(T) -> U) {
        let p = &self.p;
        let (w, ph, pw, sw) = (
            p.w as usize,
            p.pad_h as usize,
            p.pad_w as usize,
            p.stride_w as usize,
        );
        dst.fill(pad);
        for (iy, line) in src.chunks_exact(w).enumerate() {
            let d = &mut dst[(iy + ph) * self.row..][..self.row];
            match sw {
                1 => {
                    for (o, v) in d[pw..pw + w].iter_mut().zip(line) {
                        *o = conv(*v);
                    }
                }
                2 => split_phases::<2, _, _>(line, d, pw, self.wph, &conv),
                _ => {
                    for (ix, v) in line.iter().enumerate() {
                        let pc = ix + pw;
                        d[(pc % sw) * self.wph + pc / sw] = conv(*v);
                    }
                }
            }
        }
    }

    /// A tap's values for the whole output plane are one run of `oh` accumulator rows (see
    /// [`DirectConv::acc_stride`]): its length.
    fn flat_span(&self) -> usize {
        self.p.oh as usize * self.acc_stride()
    }

    /// Accumulator row stride of a flat pass: output row oy's taps start `stride_h` padded
    /// rows after row oy - 1's (a vertical stride of 2 computes every other row in vain,
    /// still cheaper than short row-by-row passes).
    fn acc_stride(&self) -> usize {
        self.p.stride_h as usize * self.row
    }

    /// Every tap (weight index, start of its run for output row 0) in the twin's order.
    fn plane_taps(&self, cpg: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (r, s) = (self.p.r as usize, self.p.s as usize);
        (0..cpg * r * s).map(move |wi| {
            let (ci, ry, sx) = (wi / (r * s), (wi / s) % r, wi % s);
            (wi, self.tap_start(ci, 0, ry, sx))
        })
    }

    /// The run of tap (ci, ry, sx) for output row `oy` in the padded planes: `ow` values.
    #[inline(always)]
    fn tap_start(&self, ci: usize, oy: usize, ry: usize, sx: usize) -> usize {
        let p = &self.p;
        let col = sx * p.dil_w as usize;
        let sw = p.stride_w as usize;
        ci * self.hp * self.row
            + (oy * p.stride_h as usize + ry * p.dil_h as usize) * self.row
            + (col % sw) * self.wph
            + col / sw
    }

    /// Sum every tap of one output channel from the padded planes `pad` (weights `w`, in
    /// tap order) into `acc`: output row oy is `acc[oy * acc_stride()..][..ow]`. Each tap is
    /// one pass over the whole plane (rows at the accumulator stride, columns past `ow`
    /// discarded); each output adds its taps in the twin's order. (No closures here: their
    /// bodies would be compiled without the caller's target features.)
    #[inline(always)]
    fn accumulate<T>(&self, pad: &[T], w: &[T], acc: &mut [T])
    where
        T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
    {
        let span = self.flat_span();
        let acc = &mut acc[..span];
        acc.fill(T::default());
        for (wi, at) in self.plane_taps(self.cpg()) {
            let wv = w[wi];
            for (a, v) in acc.iter_mut().zip(&pad[at..][..span]) {
                *a = *a + *v * wv;
            }
        }
    }

    /// INT8 sums small enough to be exact in f32 (|x - zp| <= 255, |w| <= 128, fewer than
    /// 2^24 / 32640 taps) run on the float pipeline, which vectorises better than i32.
    fn int8_in_f32(&self) -> bool {
        self.cpg() * (self.p.r * self.p.s) as usize <= (1 << 24) / (255 * 128)
    }

    #[inline(always)]
    unsafe fn task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let p = &self.p;
        let (k, c) = (p.k as usize, p.c as usize);
        let (img, kk) = (t / k, t % k);
        let (cpg, kpg) = (self.cpg(), k / p.groups as usize);
        let c0 = (kk / kpg) * cpg;
        let plane = (p.h * p.w) as usize;
        let ow = p.ow as usize;
        let out_base = (img * k + kk) * p.oh as usize * ow;
        let x_base = (img * c + c0) * plane;
        let padded = self.padded_len();
        let hw = self.hp * self.row;
        let stride = self.acc_stride();
        // Taps outside the image read padding that adds nothing: +0.0 for float (the sum
        // equals the twin's, which skips them), (x - zp) = 0 for int8.
        unsafe {
            match (x, &self.weights) {
                (InBuf::F32(x), DirectWeights::F32(w)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &w[kk * p.kpad as usize..][..p.kdim as usize];
                    let (pad, acc) = as_f32(scratch).split_at_mut(padded);
                    for ci in 0..cpg {
                        let dst = &mut pad[ci * hw..][..hw];
                        self.pad_plane(&x[ci * plane..][..plane], dst, 0.0, |v| v);
                    }
                    self.accumulate(pad, w, acc);
                    for oy in 0..p.oh as usize {
                        let row = Acc::F32(&acc[oy * stride..][..ow]);
                        self.epi.row(p, kk, row, y, out_base + oy * ow);
                    }
                }
                (InBuf::I8(x), DirectWeights::I8(_)) if self.int8_in_f32() => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &self.w_f32[kk * p.kdim as usize..][..p.kdim as usize];
                    let (pad, acc) = as_f32(scratch).split_at_mut(padded);
                    let zp = p.in_zp;
                    for ci in 0..cpg {
                        let dst = &mut pad[ci * hw..][..hw];
                        let src = &x[ci * plane..][..plane];
                        self.pad_plane(src, dst, 0.0, |v| (v as i32 - zp) as f32);
                    }
                    self.accumulate(pad, w, acc);
                    for oy in 0..p.oh as usize {
                        let row = Acc::IntF32(&acc[oy * stride..][..ow]);
                        self.epi.row(p, kk, row, y, out_base + oy * ow);
                    }
                }
                (InBuf::I8(x), DirectWeights::I8(_)) => {
                    let x = std::slice::from_raw_parts(x.add(x_base), cpg * plane);
                    let w = &self.w_i32[kk * p.kdim as usize..][..p.kdim as usize];
                    let (pad, acc) = as_i32(scratch).split_at_mut(padded);
                    let zp = p.in_zp;
                    for ci in 0..cpg {
                        let dst = &mut pad[ci * hw..][..hw];
                        self.pad_plane(&x[ci * plane..][..plane], dst, 0, |v| v as i32 - zp);
                    }
                    self.accumulate(pad, w, acc);
                    for oy in 0..p.oh as usize {
                        let row = Acc::I32(&acc[oy * stride..][..ow], 0);
                        self.epi.row(p, kk, row, y, out_base + oy * ow);
                    }
                }
                _ => unreachable!("input and weight types checked at load"),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn direct_task_avx512(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_task_avx2(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}

unsafe fn direct_task_portable(d: &DirectConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { d.task(t, x, y, s) }
}
