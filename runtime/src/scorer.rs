//! The candidate trie and the arithmetic of scoring over it (log-sum-exp, bounds, top k).
//!
//! Scores are exact log-likelihoods: score(c) = Σ ln p(t | prefix, earlier tokens of c) over the
//! candidate's title tokens followed by the template's terminator tokens.
//!
//! The shared plan puts the candidates of a group in a prefix trie: a title prefix common to several
//! candidates is one trie node, decoded once, whose KV cell belongs to every candidate sequence below
//! it (llama.cpp lets one token carry several sequence ids in a unified KV cache). A node attends to
//! the shared prompt prefix and its own ancestors only, which is exactly the one-prompt-per-candidate
//! computation. All nodes of a group go through llama.cpp in as few batches as `n_batch` allows.

use std::collections::HashMap;

/// Log-softmax helper over one logits row: ln p(token) = logit - lse.
///
/// Runs on the calling thread for every decoded trie row while llama.cpp's threads wait, over the
/// whole vocabulary: written so the compiler vectorizes it (lanes of 16, a polynomial `exp`);
/// its accuracy against the exact f64 sum is tested below.
pub(crate) fn log_sum_exp(row: &[f32]) -> f64 {
    const L: usize = 16;
    let mut mx = [f32::NEG_INFINITY; L];
    let chunks = row.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            mx[i] = mx[i].max(c[i]);
        }
    }
    let m = tail.iter().chain(mx.iter()).copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return m as f64;
    }
    let mut total = 0f64;
    // f32 lanes summed into f64 every block, so long rows lose no precision.
    for block in row.chunks(4096) {
        let mut acc = [0f32; L];
        let chunks = block.chunks_exact(L);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..L {
                acc[i] += exp_nonpositive(c[i] - m);
            }
        }
        total += tail.iter().map(|&x| exp_nonpositive(x - m) as f64).sum::<f64>();
        total += acc.iter().map(|&a| a as f64).sum::<f64>();
    }
    m as f64 + total.ln()
}

/// e^x for x ≤ 0 (e^x < 1.7e-38 below -87 is taken as e^-87: it cannot move a sum that holds
/// e^0 = 1). 2^n · 2^f with n = round(x / ln 2), |f| ≤ 1/2, and a degree-7 Taylor polynomial
/// (relative error < 2e-8 before rounding). Branch-free, so loops over it vectorize.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let t = x.max(-87.0) * std::f32::consts::LOG2_E;
    let r = t + MAGIC;
    let n = r.to_bits() as i32 - MAGIC.to_bits() as i32;
    let f = (t - (r - MAGIC)) * std::f32::consts::LN_2;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f * (1.0 / 5040.0)))))));
    f32::from_bits(((n + 127) << 23) as u32) * p
}

/// One node of a candidate trie: a token at a depth below the prompt prefix.
#[derive(Debug)]
pub(crate) struct Node {
    pub token: i32,
    pub depth: u32,
    pub parent: Option<u32>,
    pub children: Vec<u32>,
    /// Candidate slots (positions in the group) whose sequence passes through this node.
    pub cands: Vec<u32>,
    /// ln p(token | prefix, ancestors), filled in while decoding.
    pub logp: f64,
    /// Σ logp from the first token to this one: an upper bound on every score below (log-probs ≤ 0).
    pub partial: f64,
    /// `logp` is set.
    pub known: bool,
    /// Candidates whose sequence ends here.
    pub ends: u32,
}

/// A prefix trie over the token sequences of a group of candidates, nodes in depth-first order
/// (each node after its parent, each candidate's nodes at increasing positions: what llama.cpp's
/// batch checks require of a sequence).
#[derive(Debug)]
pub(crate) struct Trie {
    pub nodes: Vec<Node>,
    /// Leaf node of each candidate slot.
    pub leaf: Vec<u32>,
    /// Top-level nodes (depth 0), predicted by the prefix's last row.
    pub roots: Vec<u32>,
}

impl Trie {
    pub fn build(seqs: &[&[i32]]) -> Trie {
        // Insert in an index structure first, then lay the nodes out in DFS order.
        struct Tmp {
            token: i32,
            children: Vec<usize>,
            cands: Vec<u32>,
        }
        let mut tmp: Vec<Tmp> = vec![Tmp { token: -1, children: vec![], cands: vec![] }];
        let mut child_of: HashMap<(usize, i32), usize> = HashMap::new();
        let mut tmp_leaf = Vec::with_capacity(seqs.len());
        for (c, seq) in seqs.iter().enumerate() {
            let mut at = 0usize;
            for &t in seq.iter() {
                let next = match child_of.get(&(at, t)) {
                    Some(&n) => n,
                    None => {
                        tmp.push(Tmp { token: t, children: vec![], cands: vec![] });
                        let n = tmp.len() - 1;
                        tmp[at].children.push(n);
                        child_of.insert((at, t), n);
                        n
                    }
                };
                tmp[next].cands.push(c as u32);
                at = next;
            }
            tmp_leaf.push(at);
        }
        let mut nodes = Vec::with_capacity(tmp.len().saturating_sub(1));
        let mut new_id = vec![u32::MAX; tmp.len()];
        let mut stack: Vec<(usize, Option<u32>, u32)> = tmp[0].children.iter().rev().map(|&c| (c, None, 0)).collect();
        while let Some((t, parent, depth)) = stack.pop() {
            let id = nodes.len() as u32;
            new_id[t] = id;
            nodes.push(Node {
                token: tmp[t].token,
                depth,
                parent,
                children: vec![],
                cands: std::mem::take(&mut tmp[t].cands),
                logp: 0.0,
                partial: 0.0,
                known: false,
                ends: 0,
            });
            if let Some(p) = parent {
                nodes[p as usize].children.push(id);
            }
            for &c in tmp[t].children.iter().rev() {
                stack.push((c, Some(id), depth + 1));
            }
        }
        let roots = tmp[0].children.iter().map(|&c| new_id[c]).collect();
        let leaf: Vec<u32> = tmp_leaf.into_iter().map(|l| new_id[l]).collect();
        for &l in &leaf {
            nodes[l as usize].ends += 1;
        }
        Trie { nodes, leaf, roots }
    }

    /// Records a node's log-probability (from its parent's logits, or the prefix's for roots).
    pub fn set_logp(&mut self, id: usize, logp: f64) {
        let base = self.nodes[id].parent.map_or(0.0, |p| self.nodes[p as usize].partial);
        let n = &mut self.nodes[id];
        n.logp = logp;
        n.partial = base + logp;
        n.known = true;
    }

    /// Whether a candidate's every token has a log-probability (false when pruned).
    pub fn complete(&self, slot: usize) -> bool {
        self.nodes[self.leaf[slot] as usize].known
    }

    /// Sum of log-probabilities along a candidate's path, and its token count.
    pub fn score(&self, slot: usize) -> (f64, u32) {
        let mut at = Some(self.leaf[slot]);
        let mut sum = 0.0;
        let mut n = 0;
        while let Some(i) = at {
            let node = &self.nodes[i as usize];
            sum += node.logp;
            n += 1;
            at = node.parent;
        }
        (sum, n)
    }
}

/// Splits candidate sequences (given sorted so that neighbours share prefixes) into groups that fit
/// `max_seqs` sequences and `max_nodes` trie nodes (KV cells). Returns ranges over the input, or the
/// length of a sequence that alone does not fit.
pub(crate) fn group(seqs: &[&[i32]], max_seqs: usize, max_nodes: usize) -> Result<Vec<std::ops::Range<usize>>, usize> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut nodes = 0usize;
    for i in 0..seqs.len() {
        if seqs[i].len() > max_nodes {
            return Err(seqs[i].len());
        }
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
    Ok(groups)
}

/// The best `k` complete scores seen so far; its minimum is the bar a partial score must clear.
pub(crate) struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Score>>,
}

#[derive(PartialEq)]
struct Score(f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self { k, heap: Default::default() }
    }

    pub fn push(&mut self, score: f64) {
        self.heap.push(std::cmp::Reverse(Score(score)));
        if self.heap.len() > self.k {
            self.heap.pop();
        }
    }

    /// The k-th best score once k are known: anything whose upper bound is below it cannot rank.
    pub fn threshold(&self) -> f64 {
        match self.heap.peek() {
            Some(std::cmp::Reverse(Score(s))) if self.heap.len() >= self.k => *s,
            _ => f64::NEG_INFINITY,
        }
    }
}

pub(crate) fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trie_shares_prefixes_in_dfs_order() {
        let a = [1, 2, 3];
        let b = [1, 2, 4, 5];
        let c = [7];
        let d = [1, 2, 3];
        let t = Trie::build(&[&a, &b, &c, &d]);
        // nodes: 1,2,3,4,5,7
        assert_eq!(t.nodes.len(), 6);
        assert_eq!(t.roots.len(), 2);
        assert_eq!(t.leaf[0], t.leaf[3], "identical sequences share a leaf");
        for (i, n) in t.nodes.iter().enumerate() {
            if let Some(p) = n.parent {
                assert!((p as usize) < i, "parent after child");
                assert_eq!(t.nodes[p as usize].depth + 1, n.depth);
                assert!(n.cands.iter().all(|c| t.nodes[p as usize].cands.contains(c)));
            }
        }
        let two = t.nodes.iter().find(|n| n.token == 2).unwrap();
        assert_eq!(two.cands, vec![0, 1, 3]);
        assert_eq!(t.score(1).1, 4);
    }

    #[test]
    fn groups_respect_limits() {
        let s: Vec<Vec<i32>> = vec![vec![1, 2], vec![1, 3], vec![1, 4], vec![5, 6, 7]];
        let r: Vec<&[i32]> = s.iter().map(|v| v.as_slice()).collect();
        assert_eq!(group(&r, 2, 100).unwrap(), vec![0..2, 2..4]);
        assert_eq!(group(&r, 10, 4).unwrap(), vec![0..3, 3..4]);
        assert_eq!(group(&r, 10, 2), Err(3));
    }

    #[test]
    fn top_k_threshold() {
        let mut t = TopK::new(2);
        assert_eq!(t.threshold(), f64::NEG_INFINITY);
        t.push(-5.0);
        assert_eq!(t.threshold(), f64::NEG_INFINITY);
        t.push(-3.0);
        assert_eq!(t.threshold(), -5.0);
        t.push(-1.0);
        assert_eq!(t.threshold(), -3.0);
        t.push(-9.0);
        assert_eq!(t.threshold(), -3.0);
    }

    #[test]
    fn partial_sums_follow_paths() {
        let a = [1, 2, 3];
        let b = [1, 4];
        let mut t = Trie::build(&[&a, &b]);
        for i in 0..t.nodes.len() {
            t.set_logp(i, -1.0 - i as f64);
        }
        for slot in 0..2 {
            let leaf = t.leaf[slot] as usize;
            assert!((t.nodes[leaf].partial - t.score(slot).0).abs() < 1e-12);
        }
        assert_eq!(t.nodes.iter().map(|n| n.ends).sum::<u32>(), 2);
    }

    #[test]
    fn lse_is_stable() {
        let v = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&v) - (1000.0 + 2f64.ln())).abs() < 1e-9);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
    }

    #[test]
    fn lse_matches_exact_sum() {
        let exact = |row: &[f32]| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
        };
        let mut seed = 7u64;
        for (n, scale) in [(1, 1.0), (17, 3.0), (1000, 10.0), (49_152, 4.0), (151_936, 30.0), (5000, 0.01)] {
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
                })
                .collect();
            let (a, b) = (log_sum_exp(&row), exact(&row));
            assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "n={n}: {a} vs {b}");
        }
        // e^x against f64 over [-87, 0]: relative 1e-6 near 0; further out the f32 argument
        // limits it (x·log2 e rounds at |x|·6e-8), but there each term is < e^-10 of a sum ≥ 1.
        for i in 0..=87_000 {
            let x = -(i as f32) * 1e-3;
            let (a, b) = (exp_nonpositive(x) as f64, (x as f64).exp());
            let tol = if x > -10.0 { 1e-6 * b } else { 1e-5 * b };
            assert!((a - b).abs() <= tol, "x={x}: {a} vs {b}");
        }
        assert!(exp_nonpositive(-1e30) < 1.7e-38 && exp_nonpositive(f32::NEG_INFINITY) < 1.7e-38);
    }
}
