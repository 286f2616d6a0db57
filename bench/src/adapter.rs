//! `delrec-bench adapter`: a LoRA fine-tune served as a run-time adapter over a quantized base,
//! against the same LoRA merged and quantized, in one run on the real SmolLM2-135M weights:
//!
//! - **fidelity** to the merged F16 model (the reference: the fine-tune at full precision), on the
//!   same random requests (H = 10, K = 20): top-1 agreement, top-5 overlap and mean |Δscore| of
//!   merged Q8_0 / Q4_0 / Q4_1, Q4_0 / Q4_1 base + F16 adapter, and the base without the adapter
//!   (how far the fine-tune moves the scores);
//! - **speed**: p50 of the same request, interleaved repetitions: plain Q4_0 (no fine-tune),
//!   Q4_0 + adapter, merged Q4_0, merged Q8_0, and the Q4_1 pair;
//! - **memory**: peak RSS of a fresh process (`adapter-mem`) that opens and ranks with one merged
//!   Q4_0 model, two merged Q4_0 models (two fine-tunes), or one Q4_0 base with two packs, each
//!   with its own adapter.
//!
//! The fine-tune is synthetic (the recipe's shape: r 8, α 16, all seven projections of every
//! layer; A ~ N(0, 1/in), B ~ N(0, σ²)), so the fidelity rows say how run-time adapters and merging
//! treat an update of the reported size relative to the Q4_0 grid; the trained model's rows come
//! from `scripts/eval-real.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use delrec_convert::testing::{self as gen, RandomTensor, SplitMix};
use delrec_runtime::format::gguf::GgufFile;
use delrec_runtime::{Base, Engine, EngineConfig, RankRequest, Ranking};
use serde::{Deserialize, Serialize};

use crate::{fixtures, sys, BResult};

#[derive(clap::Args, Clone, Debug)]
pub struct AdapterArgs {
    #[arg(long, default_value = "target/bench-cache")]
    cache: PathBuf,
    /// Requests of the fidelity comparison.
    #[arg(long, default_value_t = 40)]
    users: usize,
    /// Timed repetitions per configuration (interleaved).
    #[arg(long, default_value_t = 12)]
    reps: usize,
    /// Standard deviation of B (the size of the synthetic fine-tune).
    #[arg(long, default_value_t = 0.03)]
    b_std: f32,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    convert: Option<PathBuf>,
    #[arg(long, default_value = "python3")]
    python: String,
}

/// SmolLM2-135M's shape, what the LoRA's tensors must fit.
const LAYERS: usize = 30;
const HIDDEN: usize = 576;
const KV: usize = 192;
const FF: usize = 1536;
const RANK: usize = 8;
const ALPHA: f64 = 16.0;

/// A PEFT LoRA directory for SmolLM2-135M (seeded).
fn write_lora(dir: &Path, seed: u64, b_std: f32) -> BResult<()> {
    if dir.join("adapter_model.safetensors").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let cfg = serde_json::json!({"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA,
        "target_modules": ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"],
        "use_rslora": false, "fan_in_fan_out": false, "bias": "none", "task_type": "CAUSAL_LM"});
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_vec_pretty(&cfg)?)?;
    let mut t = vec![];
    for l in 0..LAYERS {
        for (group, m, out, inp) in [
            ("self_attn", "q_proj", HIDDEN, HIDDEN),
            ("self_attn", "k_proj", KV, HIDDEN),
            ("self_attn", "v_proj", KV, HIDDEN),
            ("self_attn", "o_proj", HIDDEN, HIDDEN),
            ("mlp", "gate_proj", FF, HIDDEN),
            ("mlp", "up_proj", FF, HIDDEN),
            ("mlp", "down_proj", HIDDEN, FF),
        ] {
            let p = format!("base_model.model.model.layers.{l}.{group}.{m}.");
            let f32t = delrec_convert::st::Dtype::F32;
            t.push(RandomTensor {
                name: format!("{p}lora_A.weight"),
                dtype: f32t,
                shape: vec![RANK, inp],
                mean: 0.0,
                std: 1.0 / (inp as f32).sqrt(),
            });
            t.push(RandomTensor {
                name: format!("{p}lora_B.weight"),
                dtype: f32t,
                shape: vec![out, RANK],
                mean: 0.0,
                std: b_std,
            });
        }
    }
    gen::write_random_safetensors(&dir.join("adapter_model.safetensors"), &t, seed)?;
    Ok(())
}

fn s(p: &Path) -> BResult<&str> {
    p.to_str().ok_or_else(|| format!("path {p:?} is not UTF-8").into())
}

fn convert(tools: &fixtures::Tools, args: &[&str]) -> BResult<()> {
    let out = Command::new(&tools.convert).args(args).output()?;
    if !out.status.success() {
        return Err(format!("delrec-convert {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// The files of one run (all in `dir`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Files {
    base_q4_0: PathBuf,
    base_q4_1: PathBuf,
    base_f16: PathBuf,
    merged_f16: PathBuf,
    merged_q8_0: PathBuf,
    merged_q4_0: PathBuf,
    merged_q4_1: PathBuf,
    merged2_q4_0: PathBuf,
    /// The LoRA merged into the dequantized Q4_0 base (F16): the fine-tune on Q4_0's own weights.
    on_q4_0_f16: PathBuf,
    on_q4_0_pack: PathBuf,
    /// Pins the merged files.
    merged_pack: PathBuf,
    merged2_pack: PathBuf,
    /// Pins the base files; adapter 1 or 2.
    adapter_pack: PathBuf,
    adapter2_pack: PathBuf,
    /// Pins the base files, no adapter.
    plain_pack: PathBuf,
    adapter: PathBuf,
}

fn prepare(a: &AdapterArgs, tools: &fixtures::Tools) -> BResult<Files> {
    let types: Vec<String> = ["f16", "q4_0"].iter().map(|s| s.to_string()).collect();
    let f = fixtures::ensure(tools, &a.cache, fixtures::SMOLLM2, &types, None, &mut |m| eprintln!("smollm2: {m}"))?;
    let dir = f.base.parent().ok_or("fixture without a directory")?.join(format!("adapter-b{}", a.b_std));
    std::fs::create_dir_all(&dir)?;
    let base_f16 = f.files[0].1.clone();
    let files = Files {
        base_q4_0: f.files[1].1.clone(),
        base_q4_1: f.base.clone(),
        merged_f16: dir.join("merged.f16.gguf"),
        merged_q8_0: dir.join("merged.q8_0.gguf"),
        merged_q4_0: dir.join("merged.q4_0.gguf"),
        merged_q4_1: dir.join("merged.q4_1.gguf"),
        merged2_q4_0: dir.join("merged2.q4_0.gguf"),
        on_q4_0_f16: dir.join("on-q4_0.f16.gguf"),
        on_q4_0_pack: dir.join("on-q4_0.pack.gguf"),
        merged_pack: dir.join("merged.pack.gguf"),
        merged2_pack: dir.join("merged2.pack.gguf"),
        adapter_pack: dir.join("adapter.pack.gguf"),
        adapter2_pack: dir.join("adapter2.pack.gguf"),
        plain_pack: dir.join("plain.pack.gguf"),
        adapter: dir.join("lora1.f16.gguf"),
        base_f16,
    };
    if files.on_q4_0_pack.exists() {
        return Ok(files);
    }
    let catalog = f.catalog.clone();
    let sp = format!("default={}", s(&f.soft_prompt)?);
    let pack = |models: &[&Path], adapter: Option<&Path>, out: &Path| -> BResult<()> {
        if out.exists() {
            return Ok(());
        }
        let mut args: Vec<String> = vec!["pack".into()];
        for m in models {
            args.extend(["--model".into(), s(m)?.into()]);
        }
        args.extend(["--catalog".into(), s(&catalog)?.into(), "--template".into(), fixtures::TEMPLATE.into()]);
        args.extend(["--soft-prompt".into(), sp.clone(), "--out".into(), s(out)?.into()]);
        if let Some(a) = adapter {
            args.extend(["--adapter".into(), s(a)?.into()]);
        }
        convert(tools, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    for (k, seed) in [(1, 11u64), (2, 22)] {
        let lora = dir.join(format!("lora{k}"));
        write_lora(&lora, seed, a.b_std)?;
        let merged = dir.join(format!("merged{}.f16.gguf", if k == 1 { "" } else { "2" }));
        if !merged.exists() {
            eprintln!("adapter bench: merging LoRA {k} into F16");
            convert(tools, &["merge-lora", "--base", s(&files.base_f16)?, "--lora", s(&lora)?, "--out", s(&merged)?])?;
        }
        let ad = dir.join(format!("lora{k}.f16.gguf"));
        if !ad.exists() {
            convert(tools, &["adapter", "--base", s(&files.base_f16)?, "--lora", s(&lora)?, "--out", s(&ad)?])?;
        }
        let types: &[&str] = if k == 1 { &["q8_0", "q4_0", "q4_1"] } else { &["q4_0"] };
        for ty in types {
            let out = merged.with_file_name(format!("merged{}.{ty}.gguf", if k == 1 { "" } else { "2" }));
            if !out.exists() {
                convert(tools, &["quantize", "--in", s(&merged)?, "--out", s(&out)?, "--type", ty])?;
            }
        }
    }
    let lora1 = dir.join("lora1");
    let (q4, on) = (s(&files.base_q4_0)?, s(&files.on_q4_0_f16)?);
    convert(tools, &["merge-lora", "--base", q4, "--lora", s(&lora1)?, "--out", on, "--outtype", "f16"])?;
    pack(&[&files.on_q4_0_f16], None, &files.on_q4_0_pack)?;
    let ms = [&files.merged_f16, &files.merged_q8_0, &files.merged_q4_0, &files.merged_q4_1];
    pack(&ms.map(|p| p.as_path()), None, &files.merged_pack)?;
    pack(&[&files.merged2_q4_0], None, &files.merged2_pack)?;
    let bases = [files.base_f16.as_path(), files.base_q4_0.as_path(), files.base_q4_1.as_path()];
    pack(&bases, None, &files.plain_pack)?;
    pack(&bases, Some(&files.adapter), &files.adapter_pack)?;
    pack(&bases, Some(&dir.join("lora2.f16.gguf")), &files.adapter2_pack)?;
    Ok(files)
}

fn cfg(threads: usize) -> EngineConfig {
    EngineConfig { threads, max_contexts: 1, verify_checksum: false, ..Default::default() }
}

/// Random requests over the catalog: 10 history items, 20 other candidates.
fn requests(e: &Engine, n: usize) -> Vec<RankRequest> {
    let items = e.pack().n_items();
    let mut rng = SplitMix(2024);
    (0..n)
        .map(|_| {
            let mut pick = std::collections::BTreeSet::new();
            let mut order = vec![];
            while order.len() < 30 {
                let i = rng.below(items);
                if pick.insert(i) {
                    order.push(i);
                }
            }
            let id = |i: &usize| e.pack().item_id(*i as u32).unwrap_or_default().to_string();
            RankRequest {
                history: order[..10].iter().map(id).collect(),
                candidates: Some(order[10..].iter().map(id).collect()),
                ..Default::default()
            }
        })
        .collect()
}

/// Prints one fidelity table: each row's agreement with `reference` on the same requests.
fn fidelity(title: &str, reference: &Engine, rows: &[(&str, &Engine)], reqs: &[RankRequest]) -> BResult<()> {
    let want: Vec<Ranking> = reqs.iter().map(|r| reference.rank(r)).collect::<Result<_, _>>()?;
    println!("\n| vs {title} | same top-1 | top-5 overlap | mean \\|Δscore\\| (nats) |");
    println!("|---|---|---|---|");
    for (name, e) in rows {
        let (mut top1, mut over, mut delta, mut n) = (0usize, 0usize, 0f64, 0usize);
        for (r, w) in reqs.iter().zip(&want) {
            let got = e.rank(r)?;
            top1 += usize::from(got.items[0].id == w.items[0].id);
            let w5: Vec<&String> = w.items.iter().take(5).map(|i| &i.id).collect();
            over += got.items.iter().take(5).filter(|i| w5.contains(&&i.id)).count();
            let g = by_id(&got);
            for i in &w.items {
                delta += (g[&i.id] - i.score).abs();
                n += 1;
            }
        }
        println!(
            "| {name} | {:.0}% | {:.0}% | {:.3} |",
            100.0 * top1 as f64 / reqs.len() as f64,
            100.0 * over as f64 / (5 * reqs.len()) as f64,
            delta / n as f64
        );
    }
    Ok(())
}

fn by_id(r: &Ranking) -> std::collections::HashMap<String, f64> {
    r.items.iter().map(|i| (i.id.clone(), i.score)).collect()
}

/// The largest |ΔW| grid step of Q4_0 over a typical block and the update's RMS, for the report.
fn update_size(files: &Files) -> BResult<(f64, f64)> {
    let g = GgufFile::open(&files.base_f16)?;
    let m = GgufFile::open(&files.merged_f16)?;
    let name = "blk.10.attn_q.weight";
    let (t, u) = (g.tensor(name).ok_or("no tensor")?, m.tensor(name).ok_or("no tensor")?);
    let f16 =
        |b: &[u8]| -> Vec<f32> { b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect() };
    let (w, w2) = (f16(g.tensor_bytes(t).ok_or("unsized")?), f16(m.tensor_bytes(u).ok_or("unsized")?));
    let rms = (w.iter().zip(&w2).map(|(a, b)| ((b - a) as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    // Q4_0: blocks of 32, step = max|w| / 8.
    let steps: Vec<f64> = w.chunks(32).map(|b| b.iter().fold(0f32, |m, x| m.max(x.abs())) as f64 / 8.0).collect();
    Ok((rms, steps.iter().sum::<f64>() / steps.len() as f64))
}

pub fn run(a: &AdapterArgs) -> BResult<()> {
    let exe = std::env::current_exe()?;
    let convert_bin = match &a.convert {
        Some(c) => c.clone(),
        None => exe.parent().map(|d| d.join("delrec-convert")).ok_or("no directory for the current executable")?,
    };
    let tools = fixtures::Tools { python: a.python.clone(), convert: convert_bin };
    let files = prepare(a, &tools)?;
    let (rms, step) = update_size(&files)?;
    println!("## Run-time LoRA adapter vs merged (SmolLM2-135M, synthetic fine-tune)\n");
    println!(
        "LoRA r {RANK}, α {ALPHA}, all 7 projections × {LAYERS} layers, B ~ N(0, {}²): update RMS {rms:.2e} on \
         blk.10.attn_q, {:.2}× the mean Q4_0 grid step there ({step:.2e}); adapter file {:.1} MiB (F16). \
         {} requests (H = 10, K = 20), {} threads.",
        a.b_std,
        rms / step,
        std::fs::metadata(&files.adapter)?.len() as f64 / (1 << 20) as f64,
        a.users,
        a.threads
    );
    let c = cfg(a.threads);
    let reference = Engine::open(&files.merged_f16, &files.merged_pack, c.clone())?;
    let base_q4_0 = Base::open(&files.base_q4_0, c.clone())?;
    let base_q4_1 = Base::open(&files.base_q4_1, c.clone())?;
    let base_f16 = Base::open(&files.base_f16, c.clone())?;
    let rows: Vec<(&str, Engine)> = vec![
        ("merged Q8_0", Engine::open(&files.merged_q8_0, &files.merged_pack, c.clone())?),
        ("merged Q4_0", Engine::open(&files.merged_q4_0, &files.merged_pack, c.clone())?),
        ("merged Q4_1", Engine::open(&files.merged_q4_1, &files.merged_pack, c.clone())?),
        ("Q4_0 base + F16 adapter", base_q4_0.open_pack(&files.adapter_pack)?),
        ("Q4_1 base + F16 adapter", base_q4_1.open_pack(&files.adapter_pack)?),
        ("F16 base + F16 adapter", base_f16.open_pack(&files.adapter_pack)?),
        ("Q4_0 base, no fine-tune", base_q4_0.open_pack(&files.plain_pack)?),
        ("Q4_1 base, no fine-tune", base_q4_1.open_pack(&files.plain_pack)?),
        ("F16 base, no fine-tune (what the fine-tune moves)", base_f16.open_pack(&files.plain_pack)?),
    ];
    let reqs = requests(&reference, a.users);
    let all: Vec<(&str, &Engine)> = rows.iter().map(|(n, e)| (*n, e)).collect();
    fidelity("merged F16 (the fine-tune on SmolLM2's shipped Q4_1 weights)", &reference, &all, &reqs)?;
    let on_q4_0 = Engine::open(&files.on_q4_0_f16, &files.on_q4_0_pack, c.clone())?;
    let q4_rows = [all[3], all[1], all[6]];
    fidelity("the fine-tune on the Q4_0 weights (merged into dequantized Q4_0, F16)", &on_q4_0, &q4_rows, &reqs)?;
    drop(on_q4_0);

    // Speed: interleaved repetitions of one request.
    let timed: Vec<(&str, &Engine)> = vec![
        ("Q4_0, no fine-tune", &rows[6].1),
        ("Q4_0 base + adapter", &rows[3].1),
        ("merged Q4_0", &rows[1].1),
        ("merged Q8_0", &rows[0].1),
        ("Q4_1 base + adapter", &rows[4].1),
        ("merged Q4_1", &rows[2].1),
    ];
    let r = &reqs[0];
    for (_, e) in &timed {
        e.rank(r)?; // warm
    }
    let mut times = vec![vec![]; timed.len()];
    for _ in 0..a.reps.max(1) {
        for (k, (_, e)) in timed.iter().enumerate() {
            let t = Instant::now();
            e.rank(r)?;
            times[k].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let p50 = |v: &[f64]| sys::p50_p95(v).0;
    let plain = p50(&times[0]);
    println!("\n| rank, H = 10, K = 20 | p50 ms | vs plain Q4_0 |");
    println!("|---|---|---|");
    for (k, (name, _)) in timed.iter().enumerate() {
        let t = p50(&times[k]);
        println!("| {name} | {t:.1} | {:.2}× |", t / plain);
    }
    drop(rows);
    drop((reference, base_q4_0, base_q4_1, base_f16));

    // Memory: fresh processes.
    let spec = serde_json::to_string(&files)?;
    println!("\n| process (opens, ranks once) | peak RSS MiB | file-backed MiB | model files MiB |");
    println!("|---|---|---|---|");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut one = 0u64;
    for case in ["merged", "merged-x2", "base-1-pack", "base-2-packs"] {
        let out = Command::new(&exe)
            .args(["adapter-mem", "--case", case, "--threads", &a.threads.to_string(), "--spec", &spec])
            .output()?;
        if !out.status.success() {
            return Err(format!("adapter-mem {case}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let m: sys::Mem = serde_json::from_slice(&out.stdout)?;
        let files_mib = match case {
            "merged" => size(&files.merged_q4_0),
            "merged-x2" => size(&files.merged_q4_0) + size(&files.merged2_q4_0),
            "base-1-pack" => size(&files.base_q4_0) + size(&files.adapter),
            _ => size(&files.base_q4_0) + 2 * size(&files.adapter),
        };
        if case == "merged" {
            one = m.hwm;
        }
        println!(
            "| {case} | {:.0} ({:.2}× one merged) | {:.0} | {:.0} |",
            mib(m.hwm),
            m.hwm as f64 / one.max(1) as f64,
            mib(m.file),
            mib(files_mib)
        );
    }
    Ok(())
}

/// `adapter-mem`: one memory case in this process; prints its `sys::Mem` as JSON.
pub fn mem_worker(case: &str, threads: usize, spec: &str) -> BResult<()> {
    let files: Files = serde_json::from_str(spec)?;
    let c = cfg(threads);
    let engines: Vec<Engine> = match case {
        "merged" => vec![Engine::open(&files.merged_q4_0, &files.merged_pack, c)?],
        "merged-x2" => vec![
            Engine::open(&files.merged_q4_0, &files.merged_pack, c.clone())?,
            Engine::open(&files.merged2_q4_0, &files.merged2_pack, c)?,
        ],
        "base-1-pack" => vec![Base::open(&files.base_q4_0, c)?.open_pack(&files.adapter_pack)?],
        "base-2-packs" => {
            let b = Base::open(&files.base_q4_0, c)?;
            vec![b.open_pack(&files.adapter_pack)?, b.open_pack(&files.adapter2_pack)?]
        }
        other => return Err(format!("unknown case {other}").into()),
    };
    for e in &engines {
        let r = requests(e, 1);
        e.rank(&r[0])?;
    }
    println!("{}", serde_json::to_string(&sys::mem())?);
    Ok(())
}
