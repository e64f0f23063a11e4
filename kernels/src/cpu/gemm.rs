//! [`GemmConv`]: groups = 1 convolutions (and matrix products) as a GEMM over output channels
//! x output pixels x taps, the taps read by the micro-kernels ([`super::micro`]) straight
//! from a row source (see the [`super::conv`] overview).

use super::conv::{Acc, Epilogue, InBuf, OutBuf, PaddedRows, as_f32, as_i32, is_pointwise};
use super::isa::Isa;
use super::micro::{MR, micro_f32_rows, micro_i8_rows};
use crate::params::ConvParams;

pub enum GemmWeights {
    /// `[panel][j][MR]`
    F32(Vec<f32>),
    /// `[panel][j4][MR][4]`: the row source's tap groups (4 channels at one (r, s)), lanes
    /// past the last channel 0.
    I8(Vec<i8>),
}

pub struct GemmConv {
    pub p: ConvParams,
    weights: GemmWeights,
    /// Where the micro-kernel reads its taps.
    rows: RowSource,
    epi: Epilogue,
    isa: Isa,
    /// Pixels per micro-kernel column panel.
    nr: usize,
    /// Pixels per task of a 1x1 convolution read across rows (a multiple of `nr`).
    tile: usize,
    /// Row-reading tasks also split the output channels into this many groups of panels
    /// (small planes with many channels would otherwise give a pool too few tasks).
    kgroups: usize,
}

/// Where the row-reading GEMM finds its taps: a padded copy of the input with each row
/// split into `stride_w` phases (columns q, q + s, q + 2s, ... of phase q), so the columns
/// one tap reads for consecutive output pixels are consecutive in memory at any horizontal
/// stride. FP32: `[n][c][hp][phase][wph]`, zero borders. INT8: channels interleaved four at a
/// time, `[n][c/4][hp][phase][wph][4]` as `x + 128` bytes, borders holding the zero point (so
/// 32 pixels of one 4-channel tap group are one 128-byte `vpdpbusd` operand). Borders are
/// written at load and never again; slack at the end absorbs a partial block's over-read.
struct RowSource {
    buf: std::cell::UnsafeCell<RowBuf>,
    /// The padded planes' rows (pixels; INT8 has 4 values per pixel).
    rows: PaddedRows,
    /// Values per pixel: 1 (FP32) or 4 interleaved channels (INT8).
    lanes: usize,
    /// Channel blocks per image: c (FP32) or c / 4 rounded up (INT8).
    blocks: usize,
    /// Element offset of tap j = (c, ry, sx) (FP32) or tap group (c / 4, ry, sx) (INT8) from
    /// the output pixel's first tap.
    offs: Vec<u32>,
    /// FP32 only: the input is read in place (1x1, unit stride, no padding: no copy).
    in_place: bool,
}

enum RowBuf {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl RowSource {
    /// `int8_pad`: the byte the INT8 borders hold (`zp + 128`); `None` for FP32.
    fn new(p: &ConvParams, nr: usize, int8_pad: Option<u8>) -> Result<RowSource, String> {
        if p.groups != 1 {
            return Err(
                "a grouped convolution on the GEMM (the plan sends those to the direct kernel)"
                    .into(),
            );
        }
        let rows = PaddedRows::new(p);
        let (lanes, blocks) = match int8_pad {
            Some(_) => (4, (p.c as usize).div_ceil(4)),
            None => (1, p.c as usize),
        };
        let in_place = int8_pad.is_none()
            && is_pointwise(p)
            && rows.hp == p.h as usize
            && rows.row == p.w as usize;
        let plane = rows.hp * rows.row * lanes;
        if p.n as usize * blocks * plane > u32::MAX as usize / 2 {
            return Err(format!(
                "convolution input {}x{}x{}x{} too large for the CPU engine's 32-bit tap offsets",
                p.n, p.c, p.h, p.w
            ));
        }
        let mut offs = vec![];
        for cb in 0..blocks {
            for ry in 0..p.r as usize {
                for sx in 0..p.s as usize {
                    offs.push((cb * plane + rows.tap_start(p, 0, ry, sx) * lanes) as u32);
                }
            }
        }
        let len = p.n as usize * blocks * plane + (nr + 16) * lanes;
        let buf = match int8_pad {
            Some(v) => RowBuf::U8(vec![v; len]),
            None if in_place => RowBuf::F32(vec![]),
            None => RowBuf::F32(vec![0f32; len]),
        };
        Ok(RowSource {
            buf: std::cell::UnsafeCell::new(buf),
            rows,
            lanes,
            blocks,
            offs,
            in_place,
        })
    }
}

impl RowSource {
    /// Output pixels map one to one onto input pixels (1x1, unit strides, no padding), so
    /// blocks may run across rows.
    fn flat(&self, p: &ConvParams) -> bool {
        is_pointwise(p) && self.rows.row == p.w as usize && self.rows.hp == p.h as usize
    }

    /// Unit strides and output rows shorter than a block (the 7x7 and 14x14 planes of every
    /// ImageNet CNN's last stages): blocks run across rows of the padded input, pixel q =
    /// oy · row + ox, so a block of 32 holds several output rows and the padding columns
    /// between them (computed, never stored) instead of one 7-pixel row and 25 idle lanes.
    fn wide(&self, p: &ConvParams, nr: usize) -> bool {
        !self.flat(p) && p.stride_h == 1 && p.stride_w == 1 && (p.ow as usize) < nr && p.oh > 1
    }

    /// Pixels the tasks tile when blocks run across rows: the output plane (flat), the
    /// padded-row space up to the last output pixel (wide); `None` when each task is one
    /// output row.
    fn tiled_len(&self, p: &ConvParams, nr: usize) -> Option<usize> {
        if self.wide(p, nr) {
            Some((p.oh as usize - 1) * self.rows.row + p.ow as usize)
        } else if self.flat(p) {
            Some((p.oh * p.ow) as usize)
        } else {
            None
        }
    }
}

/// Where a block's accumulators go: `len` pixels from accumulator column `from` to output
/// element `to` (of channel 0; each channel adds its plane).
#[derive(Clone, Copy, Default)]
struct Seg {
    from: usize,
    to: usize,
    len: usize,
}

/// A block's segments: one, or in wide mode one per output row it touches (at most
/// `nr + 1`, for padded rows of one pixel; `nr` is at most 32).
type Segs = heapless::Vec<Seg, 40>;

// SAFETY: `RowSource::buf` is written only by `GemmConv::pad_task`, one (image, channel)
// plane interior per task (disjoint), in a phase that completes before any task reads it.
unsafe impl Sync for GemmConv {}

/// Pixels per micro-kernel call for an instruction set.
fn nr_for(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Avx512Vnni => 32,
        _ => 8,
    }
}

impl GemmConv {
    /// Pack float weights (`[k][kpad]` rows of the plan).
    pub fn new_f32(p: ConvParams, w: &[f32], bias: &[f32], isa: Isa) -> Result<GemmConv, String> {
        let (k, kdim, kpad) = (p.k as usize, p.kdim as usize, p.kpad as usize);
        let panels = k.div_ceil(MR);
        let mut packed = vec![0f32; panels * kdim * MR];
        for kk in 0..k {
            let (panel, r) = (kk / MR, kk % MR);
            for j in 0..kdim {
                packed[(panel * kdim + j) * MR + r] = w[kk * kpad + j];
            }
        }
        Self::finish(
            p,
            RowSource::new(&p, nr_for(isa), None)?,
            GemmWeights::F32(packed),
            Epilogue {
                bias: bias.to_vec(),
                mult: vec![],
                corr: vec![],
            },
            isa,
        )
    }

    /// Pack int8 weights; `wsum` is each row's sum (the plan's constant).
    pub fn new_i8(
        p: ConvParams,
        w: &[i8],
        wsum: &[i32],
        mult: &[f32],
        bias: &[f32],
        isa: Isa,
    ) -> Result<GemmConv, String> {
        let (k, kpad) = (p.k as usize, p.kpad as usize);
        let panels = k.div_ceil(MR);
        let rows = RowSource::new(&p, nr_for(isa), Some((p.in_zp + 128) as u8))?;
        // the row source's tap groups: (c / 4, r, s), lane q = channel c % 4
        let (r, s_, c) = (p.r as usize, p.s as usize, p.c as usize);
        let taps4 = rows.offs.len();
        let tap = |j4: usize, q: usize| {
            let (cb, rest) = (j4 / (r * s_), j4 % (r * s_));
            let ch = cb * 4 + q;
            (ch < c).then_some(ch * r * s_ + rest)
        };
        let mut packed = vec![0i8; panels * taps4 * 4 * MR];
        for kk in 0..k {
            let (panel, r) = (kk / MR, kk % MR);
            for j4 in 0..taps4 {
                for q in 0..4 {
                    if let Some(j) = tap(j4, q) {
                        packed[((panel * taps4 + j4) * MR + r) * 4 + q] = w[kk * kpad + j];
                    }
                }
            }
        }
        let corr = wsum.iter().map(|s| (128 + p.in_zp) * s).collect();
        Self::finish(
            p,
            rows,
            GemmWeights::I8(packed),
            Epilogue {
                bias: bias.to_vec(),
                mult: mult.to_vec(),
                corr,
            },
            isa,
        )
    }

    fn finish(
        p: ConvParams,
        rows: RowSource,
        weights: GemmWeights,
        epi: Epilogue,
        isa: Isa,
    ) -> Result<GemmConv, String> {
        let kdim = p.kdim as usize;
        let nr = nr_for(isa);
        let tiled = rows.tiled_len(&p, nr);
        let pixels = tiled.unwrap_or((p.oh * p.ow) as usize);
        // A 1x1 task's taps (kdim x tile) stay within ~128 KiB.
        let bytes_per_pixel = kdim.max(1) * 4;
        let by_cache = (128 * 1024 / bytes_per_pixel / nr).max(1) * nr;
        let tile = by_cache.min(pixels.div_ceil(nr) * nr).min(8 * nr).max(nr);
        let panels = (p.k as usize).div_ceil(MR);
        let pixel_tasks = match tiled {
            Some(len) => p.n as usize * len.div_ceil(tile),
            None => (p.n * p.oh) as usize,
        };
        let kgroups = if pixel_tasks < 8 {
            panels.min(8 / pixel_tasks.max(1)).max(1)
        } else {
            1
        };
        Ok(GemmConv {
            p,
            weights,
            rows,
            kgroups,
            epi,
            isa,
            nr,
            tile,
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.weights, GemmWeights::I8(_))
    }

    /// Independent tasks: output rows (or, 1x1, tiles across rows) of every image, times
    /// the channel groups.
    pub fn tasks(&self) -> usize {
        let per_image = match self.rows.tiled_len(&self.p, self.nr) {
            Some(len) => len.div_ceil(self.tile),
            None => self.p.oh as usize,
        };
        self.p.n as usize * per_image * self.kgroups
    }

    /// Tasks of the padding phase that must run (all of them) before [`GemmConv::tasks`]:
    /// one per (image, input channel), or none.
    pub fn pad_tasks(&self) -> usize {
        match self.rows.in_place {
            true => 0,
            false => self.p.n as usize * self.rows.blocks,
        }
    }

    /// Copy input plane `t` (image, channel) into the interior of the padded buffer.
    ///
    /// # Safety
    /// `x` holds the whole input; no other task of the same phase has the same `t`, and no
    /// GEMM task of this step runs concurrently.
    pub unsafe fn pad_task(&self, t: usize, x: InBuf) {
        per_isa!(
            self.isa,
            pad_task_avx512,
            pad_task_avx2,
            pad_task_portable,
            (self, t, x)
        )
    }

    #[inline(always)]
    unsafe fn pad(&self, t: usize, x: InBuf) {
        let r = &self.rows;
        let g = &r.rows;
        let p = &self.p;
        let (h, w, c) = (p.h as usize, p.w as usize, p.c as usize);
        let (ph, pw, sw) = (p.pad_h as usize, p.pad_w as usize, p.stride_w as usize);
        let plane = g.hp * g.row * r.lanes;
        match (unsafe { &mut *r.buf.get() }, x) {
            (RowBuf::F32(buf), InBuf::F32(x)) => {
                let dst = &mut buf[t * plane..][..plane];
                let src = unsafe { std::slice::from_raw_parts(x.add(t * h * w), h * w) };
                for (iy, line) in src.chunks_exact(w).enumerate() {
                    let d = &mut dst[(iy + ph) * g.row..][..g.row];
                    g.copy_row(line, d, pw, sw, |v| v);
                }
            }
            (RowBuf::U8(buf), InBuf::I8(x)) => {
                // t = (image, block of 4 channels): interleave them as x + 128; a block past
                // the last channel repeats channel 0 there (its weights are 0)
                let (img, cb) = (t / r.blocks, t % r.blocks);
                let dst = &mut buf[t * plane..][..plane];
                let chan = |q: usize| {
                    let ch = img * c + if cb * 4 + q < c { cb * 4 + q } else { cb * 4 };
                    unsafe { std::slice::from_raw_parts(x.add(ch * h * w), h * w) }
                };
                let planes = [chan(0), chan(1), chan(2), chan(3)];
                for iy in 0..h {
                    let at = iy * w..(iy + 1) * w;
                    let lines = planes.map(|p| &p[at.clone()]);
                    let d = &mut dst[(iy + ph) * g.row * 4..][..g.row * 4];
                    match sw {
                        1 => interleave4::<1>(lines, d, pw, g.wph),
                        2 => interleave4::<2>(lines, d, pw, g.wph),
                        _ => {
                            for (q, line) in lines.iter().enumerate() {
                                for (ix, v) in line.iter().enumerate() {
                                    let pc = ix + pw;
                                    d[((pc % sw) * g.wph + pc / sw) * 4 + q] = (*v as u8) ^ 0x80;
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Scratch bytes one thread needs.
    pub fn scratch_bytes(&self) -> usize {
        MR * self.nr * 4 + 64
    }

    /// Run task `t` (see [`GemmConv::tasks`]).
    ///
    /// # Safety
    /// `x` and `y` hold the whole input and output tensors; tasks write disjoint outputs;
    /// `scratch` holds [`GemmConv::scratch_bytes`] bytes, 4-byte aligned.
    pub unsafe fn run_task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        per_isa!(
            self.isa,
            gemm_task_avx512,
            gemm_task_avx2,
            gemm_task_portable,
            (self, t, x, y, scratch)
        )
    }

    /// Tiles of the row-reading GEMM: one output row (padded input), or, for 1x1 unit-stride
    /// convolutions without padding, `tile` consecutive pixels across rows. Every block of
    /// up to `nr` pixels, every panel of channels, taps loaded straight from the row source
    /// (or, FP32 1x1, from the input itself).
    #[inline(always)]
    unsafe fn task(&self, t: usize, x: InBuf, y: OutBuf, scratch: &mut [u8]) {
        let (p, rs) = (&self.p, &self.rows);
        let k = p.k as usize;
        let (oh, ow) = (p.oh as usize, p.ow as usize);
        let plane = rs.rows.hp * rs.rows.row * rs.lanes;
        // this task's share of the channel panels
        let (t, group) = (t / self.kgroups, t % self.kgroups);
        let panels = k.div_ceil(MR);
        let per = panels.div_ceil(self.kgroups);
        let mine = (group * per).min(panels)..((group + 1) * per).min(panels);
        let wide = rs.wide(p, self.nr);
        let (img, first, count, b0) = if let Some(len) = rs.tiled_len(p, self.nr) {
            let tiles = len.div_ceil(self.tile);
            let (img, q0) = (t / tiles, (t % tiles) * self.tile);
            (img, q0, self.tile.min(len - q0), q0)
        } else {
            let (img, oy) = (t / oh, t % oh);
            (img, oy * ow, ow, oy * p.stride_h as usize * rs.rows.row)
        };
        // element index of the tile's first pixel in the source
        let base = img * rs.blocks * plane + b0 * rs.lanes;
        let out_img = img * k * oh * ow + if wide { 0 } else { first };
        // where block xb's n accumulators go
        let segs = |xb: usize, n: usize| -> Segs {
            let mut v = Segs::new();
            if !wide {
                let _ = v.push(Seg {
                    from: 0,
                    to: out_img + xb,
                    len: n,
                });
                return v;
            }
            let row = rs.rows.row;
            let mut q = first + xb;
            while q < first + xb + n {
                let (oy, ox) = (q / row, q % row);
                let len = (first + xb + n - q).min(row - ox);
                if ox < ow {
                    let _ = v.push(Seg {
                        from: q - first - xb,
                        to: out_img + oy * ow + ox,
                        len: len.min(ow - ox),
                    });
                }
                q += len;
            }
            v
        };
        // a partial block reads past its pixels (the next row or the slack), unused
        match (&self.weights, unsafe { &*rs.buf.get() }, x) {
            (GemmWeights::F32(w), buf, x) => {
                let src = match (rs.in_place, buf, x) {
                    (true, _, InBuf::F32(x)) => x,
                    (false, RowBuf::F32(v), _) => v.as_ptr(),
                    _ => return,
                };
                for xb in (0..count).step_by(self.nr) {
                    let n = self.nr.min(count - xb);
                    let b = unsafe { src.add(base + xb) };
                    let acc = as_f32(scratch);
                    let segs = segs(xb, n);
                    unsafe { self.rows_block(w, b, &rs.offs, acc, y, &segs, n, mine.clone()) };
                }
            }
            (GemmWeights::I8(w), RowBuf::U8(v), _) => {
                for xb in (0..count).step_by(self.nr) {
                    let n = self.nr.min(count - xb);
                    let b = unsafe { v.as_ptr().add(base + xb * 4) };
                    let acc = as_i32(scratch);
                    let segs = segs(xb, n);
                    unsafe { self.rows_block_i8(w, b, &rs.offs, acc, y, &segs, n, mine.clone()) };
                }
            }
            _ => {}
        }
    }

    /// A half-width micro-kernel for short tails (AVX-512: 16 of 32 pixels).
    fn block_width(&self, n: usize) -> usize {
        if n <= self.nr / 2 && self.nr == 32 {
            16
        } else {
            self.nr
        }
    }

    /// Up to `nr` output pixels of every channel from taps at `b + offs[j]`, stored by
    /// `segs` in each channel plane.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows_block(
        &self,
        w: &[f32],
        b: *const f32,
        offs: &[u32],
        acc: &mut [f32],
        y: OutBuf,
        segs: &[Seg],
        n: usize,
        panels: std::ops::Range<usize>,
    ) {
        let p = &self.p;
        let (k, kdim) = (p.k as usize, offs.len());
        let plane_out = (p.oh * p.ow) as usize;
        let width = self.block_width(n);
        for panel in panels {
            let a = &w[panel * kdim * MR..][..kdim * MR];
            let acc = &mut acc[..MR * width];
            unsafe { micro_f32_rows(self.isa, width, kdim, a, b, offs, acc) };
            for r in 0..MR.min(k - panel * MR) {
                let kk = panel * MR + r;
                for s in segs {
                    let acc_row = Acc::F32(&acc[r * width + s.from..][..s.len]);
                    unsafe { self.epi.row(p, kk, acc_row, y, s.to + kk * plane_out) };
                }
            }
        }
    }

    /// [`GemmConv::rows_block`] for INT8: tap groups of 4 channels at `b + offs[j4]`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows_block_i8(
        &self,
        w: &[i8],
        b: *const u8,
        offs: &[u32],
        acc: &mut [i32],
        y: OutBuf,
        segs: &[Seg],
        n: usize,
        panels: std::ops::Range<usize>,
    ) {
        let p = &self.p;
        let (k, k4) = (p.k as usize, offs.len());
        let plane_out = (p.oh * p.ow) as usize;
        let width = self.block_width(n);
        for panel in panels {
            let a = &w[panel * k4 * 4 * MR..][..k4 * 4 * MR];
            let acc = &mut acc[..MR * width];
            unsafe { micro_i8_rows(self.isa, width, k4, a, b, offs, acc) };
            for r in 0..MR.min(k - panel * MR) {
                let kk = panel * MR + r;
                for s in segs {
                    let acc_row = Acc::I32(&acc[r * width + s.from..][..s.len], self.epi.corr[kk]);
                    unsafe { self.epi.row(p, kk, acc_row, y, s.to + kk * plane_out) };
                }
            }
        }
    }
}

/// Four channels' input rows into one padded row's `S` phases, interleaved per pixel as
/// `x + 128` bytes (`x ^ 0x80`); constant `S`, so the loops vectorise.
#[inline(always)]
fn interleave4<const S: usize>(lines: [&[i8]; 4], dst: &mut [u8], pw: usize, wph: usize) {
    let w = lines[0].len();
    for q in 0..S {
        let ix0 = (q + S - pw % S) % S;
        if ix0 >= w {
            continue;
        }
        let first = (ix0 + pw) / S;
        let n = (w - ix0).div_ceil(S);
        let out = &mut dst[(q * wph + first) * 4..][..n * 4];
        for (m, o) in out.chunks_exact_mut(4).enumerate() {
            let ix = ix0 + m * S;
            o[0] = (lines[0][ix] as u8) ^ 0x80;
            o[1] = (lines[1][ix] as u8) ^ 0x80;
            o[2] = (lines[2][ix] as u8) ^ 0x80;
            o[3] = (lines[3][ix] as u8) ^ 0x80;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn pad_task_avx512(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pad_task_avx2(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

unsafe fn pad_task_portable(g: &GemmConv, t: usize, x: InBuf) {
    unsafe { g.pad(t, x) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn gemm_task_avx512(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_task_avx2(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}

unsafe fn gemm_task_portable(g: &GemmConv, t: usize, x: InBuf, y: OutBuf, s: &mut [u8]) {
    unsafe { g.task(t, x, y, s) }
}
