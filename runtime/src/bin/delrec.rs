//! `delrec`: rank catalog items for a history on this machine (and a few model probes used by the
//! parity tests).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use delrec_runtime::llm::{sequence_logits, Model, ModelParams};
use delrec_runtime::KvType;
use delrec_runtime::{Engine, EngineConfig, Plan, RankRequest, Ranking};
use serde_json::json;

#[derive(Parser)]
#[command(name = "delrec", version, about = "On-device LLM recommender runtime")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Rank candidates (or the whole catalog) for a history.
    Rank {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        pack: PathBuf,
        /// Item ids, most recent last, comma-separated.
        #[arg(long, value_delimiter = ',')]
        history: Vec<String>,
        /// Candidate ids, comma-separated; omit to rank the whole catalog.
        #[arg(long, value_delimiter = ',')]
        candidates: Option<Vec<String>>,
        #[arg(long)]
        top_k: Option<usize>,
        /// Use this soft prompt in every soft slot of the template.
        #[arg(long)]
        soft_prompt: Option<String>,
        /// Leave history items out of whole-catalog ranking.
        #[arg(long)]
        exclude_history: bool,
        /// Score each candidate with its own full prompt (a slow baseline).
        #[arg(long)]
        naive: bool,
        #[command(flatten)]
        eng: EngineArgs,
        #[arg(long)]
        json: bool,
    },
    /// Rank many requests (JSON lines: {"user", "history": [ids], "candidates": [ids] | null,
    /// "top_k"}) with one engine; prints one JSON line per request.
    RankBatch {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        pack: PathBuf,
        #[arg(long)]
        requests: PathBuf,
        #[arg(long)]
        soft_prompt: Option<String>,
        #[arg(long)]
        exclude_history: bool,
        #[command(flatten)]
        eng: EngineArgs,
        /// Accepted for symmetry with `rank`; output is always JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Print next-token logits of every position of a token sequence (model parity checks).
    Logits {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_delimiter = ',')]
        tokens: Vec<i32>,
        #[arg(long)]
        json: bool,
    },
    /// Tokenize strings (a JSON list in a file) with the model's own tokenizer.
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        strings: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct EngineArgs {
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value_t = 2048)]
    ctx: u32,
    #[arg(long, default_value_t = 512)]
    batch: u32,
    #[arg(long, default_value_t = 32)]
    max_seqs: u32,
    /// KV cache type: f16 or f32.
    #[arg(long, default_value = "f16")]
    kv: String,
    /// Hash the model file and check it against the pack.
    #[arg(long)]
    verify: bool,
    #[arg(long, default_value_t = 0)]
    gpu_layers: i32,
    /// Use llama.cpp flash attention (the default).
    #[arg(long, overrides_with = "no_flash_attn")]
    flash_attn: bool,
    /// Classic attention instead of flash attention.
    #[arg(long, overrides_with = "flash_attn")]
    no_flash_attn: bool,
}

impl EngineArgs {
    fn config(&self) -> Result<EngineConfig, String> {
        Ok(EngineConfig {
            threads: self.threads,
            context_size: self.ctx,
            batch_size: self.batch,
            max_sequences: self.max_seqs,
            max_contexts: 1,
            gpu_layers: self.gpu_layers,
            kv_type: kv_type(&self.kv)?,
            flash_attention: self.flash_attn || !self.no_flash_attn,
            verify_checksum: self.verify,
        })
    }
}

fn items_json(r: &Ranking) -> Vec<serde_json::Value> {
    r.items
        .iter()
        .map(|i| json!({"id": i.id, "title": i.title, "score": i.score, "logprob": i.logprob, "n_tokens": i.n_tokens, "mean": i.mean_logprob}))
        .collect()
}

fn kv_type(s: &str) -> Result<KvType, String> {
    match s {
        "f16" => Ok(KvType::F16),
        "f32" => Ok(KvType::F32),
        _ => Err(format!("--kv {s}: expected f16 or f32")),
    }
}

/// One `rank-batch` line: `{"user", "history": [ids], "candidates": [ids] | null, "top_k"}`.
fn batch_request(
    line: &str,
    soft_prompt: Option<&str>,
    exclude_history: bool,
) -> Result<(serde_json::Value, RankRequest), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let ids = |key: &str| -> Result<Option<Vec<String>>, String> {
        match &v[key] {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| format!("{key} holds a non-string")))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Err(format!("{key} must be a list of ids")),
        }
    };
    let top_k = match &v["top_k"] {
        serde_json::Value::Null => None,
        k => Some(k.as_u64().and_then(|k| usize::try_from(k).ok()).ok_or("top_k must be a non-negative integer")?),
    };
    let req = RankRequest {
        history: ids("history")?.unwrap_or_default(),
        candidates: ids("candidates")?,
        top_k,
        soft_prompt: soft_prompt.map(str::to_string),
        exclude_history,
        ..Default::default()
    };
    Ok((v["user"].clone(), req))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.cmd {
        Cmd::RankBatch { model, pack, requests, soft_prompt, exclude_history, eng, json: _ } => {
            let engine = Engine::open(&model, &pack, eng.config()?)?;
            let text = std::fs::read_to_string(&requests)?;
            // A bad line is reported on its own output line and the batch goes on; the exit
            // status says whether any line was malformed.
            let mut malformed = 0usize;
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let line_no = n + 1;
                let out = match batch_request(line, soft_prompt.as_deref(), exclude_history) {
                    Err(reason) => {
                        malformed += 1;
                        json!({"line": line_no, "error": format!("{}:{line_no}: {reason}", requests.display())})
                    }
                    Ok((user, req)) => {
                        let t = Instant::now();
                        match engine.rank(&req) {
                            Ok(r) => {
                                json!({"user": user, "items": items_json(&r), "rank_ms": t.elapsed().as_secs_f64() * 1e3})
                            }
                            Err(e) => json!({"user": user, "line": line_no, "error": e.to_string()}),
                        }
                    }
                };
                println!("{out}");
            }
            if malformed > 0 {
                return Err(format!("{malformed} malformed request line(s) in {}", requests.display()).into());
            }
        }
        Cmd::Rank { model, pack, history, candidates, top_k, soft_prompt, exclude_history, naive, eng, json } => {
            let t0 = Instant::now();
            let engine = Engine::open(&model, &pack, eng.config()?)?;
            let open_ms = t0.elapsed().as_secs_f64() * 1e3;
            let req = RankRequest {
                history: history.clone(),
                candidates,
                top_k,
                soft_prompt,
                exclude_history,
                plan: if naive { Plan::Naive } else { Plan::SharedPrefix },
                ..Default::default()
            };
            let t1 = Instant::now();
            let ranking = engine.rank(&req)?;
            let rank_ms = t1.elapsed().as_secs_f64() * 1e3;
            if json {
                let s = &ranking.stats;
                let out = json!({
                    "items": items_json(&ranking),
                    "scoring": engine.pack().scoring.as_str(),
                    "stats": {"open_ms": open_ms, "rank_ms": rank_ms, "prefix_rows": s.prefix_rows, "decoded_rows": s.decoded_rows,
                              "decode_calls": s.decode_calls, "candidates": s.candidates},
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let p = engine.pack();
                println!("history (oldest first):");
                for h in &history {
                    let title = p.item_index(h).and_then(|i| p.item_title(i)).unwrap_or("?");
                    println!("  {h:>8}  {title}");
                }
                println!("\n{:>4}  {:>8}  {:>10}  {:>6}  title", "rank", "id", "score", "tokens");
                for (r, i) in ranking.items.iter().enumerate() {
                    println!("{:>4}  {:>8}  {:>10.4}  {:>6}  {}", r + 1, i.id, i.score, i.n_tokens, i.title);
                }
                let s = &ranking.stats;
                println!(
                    "\n{} candidates ranked in {rank_ms:.1} ms ({} rows in {} decodes; prefix {} rows); engine opened in {open_ms:.1} ms",
                    s.candidates, s.decoded_rows, s.decode_calls, s.prefix_rows
                );
            }
        }
        Cmd::Logits { model, tokens, json } => {
            if tokens.is_empty() {
                return Err("--tokens is empty".into());
            }
            let m = Arc::new(Model::load(&model, ModelParams::default())?);
            let rows = sequence_logits(&m, &tokens, 2)?;
            if json {
                println!("{}", json!({ "logits": rows }));
            } else {
                for (i, r) in rows.iter().enumerate() {
                    let best = r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j).unwrap_or(0);
                    println!("pos {i}: argmax {best}");
                }
            }
        }
        Cmd::Tokenize { model, strings, json } => {
            let list: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&strings)?)?;
            let m = Model::load(&model, ModelParams::default())?;
            let ids = list.iter().map(|s| m.tokenize(s, false)).collect::<Result<Vec<_>, _>>()?;
            if json {
                println!("{}", json!({ "ids": ids }));
            } else {
                for (s, t) in list.iter().zip(&ids) {
                    println!("{s:?} -> {t:?}");
                }
            }
        }
    }
    Ok(())
}
