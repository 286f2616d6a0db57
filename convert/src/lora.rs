//! PEFT LoRA adapters, merged into the base weights at conversion time.
//!
//! Merging (W += scale · B·A) costs nothing at run time, needs no adapter support on the device,
//! and lets the quantizer see the final weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as J;

use crate::error::{read_json, ConvertError, Result};
use crate::st::{StSet, StTensor};

/// Modules a LoRA may target (the linear layers of a llama/qwen2 block), with llama.cpp's name
/// of the weight (`blk.N.<stem>.weight`).
const MODULES: [(&str, &str, &str); 7] = [
    ("self_attn", "q_proj", "attn_q"),
    ("self_attn", "k_proj", "attn_k"),
    ("self_attn", "v_proj", "attn_v"),
    ("self_attn", "o_proj", "attn_output"),
    ("mlp", "gate_proj", "ffn_gate"),
    ("mlp", "up_proj", "ffn_up"),
    ("mlp", "down_proj", "ffn_down"),
];

/// Splits an HF block weight name `model.layers.N.GROUP.MODULE.weight` into (N, GROUP, MODULE)
/// when MODULE is one a LoRA may target.
fn split_hf(name: &str) -> Option<(usize, &'static str, &'static str, &'static str)> {
    let tail = name.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
    let (layer, module_path) = tail.split_once('.')?;
    let layer = layer.parse::<usize>().ok()?;
    let (group, module) = module_path.split_once('.')?;
    let &(g, m, stem) = MODULES.iter().find(|(g, m, _)| *g == group && *m == module)?;
    Some((layer, g, m, stem))
}

/// The llama.cpp GGUF name of an adaptable HF weight:
/// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight`.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    split_hf(hf).map(|(layer, _, _, stem)| format!("blk.{layer}.{stem}.weight"))
}

/// The module of an adaptable HF weight (`q_proj`, `down_proj`, ...).
pub fn module_name(hf: &str) -> Option<&'static str> {
    split_hf(hf).map(|(_, _, m, _)| m)
}

pub struct LoraPair {
    /// `[r, in]`
    pub a: StTensor,
    /// `[out, r]`
    pub b: StTensor,
}

pub struct Lora {
    pub path: PathBuf,
    pub r: usize,
    pub scale: f32,
    /// Keyed by the base weight's HF name (`model.layers.0.self_attn.q_proj.weight`).
    pub pairs: BTreeMap<String, LoraPair>,
}

impl LoraPair {
    /// (A `[r, in]`, B `[out, r]`) as f32.
    pub fn factors(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.a.to_f32()?, self.b.to_f32()?))
    }
}

/// `w += scale · B·A` on rows of a row-major weight: `w` is `[rows, inp]`, `b` the matching
/// `[rows, r]` rows of B, `a` is `[r, inp]`. Callers check the lengths; a mismatch adds nothing
/// past the shortest input (no panic).
pub fn add_low_rank(w: &mut [f32], inp: usize, a: &[f32], b: &[f32], r: usize, scale: f32) {
    if inp == 0 || r == 0 {
        return;
    }
    for (row, brow) in w.chunks_exact_mut(inp).zip(b.chunks_exact(r)) {
        for (&bk, ak) in brow.iter().zip(a.chunks_exact(inp)) {
            let coef = scale * bk;
            if coef == 0.0 {
                continue;
            }
            for (x, a) in row.iter_mut().zip(ak) {
                *x += coef * a;
            }
        }
    }
}

impl Lora {
    pub fn load(dir: &Path) -> Result<Self> {
        let bad = |reason: String| ConvertError::Lora { path: dir.to_path_buf(), reason };
        let cfg_path = dir.join("adapter_config.json");
        if !cfg_path.is_file() {
            return Err(bad("no adapter_config.json (is this a PEFT adapter directory?)".into()));
        }
        let cfg = read_json(&cfg_path)?;
        let peft_type = cfg.get("peft_type").and_then(|v| v.as_str()).unwrap_or("");
        if peft_type != "LORA" {
            return Err(bad(format!("peft_type is {peft_type:?}; --lora takes a LORA adapter")));
        }
        let r = cfg
            .get("r")
            .and_then(|v| v.as_u64())
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r is missing or not a positive integer".into()))? as usize;
        let alpha =
            cfg.get("lora_alpha").and_then(|v| v.as_f64()).ok_or_else(|| bad("lora_alpha is missing".into()))?;
        let flag = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        if flag("fan_in_fan_out") {
            return Err(
                bad("fan_in_fan_out = true (Conv1D layers) does not apply to llama/qwen2 linear layers".into()),
            );
        }
        if flag("use_dora") {
            return Err(bad("DoRA adapters (use_dora = true) are not supported".into()));
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if cfg.get(k).and_then(|v| v.as_object()).is_some_and(|o| !o.is_empty()) {
                return Err(bad(format!("{k} (per-module ranks or alphas) is not supported")));
            }
        }
        if cfg.get("bias").and_then(|v| v.as_str()).is_some_and(|b| b != "none") {
            return Err(bad("trained biases (bias != \"none\") are not supported".into()));
        }
        if cfg.get("modules_to_save").is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(bad("modules_to_save (fully trained extra modules) is not supported".into()));
        }
        let targets: Option<Vec<String>> = match cfg.get("target_modules") {
            Some(J::Array(a)) => Some(a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
            Some(J::String(_)) | None | Some(J::Null) => None,
            Some(other) => return Err(bad(format!("target_modules {other} is neither a list nor a regex"))),
        };
        let scale = if flag("use_rslora") { alpha / (r as f64).sqrt() } else { alpha / r as f64 } as f32;

        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            let reason = if dir.join("adapter_model.bin").is_file() {
                "only adapter_model.bin (pickle) is there; save the adapter with safe_serialization=True"
            } else {
                "no adapter_model.safetensors"
            };
            return Err(bad(reason.into()));
        }
        let set = StSet::open_file(&weights)?;
        let mut halves: BTreeMap<String, (Option<StTensor>, Option<StTensor>)> = BTreeMap::new();
        for (name, t) in &set.tensors {
            let (base, which) = parse_name(name).ok_or_else(|| ConvertError::UnexpectedTensor {
                name: name.clone(),
                source_desc: weights.display().to_string(),
                arch: "LoRA (base_model.model.model.layers.N.{self_attn,mlp}.MODULE.lora_{A,B}.weight)".into(),
            })?;
            if let Some(targets) = &targets {
                let module = base.rsplit('.').nth(1).unwrap_or("");
                if !targets.iter().any(|t| t == module) {
                    return Err(bad(format!("{name} targets {module}, which is not in target_modules {targets:?}")));
                }
            }
            t.float_dtype()?;
            let slot = halves.entry(base).or_default();
            if which == 'A' {
                slot.0 = Some(t.clone());
            } else {
                slot.1 = Some(t.clone());
            }
        }
        let mut pairs = BTreeMap::new();
        for (base, (a, b)) in halves {
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (a, _) => {
                    let missing = if a.is_none() { "lora_A" } else { "lora_B" };
                    return Err(ConvertError::MissingTensor {
                        name: format!("{missing} for {base}"),
                        source_desc: weights.display().to_string(),
                    });
                }
            };
            if a.shape.len() != 2 || b.shape.len() != 2 {
                return Err(ConvertError::ShapeMismatch {
                    name: format!("{base} lora_A/lora_B (2-D each)"),
                    expected: vec![r],
                    found: [a.shape.clone(), b.shape.clone()].concat(),
                });
            }
            for (half, found) in [("lora_A", a.shape[0]), ("lora_B", b.shape[1])] {
                if found != r {
                    return Err(ConvertError::LoraRank {
                        path: dir.to_path_buf(),
                        name: format!("{half} of {base}"),
                        r,
                        found,
                    });
                }
            }
            for t in [&a, &b] {
                let count = t.to_f32()?.iter().filter(|v| !v.is_finite()).count();
                if count > 0 {
                    return Err(ConvertError::NonFinite {
                        name: t.name.clone(),
                        source_desc: weights.display().to_string(),
                        count,
                    });
                }
            }
            pairs.insert(base, LoraPair { a, b });
        }
        if pairs.is_empty() {
            return Err(bad("the adapter holds no LoRA tensors".into()));
        }
        Ok(Lora { path: dir.to_path_buf(), r, scale, pairs })
    }

    /// Adds scale · B·A to `w` (`[out, in]`, row-major) after checking the shapes against it.
    pub fn merge_into(&self, base: &str, w: &mut [f32], out: usize, inp: usize) -> Result<()> {
        let Some(p) = self.pairs.get(base) else { return Ok(()) };
        if p.a.shape[1] != inp || p.b.shape[0] != out {
            return Err(ConvertError::ShapeMismatch {
                name: format!("LoRA for {base}"),
                expected: vec![out, self.r, inp],
                found: vec![p.b.shape[0], self.r, p.a.shape[1]],
            });
        }
        if w.len() != out * inp {
            return Err(ConvertError::ShapeMismatch {
                name: base.to_string(),
                expected: vec![out, inp],
                found: vec![w.len()],
            });
        }
        let (a, b) = p.factors()?;
        add_low_rank(w, inp, &a, &b, self.r, self.scale);
        Ok(())
    }
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` →
/// (`model.layers.3.self_attn.q_proj.weight`, 'A').
fn parse_name(name: &str) -> Option<(String, char)> {
    let rest = name.strip_prefix("base_model.model.")?;
    let (stem, which) = if let Some(s) = rest.strip_suffix(".lora_A.weight") {
        (s, 'A')
    } else if let Some(s) = rest.strip_suffix(".lora_B.weight") {
        (s, 'B')
    } else {
        return None;
    };
    let weight = format!("{stem}.weight");
    split_hf(&weight)?;
    Some((weight, which))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peft_names() {
        assert_eq!(
            parse_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.3.self_attn.q_proj.weight".into(), 'A'))
        );
        assert_eq!(parse_name("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight").map(|x| x.1), Some('B'));
        assert_eq!(parse_name("base_model.model.model.embed_tokens.lora_A.weight"), None);
        assert_eq!(parse_name("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight"), None);
        assert_eq!(parse_name("base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight"), None);
    }

    #[test]
    fn maps_hf_names_to_llama_cpp_names() {
        assert_eq!(gguf_tensor_name("model.layers.3.self_attn.q_proj.weight").as_deref(), Some("blk.3.attn_q.weight"));
        assert_eq!(
            gguf_tensor_name("model.layers.0.self_attn.o_proj.weight").as_deref(),
            Some("blk.0.attn_output.weight")
        );
        assert_eq!(gguf_tensor_name("model.layers.12.mlp.down_proj.weight").as_deref(), Some("blk.12.ffn_down.weight"));
        assert_eq!(gguf_tensor_name("model.layers.1.mlp.q_proj.weight"), None);
        assert_eq!(gguf_tensor_name("model.embed_tokens.weight"), None);
        assert_eq!(module_name("model.layers.1.self_attn.k_proj.weight"), Some("k_proj"));
    }

    #[test]
    fn low_rank_update_matches_the_definition() {
        // w [2, 3], r = 2
        let a = [1.0, 2.0, 3.0, -1.0, 0.5, 0.0];
        let b = [2.0, 1.0, 0.0, -4.0];
        let mut w = vec![0.0; 6];
        add_low_rank(&mut w, 3, &a, &b, 2, 0.5);
        // row 0: 0.5·(2·a0 + 1·a1) = [0.5, 2.25, 3]; row 1: 0.5·(-4·a1) = [2, -1, 0]
        assert_eq!(w, vec![0.5, 2.25, 3.0, 2.0, -1.0, 0.0]);
    }
}
