//! The catalog scan: `user · item_i` for every row of the item table, all of retrieval's cost
//! at large catalogs. Up to ~10^4 items the table sits in the caches and the scan is
//! compute-bound (the vector width and FMA matter); from ~10^5 it streams from memory and the
//! bytes per row matter, which is what a Q8_0 table (a quarter of f32's) buys.
//!
//! On x86-64 with AVX2 and FMA (compiled in on the host's x86-64-v3 build, detected at run time
//! on a baseline x86-64 one: the `cpu-variants` build, Android's x86_64 ABI) the scan runs
//! hand-written 256-bit kernels: the compiler's own vectorization of the portable loop stays at
//! 128 bits with lane shuffles (measured in `delrec-bench scan`). Elsewhere (aarch64 included,
//! where the baseline NEON width is 128 bits anyway) the portable kernels run. The two differ
//! only in rounding (FMA rounds once per multiply-add, the lane order differs), so scores can
//! differ in their last bits between CPUs, never in anything a ranking should depend on.

use delrec_format::seq::{ItemTable, Q8_BLOCK};

use super::sasrec::dot;

/// `user · row_i` for every row of `table` (`hidden` wide), into `out`.
pub(crate) fn scores(table: &ItemTable, hidden: usize, user: &[f32], out: &mut Vec<f32>) {
    out.clear();
    if hidden == 0 || user.len() != hidden {
        return;
    }
    if let ItemTable::Q8_0(q) = table {
        if !hidden.is_multiple_of(Q8_BLOCK) || q.scales.len() * Q8_BLOCK != q.quants.len() {
            return; // a table the reader accepted always has whole blocks
        }
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above), the features `avx2::scores`
        // is compiled with; the shapes were checked above.
        unsafe { avx2::scores(table, hidden, user, out) };
        return;
    }
    portable_scores(table, hidden, user, out)
}

/// The kernel [`scores`] runs on this CPU (the bench prints it).
pub fn kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return if cfg!(target_feature = "fma") { "avx2+fma (compiled in)" } else { "avx2+fma (chosen at run time)" };
    }
    "portable 8-lane"
}

fn portable_scores(table: &ItemTable, hidden: usize, user: &[f32], out: &mut Vec<f32>) {
    match table {
        ItemTable::F32(v) => out.extend(v.chunks_exact(hidden).map(|row| dot(row, user))),
        ItemTable::Q8_0(q) => out.extend(
            q.quants
                .chunks_exact(hidden)
                .zip(q.scales.chunks_exact(hidden / Q8_BLOCK))
                .map(|(qs, ds)| dot_q8(ds, qs, user)),
        ),
    }
}

/// `Σ_b d_b · Σ_j q_bj · u_bj` in eight lanes, each block's scale folded into its values so the
/// lanes accumulate across blocks.
fn dot_q8(scales: &[f32], quants: &[i8], user: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for ((d, q), u) in scales.iter().zip(quants.chunks_exact(Q8_BLOCK)).zip(user.chunks_exact(Q8_BLOCK)) {
        for (qc, uc) in q.chunks_exact(8).zip(u.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += d * qc[i] as f32 * uc[i];
            }
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use delrec_format::seq::{ItemTable, Q8_BLOCK};

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; `user.len() == hidden`, and a Q8_0 table must hold
    /// whole 32-value blocks with one scale each.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(table: &ItemTable, hidden: usize, user: &[f32], out: &mut Vec<f32>) {
        match table {
            ItemTable::F32(v) => {
                out.extend(v.chunks_exact(hidden).map(|row| {
                    // SAFETY: `row` and `user` both hold `hidden` values.
                    unsafe { dot_f32(row, user) }
                }))
            }
            ItemTable::Q8_0(q) => out.extend(
                q.quants.chunks_exact(hidden).zip(q.scales.chunks_exact(hidden / Q8_BLOCK)).map(|(qs, ds)| {
                    // SAFETY: `qs` and `user` hold `hidden` values, `ds` one scale per 32.
                    unsafe { dot_q8(ds, qs, user) }
                }),
            ),
        }
    }

    /// The 8 lanes of `v` summed.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// # Safety
    /// AVX2 and FMA; `a.len() == b.len()`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load): `i + 8 * k + 8 <= n` by the loop conditions.
        while i + 32 <= n {
            for (k, c) in acc.iter_mut().enumerate() {
                let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i + 8 * k)), _mm256_loadu_ps(pb.add(i + 8 * k))) };
                *c = _mm256_fmadd_ps(x, y, *c);
            }
            i += 32;
        }
        while i + 8 <= n {
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        for j in i..n {
            s = a[j].mul_add(b[j], s);
        }
        s
    }

    /// # Safety
    /// AVX2 and FMA; `quants` and `user` of one length, a multiple of 32, one scale per 32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_q8(scales: &[f32], quants: &[i8], user: &[f32]) -> f32 {
        let (pq, pu) = (quants.as_ptr(), user.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, &d) in scales.iter().enumerate() {
            let d = _mm256_set1_ps(d);
            for (k, c) in acc.iter_mut().enumerate() {
                let at = b * Q8_BLOCK + 8 * k;
                // SAFETY: `at + 8 <= quants.len() == user.len()` (32 values per scale).
                let (q, u) = unsafe { (_mm_loadl_epi64(pq.add(at) as *const __m128i), _mm256_loadu_ps(pu.add(at))) };
                let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                *c = _mm256_fmadd_ps(_mm256_mul_ps(q, d), u, *c);
            }
        }
        hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(n: usize, f: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * f).sin() * 1.7).collect()
    }

    fn naive(table: &[f32], hidden: usize, user: &[f32]) -> Vec<f64> {
        table.chunks_exact(hidden).map(|r| r.iter().zip(user).map(|(a, b)| *a as f64 * *b as f64).sum()).collect()
    }

    #[test]
    fn f32_scan_matches_a_naive_sum_at_every_width() {
        for hidden in [1, 7, 8, 31, 32, 33, 64, 100] {
            let (table, user) = (wave(13 * hidden, 0.37), wave(hidden, 0.11));
            let mut got = Vec::new();
            scores(&ItemTable::F32(table.clone()), hidden, &user, &mut got);
            let want = naive(&table, hidden, &user);
            assert_eq!(got.len(), 13);
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "hidden {hidden}: {g} vs {w}");
            }
            // The portable kernel agrees to rounding (on x86-64 `scores` ran the AVX2 one).
            let mut p = Vec::new();
            portable_scores(&ItemTable::F32(table), hidden, &user, &mut p);
            assert!(p.iter().zip(&got).all(|(x, y)| (x - y).abs() < 1e-5 * (1.0 + x.abs())));
        }
    }

    #[test]
    fn q8_scan_equals_the_dequantized_table_and_stays_within_the_quantization_bound() {
        let hidden = 64;
        let table = wave(50 * hidden, 0.73);
        let user = wave(hidden, 0.29);
        let q = ItemTable::quantize_q8_0(&table).unwrap();
        let mut got = Vec::new();
        scores(&q, hidden, &user, &mut got);
        let deq = naive(&q.to_f32(), hidden, &user);
        let exact = naive(&table, hidden, &user);
        let ItemTable::Q8_0(qt) = &q else { unreachable!() };
        let mut p = Vec::new();
        portable_scores(&q, hidden, &user, &mut p);
        for (i, g) in got.iter().enumerate() {
            assert!((p[i] as f64 - deq[i]).abs() < 1e-5 * (1.0 + deq[i].abs()), "portable row {i}");
            assert!((*g as f64 - deq[i]).abs() < 1e-5 * (1.0 + deq[i].abs()), "row {i}: {g} vs {}", deq[i]);
            // |x − d₁₆·q| ≤ d/2 + 127·|d − d₁₆| ≤ d·(1/2 + 127/2048) per value.
            let bound: f64 = (0..hidden)
                .map(|j| qt.scales[(i * hidden + j) / Q8_BLOCK] as f64 * (0.5 + 127.0 / 2048.0) * user[j].abs() as f64)
                .sum();
            assert!((*g as f64 - exact[i]).abs() <= bound + 1e-5, "row {i}: {g} vs {} (bound {bound})", exact[i]);
        }
    }

    #[test]
    fn quantize_follows_ggml_rounding_and_handles_zero_blocks() {
        let mut v = vec![0f32; 64];
        // d = 127 / 127 = 1 exactly; halves round away from zero, as C's roundf.
        v[32..36].copy_from_slice(&[127.0, -63.5, 0.5, 2.49]);
        let ItemTable::Q8_0(q) = ItemTable::quantize_q8_0(&v).unwrap() else { unreachable!() };
        assert_eq!(q.scales, vec![0.0, 1.0]);
        assert!(q.quants[..32].iter().all(|&x| x == 0));
        assert_eq!(&q.quants[32..36], &[127, -64, 1, 2]);
        assert!(ItemTable::quantize_q8_0(&v[..40]).is_err());
        assert!(ItemTable::quantize_q8_0(&[f32::NAN; 32]).is_err());
    }

    #[test]
    fn a_user_of_another_width_scores_nothing() {
        let mut out = vec![1.0];
        scores(&ItemTable::F32(vec![1.0; 8]), 4, &[1.0; 3], &mut out);
        assert!(out.is_empty());
    }
}
