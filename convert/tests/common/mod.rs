//! Shared helpers for the integration tests: a float64 reference forward pass (HF semantics) and
//! output-directory checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use delrec_convert::model::{convert_model, ModelOptions, OutType};
use delrec_convert::st::Dtype;
use delrec_convert::testing::{Floats, TinySpec};

/// Values as the checkpoint stores them (rounded to the tensor's dtype).
pub fn stored(t: &Floats, name: &str) -> Vec<f64> {
    let (dt, _, v) = &t[name];
    v.iter()
        .map(|&x| match dt {
            Dtype::F32 => x as f64,
            Dtype::F16 => half::f16::from_f32(x).to_f64(),
            Dtype::BF16 => half::bf16::from_f32(x).to_f64(),
        })
        .collect()
}

fn matvec(w: &[f64], x: &[f64], out: usize) -> Vec<f64> {
    let inp = x.len();
    (0..out).map(|o| w[o * inp..(o + 1) * inp].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * s * b).collect()
}

/// HF rotate-half rope on one head vector at `pos`.
fn rope(v: &mut [f64], pos: usize, theta: f64) {
    let hd = v.len();
    let half = hd / 2;
    for i in 0..half {
        let ang = pos as f64 * theta.powf(-(2.0 * i as f64) / hd as f64);
        let (c, s) = (ang.cos(), ang.sin());
        let (a, b) = (v[i], v[i + half]);
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

/// Logits at every position for `tokens`, computed like transformers' Llama/Qwen2 (float64).
pub fn reference_logits(spec: &TinySpec, t: &Floats, tokens: &[i32]) -> Vec<Vec<f64>> {
    let (h, hd, nh, nkv) = (spec.hidden, spec.head_dim(), spec.heads, spec.kv_heads);
    let eps = 1e-5;
    let theta = 10000.0;
    let emb = stored(t, "model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> =
        tokens.iter().map(|&tok| emb[tok as usize * h..(tok as usize + 1) * h].to_vec()).collect();
    let n = tokens.len();
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}.");
        let g = |s: &str| stored(t, &format!("{p}{s}"));
        let (wq, wk, wv, wo) = (
            g("self_attn.q_proj.weight"),
            g("self_attn.k_proj.weight"),
            g("self_attn.v_proj.weight"),
            g("self_attn.o_proj.weight"),
        );
        let bias = spec.arch == "qwen2";
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (pos, x) in xs.iter().enumerate() {
            let hn = rmsnorm(x, &g("input_layernorm.weight"), eps);
            let mut q = matvec(&wq, &hn, nh * hd);
            let mut k = matvec(&wk, &hn, nkv * hd);
            let mut v = matvec(&wv, &hn, nkv * hd);
            if bias {
                for (a, b) in q.iter_mut().zip(g("self_attn.q_proj.bias")) {
                    *a += b;
                }
                for (a, b) in k.iter_mut().zip(g("self_attn.k_proj.bias")) {
                    *a += b;
                }
                for (a, b) in v.iter_mut().zip(g("self_attn.v_proj.bias")) {
                    *a += b;
                }
            }
            for hh in 0..nh {
                rope(&mut q[hh * hd..(hh + 1) * hd], pos, theta);
            }
            for hh in 0..nkv {
                rope(&mut k[hh * hd..(hh + 1) * hd], pos, theta);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for i in 0..n {
            let mut att = vec![0.0; nh * hd];
            for hh in 0..nh {
                let kvh = hh / (nh / nkv);
                let q = &qs[i][hh * hd..(hh + 1) * hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        q.iter().zip(&ks[j][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, w) in e.iter().enumerate() {
                    for d in 0..hd {
                        att[hh * hd + d] += w / z * vs[j][kvh * hd + d];
                    }
                }
            }
            let o = matvec(&wo, &att, h);
            for (a, b) in xs[i].iter_mut().zip(o) {
                *a += b;
            }
            let hn = rmsnorm(&xs[i], &g("post_attention_layernorm.weight"), eps);
            let gate = matvec(&g("mlp.gate_proj.weight"), &hn, spec.ff);
            let up = matvec(&g("mlp.up_proj.weight"), &hn, spec.ff);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(a, b)| a / (1.0 + (-a).exp()) * b).collect();
            let down = matvec(&g("mlp.down_proj.weight"), &act, h);
            for (a, b) in xs[i].iter_mut().zip(down) {
                *a += b;
            }
        }
    }
    let head = if spec.tie { emb } else { stored(t, "lm_head.weight") };
    let norm = stored(t, "model.norm.weight");
    xs.iter().map(|x| matvec(&head, &rmsnorm(x, &norm, eps), spec.vocab)).collect()
}

/// Files left in `dir` other than `keep` (catches leaked temp or partial outputs).
pub fn stray_files(dir: &Path, keep: &[&Path]) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !keep.iter().any(|k| k == p))
        .collect()
}

pub fn opts(hf: &Path, out: &Path, outtype: OutType) -> ModelOptions {
    ModelOptions {
        hf_dir: hf.to_path_buf(),
        out: out.to_path_buf(),
        outtype,
        lora: None,
        name: None,
        verify: true,
        threads: 2,
    }
}

/// Writes `spec` into `root/name` and converts it to `root/out/name.gguf`.
pub fn convert_tiny(root: &Path, name: &str, spec: &TinySpec, outtype: OutType) -> PathBuf {
    let hf = root.join(name);
    spec.write(&hf);
    let out_dir = root.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{name}.gguf"));
    convert_model(&opts(&hf, &out, outtype)).unwrap();
    out
}
