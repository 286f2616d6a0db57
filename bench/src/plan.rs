//! Counts over the engine's own plan of a request (`Engine::plan`: the prefix rows, candidate
//! sequences and trie groups it decodes), and the model shape for the compute floor.

use std::collections::BTreeMap;
use std::path::Path;

use delrec_format::gguf::GgufFile;
use delrec_runtime::RankPlan;
use serde::{Deserialize, Serialize};

/// Trie rows decoded (and their logits read): nodes with children. Leaves (the last terminator
/// token of each candidate) are not decoded: nothing is predicted from them.
pub fn trie_rows(plan: &RankPlan) -> usize {
    plan.groups.iter().flatten().filter(|n| n.decoded).count()
}

/// Rows the engine decodes: the prefix and every trie node with children.
pub fn decoded_rows(plan: &RankPlan) -> usize {
    plan.prefix.len() + trie_rows(plan)
}

/// Rows whose logits are read: the prefix's last row and every decoded trie node.
pub fn output_rows(plan: &RankPlan) -> usize {
    1 + trie_rows(plan)
}

/// Trie leaves (not decoded).
pub fn leaf_rows(plan: &RankPlan) -> usize {
    plan.groups.iter().flatten().filter(|n| !n.decoded).count()
}

/// Rows a one-prompt-per-candidate plan decodes.
pub fn naive_rows(plan: &RankPlan) -> usize {
    plan.sequences.iter().map(|s| plan.prefix.len() + s.len()).sum()
}

/// Shape of a decoder-only model, read from its GGUF.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Shape {
    pub arch: String,
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    pub tied_output: bool,
    pub file_bytes: u64,
    /// Tensor count by ggml type, as stored.
    pub tensor_types: BTreeMap<String, usize>,
    /// Bytes of tensor data by ggml type.
    pub tensor_bytes: BTreeMap<String, u64>,
}

impl Shape {
    pub fn read(path: &Path) -> Result<Shape, String> {
        let g = GgufFile::open(path).map_err(|e| e.to_string())?;
        let arch = g.req_str("general.architecture").map_err(|e| e.to_string())?.to_string();
        let u = |k: &str| g.req_u64(&format!("{arch}.{k}")).map_err(|e| e.to_string());
        let n_vocab = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_str_array()).map_or(0, |t| t.len() as u64);
        let mut tensor_types = BTreeMap::new();
        let mut tensor_bytes = BTreeMap::new();
        for t in g.tensors() {
            *tensor_types.entry(t.ty.name()).or_insert(0) += 1;
            *tensor_bytes.entry(t.ty.name()).or_insert(0) += t.size.unwrap_or(0);
        }
        Ok(Shape {
            n_embd: u("embedding_length")?,
            n_layer: u("block_count")?,
            n_head: u("attention.head_count")?,
            n_head_kv: u("attention.head_count_kv").or_else(|_| u("attention.head_count"))?,
            n_ff: u("feed_forward_length")?,
            n_vocab,
            tied_output: g.tensor("output.weight").is_none(),
            file_bytes: std::fs::metadata(path).map_err(|e| e.to_string())?.len(),
            tensor_types,
            tensor_bytes,
            arch,
        })
    }

    pub fn head_dim(&self) -> u64 {
        self.n_embd / self.n_head.max(1)
    }

    /// Weights multiplied per row in the transformer blocks (norms and biases left out).
    pub fn block_params(&self) -> u64 {
        let (e, hd) = (self.n_embd, self.head_dim());
        let attn = e * self.n_head * hd * 2 + e * self.n_head_kv * hd * 2;
        self.n_layer * (attn + 3 * e * self.n_ff)
    }

    /// Bytes of a KV cache of `n_ctx` cells with `elem` bytes per element (K and V).
    pub fn kv_bytes(&self, n_ctx: u64, elem: u64) -> u64 {
        2 * self.n_layer * self.n_head_kv * self.head_dim() * n_ctx * elem
    }

    /// FLOPs of a plan's necessary work: 2 × block params per decoded row (the prefix and the trie
    /// nodes something is predicted from), attention (QKᵀ and AV) over the positions each row
    /// attends to, and the output projection for the rows whose distribution is read.
    pub fn plan_flops(&self, plan: &RankPlan) -> f64 {
        let needed_rows = decoded_rows(plan) as f64;
        let attn_per_pos = 4.0 * (self.n_layer * self.n_head * self.head_dim()) as f64;
        let p = plan.prefix.len();
        let mut attended = 0.0;
        for a in 1..=p {
            attended += a as f64;
        }
        for n in plan.groups.iter().flatten().filter(|n| n.decoded) {
            attended += (p + n.depth as usize + 1) as f64;
        }
        2.0 * self.block_params() as f64 * needed_rows
            + attn_per_pos * attended
            + 2.0 * (self.n_vocab * self.n_embd) as f64 * output_rows(plan) as f64
    }
}
