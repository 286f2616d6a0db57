//! `config.json` of a Hugging Face causal LM, reduced to what the GGUF needs.

use std::path::{Path, PathBuf};

use serde_json::Value as J;

use crate::error::{read_json, ConvertError, Result};

/// The architectures the converter maps to llama.cpp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    /// llama.cpp's architecture name (`general.architecture`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Rope scaling the converter can express in GGUF.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    /// Llama 3.1 frequency smoothing, written as a `rope_freqs` tensor.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: f64,
    },
}

#[derive(Clone, Debug)]
pub struct HfConfig {
    pub path: PathBuf,
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// q/k/v (and, for llama, o) projections carry biases.
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// The whole JSON, for special token ids.
    pub json: J,
}

impl HfConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(ConvertError::json(&path, "config.json not found: is this a Hugging Face model directory?"));
        }
        let json = read_json(&path)?;
        Self::from_json(&path, json)
    }

    pub fn from_json(path: &Path, json: J) -> Result<Self> {
        let bad = |reason: String| ConvertError::UnsupportedConfig { path: path.to_path_buf(), reason };
        let arch_name =
            json.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()).and_then(|a| a.as_str());
        let model_type = json.get("model_type").and_then(|a| a.as_str());
        let arch = match (arch_name, model_type) {
            (Some("LlamaForCausalLM"), None | Some("llama")) | (None, Some("llama")) => Arch::Llama,
            (Some("Qwen2ForCausalLM"), None | Some("qwen2")) | (None, Some("qwen2")) => Arch::Qwen2,
            (a, m) => {
                let found = match (a, m) {
                    (Some(a), Some(m)) => format!("{a} (model_type {m})"),
                    (Some(a), None) => a.to_string(),
                    (None, Some(m)) => format!("model_type {m}"),
                    (None, None) => "nothing (config.json has neither architectures nor model_type)".into(),
                };
                return Err(ConvertError::UnknownArchitecture { found });
            }
        };
        let req = |k: &str| -> Result<usize> {
            let v = json.get(k).ok_or_else(|| ConvertError::json(path, format!("missing {k:?}")))?;
            v.as_u64()
                .filter(|&v| v > 0)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| ConvertError::json(path, format!("{k:?} is not a positive integer")))
        };
        let opt_f = |k: &str, default: f64| -> Result<f64> {
            match json.get(k) {
                None | Some(J::Null) => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| ConvertError::json(path, format!("{k:?} is not a number"))),
            }
        };
        let opt_b = |k: &str| -> Result<Option<bool>> {
            match json.get(k) {
                None | Some(J::Null) => Ok(None),
                Some(v) => {
                    v.as_bool().map(Some).ok_or_else(|| ConvertError::json(path, format!("{k:?} is not a boolean")))
                }
            }
        };
        let hidden_size = req("hidden_size")?;
        let n_head = req("num_attention_heads")?;
        let n_head_kv = if json.get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
            req("num_key_value_heads")?
        } else {
            n_head
        };
        let head_dim =
            if json.get("head_dim").is_some_and(|v| !v.is_null()) { req("head_dim")? } else { hidden_size / n_head };
        if json.get("head_dim").is_none_or(|v| v.is_null()) && hidden_size % n_head != 0 {
            return Err(bad(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {n_head} and head_dim is not given"
            )));
        }
        if n_head % n_head_kv != 0 {
            return Err(bad(format!(
                "num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}"
            )));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad(format!("head dimension {head_dim} must be even and non-zero (rope rotates pairs)")));
        }
        if arch == Arch::Qwen2 && head_dim * n_head != hidden_size {
            return Err(bad("qwen2 in llama.cpp needs head_dim * num_attention_heads == hidden_size".into()));
        }
        if json.get("hidden_act").and_then(|v| v.as_str()).is_some_and(|a| a != "silu") {
            return Err(bad(format!(
                "hidden_act {:?}: llama.cpp's {} graph uses silu",
                json["hidden_act"],
                arch.gguf_name()
            )));
        }
        if arch == Arch::Qwen2 && opt_b("use_sliding_window")? == Some(true) {
            return Err(bad(
                "use_sliding_window = true is not supported (llama.cpp's qwen2 attends to the full context)".into(),
            ));
        }
        let rope_theta = opt_f("rope_theta", 10000.0)?;
        let rope_scaling = match json.get("rope_scaling") {
            None | Some(J::Null) => RopeScaling::None,
            Some(r) => {
                let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(|v| v.as_str()).unwrap_or("");
                let f = |k: &str, d: f64| r.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
                match (arch, kind) {
                    (_, "default") => RopeScaling::None,
                    (Arch::Llama, "linear") => RopeScaling::Linear { factor: f("factor", 1.0) },
                    (Arch::Llama, "llama3") => RopeScaling::Llama3 {
                        factor: f("factor", 8.0),
                        low_freq_factor: f("low_freq_factor", 1.0),
                        high_freq_factor: f("high_freq_factor", 4.0),
                        original_context: f("original_max_position_embeddings", 8192.0),
                    },
                    (_, other) => {
                        return Err(bad(format!(
                            "rope_scaling type {other:?} is not supported for {}",
                            arch.gguf_name()
                        )))
                    }
                }
            }
        };
        let (attention_bias, mlp_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama => (opt_b("attention_bias")?.unwrap_or(false), opt_b("mlp_bias")?.unwrap_or(false)),
        };
        Ok(HfConfig {
            path: path.to_path_buf(),
            arch,
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            n_layer: req("num_hidden_layers")?,
            n_head,
            n_head_kv,
            head_dim,
            vocab_size: req("vocab_size")?,
            context_length: if json.get("max_position_embeddings").is_some() {
                req("max_position_embeddings")?
            } else {
                2048
            },
            rms_norm_eps: opt_f("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: opt_b("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            mlp_bias,
            json,
        })
    }

    /// A special-token id from config.json (`bos_token_id`, ...), when it is a single integer.
    pub fn token_id(&self, key: &str) -> Option<u32> {
        self.json.get(key).and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: J) -> J {
        let mut base = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 512
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    #[test]
    fn reads_llama_and_rejects_others() {
        let p = Path::new("config.json");
        let c = HfConfig::from_json(p, cfg(serde_json::json!({}))).unwrap();
        assert_eq!((c.arch, c.head_dim, c.n_head_kv, c.rope_theta), (Arch::Llama, 16, 2, 10000.0));
        let e = HfConfig::from_json(
            p,
            cfg(serde_json::json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral"})),
        );
        assert!(matches!(e, Err(ConvertError::UnknownArchitecture { found }) if found.contains("Mistral")));
        let e = HfConfig::from_json(p, cfg(serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})));
        assert!(matches!(e, Err(ConvertError::UnsupportedConfig { .. })));
        let e = HfConfig::from_json(p, cfg(serde_json::json!({"hidden_size": "x"})));
        assert!(matches!(e, Err(ConvertError::BadJson { .. })));
    }
}
