//! Padded rows split into stride phases: phase q of a row holds its padded columns q, q + S,
//! q + 2S, ..., so a strided window's taps for consecutive outputs sit next to each other.
//! The convolutions' row sources and the strided pools both read their input this way.

/// [`split_phases`] for a stride known at run time: 1 and 2 compiled with constant strides,
/// so their loops vectorise (the convolutions' padded rows and the strided pools use it).
#[inline(always)]
pub(crate) fn split_row<T: Copy, U: Copy>(
    line: &[T],
    dst: &mut [U],
    pw: usize,
    wph: usize,
    sw: usize,
    conv: impl Fn(T) -> U,
) {
    match sw {
        1 => split_phases::<1, _, _>(line, dst, pw, wph, conv),
        2 => split_phases::<2, _, _>(line, dst, pw, wph, conv),
        _ => {
            for (ix, v) in line.iter().enumerate() {
                let pc = ix + pw;
                dst[(pc % sw) * wph + pc / sw] = conv(*v);
            }
        }
    }
}

/// One input row into its `S` phases of a padded row (phase q holds padded columns
/// q, q + S, ...; the row starts `pw` columns into the padding), each value through `conv`.
#[inline(always)]
pub(crate) fn split_phases<const S: usize, T: Copy, U: Copy>(
    line: &[T],
    dst: &mut [U],
    pw: usize,
    wph: usize,
    conv: impl Fn(T) -> U,
) {
    for q in 0..S {
        // input columns ix with (ix + pw) % S == q
        let ix0 = (q + S - pw % S) % S;
        if ix0 >= line.len() {
            continue;
        }
        let first = (ix0 + pw) / S;
        let n = (line.len() - ix0).div_ceil(S);
        let out = &mut dst[q * wph + first..][..n];
        // chunks of S without bounds checks (an indexed `src[m * S]` kept this loop scalar);
        // the last value may have fewer than S - 1 after it
        let src = &line[ix0..];
        let whole = src.len() / S;
        for (d, c) in out.iter_mut().zip(src.chunks_exact(S)) {
            *d = conv(c[0]);
        }
        if whole < n {
            out[whole] = conv(src[whole * S]);
        }
    }
}
