//! The markdown report, from results.json's structure.

use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::worker::{Cell, WorkerResult};
use crate::{ModelResult, Results};

const MIB: f64 = 1024.0 * 1024.0;

/// llama.cpp's log lines about buffer sizes (model, repacked weights, KV, compute, output).
pub fn llama_buffers(log: &Path) -> Vec<String> {
    let Ok(s) = std::fs::read_to_string(log) else { return vec![] };
    let mut out: Vec<String> = vec![];
    for l in s.lines() {
        let l = l.trim();
        let keep = (l.contains("buffer size") || l.contains("KV buffer") || l.contains("size =")) && l.contains("MiB");
        if keep && !out.iter().any(|x| x == l) {
            out.push(l.to_string());
        }
    }
    out
}

fn ms(s: f64) -> String {
    if s <= 0.0 {
        "–".into()
    } else if s < 0.1 {
        format!("{:.1}", s * 1e3)
    } else {
        format!("{:.0}", s * 1e3)
    }
}

fn ratio(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() && v > 0.0 => {
            if v >= 10.0 {
                format!("{v:.1}×")
            } else {
                format!("{v:.2}×")
            }
        }
        _ => "–".into(),
    }
}

fn mib(b: f64) -> String {
    format!("{:.0}", b / MIB)
}

pub fn cell(r: &WorkerResult, h: usize, k: usize) -> Option<&Cell> {
    r.grid.iter().find(|c| c.h == h && c.k == k && !c.whole_catalog)
}

pub fn catalog_cell(r: &WorkerResult) -> Option<&Cell> {
    r.grid.iter().find(|c| c.whole_catalog)
}

pub fn torch_cell(m: &ModelResult, h: usize, k: usize) -> Option<&Value> {
    m.torch.as_ref()?.get("cells")?.as_array()?.iter().find(|c| {
        c.get("h").and_then(Value::as_u64) == Some(h as u64) && c.get("k").and_then(Value::as_u64) == Some(k as u64)
    })
}

fn torch_p50(c: Option<&Value>, plan: &str) -> Option<f64> {
    c?.get(plan)?.get("p50")?.as_f64()
}

/// GEMM GFLOP/s at a thread count.
pub fn gflops(res: &Results, threads: usize) -> Option<f64> {
    res.floor.as_ref()?.get("by_threads")?.get(threads.to_string())?.get("gflops")?.as_f64()
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn markdown(res: &Results) -> String {
    let mut o = String::new();
    let st = &res.settings;
    let (hh, hk) = st.headline;
    let t_main = st.threads[0];
    let m = &res.meta;
    let _ = writeln!(o, "# delrec-bench results ({} mode)\n", st.mode);
    let _ = writeln!(
        o,
        "Machine: {} ({} CPUs, {}); build: {}; git {}; load average at start {:?}, at end {:?}; {:.0} s.\n\nCommand: `{}`\n",
        m.cpu,
        m.cpus,
        m.os,
        if m.build.is_empty() { "?" } else { &m.build },
        m.git_rev.as_deref().unwrap_or("?"),
        m.loadavg_start.unwrap_or_default(),
        m.loadavg_end.unwrap_or_default(),
        m.wall_s,
        m.command
    );
    let _ = writeln!(
        o,
        "Times are medians (p50) of {} interleaved repetitions (ours, raw prefill, naive, ours, ...), {} threads \
         unless said otherwise; context {} cells, batch {}, {} sequences per context. Ratios come from the same \
         run: `naive/ours` and `PyTorch/ours` are speedups (higher is better for us), `ours/raw` and \
         `ours/floor` are how far we are from a limit (1.0 = at it). \"CPU\" ratios use the process CPU time \
         (getrusage, all threads) of the same calls: on a shared machine they are the steadier measure of work.\n",
        st.reps, t_main, st.context_size, st.batch_size, st.max_sequences
    );
    let _ = writeln!(
        o,
        "OMP_WAIT_POLICY of every measured process: {}.\n",
        if st.omp_wait == "inherit" { "inherited".to_string() } else { st.omp_wait.to_uppercase() }
    );
    if let Some(l) = m.loadavg_start {
        if l[0] > 0.5 * m.cpus as f64 {
            let _ = writeln!(
                o,
                "**The machine was busy** (load average {:.1} on {} CPUs at the start): absolute times are inflated and noisy; the ratios, measured call by call in the same process, are the result.\n",
                l[0], m.cpus
            );
        }
    }
    for mr in &res.models {
        model_section(&mut o, res, mr, hh, hk, t_main);
    }
    let _ = writeln!(o, "## Compute floor\n");
    match (&res.floor, &res.floor_note) {
        (Some(f), _) => {
            let method = f.get("method").and_then(Value::as_str).unwrap_or("");
            let _ = write!(o, "{method}: ");
            let parts: Vec<String> = st
                .threads
                .iter()
                .filter_map(|t| gflops(res, *t).map(|g| format!("{g:.1} GFLOP/s at {t} thread(s)")))
                .collect();
            let blas = f
                .get("by_threads")
                .and_then(|b| b.as_object())
                .and_then(|b| b.values().next())
                .and_then(|v| v.get("blas"))
                .map(|b| format!(" ({} {})", b["name"].as_str().unwrap_or("?"), b["version"].as_str().unwrap_or("?")))
                .unwrap_or_default();
            let _ = writeln!(o, "{}{blas}.", parts.join(", "));
            let _ = writeln!(
                o,
                "The floor of a cell is its FLOPs — 2 × block weights × rows that must be decoded (trie \
                 leaves excluded), attention over the positions each row sees, and the output projection \
                 for the rows whose distribution is read — at that throughput (the run's thread count); \
                 `ours/floor (CPU …)` divides our CPU seconds by the same FLOPs at the 1-thread throughput.\n"
            );
        }
        (None, Some(n)) => {
            let _ = writeln!(o, "{n}\n");
        }
        _ => {}
    }
    o
}

fn model_section(o: &mut String, res: &Results, mr: &ModelResult, hh: usize, hk: usize, t_main: usize) {
    let st = &res.settings;
    let _ = writeln!(o, "## {}\n\n{}.\n", mr.name, mr.description);
    if let Some(first) = mr.types.first() {
        if let Some(c) = cell(first, hh, hk) {
            let _ = writeln!(
                o,
                "At H = {hh}, K = {hk} our plan decodes {} rows (prefix {}, {} trie nodes; the {} leaves are \
                 scored from their parents' logits, not decoded) in {} llama.cpp calls; the naive plan decodes {} \
                 rows.\n",
                c.decoded_rows,
                c.prefix_rows,
                c.decoded_rows - c.prefix_rows,
                c.leaf_rows,
                c.decode_calls,
                c.naive_rows
            );
        }
    }
    let tc = torch_cell(mr, hh, hk);
    let _ = writeln!(o, "### Headline: H = {hh}, K = {hk}, {t_main} threads\n");
    let _ = writeln!(
        o,
        "Weight types ran one after another: compare them by CPU seconds (the machine's load changed between \
         them); compare plans within a row, where calls were interleaved. PyTorch ran after all our workers.\n"
    );
    let _ = writeln!(
        o,
        "| weights | ours ms (p95) | ours CPU s | naive ms | naive/ours | raw ms | ours/raw | PyTorch strong ms | PT strong/ours \
         | PyTorch naive ms | PT naive/ours | floor ms | ours/floor | session/fresh | catalog/K={hk} | prefill tok/s \
         | peak RSS MiB (first ranking) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let g = gflops(res, t_main);
    let pt_s = torch_p50(tc, "strong");
    let pt_n = torch_p50(tc, "naive");
    for r in &mr.types {
        let Some(c) = cell(r, hh, hk) else {
            let _ = writeln!(o, "| {} | (no result) |", r.weight_type);
            continue;
        };
        let ours = Some(c.ours.p50);
        let naive = c.naive.as_ref().map(|s| s.p50);
        let raw = c.raw.as_ref().map(|s| s.p50);
        let ours_cpu = Some(c.ours.cpu_p50);
        let naive_cpu = c.naive.as_ref().map(|s| s.cpu_p50);
        let raw_cpu = c.raw.as_ref().map(|s| s.cpu_p50);
        let pt_s_cpu = tc.and_then(|c| c.get("strong")?.get("cpu_p50")?.as_f64());
        let pt_n_cpu = tc.and_then(|c| c.get("naive")?.get("cpu_p50")?.as_f64());
        let both = |w: Option<f64>, c: Option<f64>| match (w, c) {
            (Some(_), Some(_)) => format!("{} (CPU {})", ratio(w), ratio(c)),
            _ => ratio(w),
        };
        let floor = g.map(|g| c.flops / (g * 1e9));
        // The same work at one core's GEMM throughput, against our CPU seconds: steadier when the
        // machine is shared (our threads then get less than their cores).
        let floor_cpu = gflops(res, 1).map(|g| c.flops / (g * 1e9));
        let sess = r.session.as_ref().and_then(|s| div(Some(s.session.p50), Some(s.fresh.p50)));
        // The whole catalog against K candidates: every item scored, and the exact top-k request
        // (best-first pruning) an app would send.
        let cat = catalog_cell(r).map(|cc| {
            let all = ratio(div(Some(cc.ours.p50), ours));
            match cc.topk.as_ref() {
                Some(t) => format!("{all} (top-{}: {})", cc.topk_k, ratio(div(Some(t.p50), ours))),
                None => all,
            }
        });
        let tps = r
            .prefill
            .iter()
            .find(|p| p.tokens == 512)
            .map(|p| (p.tokens_per_s, p.tokens as f64 / p.samples.cpu_p50.max(1e-9)));
        let _ = writeln!(
            o,
            "| {} | {} ({}) | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.weight_type,
            ms(c.ours.p50),
            ms(c.ours.p95),
            c.ours.cpu_p50,
            naive.map_or("–".into(), ms),
            both(div(naive, ours), div(naive_cpu, ours_cpu)),
            raw.map_or("–".into(), ms),
            both(div(ours, raw), div(ours_cpu, raw_cpu)),
            pt_s.map_or("–".into(), ms),
            both(div(pt_s, ours), div(pt_s_cpu, ours_cpu)),
            pt_n.map_or("–".into(), ms),
            both(div(pt_n, ours), div(pt_n_cpu, ours_cpu)),
            floor.map_or("–".into(), ms),
            both(div(ours, floor), div(ours_cpu, floor_cpu)),
            ratio(sess),
            cat.unwrap_or_else(|| "–".into()),
            tps.map_or("–".into(), |(w, c)| format!("{w:.0} ({c:.0} per CPU-s)")),
            mib(r.memory.after_first_rank.hwm as f64),
        );
    }
    if let Some(n) = &mr.torch_note {
        let _ = writeln!(o, "\nPyTorch: {n}.");
    } else if let Some(t) = &mr.torch {
        let diff = tc
            .and_then(|c| c.get("strong"))
            .and_then(|s| s.get("max_abs_diff_vs_ours"))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            o,
            "\nPyTorch {} / transformers {}, float32 eager, {} threads, one model for every weight type (the \
             {} values); max |Δ log-likelihood| vs ours on the same values ({}): {diff:.3}.",
            t["torch"].as_str().unwrap_or("?"),
            t["transformers"].as_str().unwrap_or("?"),
            t["threads"],
            reference_type(mr),
            reference_type(mr),
        );
    }
    if let Some(r) = mr.types.first() {
        if let Some(s) = &r.session {
            let _ = writeln!(
                o,
                "\nSession re-rank ({}): after one `push`, {} rows decoded ({} prefix rows reused) vs {} for a fresh \
                 rank: {} ms vs {} ms. With an eager push (`Session::prefill` after it): prefill {} ms, then the \
                 rank decodes {} rows in {} ms ({} of a fresh rank; prefill + rank {}).",
                r.weight_type,
                s.session_decoded_rows,
                s.session_prefix_reused,
                s.fresh_decoded_rows,
                ms(s.session.p50),
                ms(s.fresh.p50),
                ms(s.prefill.p50),
                s.after_prefill_decoded_rows,
                ms(s.after_prefill.p50),
                div(Some(s.after_prefill.p50), Some(s.fresh.p50)).map_or("-".into(), |x| format!("{x:.2}×")),
                div(Some(s.prefill.p50 + s.after_prefill.p50), Some(s.session.p50))
                    .map_or("-".into(), |x| format!("{x:.2}× today's session rank")),
            );
        }
        for c in cell(r, hh, hk).into_iter().chain(catalog_cell(r)) {
            let what = if c.whole_catalog { format!("Whole catalog ({} items)", c.k) } else { format!("K = {}", c.k) };
            let _ = write!(
                o,
                "{what}, {}: every candidate scored: {} rows decoded in {} calls, {} ms",
                r.weight_type,
                c.decoded_rows,
                c.decode_calls,
                ms(c.ours.p50)
            );
            match &c.topk {
                Some(t) => {
                    let _ = writeln!(
                        o,
                        "; top-{} (best-first pruning, exact): {} rows, {} candidates pruned, {} ms.",
                        c.topk_k,
                        c.topk_decoded_rows,
                        c.topk_pruned,
                        ms(t.p50)
                    );
                }
                None => {
                    let _ = writeln!(o, ".");
                }
            }
        }
    }
    let _ = writeln!(o);
    quality(o, mr, hh, hk);

    // Grid per weight type.
    for r in &mr.types {
        let _ = writeln!(o, "### {} {}: ours p50 ms (p95) · naive/ours · ours/raw\n", mr.name, r.weight_type);
        let mut head = "| H \\ K |".to_string();
        let mut sep = "|---|".to_string();
        for k in &st.ks {
            let _ = write!(head, " {k} |");
            sep.push_str("---|");
        }
        let whole = catalog_cell(r);
        if whole.is_some() {
            let _ = write!(head, " catalog ({}) |", r.n_items);
            sep.push_str("---|");
        }
        let _ = writeln!(o, "{head}\n{sep}");
        for &h in &st.hs {
            let mut line = format!("| {h} |");
            for &k in &st.ks {
                match cell(r, h, k) {
                    Some(c) => {
                        let _ = write!(line, " {}", grid_text(c));
                    }
                    None => line.push_str(" – |"),
                }
            }
            if let Some(c) = whole {
                if c.h == h {
                    let _ = write!(line, " {}", grid_text(c));
                } else {
                    line.push_str(" |");
                }
            }
            let _ = writeln!(o, "{line}");
        }
        let _ = writeln!(o);
    }

    // Open and memory.
    let _ = writeln!(o, "### {}: open and memory\n", mr.name);
    let _ = writeln!(
        o,
        "| weights | file MiB | cold open ms | cold open → first ranking ms | warm open ms | warm open → first ranking ms \
         | peak RSS MiB | mapped weights resident MiB | KV cache MiB | scratch MiB | peak RSS with the whole catalog MiB \
         | budget MiB (one context) | peak / budget |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &mr.types {
        let op = &r.open;
        let mem = &r.memory;
        let cold = if op.cold_evicted { String::new() } else { " (page cache not dropped)".into() };
        let _ = writeln!(
            o,
            "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} ({} cells) | {} | {} | {} | {} |",
            r.weight_type,
            mib(mem.model_file_bytes as f64),
            ms(op.cold_open_s),
            cold,
            ms(op.cold_open_s + op.cold_first_rank_s),
            ms(op.warm_open.p50),
            ms(op.warm_open.p50 + op.warm_first_rank.p50),
            mib(mem.after_first_rank.hwm as f64),
            mib(mem.after_first_rank.file.saturating_sub(mem.before_open.file) as f64),
            mib(mem.kv_bytes as f64),
            mem.kv_cells,
            mib(mem.after_first_rank.anon as f64 - mem.before_open.anon as f64 - mem.kv_bytes as f64),
            if catalog_cell(r).is_some() { mib(mem.peak_rss as f64) } else { "–".into() },
            if mem.budget_in_use > 0 { mib(mem.budget_in_use as f64) } else { "–".into() },
            if mem.budget_in_use > 0 { format!("{:.2}", mem.peak_over_budget) } else { "–".into() },
        );
    }
    let _ = writeln!(
        o,
        "\nAfter the cold open and the first ranking (H = {hh}, K = {hk}). KV cache bytes = 2 (K, V) × layers × KV \
         heads × head dim × context cells × 2 bytes (F16); mapped weights = growth of file-backed RSS; scratch = \
         growth of anonymous RSS minus the KV cache (compute buffers, logits, weights llama.cpp repacks into \
         anonymous memory, heap). Budget = `Engine::memory_budget` (weights + KV + logits + compute + \
         overhead, an upper bound) with the one context the measured calls used; peak / budget compares it \
         with the peak RSS of ranking alone (the whole catalog when measured).\n"
    );
    for r in &mr.types {
        let b = &r.memory.budget;
        if b.total > 0 {
            let per = |x: u64| mib(x as f64 / b.max_contexts.max(1) as f64);
            let _ = writeln!(
                o,
                "- budget, {}: weights {} MiB, per context: KV {} MiB, logits {} MiB, compute {} MiB; \
                 overhead {} MiB; {} MiB with all {} contexts",
                r.weight_type,
                mib(b.weights as f64),
                per(b.kv),
                per(b.logits),
                per(b.compute),
                mib(b.overhead as f64),
                mib(b.total as f64),
                b.max_contexts,
            );
        }
    }
    for r in &mr.types {
        if !r.llama_buffers.is_empty() {
            let _ = writeln!(o, "- llama.cpp buffers, {}: {}", r.weight_type, r.llama_buffers.join("; "));
        }
    }
    let _ = writeln!(o);

    // Threads.
    if st.threads.len() > 1 || mr.omp_default.is_some() {
        let _ = writeln!(o, "### {}: threads at H = {hh}, K = {hk}\n", mr.name);
        let _ = writeln!(o, "| weights | threads | ours ms | ours CPU s | raw ms | naive ms | naive/ours | ours/raw |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        for r in &mr.types {
            let mut cells: Vec<&Cell> = cell(r, hh, hk).into_iter().collect();
            cells.extend(r.threads.iter());
            fn ab<'a>(
                d: &'a Option<WorkerResult>,
                ty: &str,
                label: &'static str,
                hh: usize,
                hk: usize,
            ) -> Option<(&'a Cell, &'static str)> {
                d.as_ref().filter(|d| d.weight_type == ty).and_then(|d| cell(d, hh, hk).map(|c| (c, label)))
            }
            let (pa, de) = if mr.omp_passive.is_some() {
                ("OMP_WAIT_POLICY=PASSIVE, A/B run", "OpenMP default wait, A/B run")
            } else {
                ("", "OpenMP default wait, run after the others")
            };
            let labelled: Vec<(&Cell, &str)> = cells
                .into_iter()
                .map(|c| (c, ""))
                .chain(ab(&mr.omp_passive, &r.weight_type, pa, hh, hk))
                .chain(ab(&mr.omp_default, &r.weight_type, de, hh, hk))
                .collect();
            for (c, label) in labelled {
                let naive = c.naive.as_ref().map(|s| s.p50);
                let raw = c.raw.as_ref().map(|s| s.p50);
                let _ = writeln!(
                    o,
                    "| {} | {}{} | {} | {:.2} | {} | {} | {} | {} |",
                    r.weight_type,
                    c.threads,
                    if label.is_empty() { String::new() } else { format!(" ({label})") },
                    ms(c.ours.p50),
                    c.ours.cpu_p50,
                    raw.map_or("–".into(), ms),
                    naive.map_or("–".into(), ms),
                    ratio(div(naive, Some(c.ours.p50))),
                    ratio(div(Some(c.ours.p50), raw)),
                );
            }
        }
        let _ = writeln!(o);
    }
    let mut notes: Vec<String> = mr.failures.clone();
    for r in &mr.types {
        notes.extend(r.errors.iter().map(|e| format!("{}: {e}", r.weight_type)));
        notes.extend(r.plan_mismatches.iter().map(|e| format!("{}: plan vs run: {e}", r.weight_type)));
        if let Some(s) = &r.shape {
            let types: Vec<String> = s.tensor_types.iter().map(|(t, n)| format!("{n} {t}")).collect();
            notes.push(format!("{} tensors: {}", r.weight_type, types.join(", ")));
        }
        for c in r.grid.iter().chain(&r.threads) {
            if let Some(n) = &c.naive_note {
                notes.push(format!("{} H={} K={} naive {n}", r.weight_type, c.h, c.k));
            }
        }
    }
    if let Some(t) = &mr.torch {
        for c in t.get("cells").and_then(Value::as_array).into_iter().flatten() {
            if let Some(n) = c.get("naive_note").and_then(Value::as_str) {
                notes.push(format!("PyTorch H={} K={} naive {n}", c["h"], c["k"]));
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(o, "Notes:\n");
        for n in notes {
            let _ = writeln!(o, "- {n}");
        }
        let _ = writeln!(o);
    }
}

fn grid_text(c: &Cell) -> String {
    let naive = c.naive.as_ref().map(|s| s.p50);
    let raw = c.raw.as_ref().map(|s| s.p50);
    format!(
        "{} ({}) · {} · {} |",
        ms(c.ours.p50),
        ms(c.ours.p95),
        ratio(div(naive, Some(c.ours.p50))),
        ratio(div(Some(c.ours.p50), raw))
    )
}

/// How far each weight type's scores are from the reference type's (the file the others were made
/// from) and from PyTorch's, on the headline request.
fn quality(o: &mut String, mr: &ModelResult, hh: usize, hk: usize) {
    let Some(reference) = mr.types.iter().find(|r| r.weight_type == reference_type(mr)) else { return };
    if reference.headline_scores.is_empty() {
        return;
    }
    let torch: Option<Vec<f64>> = torch_cell(mr, hh, hk)
        .and_then(|c| c.get("strong")?.get("scores")?.as_array().cloned())
        .map(|v| v.iter().filter_map(Value::as_f64).collect());
    let top = |s: &[f64], n: usize| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..s.len()).collect();
        idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        idx.truncate(n);
        idx.sort();
        idx
    };
    let r_scores: Vec<f64> = reference.headline_scores.iter().map(|x| x.1).collect();
    let _ = writeln!(
        o,
        "### {}: scores of each weight type (H = {hh}, K = {hk})\n\nAgainst {} (the file the other types were \
         made from){}: max |Δ log-likelihood| over the candidates, and whether the top 5 are the same set.\n",
        mr.name,
        reference.weight_type,
        if torch.is_some() { " and PyTorch float32 on the same values" } else { "" }
    );
    let _ = writeln!(
        o,
        "| weights | max abs diff vs {} | same top 5 | max abs diff vs PyTorch | same top 5 as PyTorch | naive vs \
         shared plan, same weights |",
        reference.weight_type
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    for r in &mr.types {
        let s: Vec<f64> = r.headline_scores.iter().map(|x| x.1).collect();
        if s.len() != r_scores.len() || s.is_empty() {
            continue;
        }
        let d = s.iter().zip(&r_scores).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let (dt, tt) = match &torch {
            Some(t) if t.len() == s.len() => (
                format!("{:.3}", s.iter().zip(t).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)),
                if top(&s, 5) == top(t, 5) { "yes" } else { "no" }.to_string(),
            ),
            _ => ("–".into(), "–".into()),
        };
        let same = if top(&s, 5) == top(&r_scores, 5) { "yes" } else { "no" };
        let nv = cell(r, hh, hk).and_then(|c| c.naive_max_abs_diff).map_or("–".into(), |d| format!("{d:.3}"));
        let _ = writeln!(o, "| {} | {d:.3} | {same} | {dt} | {tt} | {nv} |", r.weight_type);
    }
    let _ = writeln!(o);
}

fn reference_type(mr: &ModelResult) -> &str {
    if mr.name == crate::fixtures::SMOLLM2 {
        "q4_1"
    } else {
        "f16"
    }
}
