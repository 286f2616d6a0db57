//! SASRec's forward, exactly as RecBole 1.2.1 computes it at inference (dropout off): item +
//! position embeddings, LayerNorm, post-norm transformer blocks with causal attention, the last
//! position's output as the user vector, scores = user · item table.
//!
//! Only the real items are run: RecBole pads on the right and masks causally, so its output at
//! the last real position does not depend on the padding.

use delrec_format::seq::{Activation, LayerNorm, Linear, Sasrec};

/// The user vector for a history of catalog indices (oldest first; longer than `max_len` keeps
/// the latest). Indices past the model's table are items added on the device: `extra` gives
/// their vectors (an item without one contributes zeros, as an unknown item would).
/// The caller has checked the indices and that the history is not empty.
pub(crate) fn user_vector<'a>(m: &'a Sasrec, history: &[u32], extra: impl Fn(u32) -> Option<&'a [f32]>) -> Vec<f32> {
    let h = m.hidden;
    let hist = &history[history.len().saturating_sub(m.max_len)..];
    let l = hist.len();
    let mut x = vec![0f32; l * h];
    for (t, &item) in hist.iter().enumerate() {
        // A Q8_0 table's rows come dequantized: the model sees what the scan scores against.
        let e = m
            .items
            .row(item as usize, h)
            .or_else(|| extra(item).filter(|v| v.len() == h).map(<[f32]>::to_vec))
            .unwrap_or_else(|| vec![0f32; h]);
        let p = &m.positions[t * h..][..h];
        for ((o, a), b) in x[t * h..][..h].iter_mut().zip(&e).zip(p) {
            *o = a + b;
        }
    }
    layer_norm_rows(&mut x, &m.norm, m.eps);
    let d = h / m.n_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut q = vec![0f32; l * h];
    let mut k = vec![0f32; l * h];
    let mut v = vec![0f32; l * h];
    let mut ctx = vec![0f32; l * h];
    let mut tmp = vec![0f32; l * h];
    let mut up = vec![0f32; l * m.inner];
    let mut att = vec![0f32; l];
    for b in &m.blocks {
        linear_rows(&b.q, &x, &mut q);
        linear_rows(&b.k, &x, &mut k);
        linear_rows(&b.v, &x, &mut v);
        for head in 0..m.n_heads {
            let off = head * d;
            for i in 0..l {
                let qi = &q[i * h + off..][..d];
                let mut max = f32::NEG_INFINITY;
                for (j, a) in att[..=i].iter_mut().enumerate() {
                    *a = dot(qi, &k[j * h + off..][..d]) * scale;
                    max = max.max(*a);
                }
                let mut sum = 0f32;
                for a in &mut att[..=i] {
                    *a = (*a - max).exp();
                    sum += *a;
                }
                let out = &mut ctx[i * h + off..][..d];
                out.fill(0.0);
                for (j, a) in att[..=i].iter().enumerate() {
                    let w = a / sum;
                    for (o, vv) in out.iter_mut().zip(&v[j * h + off..][..d]) {
                        *o += w * vv;
                    }
                }
            }
        }
        linear_rows(&b.out, &ctx, &mut tmp);
        add_in_place(&mut x, &tmp);
        layer_norm_rows(&mut x, &b.attn_norm, m.eps);
        linear_rows(&b.up, &x, &mut up);
        match m.act {
            Activation::Gelu => up.iter_mut().for_each(|u| *u = gelu(*u)),
            Activation::Relu => up.iter_mut().for_each(|u| *u = u.max(0.0)),
        }
        linear_rows(&b.down, &up, &mut tmp);
        add_in_place(&mut x, &tmp);
        layer_norm_rows(&mut x, &b.ffn_norm, m.eps);
    }
    x[(l - 1) * h..].to_vec()
}

/// A dot product in eight lanes: the compiler vectorizes it (and keeps the summation order
/// fixed, so results do not depend on the call site). The forward uses it; the catalog scan
/// has its own kernels (`scan`).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn linear_rows(lin: &Linear, x: &[f32], y: &mut [f32]) {
    for (xr, yr) in x.chunks_exact(lin.n_in).zip(y.chunks_exact_mut(lin.n_out)) {
        for ((o, w), b) in yr.iter_mut().zip(lin.weight.chunks_exact(lin.n_in)).zip(&lin.bias) {
            *o = dot(w, xr) + b;
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// PyTorch's `nn.LayerNorm` (biased variance), per row.
fn layer_norm_rows(x: &mut [f32], n: &LayerNorm, eps: f32) {
    let h = n.weight.len();
    for row in x.chunks_exact_mut(h) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&n.weight).zip(&n.bias) {
            *v = ((*v as f64 - mean) * inv) as f32 * w + b;
        }
    }
}

/// RecBole's `gelu`: `x · ½ (1 + erf(x / √2))`.
fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (x * 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

/// erf to ~1e-15: the Taylor series below 2.5, the continued fraction of erfc above.
pub(crate) fn erf(x: f64) -> f64 {
    let z = x.abs();
    if z.is_nan() {
        return x;
    }
    let r = if z < 2.5 {
        let (mut term, mut sum, z2) = (z, z, z * z);
        for n in 1..200 {
            term *= -z2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if z > 6.0 {
        1.0
    } else {
        // erfc(z) = exp(-z²)/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + ...)))), evaluated bottom-up.
        let mut f = z;
        for n in (1..60).rev() {
            f = z + (n as f64 / 2.0) / f;
        }
        1.0 - (-z * z).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (2.5, 0.999593047982555),
            (3.0, 1.0 - 2.209049699858544e-05),
            (4.0, 1.0 - 1.541725790028002e-08),
            (-1.0, -0.8427007929497149),
        ] {
            assert!((erf(x) - want).abs() < 1e-12, "erf({x}) = {} not {want}", erf(x));
        }
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
    }
}
