//! Soft prompts from every format users train them in, for `pack --soft NAME=SOURCE[@A..B]`:
//!
//! - a PEFT prompt-tuning directory (`adapter_config.json` + `adapter_model.safetensors`);
//! - an OpenPrompt checkpoint (`torch.save(prompt_model.state_dict())`, read by the restricted
//!   reader in [`crate::torch_ckpt`], nothing executed): `MixedTemplate`'s
//!   `template.soft_embedding.weight` is `(1 + n_soft) × d` and soft token ids start at 1, so
//!   row 0 (never looked up: id 0 marks a non-soft position) is dropped and rows 1.. are the soft
//!   tokens in template order; `SoftTemplate`'s `template.soft_embeds` is `n × d`, all used;
//! - a plain tensor file: safetensors or torch.save holding one 2-D float tensor (a bare tensor
//!   or a one-entry state dict).
//!
//! `@A..B` keeps soft rows `A..B` (half-open, counted after row 0 is dropped): OpenPrompt numbers
//! the soft tokens of all of a template's soft segments in one sequence, so a template with two
//! segments takes `@0..50` and `@50..100` of the same checkpoint.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{ConvertError, Result};
use crate::pack::load_soft_prompt;
use crate::st::StSet;
use crate::torch_ckpt::{self, Tensor};

/// OpenPrompt `MixedTemplate`'s table (row 0 unused).
pub const OPENPROMPT_MIXED: &str = "template.soft_embedding.weight";
/// OpenPrompt `SoftTemplate`'s soft rows.
pub const OPENPROMPT_SOFT: &str = "template.soft_embeds";

/// Where one soft prompt comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftSource {
    pub path: PathBuf,
    /// Rows to keep, when not all.
    pub rows: Option<Range<usize>>,
}

impl SoftSource {
    /// Parses `PATH` or `PATH@A..B`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.rsplit_once('@') {
            Some((p, r)) if r.contains("..") && !p.is_empty() => {
                let (a, b) = r.split_once("..").unwrap_or(("", ""));
                let (a, b) = a
                    .parse::<usize>()
                    .ok()
                    .zip(b.parse::<usize>().ok())
                    .filter(|(a, b)| a < b)
                    .ok_or_else(|| format!("{s:?}: rows must be A..B with A < B"))?;
                Ok(SoftSource { path: PathBuf::from(p), rows: Some(a..b) })
            }
            Some(("", r)) if r.contains("..") => Err(format!("{s:?}: no path before @")),
            _ if s.is_empty() => Err("an empty soft prompt source".into()),
            _ => Ok(SoftSource { path: PathBuf::from(s), rows: None }),
        }
    }
}

/// What a source held: rows (`n × n_embd`, row-major) and in words, which format it was.
#[derive(Debug)]
pub struct SoftRows {
    pub n_virtual: usize,
    pub values: Vec<f32>,
    pub format: &'static str,
}

/// Loads a soft prompt of width `n_embd` from any supported source.
pub fn load(name: &str, src: &SoftSource, n_embd: usize) -> Result<SoftRows> {
    let bad = |reason: String| ConvertError::SoftPrompt { path: src.path.clone(), reason };
    let (n, values, format) = if src.path.is_dir() {
        let (n, v) = load_soft_prompt(name, &src.path, n_embd)?;
        (n, v, "PEFT prompt tuning")
    } else {
        let (rows, width, values, format) = load_file(&src.path)?;
        if width != n_embd {
            return Err(ConvertError::SoftPromptWidth { name: name.into(), width, n_embd });
        }
        (rows, values, format)
    };
    let (n, values) = match &src.rows {
        None => (n, values),
        Some(r) if r.end <= n => (r.len(), values[r.start * n_embd..r.end * n_embd].to_vec()),
        Some(r) => return Err(bad(format!("rows {}..{} asked, the source has {n} soft rows", r.start, r.end))),
    };
    if n == 0 {
        return Err(bad("no soft rows".into()));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("soft row {} holds {}", i / n_embd, values[i])));
    }
    Ok(SoftRows { n_virtual: n, values, format })
}

/// A file source: `(rows, width, values, format)`.
fn load_file(path: &Path) -> Result<(usize, usize, Vec<f32>, &'static str)> {
    let bad = |reason: String| ConvertError::SoftPrompt { path: path.to_path_buf(), reason };
    let head = {
        use std::io::Read;
        let mut b = [0u8; 2];
        std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut b)).map_err(|e| ConvertError::io(path, e))?;
        b
    };
    // torch.save's zip format starts with a local file header.
    if head == *b"PK" {
        let root = torch_ckpt::load(path)?;
        if let Some(t) = root.as_tensor() {
            let (r, w, v) = rows_of(t).map_err(bad)?;
            return Ok((r, w, v, "a torch.save tensor"));
        }
        let sd = torch_ckpt::state_dict(&root)
            .ok_or_else(|| bad(format!("a torch.save file holding a {}, not a tensor or a state dict", root.kind())))?;
        let find = |k: &str| sd.iter().find(|(n, _)| n == k).map(|(_, t)| *t);
        if let Some(t) = find(OPENPROMPT_MIXED) {
            let (r, w, v) = rows_of(t).map_err(bad)?;
            if r < 2 {
                return Err(bad(format!("{OPENPROMPT_MIXED} has {r} rows: row 0 is unused, so no soft token")));
            }
            return Ok((r - 1, w, v[w..].to_vec(), "OpenPrompt MixedTemplate"));
        }
        if let Some(t) = find(OPENPROMPT_SOFT) {
            let (r, w, v) = rows_of(t).map_err(bad)?;
            return Ok((r, w, v, "OpenPrompt SoftTemplate"));
        }
        return match sd.as_slice() {
            [(_, t)] => {
                let (r, w, v) = rows_of(t).map_err(bad)?;
                Ok((r, w, v, "a one-tensor state dict"))
            }
            _ => Err(bad(format!(
                "{} tensors and neither {OPENPROMPT_MIXED} (OpenPrompt MixedTemplate) nor {OPENPROMPT_SOFT} (SoftTemplate)",
                sd.len()
            ))),
        };
    }
    let set = StSet::open_file(path)?;
    match set.tensors.iter().collect::<Vec<_>>().as_slice() {
        [(_, t)] => {
            t.float_dtype()?;
            if t.shape.len() != 2 {
                return Err(bad(format!("the tensor is {:?}, not rows × width", t.shape)));
            }
            Ok((t.shape[0], t.shape[1], t.to_f32()?, "a safetensors tensor"))
        }
        ts => Err(bad(format!("a safetensors file with {} tensors: give one 2-D tensor", ts.len()))),
    }
}

fn rows_of(t: &Tensor) -> std::result::Result<(usize, usize, Vec<f32>), String> {
    if !t.dtype.is_float() {
        return Err(format!("the soft rows are {}, not floating point", t.dtype.name()));
    }
    match t.shape.as_slice() {
        &[r, w] if r > 0 && w > 0 => Ok((r, w, t.to_f32())),
        s => Err(format!("the soft rows are shaped {s:?}, not rows × width")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(SoftSource::parse("a/b.pt").unwrap(), SoftSource { path: "a/b.pt".into(), rows: None });
        assert_eq!(SoftSource::parse("a@b.pt@2..5").unwrap(), SoftSource { path: "a@b.pt".into(), rows: Some(2..5) });
        assert_eq!(SoftSource::parse("x@y").unwrap().path, PathBuf::from("x@y"));
        for bad in ["", "a.pt@5..2", "a.pt@3..3", "a.pt@x..2", "@1..2"] {
            assert!(SoftSource::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// PEFT's SEQ_2_SEQ_LM prompt tuning: 2 × n rows saved, the first n are the encoder's prompt.
    #[test]
    fn seq2seq_prompt_tuning_takes_the_encoder_rows() {
        let dir = tempfile::tempdir().unwrap();
        let v = crate::testing::write_prompt_adapter(dir.path(), 6, 8, 3); // 6 rows = 2 × 3
        let cfg_path = dir.path().join("adapter_config.json");
        let write_cfg = |task: &str, sub: u64, n: u64| {
            let c = serde_json::json!({"peft_type": "PROMPT_TUNING", "task_type": task, "num_virtual_tokens": n,
                                       "token_dim": 8, "num_transformer_submodules": sub});
            std::fs::write(&cfg_path, c.to_string()).unwrap();
        };
        write_cfg("SEQ_2_SEQ_LM", 2, 3);
        let (n, got) = load_soft_prompt("p", dir.path(), 8).unwrap();
        assert_eq!((n, got.as_slice()), (3, &v[..24]));
        // Two submodules on a causal LM, or a row count that does not match, are refused.
        write_cfg("CAUSAL_LM", 2, 3);
        assert!(matches!(load_soft_prompt("p", dir.path(), 8), Err(ConvertError::SoftPrompt { .. })));
        write_cfg("SEQ_2_SEQ_LM", 2, 6);
        assert!(matches!(load_soft_prompt("p", dir.path(), 8), Err(ConvertError::ShapeMismatch { .. })));
        write_cfg("SEQ_2_SEQ_LM", 3, 2);
        assert!(matches!(load_soft_prompt("p", dir.path(), 8), Err(ConvertError::SoftPrompt { .. })));
    }
}
