//! What a ranking call computes, replicated from the pack (the engine keeps its plan private): the
//! prompt prefix rows, the candidate groups and their prefix-trie nodes. Used to feed the same rows
//! to the baselines (raw prefill, PyTorch), to count the work for the compute floor, and to check
//! our count of decoded rows against the engine's `RankStats`.

use std::collections::BTreeMap;
use std::path::Path;

use delrec_runtime::gguf::GgufFile;
use delrec_runtime::pack::Part;
use delrec_runtime::Pack;
use serde::{Deserialize, Serialize};

/// One input row of the prompt prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    Tok(i32),
    Soft { prompt: usize, row: usize },
}

/// The rows of one trie node batch: token, position below the prefix, whether its logits are read.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub token: i32,
    pub depth: usize,
    pub has_children: bool,
}

/// Everything one shared-prefix ranking decodes.
#[derive(Clone, Debug)]
pub struct Plan {
    pub prefix: Vec<Row>,
    /// Candidate token sequences (title + terminator), in request order.
    pub seqs: Vec<Vec<i32>>,
    /// Trie nodes of each group, in the order they are decoded.
    pub groups: Vec<Vec<Node>>,
}

impl Plan {
    pub fn build(pack: &Pack, history: &[u32], cands: &[u32], n_ctx: usize, max_sequences: usize) -> Plan {
        let t = &pack.template;
        let mut prefix: Vec<Row> = t.bos.map(Row::Tok).into_iter().collect();
        for part in &t.parts {
            match part {
                Part::Text(toks) => prefix.extend(toks.iter().map(|&x| Row::Tok(x))),
                Part::Soft(idx) => {
                    prefix.extend((0..pack.soft_prompts[*idx].n_virtual).map(|row| Row::Soft { prompt: *idx, row }))
                }
                Part::History => {
                    for (i, &h) in history.iter().enumerate() {
                        if i > 0 {
                            prefix.extend(t.separator_tokens.iter().map(|&x| Row::Tok(x)));
                        }
                        prefix.extend(pack.item_tokens(h).into_iter().map(Row::Tok));
                    }
                }
                Part::Candidate => break,
            }
        }
        let term = t.terminator();
        let seqs: Vec<Vec<i32>> = cands
            .iter()
            .map(|&c| {
                let mut s = pack.item_tokens(c);
                s.extend_from_slice(&term);
                s
            })
            .collect();
        let mut sorted: Vec<&[i32]> = seqs.iter().map(|s| s.as_slice()).collect();
        sorted.sort();
        let budget = n_ctx.saturating_sub(prefix.len());
        let groups = group(&sorted, max_sequences.saturating_sub(1).max(1), budget)
            .into_iter()
            .map(|g| trie_nodes(&sorted[g]))
            .collect();
        Plan { prefix, seqs, groups }
    }

    /// Trie nodes with children: decoded, and their logits read. Leaves (the last terminator token
    /// of each candidate) are not decoded: nothing is predicted from them.
    pub fn trie_rows(&self) -> usize {
        self.groups.iter().flatten().filter(|n| n.has_children).count()
    }

    /// Rows the engine decodes: the prefix and every trie node with children.
    pub fn decoded_rows(&self) -> usize {
        self.prefix.len() + self.trie_rows()
    }

    /// Rows whose logits are read: the prefix's last row and every decoded trie node.
    pub fn output_rows(&self) -> usize {
        1 + self.trie_rows()
    }

    /// Trie leaves (not decoded).
    pub fn leaf_rows(&self) -> usize {
        self.groups.iter().flatten().filter(|n| !n.has_children).count()
    }

    /// Rows a one-prompt-per-candidate plan decodes.
    pub fn naive_rows(&self) -> usize {
        self.seqs.iter().map(|s| self.prefix.len() + s.len()).sum()
    }
}

/// Same grouping rule as the engine: sorted sequences, at most `max_seqs` per group and at most
/// `max_nodes` trie nodes.
fn group(seqs: &[&[i32]], max_seqs: usize, max_nodes: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut nodes) = (0, 0usize);
    for i in 0..seqs.len() {
        let shared = if i > start { common_prefix(seqs[i - 1], seqs[i]) } else { 0 };
        let add = seqs[i].len() - shared;
        if i > start && (i - start >= max_seqs || nodes + add > max_nodes) {
            groups.push(start..i);
            start = i;
            nodes = seqs[i].len();
        } else {
            nodes += add;
        }
    }
    if start < seqs.len() {
        groups.push(start..seqs.len());
    }
    groups
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Trie nodes of sorted, distinct sequences in depth-first order: sequence `i` adds the nodes
/// below its common prefix with sequence `i - 1`.
fn trie_nodes(seqs: &[&[i32]]) -> Vec<Node> {
    let mut out = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        let from = if i > 0 { common_prefix(seqs[i - 1], s) } else { 0 };
        // Identical sequences share their nodes (and leaf); look at the next different one.
        let next_shared = seqs[i + 1..].iter().find(|n| *n != s).map_or(0, |n| common_prefix(s, n));
        for (d, &token) in s.iter().enumerate().skip(from) {
            let has_children = d + 1 < s.len() || next_shared > d;
            out.push(Node { token, depth: d, has_children });
        }
    }
    out
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
    pub fn plan_flops(&self, plan: &Plan) -> f64 {
        let needed_rows = plan.decoded_rows() as f64;
        let attn_per_pos = 4.0 * (self.n_layer * self.n_head * self.head_dim()) as f64;
        let p = plan.prefix.len();
        let mut attended = 0.0;
        for a in 1..=p {
            attended += a as f64;
        }
        for n in plan.groups.iter().flatten().filter(|n| n.has_children) {
            attended += (p + n.depth + 1) as f64;
        }
        2.0 * self.block_params() as f64 * needed_rows
            + attn_per_pos * attended
            + 2.0 * (self.n_vocab * self.n_embd) as f64 * plan.output_rows() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_counts() {
        let a = vec![1, 2, 3, 9];
        let b = vec![1, 2, 4, 9];
        let c = vec![5, 9];
        let d = vec![1, 2, 9];
        let mut s: Vec<&[i32]> = vec![&a, &b, &c, &d];
        s.sort();
        let nodes = trie_nodes(&s);
        // 1,2,3,9 | 4,9 | 9 | 5,9  -> 1 2 3 9 4 9 9 5 9
        assert_eq!(nodes.len(), 9);
        let leaves = nodes.iter().filter(|n| !n.has_children).count();
        assert_eq!(leaves, 4);
        assert_eq!(group(&s, 2, 100), vec![0..2, 2..4]);
    }

    #[test]
    fn prefix_sequence_keeps_children() {
        let a = vec![1, 2];
        let b = vec![1, 2, 3];
        let s: Vec<&[i32]> = vec![&a, &b];
        let nodes = trie_nodes(&s);
        assert_eq!(nodes.len(), 3);
        assert!(nodes[1].has_children, "the end of a sequence that another extends has children");
        assert!(!nodes[2].has_children);
    }
}
