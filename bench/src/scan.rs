//! `delrec-bench scan`: the cascade's catalog scan alone, at catalog sizes up to 10^6, on one
//! core: the runtime's f32 and Q8_0 kernels against the 8-lane kernel it replaced and a
//! sequential dot (the same rows, interleaved, in one process), and what Q8_0 costs in
//! retrieval quality: the overlap of its top N with the f32 table's top N for the same users.
//!
//! Tables are generated (uniform values, per-item norms spread over 0.5–1.5 as trained tables'
//! popularity spreads them); users are the mean of a few random rows plus noise, so their top N
//! is not flat. Real tables' overlap comes from `scripts/eval-real.sh` (the cascade rows).

use std::hint::black_box;
use std::path::PathBuf;

use delrec_convert::testing::Rng;
use delrec_format::seq::ItemTable;
use delrec_runtime::kernels;
use serde::Serialize;

use crate::cascade::{dot_sequential, scan as scan_with};
use crate::sys::{self, timed};
use crate::BResult;

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct ScanArgs {
    /// Catalog sizes.
    #[arg(long, value_delimiter = ',', default_value = "1682,10000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// Item vector width (SASRec's hidden size; Q8_0 needs a multiple of 32).
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Timed scans per kernel and size (interleaved round-robin).
    #[arg(long, default_value_t = 30)]
    pub reps: usize,
    /// Users whose top N is compared between the f32 and the Q8_0 table.
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// N of the overlap (the cascade's retrieve).
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    #[arg(long, default_value = "target/bench-scan")]
    pub out: PathBuf,
}

#[derive(Debug, Default, Serialize)]
struct SizeRow {
    n_items: usize,
    f32_mib: f64,
    q8_mib: f64,
    /// Fastest / median ms per kernel: sequential, the old 8-lane, runtime f32, runtime Q8_0.
    ms: Vec<(String, f64, f64)>,
    /// Mean |top N(Q8_0) ∩ top N(f32)| / N over the users.
    overlap: f64,
    min_overlap: f64,
    /// Largest |score_q8 − score_f32| over all items and users, relative to the scores' std.
    max_rel_err: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    args: ScanArgs,
    cpu: String,
    build: String,
    kernel: String,
    loadavg_start: Option<[f64; 3]>,
    loadavg_end: Option<[f64; 3]>,
    sizes: Vec<SizeRow>,
}

fn table(n: usize, hidden: usize, rng: &mut Rng) -> Vec<f32> {
    let mut v = Vec::with_capacity(n * hidden);
    for _ in 0..n {
        let norm = 1.0 + 0.5 * rng.uniform();
        v.extend((0..hidden).map(|_| rng.uniform() * norm));
    }
    v
}

fn user(t: &[f32], hidden: usize, rng: &mut Rng) -> Vec<f32> {
    let n = t.len() / hidden;
    let mut u = rng.vec(hidden, 0.3);
    for _ in 0..5 {
        let r = ((rng.uniform() + 1.0) / 2.0 * n as f32) as usize % n;
        for (a, b) in u.iter_mut().zip(&t[r * hidden..][..hidden]) {
            *a += b / 5.0;
        }
    }
    u
}

/// Indices of the `n` largest scores (ties by index).
fn top(scores: &[f32], n: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..scores.len()).collect();
    o.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    o.truncate(n);
    o
}

pub fn run(a: &ScanArgs) -> BResult<()> {
    if a.hidden == 0 || !a.hidden.is_multiple_of(32) || a.reps == 0 || a.n == 0 {
        return Err("--hidden must be a positive multiple of 32, --reps and --n positive".into());
    }
    let loadavg_start = sys::loadavg();
    let mut rng = Rng(0x5ca9);
    let mut rows = Vec::new();
    for &n in &a.sizes {
        let h = a.hidden;
        let f = table(n, h, &mut rng);
        let q = ItemTable::quantize_q8_0(&f)?;
        let t32 = ItemTable::F32(f.clone());
        let mut row = SizeRow {
            n_items: n,
            f32_mib: t32.bytes() as f64 / (1 << 20) as f64,
            q8_mib: q.bytes() as f64 / (1 << 20) as f64,
            ..Default::default()
        };
        // Quality: top N overlap and score error, per user.
        let (mut s32, mut s8) = (Vec::new(), Vec::new());
        let mut overlaps = Vec::new();
        for _ in 0..a.users {
            let u = user(&f, h, &mut rng);
            kernels::table_scores(&t32, h, &u, &mut s32);
            kernels::table_scores(&q, h, &u, &mut s8);
            let mean = s32.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let std = (s32.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64).sqrt().max(1e-12);
            let err = s32.iter().zip(&s8).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max) / std;
            row.max_rel_err = row.max_rel_err.max(err);
            let k = a.n.min(n);
            let t_f = top(&s32, k);
            let t_q = top(&s8, k);
            overlaps.push(t_q.iter().filter(|i| t_f.contains(i)).count() as f64 / k as f64);
        }
        row.overlap = overlaps.iter().sum::<f64>() / overlaps.len().max(1) as f64;
        row.min_overlap = overlaps.iter().copied().fold(1.0, f64::min);
        // Speed: the four kernels round-robin on one user.
        let u = user(&f, h, &mut rng);
        let names = ["sequential dot", "8-lane (before)", "runtime f32", "runtime q8_0"];
        let mut ms: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        let mut out = Vec::with_capacity(n);
        for _ in 0..a.reps {
            for (k, m) in ms.iter_mut().enumerate() {
                let ((), t) = timed(|| match k {
                    0 => scan_with(black_box(&f), h, black_box(&u), &mut out, dot_sequential),
                    1 => scan_with(black_box(&f), h, black_box(&u), &mut out, kernels::dot),
                    2 => kernels::table_scores(black_box(&t32), h, black_box(&u), &mut out),
                    _ => kernels::table_scores(black_box(&q), h, black_box(&u), &mut out),
                });
                black_box(&out);
                m.push(t.wall * 1e3);
            }
        }
        row.ms = names
            .iter()
            .zip(&ms)
            .map(|(name, v)| (name.to_string(), v.iter().copied().fold(f64::INFINITY, f64::min), sys::p50_p95(v).0))
            .collect();
        eprintln!("scan: {n} items done");
        rows.push(row);
    }
    let res = Results {
        args: a.clone(),
        cpu: sys::cpu_model(),
        build: sys::build(),
        kernel: kernels::scan_kernel().to_string(),
        loadavg_start,
        loadavg_end: sys::loadavg(),
        sizes: rows,
    };
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("results.json"), serde_json::to_vec_pretty(&res)?)?;
    let md = render(&res);
    std::fs::write(a.out.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn render(r: &Results) -> String {
    let mut s = format!(
        "# Catalog scan (one core)\n\ncpu: {}\nbuild: {}\nscan kernel: {}\nload average: {:?} → {:?}\n\
         hidden {}, {} reps per kernel (interleaved), overlap over {} users at N = {}\n\n",
        r.cpu, r.build, r.kernel, r.loadavg_start, r.loadavg_end, r.args.hidden, r.args.reps, r.args.users, r.args.n
    );
    s += "| items | f32 / Q8_0 MiB |";
    let names: Vec<&str> = r.sizes.first().map(|z| z.ms.iter().map(|m| m.0.as_str()).collect()).unwrap_or_default();
    for n in &names {
        s += &format!(" {n} ms min (p50) |");
    }
    s += " f32 ÷ Q8_0 (min) | before ÷ f32 (min) | top-N overlap mean (min) | max \\|Δ\\| / std |\n|---:|---:|";
    for _ in &names {
        s += "---:|";
    }
    s += "---:|---:|---:|---:|\n";
    for z in &r.sizes {
        s += &format!("| {} | {:.1} / {:.1} |", z.n_items, z.f32_mib, z.q8_mib);
        for m in &z.ms {
            s += &format!(" {:.3} ({:.3}) |", m.1, m.2);
        }
        let min = |k: usize| z.ms.get(k).map_or(f64::NAN, |m| m.1);
        s += &format!(
            " {:.2}× | {:.2}× | {:.3} ({:.2}) | {:.4} |\n",
            min(2) / min(3),
            min(1) / min(2),
            z.overlap,
            z.min_overlap,
            z.max_rel_err
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_orders_by_score_then_index() {
        assert_eq!(top(&[0.5, 2.0, 2.0, -1.0], 3), vec![1, 2, 0]);
    }

    #[test]
    fn a_small_run_writes_its_report() {
        let dir = tempfile::tempdir().unwrap();
        let a = ScanArgs { sizes: vec![100], hidden: 32, reps: 2, users: 3, n: 10, out: dir.path().into() };
        run(&a).unwrap();
        let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
        assert!(md.contains("| 100 |"), "{md}");
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
        let o = j["sizes"][0]["overlap"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&o) && o > 0.5, "Q8_0 keeps most of a top 10: {o}");
    }
}
