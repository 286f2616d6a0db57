//! `delrec-bench verbalizer`: DELRec's one-pass verbalizer ranking against title-likelihood
//! ranking, measured side by side in one process, on the real SmolLM2-135M (decoder-only) and on
//! an encoder-decoder of Flan-T5-small's shape (random weights: no Flan-T5 weights ship in a
//! package reachable here):
//!
//! - the whole catalog (1,682 generated titles) by the verbalizer: one pass (one encoder pass +
//!   two decoder rows on T5);
//! - 20 candidates by the verbalizer and by title likelihood (shared prefix + title trie);
//! - the exact whole-catalog top 10 by title likelihood (best-first trie search), for the first
//!   `--exact-users` users: the work the one-pass verbalizer avoids;
//! - title likelihood with few sequences per context (`--few-seqs`: smaller candidate groups,
//!   so more decode calls for the same rows) against the default: llama.cpp recomputes a T5's
//!   cross-attention K/V from the encoder output in every decode call, so on T5 the extra time
//!   per extra call holds that cost (on SmolLM2 the same case shows the generic per-call cost).
//!
//! Run with `OMP_WAIT_POLICY=passive` for numbers comparable to the main bench (set before the
//! process starts: llama.cpp's OpenMP reads it once).

use std::path::{Path, PathBuf};
use std::time::Instant;

use delrec_convert::pack::{build_pack, BosChoice, PackOptions, VerbalizerSpec};
use delrec_convert::testing as gen;
use delrec_format::pack::ScoringMode;
use delrec_runtime::{Engine, EngineConfig, RankRequest, Ranking};
use serde::Serialize;
use serde_json::json;

use crate::{fixtures, sys, BResult};

const VERSION: &str = "vb1";
const T5_SEED: u64 = 23;
/// Flan-T5-small's shape (d_model 512, 8 + 8 layers, 6 heads of 64, gated-GELU 1024, 32,128
/// logits); the tokenizer is the fixture's real 810-piece Unigram model, rows padded.
const T5_SMALL: &str = r#"{"d_model": 512, "d_kv": 64, "num_heads": 6, "d_ff": 1024, "num_layers": 8,
    "num_decoder_layers": 8, "vocab_size": 32128}"#;
const SMOL_VERBALIZER: &str =
    "{soft:default} The user watched these movies in order:{history}.\nRecommend the next movie:{mask}";
const T5_TEMPLATE: &str =
    "Refer to the pattern:{soft:default}. The user watched these movies in order:{history}. The next movie might be:{mask}.";

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct VerbalizerArgs {
    /// Users (random histories of 10 items).
    #[arg(long, default_value_t = 3)]
    pub users: usize,
    /// Repetitions of the fast measurements per user.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Users that also get the exact whole-catalog top 10 by title likelihood.
    #[arg(long, default_value_t = 1)]
    pub exact_users: usize,
    /// Weight type of SmolLM2 and of the T5.
    #[arg(long = "type", default_value = "q8_0")]
    pub weight_type: String,
    #[arg(long)]
    pub threads: Option<usize>,
    /// `max_sequences` of the many-calls case (groups of this many − 1 candidates).
    #[arg(long, default_value_t = 4)]
    pub few_seqs: u32,
    /// Skip the T5 part.
    #[arg(long)]
    pub no_t5: bool,
    #[arg(long, default_value = "target/bench-cache")]
    pub cache: PathBuf,
    #[arg(long, default_value = "target/bench-verbalizer")]
    pub out: PathBuf,
    #[arg(long, default_value = "python3")]
    pub python: String,
    #[arg(long)]
    pub convert: Option<PathBuf>,
}

fn pack(
    model: &Path,
    tokenizer: Option<PathBuf>,
    catalog: &Path,
    template: &str,
    soft: &Path,
    scoring: ScoringMode,
    out: PathBuf,
) -> BResult<PathBuf> {
    if out.metadata().is_ok_and(|m| m.len() > 0) {
        return Ok(out);
    }
    let opts = PackOptions {
        models: vec![model.to_path_buf()],
        tokenizer,
        catalog: catalog.to_path_buf(),
        template: template.to_string(),
        soft_prompts: vec![("default".to_string(), soft.to_path_buf())],
        item_prefix: " ".to_string(),
        history_separator: ",".to_string(),
        candidates_separator: ", ".into(),
        verbalizer: (scoring == ScoringMode::Verbalizer).then(VerbalizerSpec::default),
        bos: BosChoice::Auto,
        max_history: None,
        scoring,
        soft_f16: false,
        name: None,
        out: out.clone(),
        seq: None,
        fusion: None,
        adapter: None,
    };
    build_pack(&opts).map_err(|e| format!("pack {}: {e}", out.display()))?;
    Ok(out)
}

/// A history of 10 and 20 candidates (the target among them) per user, from a fixed seed.
fn users(ids: &[String], n: usize) -> Vec<(Vec<String>, Vec<String>)> {
    let mut rng = gen::SplitMix(0x5eed);
    (0..n)
        .map(|_| {
            let mut pick = |k: usize, not: &[String]| {
                let mut out: Vec<String> = Vec::with_capacity(k);
                while out.len() < k {
                    let id = &ids[rng.below(ids.len())];
                    if !out.contains(id) && !not.contains(id) {
                        out.push(id.clone());
                    }
                }
                out
            };
            let h = pick(10, &[]);
            let c = pick(20, &h);
            (h, c)
        })
        .collect()
}

#[derive(Default, Serialize)]
struct Case {
    ms: Vec<f64>,
    decoded_rows: usize,
    decode_calls: usize,
    encoder_passes: usize,
    tied: usize,
}

impl Case {
    fn add(&mut self, r: &Ranking, ms: f64) {
        self.ms.push(ms);
        self.decoded_rows = r.stats.decoded_rows;
        self.decode_calls = r.stats.decode_calls;
        self.encoder_passes = r.stats.encoder_passes;
        self.tied = r.items.iter().filter(|i| i.ties > 0).count();
    }

    fn p50(&self) -> f64 {
        sys::p50_p95(&self.ms).0
    }
}

fn rank(e: &Engine, history: &[String], cands: Option<&[String]>, top_k: Option<usize>) -> BResult<(Ranking, f64)> {
    let req = RankRequest {
        history: history.to_vec(),
        candidates: cands.map(<[String]>::to_vec),
        top_k,
        exclude_history: cands.is_none(),
        ..Default::default()
    };
    let t = Instant::now();
    let r = e.rank(&req)?;
    Ok((r, t.elapsed().as_secs_f64() * 1e3))
}

/// The cases of one model: verbalizer whole catalog and K = 20, title K = 20, title exact top 10.
fn measure(
    a: &VerbalizerArgs,
    name: &str,
    model: &Path,
    verb: &Path,
    title: &Path,
    cfg: &EngineConfig,
    extra: Option<u32>,
) -> BResult<serde_json::Value> {
    let ev = Engine::open(model, verb, cfg.clone()).map_err(|e| format!("{name}: open {}: {e}", verb.display()))?;
    let et = Engine::open(model, title, cfg.clone()).map_err(|e| format!("{name}: open {}: {e}", title.display()))?;
    let small = match extra {
        Some(n) => Some(Engine::open(model, title, EngineConfig { max_sequences: n.max(2), ..cfg.clone() })?),
        None => None,
    };
    let n = ev.pack().n_items();
    let ids: Vec<String> = (0..n as u32).filter_map(|i| ev.item(i).map(|(id, _)| id)).collect();
    let us = users(&ids, a.users);
    let (mut v_all, mut v_20, mut t_20, mut t_small, mut exact) =
        (Case::default(), Case::default(), Case::default(), Case::default(), Case::default());
    for rep in 0..a.reps {
        for (h, c) in &us {
            let (r, ms) = rank(&ev, h, None, Some(10))?;
            v_all.add(&r, ms);
            let (r, ms) = rank(&ev, h, Some(c), None)?;
            v_20.add(&r, ms);
            let (r, ms) = rank(&et, h, Some(c), None)?;
            t_20.add(&r, ms);
            if let Some(s) = &small {
                let (r, ms) = rank(s, h, Some(c), None)?;
                t_small.add(&r, ms);
            }
        }
        eprintln!("  {name}: repetition {}/{} done", rep + 1, a.reps);
    }
    for (h, _) in us.iter().take(a.exact_users) {
        let (r, ms) = rank(&et, h, None, Some(10))?;
        exact.add(&r, ms);
        eprintln!("  {name}: exact whole-catalog top 10 by title likelihood: {:.1} s", ms / 1e3);
    }
    Ok(json!({
        "model": name, "n_items": n,
        "verbalizer_whole_catalog": v_all, "verbalizer_20": v_20, "title_20": t_20,
        "title_20_few_seqs": extra.map(|n| json!({"max_sequences": n, "case": t_small})),
        "title_exact_top10": exact,
        "p50_ms": {"verbalizer_whole_catalog": v_all.p50(), "verbalizer_20": v_20.p50(), "title_20": t_20.p50(),
                   "title_20_few_seqs": extra.map(|_| t_small.p50()), "title_exact_top10": exact.p50()},
    }))
}

fn row(md: &mut String, label: &str, c: &serde_json::Value, base: f64) {
    let p50 = sys::p50_p95(
        &c["ms"].as_array().map(|v| v.iter().filter_map(|x| x.as_f64()).collect::<Vec<_>>()).unwrap_or_default(),
    )
    .0;
    if c["ms"].as_array().is_none_or(|v| v.is_empty()) {
        return;
    }
    md.push_str(&format!(
        "| {label} | {p50:.1} | {:.2}× | {} | {} | {} | {} |\n",
        p50 / base,
        c["decoded_rows"],
        c["decode_calls"],
        c["encoder_passes"],
        c["tied"]
    ));
}

pub fn run(a: &VerbalizerArgs) -> BResult<()> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&a.out)?;
    let exe = std::env::current_exe()?;
    let convert = match &a.convert {
        Some(c) => c.clone(),
        None => exe.parent().map(|d| d.join("delrec-convert")).ok_or("no directory for the current executable")?,
    };
    let tools = fixtures::Tools { python: a.python.clone(), convert: convert.clone() };
    let mut step = |m: &str| eprintln!("[{:>6.1} s] {m}", t0.elapsed().as_secs_f64());
    let threads = a.threads.unwrap_or_else(sys::n_cpus).max(1);
    let cfg = EngineConfig { threads, verify_checksum: false, ..EngineConfig::default() };
    let f =
        fixtures::ensure(&tools, &a.cache, fixtures::SMOLLM2, std::slice::from_ref(&a.weight_type), None, &mut step)?;
    let model = f.files.first().map(|(_, p)| p.clone()).ok_or("no model file")?;
    let root = a.cache.join("v2").join("verbalizer");
    std::fs::create_dir_all(&root)?;
    step("SmolLM2-135M: the verbalizer pack");
    let verb = pack(
        &f.base,
        None,
        &f.catalog,
        SMOL_VERBALIZER,
        &f.soft_prompt,
        ScoringMode::Verbalizer,
        root.join(format!("smollm2.{VERSION}.verbalizer.pack.gguf")),
    )?;
    let mut results = vec![measure(a, "SmolLM2-135M", &model, &verb, &f.pack, &cfg, Some(a.few_seqs))?];
    if !a.no_t5 {
        let dir = root.join(format!("t5-small-shape-s{T5_SEED}"));
        let gguf = root.join(format!("t5-small-shape-s{T5_SEED}.{}.gguf", a.weight_type));
        if !gguf.metadata().is_ok_and(|m| m.len() > 0) {
            step("writing a random T5 of Flan-T5-small's shape (77M parameters)");
            let cfg: serde_json::Value = serde_json::from_str(T5_SMALL)?;
            gen::write_t5(&dir, &cfg, T5_SEED);
            step("converting it");
            let st = std::process::Command::new(&convert)
                .args(["model", "--hf"])
                .arg(&dir)
                .arg("--out")
                .arg(&gguf)
                .args(["--outtype", &a.weight_type])
                .status()?;
            if !st.success() {
                return Err(format!("converting the T5 failed ({st})").into());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        // A soft prompt of the T5's width.
        let soft = root.join("t5-soft");
        if !soft.join("adapter_model.safetensors").exists() {
            gen::write_random_prompt_adapter(&soft, fixtures::N_VIRTUAL, 512, 5, 0.5)?;
        }
        let tok = Some(gen::t5_tokenizer_dir());
        step("T5: the verbalizer and title packs");
        let tv = pack(
            &gguf,
            tok.clone(),
            &f.catalog,
            T5_TEMPLATE,
            &soft,
            ScoringMode::Verbalizer,
            root.join(format!("t5.{VERSION}.{}.verbalizer.pack.gguf", a.weight_type)),
        )?;
        let tt = pack(
            &gguf,
            tok,
            &f.catalog,
            T5_TEMPLATE,
            &soft,
            ScoringMode::Sum,
            root.join(format!("t5.{VERSION}.{}.title.pack.gguf", a.weight_type)),
        )?;
        results.push(measure(a, "T5 (Flan-T5-small shape, random)", &gguf, &tv, &tt, &cfg, Some(a.few_seqs))?);
    }
    let mut md = format!(
        "# Verbalizer (one pass) vs title likelihood\n\n`{}` · {} · {threads} threads · {} users × {} reps · weights {} · {:.0} s\n",
        std::env::args().collect::<Vec<_>>().join(" "),
        sys::cpu_model(),
        a.users,
        a.reps,
        a.weight_type,
        t0.elapsed().as_secs_f64()
    );
    for r in &results {
        let base = r["p50_ms"]["title_20"].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "\n## {} ({} items)\n\n| case | p50 ms | vs title K=20 | decoded rows | decode calls | encoder passes | items tied |\n|---|---|---|---|---|---|---|\n",
            r["model"].as_str().unwrap_or(""),
            r["n_items"]
        ));
        row(&mut md, "verbalizer, whole catalog (top 10)", &r["verbalizer_whole_catalog"], base);
        row(&mut md, "verbalizer, 20 candidates", &r["verbalizer_20"], base);
        row(&mut md, "title likelihood, 20 candidates", &r["title_20"], base);
        if let Some(s) = r["title_20_few_seqs"].as_object() {
            row(
                &mut md,
                &format!("title likelihood, 20 candidates, max_sequences {}", s["max_sequences"]),
                &s["case"],
                base,
            );
        }
        row(&mut md, "title likelihood, exact whole-catalog top 10", &r["title_exact_top10"], base);
        if let Some(s) = r["title_20_few_seqs"].as_object() {
            // The extra time per extra decode call (same rows, smaller groups).
            let (c0, c1) = (&r["title_20"], &s["case"]);
            let p = |c: &serde_json::Value| {
                sys::p50_p95(
                    &c["ms"]
                        .as_array()
                        .map(|v| v.iter().filter_map(|x| x.as_f64()).collect::<Vec<_>>())
                        .unwrap_or_default(),
                )
                .0
            };
            let calls = |c: &serde_json::Value| c["decode_calls"].as_f64().unwrap_or(0.0);
            if calls(c1) > calls(c0) {
                md.push_str(&format!(
                    "\nPer extra decode call (max_sequences {} vs default): {:.1} ms ({} → {} calls).\n",
                    s["max_sequences"],
                    (p(c1) - p(c0)) / (calls(c1) - calls(c0)),
                    calls(c0),
                    calls(c1)
                ));
            }
        }
    }
    std::fs::write(a.out.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(a.out.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}
