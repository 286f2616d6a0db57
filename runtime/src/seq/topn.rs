//! The best `n` of a score vector without sorting it: one pass keeping a size-`n` min-heap
//! (O(items · log n), and most items fail the first comparison), then the `n` sorted.
//! Ties go to the lower catalog index, as everywhere in the runtime.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A heap entry ordered so that the heap's top is the *worst* kept item.
#[derive(Clone, Copy, PartialEq)]
struct Kept {
    score: f32,
    index: u32,
}

impl Eq for Kept {}

impl Ord for Kept {
    fn cmp(&self, other: &Self) -> Ordering {
        // Better ranks as smaller, so the max-heap's top is the worst kept item.
        better(self, other)
    }
}

impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `Less` when `a` ranks before `b`.
fn better(a: &Kept, b: &Kept) -> Ordering {
    b.score.total_cmp(&a.score).then(a.index.cmp(&b.index))
}

/// The `n` best `(index, score)` pairs, best first, skipping indices where `skip` is true.
pub(crate) fn top_n(scores: &[f32], n: usize, skip: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
    if n == 0 {
        return vec![];
    }
    let mut heap: BinaryHeap<Kept> = BinaryHeap::with_capacity(n + 1);
    for (i, &score) in scores.iter().enumerate() {
        let index = i as u32;
        if heap.len() == n {
            // Cheap reject first: the common case over a large catalog.
            let worst = heap.peek().map_or(f32::NEG_INFINITY, |k| k.score);
            if score < worst {
                continue;
            }
        }
        if skip(index) {
            continue;
        }
        let k = Kept { score, index };
        if heap.len() < n {
            heap.push(k);
        } else if heap.peek().is_some_and(|w| better(&k, w) == Ordering::Less) {
            heap.pop();
            heap.push(k);
        }
    }
    let mut out = heap.into_vec();
    out.sort_by(better);
    out.into_iter().map(|k| (k.index, k.score)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(scores: &[f32], n: usize, skip: &[u32]) -> Vec<(u32, f32)> {
        let mut all: Vec<Kept> = scores
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(&(*i as u32)))
            .map(|(i, &score)| Kept { score, index: i as u32 })
            .collect();
        all.sort_by(better);
        all.truncate(n);
        all.into_iter().map(|k| (k.index, k.score)).collect()
    }

    #[test]
    fn equals_a_full_sort_with_ties_and_skips() {
        // Scores with many ties (rounded), over sizes and n around the edges.
        let mut seed = 7u64;
        for len in [0usize, 1, 2, 5, 64, 1000] {
            let scores: Vec<f32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) % 17) as f32 * 0.5 - 4.0
                })
                .collect();
            let skip: Vec<u32> = (0..len as u32).filter(|i| i % 7 == 3).collect();
            for n in [0usize, 1, 3, 10, len, len + 5] {
                let got = top_n(&scores, n, |i| skip.contains(&i));
                assert_eq!(got, naive(&scores, n, &skip), "len {len} n {n}");
            }
        }
    }

    #[test]
    fn infinities_and_negative_zero_sort_totally() {
        let s = [0.0, f32::NEG_INFINITY, -0.0, f32::INFINITY, 1.0];
        let got: Vec<u32> = top_n(&s, 5, |_| false).into_iter().map(|x| x.0).collect();
        assert_eq!(got, vec![3, 4, 0, 2, 1]);
    }
}
