//! `Engine::memory_budget` against what llama.cpp reports allocating and against the peak
//! resident set of a child process (`delrec-stress rss`) that opens the engine, puts every
//! context to work on whole-catalog ranks, and recommends.

use std::process::Command;

use delrec_runtime::MemoryBudget;
use delrec_tests::{bin, model, seq_pack};
use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;

/// The child's report and what llama.cpp logged (`DELREC_LLAMA_LOG=1` prints its log, the
/// buffer sizes included, to stderr).
fn probe(args: &[&str]) -> (Value, String) {
    let m = model("llama-tiny", "f32");
    seq_pack(&m, "llama-tiny", "prompt-llama");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.json");
    let out = Command::new(bin("delrec-stress"))
        .arg("rss")
        .args(args)
        .arg("--out")
        .arg(&path)
        .env("DELREC_LLAMA_LOG", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "delrec-stress rss {args:?} failed: {}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (v, log)
}

/// The MiB values llama.cpp logged on lines containing `what`, as `… {what} = X MiB`.
fn logged(log: &str, what: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(what)? + what.len()..];
            let rest = rest.trim_start().strip_prefix('=')?.trim_start();
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .collect()
}

fn u(v: &Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or_else(|| panic!("{path:?} missing in {v}")) as f64
}

fn check(args: &[&str], contexts: usize, quantized: bool) {
    let (v, log) = probe(args);
    let b = &v["budget"];
    let total = u(b, &["total"]);
    let sum: f64 = ["weights", "kv", "logits", "compute", "overhead"].iter().map(|k| u(b, &[k])).sum();
    assert_eq!(total, sum, "total is the sum of the parts: {v}");
    let hwm = u(&v, &["hwm"]);
    let summary = format!(
        "{args:?}: peak RSS {:.1} MiB, budget {:.1} MiB (weights {:.2}, kv {:.2}, logits {:.2}, compute {:.2}, \
         overhead {:.2}), before open {:.1} MiB",
        hwm / MIB,
        total / MIB,
        u(b, &["weights"]) / MIB,
        u(b, &["kv"]) / MIB,
        u(b, &["logits"]) / MIB,
        u(b, &["compute"]) / MIB,
        u(b, &["overhead"]) / MIB,
        u(&v, &["hwm_before_open"]) / MIB,
    );
    eprintln!("{summary}");
    assert_eq!(v["ranked"], 42, "{v}");
    assert_eq!(v["recommended"], 5, "{v}");

    // The parts against llama.cpp's own account, context by context.
    let kv = logged(&log, "llama_kv_cache: size");
    assert_eq!(kv.len(), contexts, "every context was made (one KV cache each): {kv:?}\n{summary}");
    for x in &kv {
        // The log prints two decimals of MiB.
        assert!((x - u(b, &["kv"]) / contexts as f64 / MIB).abs() <= 0.006, "KV {x} MiB logged\n{summary}");
    }
    let compute = logged(&log, "CPU compute buffer size");
    assert_eq!(compute.len(), contexts, "{compute:?}\n{summary}");
    let est = u(b, &["compute"]) / contexts as f64 / MIB;
    for x in &compute {
        // An upper bound, and not a loose one: at most twice what llama.cpp reserved, plus the
        // work buffer and graph metadata it does not count (about 2 MiB here).
        assert!(est >= *x, "compute: estimated {est:.2} MiB, llama.cpp reserved {x} MiB\n{summary}");
        assert!(est <= 2.0 * x + 4.0, "compute: estimated {est:.2} MiB, llama.cpp reserved {x} MiB\n{summary}");
    }
    let output = logged(&log, "CPU  output buffer size");
    assert_eq!(output.len(), contexts, "{output:?}\n{summary}");
    for x in &output {
        assert!(u(b, &["logits"]) / contexts as f64 / MIB >= *x, "logits buffer {x} MiB logged\n{summary}");
    }
    // Weights: what llama.cpp put in model buffers (mapped, and repacked for its CPU kernels).
    let model_buffers: f64 = logged(&log, "model buffer size").iter().sum();
    assert!(model_buffers > 0.0, "no model buffer logged");
    let weights = u(b, &["weights"]);
    assert!(weights / MIB >= model_buffers - 0.01, "weights {weights} vs {model_buffers} MiB logged\n{summary}");
    assert!(weights <= 2.0 * u(&v, &["model_file_bytes"]), "{summary}");
    if !quantized {
        assert!((weights / MIB - model_buffers).abs() <= 0.02, "weights {weights} vs {model_buffers} MiB\n{summary}");
    }
    // No buffer grew after it was reserved (that would be memory the budget does not see).
    assert!(!log.contains("does not match expectation"), "a compute buffer grew:\n{summary}");

    // The total against the measured peak, both ways. The slack: the test binary links the
    // converter, the FFI layer and the fixture builders, which an app does not (6.5 MiB are
    // resident before the engine opens, of which the runtime's share is part of OVERHEAD_FIXED);
    // 8 MiB covers the rest.
    let slack = 8.0 * MIB;
    assert!(hwm <= 1.5 * total + slack, "the budget is too small: {summary}");
    assert!(total <= 4.0 * hwm, "the budget is absurdly large: {summary}");
    // The fixed allowance covers what is not the other parts.
    let rest = hwm - (sum - u(b, &["overhead"]));
    assert!(rest <= u(b, &["overhead"]) + slack, "{:.1} MiB outside the parts: {summary}", rest / MIB);
    assert!(MemoryBudget::OVERHEAD_FIXED as f64 <= u(b, &["overhead"]));
}

#[test]
fn exact_configuration_peak_rss_is_within_the_budget() {
    // F32 KV cache, classic attention: the attention scores dominate the compute buffer.
    check(&["--max-contexts", "2", "--kv", "f32", "--flash-attention", "off"], 2, false);
}

#[test]
fn default_configuration_peak_rss_is_within_the_budget() {
    // The engine's defaults (F16 KV cache, flash attention), three contexts, a smaller batch.
    check(&["--max-contexts", "3", "--kv", "f16", "--flash-attention", "on", "--batch-size", "256"], 3, false);
}

#[test]
fn quantized_weights_are_counted_with_their_repacked_copy() {
    // Q8_0 weights: the budget allows a repacked copy of every weight (llama.cpp repacks what its
    // CPU kernels have layouts for; rows as narrow as this fixture's stay as they are).
    check(&["--fixture", "llama-tiny-q8_0", "--max-contexts", "1", "--flash-attention", "on", "--kv", "f16"], 1, true);
}

#[test]
fn repacking_off_drops_the_repacked_copy_from_the_budget() {
    use delrec_runtime::{Engine, EngineConfig};
    let m = model("llama-tiny", "q8_0");
    let p = seq_pack(&model("llama-tiny", "f32"), "llama-tiny", "prompt-llama");
    let open = |repack_weights: bool| {
        // The pack pins the F32 file's digest: the Q8_0 file opens unverified.
        let cfg = EngineConfig { verify_checksum: false, repack_weights, threads: 1, ..Default::default() };
        Engine::open(&m, &p, cfg).unwrap()
    };
    let (on, off) = (open(true), open(false));
    let size = std::fs::metadata(&m).unwrap().len();
    let (w_on, w_off) = (on.memory_budget().weights, off.memory_budget().weights);
    assert!(w_off < size && w_on == 2 * w_off, "weights budget: repack on {w_on}, off {w_off}, file {size}");
    assert!(!on.config().repack_weights.eq(&off.config().repack_weights));
    // The same scores either way on this fixture (its rows are too narrow for ggml to repack).
    let ids = delrec_tests::catalog_ids();
    let req = delrec_runtime::RankRequest {
        history: ids[..3].to_vec(),
        candidates: Some(ids[3..9].to_vec()),
        ..Default::default()
    };
    let (a, b) = (on.rank(&req).unwrap(), off.rank(&req).unwrap());
    assert!(a.items.iter().zip(&b.items).all(|(x, y)| x.id == y.id && (x.logprob - y.logprob).abs() < 1e-5));
}
