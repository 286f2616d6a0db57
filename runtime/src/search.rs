//! Exact top-k over a whole candidate trie: best-first search whose rounds become llama.cpp
//! batches.
//!
//! Scores are sums of log-probs (each ≤ 0), so a trie node's partial sum bounds every candidate
//! below it; a node whose bound is under the k-th best complete score is never decoded. Searching
//! the trie of *all* candidates at once (rather than one group of `n_seq_max` candidates after
//! another) decodes the most promising nodes of the whole catalog first, in a few large batches.
//!
//! llama.cpp gives each row the KV cells of the sequences it belongs to, and there are at most
//! `n_seq_max` of those; a candidate cannot own one. Here a sequence is a *path*: the prompt
//! prefix (shared from sequence 0) plus the decoded trie nodes from a root down. A node waiting to
//! be decoded refers to a path holding its ancestors. Decoding it either extends that path in
//! place (when nothing deeper on the path is still needed) or starts a new path that shares the
//! ancestors' cells (`seq_cp` over a position range: no copy in a unified cache). Paths nobody
//! refers to any more are dropped, which frees their cells. This module only plans; the engine
//! applies the [`SeqOp`]s and decodes the rows.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::scorer::Trie;

/// A change to llama.cpp's sequences, in trie depths (the engine adds the prefix length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SeqOp {
    /// `dst` gets `src`'s cells for the prefix and depths `< len`.
    Share { src: i32, dst: i32, len: usize },
    /// `seq` keeps the prefix and depths `< len` only.
    Truncate { seq: i32, len: usize },
    /// `seq` leaves every cell (cells no other sequence holds are freed).
    Drop { seq: i32 },
}

/// One batch: sequence changes to apply first, then `(node, seq)` rows to decode (each node's
/// token at position prefix + depth in its sequence, with logits).
#[derive(Debug, Default)]
pub(crate) struct Round {
    pub ops: Vec<SeqOp>,
    pub rows: Vec<(usize, i32)>,
}

struct Pending {
    bound: f64,
    node: u32,
    seq: i32,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    // Highest bound first; ties by node id (earlier in DFS order first) for determinism.
    fn cmp(&self, o: &Self) -> Ordering {
        self.bound.total_cmp(&o.bound).then(o.node.cmp(&self.node))
    }
}

#[derive(Default)]
struct Path {
    live: bool,
    /// Decoded node at each depth.
    nodes: Vec<u32>,
    /// Waiting nodes that need this path up to each depth (index = the waiting node's depth).
    refs: Vec<u32>,
    waiting: u32,
}

impl Path {
    fn deepest_ref(&self) -> Option<usize> {
        self.refs.iter().rposition(|&n| n > 0)
    }
    fn add_ref(&mut self, depth: usize) {
        if self.refs.len() <= depth {
            self.refs.resize(depth + 1, 0);
        }
        self.refs[depth] += 1;
        self.waiting += 1;
    }
    fn remove_ref(&mut self, depth: usize) {
        self.refs[depth] -= 1;
        self.waiting -= 1;
    }
}

/// Best-first search state: waiting nodes by bound, the paths (sequences 1..n_seq) and which
/// decoded nodes' KV cells are still held.
pub(crate) struct Search {
    heap: BinaryHeap<Pending>,
    paths: Vec<Path>,
    free: Vec<i32>,
    /// Sequences holding each node's cell (0: not decoded, or freed).
    holders: Vec<u32>,
    /// Cells of decoded nodes still held by some sequence.
    pub live_cells: usize,
}

impl Search {
    /// `n_seq`: llama.cpp's sequence count (sequence 0 holds the prefix and is never changed).
    /// The trie's roots must have their log-probs set.
    pub fn new(trie: &Trie, n_seq: usize) -> Search {
        let mut s = Search {
            heap: BinaryHeap::new(),
            paths: (0..n_seq.max(1)).map(|_| Path::default()).collect(),
            free: (1..n_seq as i32).rev().collect(),
            holders: vec![0; trie.nodes.len()],
            live_cells: 0,
        };
        s.paths[0].live = true;
        for &r in &trie.roots {
            s.wait(trie, r, 0);
        }
        s
    }

    fn wait(&mut self, trie: &Trie, node: u32, seq: i32) {
        let n = &trie.nodes[node as usize];
        if n.children.is_empty() {
            return; // a leaf predicts nothing: never decoded
        }
        self.paths[seq as usize].add_ref(n.depth as usize);
        self.heap.push(Pending { bound: n.partial, node, seq });
    }

    /// Whether nodes are still waiting to be decoded.
    pub fn is_done(&self) -> bool {
        self.heap.is_empty()
    }

    /// Plans the next batch: the best waiting nodes whose bound clears `bar`, at most `max_rows`,
    /// while decoded cells stay within `max_cells`. Nodes under the bar are dropped for good (the
    /// bar only rises). An empty round with nodes still waiting means the limits leave no room.
    pub fn plan(&mut self, trie: &Trie, bar: f64, max_rows: usize, max_cells: usize) -> Round {
        let mut round = Round::default();
        let mut extended = vec![false; self.paths.len()];
        // Paths whose last row was decoded in the previous round and that nobody waits on.
        self.drop_unused(&extended, &mut round);
        self.select(trie, bar, max_rows, max_cells, &mut round, &mut extended);
        // Paths left without waiting nodes by this round, after the sharing above; when that
        // frees sequences a round that found none needs, select again.
        if self.drop_unused(&extended, &mut round) && round.rows.is_empty() {
            self.select(trie, bar, max_rows, max_cells, &mut round, &mut extended);
            self.drop_unused(&extended, &mut round);
        }
        round
    }

    fn select(
        &mut self,
        trie: &Trie,
        bar: f64,
        max_rows: usize,
        max_cells: usize,
        round: &mut Round,
        extended: &mut [bool],
    ) {
        let mut deferred = Vec::new();
        let mut pruned = false;
        while round.rows.len() < max_rows {
            let Some(p) = self.heap.pop() else {
                // Pruning removes references, which can make a node deferred earlier in this
                // pass extendable in place (its path's deeper waiting nodes are gone): one more
                // pass over them. It cannot prune again (the heap now holds nothing under the
                // bar), so there are at most two.
                if std::mem::take(&mut pruned) && !deferred.is_empty() {
                    self.heap.extend(deferred.drain(..));
                    continue;
                }
                break;
            };
            let depth = trie.nodes[p.node as usize].depth as usize;
            if p.bound < bar {
                // Every later node is under the bar too.
                self.paths[p.seq as usize].remove_ref(depth);
                while let Some(q) = self.heap.pop() {
                    let d = trie.nodes[q.node as usize].depth as usize;
                    self.paths[q.seq as usize].remove_ref(d);
                }
                pruned = true;
                continue;
            }
            if self.live_cells >= max_cells {
                deferred.push(p);
                break;
            }
            let src = p.seq as usize;
            let in_place = src != 0 && !extended[src] && self.paths[src].deepest_ref() == Some(depth);

            let seq = if in_place {
                if self.paths[src].nodes.len() > depth {
                    self.release(src, depth);
                    round.ops.push(SeqOp::Truncate { seq: p.seq, len: depth });
                }
                p.seq
            } else if let Some(t) = self.free.pop() {
                let shared: Vec<u32> = self.paths[src].nodes[..depth].to_vec();
                for &n in &shared {
                    self.holders[n as usize] += 1;
                }
                let path = &mut self.paths[t as usize];
                path.live = true;
                path.nodes = shared;
                round.ops.push(SeqOp::Share { src: p.seq, dst: t, len: depth });
                t
            } else {
                deferred.push(p);
                continue;
            };
            self.paths[src].remove_ref(depth);
            self.paths[seq as usize].nodes.push(p.node);
            self.holders[p.node as usize] += 1;
            self.live_cells += 1;
            extended[seq as usize] = true;
            round.rows.push((p.node as usize, seq));
        }
        self.heap.extend(deferred);
    }

    /// Drops the paths nobody waits on; returns whether any was dropped.
    fn drop_unused(&mut self, extended: &[bool], round: &mut Round) -> bool {
        let mut any = false;
        for (s, &ext) in extended.iter().enumerate().skip(1) {
            if self.paths[s].live && self.paths[s].waiting == 0 && !ext {
                self.drop_path(s);
                round.ops.push(SeqOp::Drop { seq: s as i32 });
                any = true;
            }
        }
        any
    }

    /// Records that `node` was decoded in `seq` (its children's log-probs are now set): children
    /// that predict something wait on this path.
    pub fn decoded(&mut self, trie: &Trie, node: usize, seq: i32) {
        for &c in &trie.nodes[node].children {
            self.wait(trie, c, seq);
        }
    }

    /// Every sequence still holding cells (to drop when the search ends or fails).
    pub fn live_seqs(&self) -> Vec<i32> {
        (1..self.paths.len()).filter(|&s| self.paths[s].live).map(|s| s as i32).collect()
    }

    fn release(&mut self, seq: usize, keep: usize) {
        let gone: Vec<u32> = self.paths[seq].nodes.drain(keep..).collect();
        for n in gone {
            self.holders[n as usize] -= 1;
            if self.holders[n as usize] == 0 {
                self.live_cells -= 1;
            }
        }
    }

    fn drop_path(&mut self, seq: usize) {
        self.release(seq, 0);
        let p = &mut self.paths[seq];
        p.live = false;
        p.refs.clear();
        self.free.push(seq as i32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorer::TopK;

    /// Simulates llama.cpp's sequences as lists of (depth, node) cells and checks that every row
    /// sees exactly its ancestors, for random tries and log-probs; returns (rows, rounds, top-k).
    fn simulate(
        seqs: &[Vec<i32>],
        logp: impl Fn(usize, i32) -> f64,
        k: usize,
        n_seq: usize,
        max_rows: usize,
    ) -> (usize, usize, Vec<Option<f64>>) {
        let refs: Vec<&[i32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let mut trie = Trie::build(&refs);
        let mut top = TopK::new(k);
        for r in trie.roots.clone() {
            trie.set_logp(r as usize, logp(usize::MAX, trie.nodes[r as usize].token));
            for _ in 0..trie.nodes[r as usize].ends {
                top.push(trie.nodes[r as usize].partial);
            }
        }
        let mut kv: Vec<Vec<(usize, u32)>> = vec![vec![]; n_seq];
        let mut search = Search::new(&trie, n_seq);
        let (mut rows, mut rounds) = (0, 0);
        while !search.is_done() {
            let round = search.plan(&trie, top.threshold(), max_rows, 10_000);
            for op in &round.ops {
                match *op {
                    SeqOp::Share { src, dst, len } => {
                        assert!(kv[dst as usize].is_empty(), "sharing into a used sequence");
                        let cells: Vec<_> = kv[src as usize].iter().copied().filter(|&(d, _)| d < len).collect();
                        assert_eq!(cells.len(), len, "source path too short");
                        kv[dst as usize] = cells;
                    }
                    SeqOp::Truncate { seq, len } => kv[seq as usize].retain(|&(d, _)| d < len),
                    SeqOp::Drop { seq } => kv[seq as usize].clear(),
                }
            }
            if round.rows.is_empty() && search.is_done() {
                break;
            }
            assert!(!round.rows.is_empty(), "empty round with nodes waiting (n_seq {n_seq}, max_rows {max_rows})");
            if round.rows.is_empty() {
                let waiting: Vec<_> =
                    search.heap.iter().map(|p| (p.node, p.seq, trie.nodes[p.node as usize].depth)).collect();
                let paths: Vec<_> =
                    search.paths.iter().map(|p| (p.live, p.nodes.clone(), p.refs.clone(), p.waiting)).collect();
                panic!("stalled: waiting {waiting:?} paths {paths:?} free {:?}", search.free);
            }
            rounds += 1;
            for &(node, seq) in &round.rows {
                let n = &trie.nodes[node];
                let cells = &kv[seq as usize];
                assert_eq!(cells.len(), n.depth as usize, "row at the wrong position");
                let mut anc = n.parent;
                for d in (0..n.depth as usize).rev() {
                    assert_eq!(cells[d], (d, anc.unwrap()), "row does not see its ancestors");
                    anc = trie.nodes[anc.unwrap() as usize].parent;
                }
            }
            for &(node, seq) in &round.rows {
                kv[seq as usize].push((trie.nodes[node].depth as usize, node as u32));
                for c in trie.nodes[node].children.clone() {
                    let lp = logp(node, trie.nodes[c as usize].token);
                    trie.set_logp(c as usize, lp);
                    for _ in 0..trie.nodes[c as usize].ends {
                        top.push(trie.nodes[c as usize].partial);
                    }
                }
                search.decoded(&trie, node, seq);
                rows += 1;
            }
            let seqs_used = round.rows.iter().map(|r| r.1).collect::<std::collections::HashSet<_>>();
            assert_eq!(seqs_used.len(), round.rows.len(), "two rows of a round share a sequence");
        }
        let _ = search.plan(&trie, top.threshold(), max_rows, 10_000);
        assert!(search.live_seqs().is_empty(), "sequences left behind");
        assert_eq!(search.live_cells, 0);
        let scores = (0..seqs.len()).map(|s| trie.complete(s).then(|| trie.score(s).0)).collect();
        (rows, rounds, scores)
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn best_first_is_exact_and_paths_see_their_ancestors() {
        for case in 0..60u64 {
            let mut seed = case + 1;
            let n = 5 + (lcg(&mut seed) % 60) as usize;
            let vocab = 2 + (lcg(&mut seed) % 5) as i32;
            let seqs: Vec<Vec<i32>> = (0..n)
                .map(|_| (0..1 + lcg(&mut seed) % 7).map(|_| (lcg(&mut seed) % vocab as u64) as i32).collect())
                .collect();
            let salt = lcg(&mut seed);
            let logp = |parent: usize, tok: i32| {
                let h = (parent as u64).wrapping_mul(31).wrapping_add(tok as u64).wrapping_mul(salt | 1);
                -(((h >> 7) % 1000) as f64) / 100.0
            };
            let n_seq = 2 + (case as usize % 9);
            let max_rows = [1 + (case as usize % 13), 512][case as usize % 2];
            // Exhaustive scores for comparison.
            let (_, _, all) = simulate(&seqs, logp, usize::MAX, n_seq, max_rows);
            for k in [1 + (case as usize % 6), 3] {
                let (_, _, got) = simulate(&seqs, logp, k, n_seq, max_rows);
                let all: Vec<f64> = all.iter().map(|s| s.expect("exhaustive scores everything")).collect();
                let mut sorted = all.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let kth = sorted[k.min(sorted.len()) - 1];
                for (i, &s) in all.iter().enumerate() {
                    if s > kth {
                        assert_eq!(got[i], Some(s), "case {case}: candidate {i} above the k-th score was pruned");
                    }
                    if let Some(g) = got[i] {
                        assert_eq!(g, s);
                    }
                }
            }
        }
    }

    #[test]
    fn fewer_rows_than_exhaustive_when_scores_spread() {
        let seqs: Vec<Vec<i32>> = (0..200).map(|i| vec![i % 20, 100 + i, 300 + i % 7]).collect();
        let logp = |_: usize, tok: i32| -(tok % 10) as f64 - 0.5;
        let (rows_top, rounds_top, _) = simulate(&seqs, logp, 3, 32, 64);
        let (rows_all, _, _) = simulate(&seqs, logp, usize::MAX, 32, 64);
        assert!(rows_top < rows_all / 2, "{rows_top} rows for top-3 vs {rows_all} exhaustive");
        assert!(rounds_top < rows_top, "rows are batched");
    }
}
