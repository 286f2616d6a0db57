//! `delrec`: rank catalog items for a history on this machine (and a few model probes used by the
//! parity tests).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use delrec_runtime::format::adapter::{check_adapter, BaseTensors};
use delrec_runtime::format::gguf::GgufFile;
use delrec_runtime::format::BaseIdentity;
use delrec_runtime::llm::{
    encoder_decoder_logits, sequence_logits, Adapter, EncoderSegment, Model, ModelParams, TokenEmbeddings,
};
use delrec_runtime::KvType;
use delrec_runtime::{
    BackendInfo, BackendKind, Base, Engine, EngineConfig, Plan, Pooling, RankRequest, Ranking, RecommendRequest,
    Recommendation,
};
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
    /// "top_k", "pack"}) with one engine per pack over one model; prints one JSON line per
    /// request.
    RankBatch {
        #[arg(long)]
        model: PathBuf,
        /// A pack (repeatable: all open over the one model, each with its own adapter and
        /// catalog). A request's "pack" picks one by file name (without `.gguf`, `.pack.gguf`)
        /// or index; the first by default.
        #[arg(long, required = true)]
        pack: Vec<PathBuf>,
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
    /// For an encoder-decoder model (T5), `--tokens` is the decoder sequence and the encoder
    /// input is given by `--encoder` segments; `--decoder` adds more decoder sequences sharing
    /// the one encoder pass (JSON: "sequences", one list of rows each; "logits" is the first).
    Logits {
        #[arg(long)]
        model: PathBuf,
        /// A LoRA adapter GGUF applied at run time (scale 1), checked against the model first.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, value_delimiter = ',')]
        tokens: Vec<i32>,
        /// Encoder input, in order: `tokens:1,2,3` or `embeds:FILE` (little-endian f32 rows of
        /// the model's input width). Repeatable; token segments mixed with embedding rows are
        /// looked up in the model's token embeddings.
        #[arg(long)]
        encoder: Vec<String>,
        /// A further decoder sequence (comma-separated ids); repeatable.
        #[arg(long)]
        decoder: Vec<String>,
        #[command(flatten)]
        dev: DeviceArgs,
        #[arg(long)]
        json: bool,
    },
    /// Embed texts and/or catalog items: the model's final-norm hidden states pooled per input.
    /// Prints {"pooling", "dim", "embeddings": [[dim floats] per input]}: texts, then token
    /// sequences, then items, each in the order given.
    Embed {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        pack: PathBuf,
        /// mean (average over the input's tokens) or last (the last token's state).
        #[arg(long, default_value = "mean")]
        pooling: String,
        /// A text to embed (repeatable): its tokens exactly, no BOS.
        #[arg(long = "text")]
        texts: Vec<String>,
        /// A token sequence to embed as given, comma-separated ids (repeatable).
        #[arg(long = "tokens")]
        tokens: Vec<String>,
        /// Catalog item ids, comma-separated, embedded over their pack tokens.
        #[arg(long, value_delimiter = ',', conflicts_with = "all_items")]
        items: Option<Vec<String>>,
        /// Embed every catalog item, in catalog order.
        #[arg(long)]
        all_items: bool,
        /// F32 KV cache and classic attention (the exact path the parity tests compare).
        #[arg(long)]
        exact: bool,
        #[command(flatten)]
        eng: EngineArgs,
        #[arg(long)]
        json: bool,
    },
    /// The cascade: the pack's sequential model retrieves, the LLM re-ranks, the fused score
    /// orders. One request from the flags, or many from --requests (JSON lines: {"user",
    /// "history", "n", "retrieve", "llm_weight", "llm_off"}, absent keys taken from the flags);
    /// one JSON object per request with --json.
    Recommend {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        pack: PathBuf,
        /// Item ids, most recent last, comma-separated.
        #[arg(long, value_delimiter = ',', required_unless_present = "requests", conflicts_with = "requests")]
        history: Vec<String>,
        #[arg(long)]
        requests: Option<PathBuf>,
        /// Results wanted.
        #[arg(long, default_value_t = 10)]
        n: usize,
        /// Items the sequential model hands the LLM (default: the pack's).
        #[arg(long)]
        retrieve: Option<usize>,
        /// The LLM's weight in the fused score (default: the pack's).
        #[arg(long)]
        llm_weight: Option<f32>,
        /// Sequential model only.
        #[arg(long)]
        llm_off: bool,
        /// Allow items of the history among the results.
        #[arg(long)]
        include_history: bool,
        #[arg(long)]
        soft_prompt: Option<String>,
        #[command(flatten)]
        eng: EngineArgs,
        #[arg(long)]
        json: bool,
    },
    /// The backends compiled into this build and the devices they found (what `--backend`
    /// can select).
    Devices {
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

/// Where a model runs.
#[derive(clap::Args)]
struct DeviceArgs {
    /// Where the model runs: auto (a GPU when the build has one and a device is found, else
    /// the CPU), cpu, vulkan, opencl, metal or cuda (`delrec devices` lists them).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Run on the CPU when the requested GPU backend is missing (else that is an error).
    #[arg(long)]
    cpu_fallback: bool,
    /// Layers offloaded to the GPU (-1 = all; 0 = the CPU only).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    gpu_layers: i32,
}

impl DeviceArgs {
    fn apply(&self, cfg: EngineConfig) -> Result<EngineConfig, String> {
        Ok(EngineConfig {
            backend: self.backend.parse().map_err(|e: delrec_runtime::Error| e.to_string())?,
            cpu_fallback: self.cpu_fallback,
            gpu_layers: self.gpu_layers,
            ..cfg
        })
    }

    /// The llama.cpp load parameters for the device this selects (what `Engine::open` would).
    fn model_params(&self) -> Result<(ModelParams, BackendInfo), Box<dyn std::error::Error>> {
        let cfg = self.apply(EngineConfig::default())?;
        let info = delrec_runtime::choose_backend(&cfg)?;
        let device = match &info.device {
            Some(d) => Some(
                delrec_runtime::llm::Device::all(delrec_runtime::llm::Backend::get())
                    .into_iter()
                    .find(|x| x.name() == d.name)
                    .ok_or("the selected device disappeared")?,
            ),
            None => None,
        };
        Ok((ModelParams { device, gpu_layers: cfg.gpu_layers, ..ModelParams::default() }, info))
    }
}

#[derive(clap::Args)]
struct EngineArgs {
    /// Threads (0 = the fast cores: big and prime cores on a phone, all cores elsewhere).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    dev: DeviceArgs,
    #[arg(long, default_value_t = 2048)]
    ctx: u32,
    #[arg(long, default_value_t = 512)]
    batch: u32,
    #[arg(long, default_value_t = 32)]
    max_seqs: u32,
    /// Most logit rows per decode (the logits and output-projection scratch scale with it).
    #[arg(long, default_value_t = EngineConfig::default().max_outputs)]
    max_outputs: u32,
    /// KV cache type: f16 or f32.
    #[arg(long, default_value = "f16")]
    kv: String,
    /// Skip the model digest check (on by default: the model's sha256 must be one the pack
    /// pins; computed once per version of the file, see --digest-cache).
    #[arg(long)]
    no_verify: bool,
    /// Remember verified model digests in this directory across runs.
    #[arg(long)]
    digest_cache: Option<PathBuf>,
    /// Use llama.cpp flash attention (the default).
    #[arg(long, overrides_with = "no_flash_attn")]
    flash_attn: bool,
    /// Classic attention instead of flash attention.
    #[arg(long, overrides_with = "flash_attn")]
    no_flash_attn: bool,
    /// Use quantized weights as mapped, without ggml's repacked copy (less memory).
    #[arg(long)]
    no_repack: bool,
}

impl EngineArgs {
    fn config(&self) -> Result<EngineConfig, String> {
        self.dev.apply(EngineConfig {
            threads: self.threads,
            context_size: self.ctx,
            batch_size: self.batch,
            max_sequences: self.max_seqs,
            max_outputs: self.max_outputs,
            max_contexts: 1,
            kv_type: kv_type(&self.kv)?,
            flash_attention: self.flash_attn || !self.no_flash_attn,
            verify_checksum: !self.no_verify,
            digest_cache: self.digest_cache.clone(),
            repack_weights: !self.no_repack,
            ..Default::default()
        })
    }
}

fn items_json(r: &Ranking) -> Vec<serde_json::Value> {
    r.items
        .iter()
        .map(|i| json!({"id": i.id, "title": i.title, "score": i.score, "logprob": i.logprob, "n_tokens": i.n_tokens, "mean": i.mean_logprob, "ties": i.ties}))
        .collect()
}

/// The pack's scoring mode, in words (the verbalizer's handler and label words too).
fn scoring_desc(p: &delrec_runtime::Pack) -> String {
    match &p.verbalizer {
        Some(v) => format!(
            "verbalizer (handler {}, label words {}, prefix {:?}; {} words over {} items)",
            v.handler.as_str(),
            v.rule.as_str(),
            v.prefix,
            v.n_words(),
            v.n_items()
        ),
        None => format!("title log-likelihood ({})", p.scoring.as_str()),
    }
}

/// The pack's soft prompts as `name×rows`.
fn soft_desc(p: &delrec_runtime::Pack) -> Vec<String> {
    p.soft_prompts.iter().map(|s| format!("{}×{}", s.name, s.n_virtual)).collect()
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
) -> Result<(serde_json::Value, RankRequest, Option<serde_json::Value>), String> {
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
    let pack = Some(v["pack"].clone()).filter(|p| !p.is_null());
    Ok((v["user"].clone(), req, pack))
}

/// What a request's "pack" names a pack by: its file name without `.pack.gguf` / `.gguf`.
fn pack_name(p: &std::path::Path) -> String {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = name.strip_suffix(".gguf").unwrap_or(&name);
    name.strip_suffix(".pack").unwrap_or(name).to_string()
}

/// The pack a request picks: by name or index, the first when it names none.
fn pick_pack(names: &[String], which: Option<&serde_json::Value>) -> Result<usize, String> {
    match which {
        None => Ok(0),
        Some(serde_json::Value::String(s)) => names
            .iter()
            .position(|n| n == s)
            .ok_or_else(|| format!("no pack named {s:?} (packs: {})", names.join(", "))),
        Some(v) => v
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < names.len())
            .ok_or_else(|| format!("pack must be a pack name or an index below {}", names.len())),
    }
}

struct EmbedArgs {
    model: PathBuf,
    pack: PathBuf,
    pooling: String,
    texts: Vec<String>,
    tokens: Vec<String>,
    items: Option<Vec<String>>,
    all_items: bool,
    exact: bool,
    eng: EngineArgs,
    json: bool,
}

/// `delrec embed`: texts, then token sequences, then items; large inputs go in chunks of
/// `Engine::MAX_EMBED_INPUTS` (the result does not depend on the chunking).
fn embed_cmd(a: EmbedArgs) -> Result<(), Box<dyn std::error::Error>> {
    let pooling =
        Pooling::parse(&a.pooling).ok_or_else(|| format!("--pooling {}: expected mean or last", a.pooling))?;
    let seqs = a
        .tokens
        .iter()
        .map(|s| {
            s.split(',')
                .filter(|x| !x.trim().is_empty())
                .map(|x| x.trim().parse::<i32>().map_err(|e| format!("--tokens {s:?}: {x:?}: {e}")))
                .collect::<Result<Vec<i32>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = a.eng.config()?;
    if a.exact {
        cfg.kv_type = KvType::F32;
        cfg.flash_attention = false;
    }
    let t0 = Instant::now();
    let engine = Engine::open(&a.model, &a.pack, cfg)?;
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let p = engine.pack();
    let indices: Vec<u32> = if a.all_items {
        (0..p.n_items() as u32).collect()
    } else {
        a.items
            .iter()
            .flatten()
            .map(|id| p.item_index(id).ok_or_else(|| format!("unknown item id {id:?}")))
            .collect::<Result<_, _>>()?
    };
    let t1 = Instant::now();
    let mut out: Vec<Vec<f32>> = Vec::new();
    if a.texts.is_empty() && seqs.is_empty() && indices.is_empty() {
        // Nothing to embed: the engine's error says so.
        out.extend(engine.embed(&[], pooling)?);
    }
    for chunk in a.texts.chunks(Engine::MAX_EMBED_INPUTS) {
        out.extend(engine.embed(chunk, pooling)?);
    }
    for chunk in seqs.chunks(Engine::MAX_EMBED_INPUTS) {
        out.extend(engine.embed_tokens(chunk, pooling)?);
    }
    for chunk in indices.chunks(Engine::MAX_EMBED_INPUTS) {
        out.extend(engine.embed_items(chunk, pooling)?);
    }
    let embed_ms = t1.elapsed().as_secs_f64() * 1e3;
    let dim = engine.model().n_embd();
    if a.json {
        let o = json!({"pooling": pooling.as_str(), "dim": dim, "embeddings": out,
                       "stats": {"open_ms": open_ms, "embed_ms": embed_ms, "inputs": out.len()}});
        println!("{o}");
    } else {
        let labels = a
            .texts
            .iter()
            .map(|t| format!("{t:?}"))
            .chain(a.tokens.iter().map(|t| format!("[{t}]")))
            .chain(indices.iter().map(|&i| p.item_id(i).unwrap_or("?").to_string()));
        for (label, e) in labels.zip(&out) {
            let norm = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let head: Vec<String> = e.iter().take(4).map(|x| format!("{x:.4}")).collect();
            println!("{label}: |e| = {norm:.4}, [{}, ...]", head.join(", "));
        }
        println!(
            "\n{} embeddings of width {dim} ({} pooling) in {embed_ms:.1} ms; engine opened in {open_ms:.1} ms",
            out.len(),
            pooling.as_str()
        );
    }
    Ok(())
}

fn recommendation_json(user: &serde_json::Value, r: &Recommendation, ms: f64) -> serde_json::Value {
    let items: Vec<serde_json::Value> = r
        .items
        .iter()
        .map(|i| json!({"id": i.id, "title": i.title, "score": i.score, "seq_score": i.seq_score, "llm_score": i.llm_score}))
        .collect();
    json!({"user": user, "items": items, "retrieved": r.stats.retrieved, "retrieval_us": r.stats.retrieval_micros,
           "rerank_us": r.stats.rerank_micros, "recommend_ms": ms})
}

/// One `recommend --requests` line over the flags' defaults.
fn recommend_line(line: &str, base: &RecommendRequest) -> Result<(serde_json::Value, RecommendRequest), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let mut req = base.clone();
    req.history = match &v["history"] {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or("history holds a non-string"))
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("history must be a list of ids".into()),
    };
    let count = |key: &str| -> Result<Option<usize>, String> {
        match &v[key] {
            serde_json::Value::Null => Ok(None),
            k => k
                .as_u64()
                .and_then(|k| usize::try_from(k).ok())
                .map(Some)
                .ok_or(format!("{key} must be a non-negative integer")),
        }
    };
    if let Some(n) = count("n")? {
        req.n = n;
    }
    if let Some(r) = count("retrieve")? {
        req.retrieve = Some(r);
    }
    match &v["llm_weight"] {
        serde_json::Value::Null => {}
        w => req.llm_weight = Some(w.as_f64().ok_or("llm_weight must be a number")? as f32),
    }
    match &v["llm_off"] {
        serde_json::Value::Null => {}
        b => req.llm_off = b.as_bool().ok_or("llm_off must be true or false")?,
    }
    Ok((v["user"].clone(), req))
}

/// A model loaded as the engine loads it: parsed and proven safe (`model_check`) before
/// llama.cpp reads it, from the one descriptor both see.
/// A model checked the way `Engine::open` checks it, loaded on the CPU or as `params` say.
fn load_checked(path: &std::path::Path, params: ModelParams) -> Result<Model, Box<dyn std::error::Error>> {
    let file = std::fs::File::open(path)?;
    delrec_runtime::format::model_check::check_model(&GgufFile::from_file(&file, path)?)?;
    Ok(Model::load_file(&file, path, params)?)
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
        Cmd::Recommend {
            model,
            pack,
            history,
            requests,
            n,
            retrieve,
            llm_weight,
            llm_off,
            include_history,
            soft_prompt,
            eng,
            json,
        } => {
            let engine = Engine::open(&model, &pack, eng.config()?)?;
            let base = RecommendRequest {
                history,
                n,
                retrieve,
                llm_weight,
                llm_off,
                include_history,
                soft_prompt,
                ..Default::default()
            };
            let Some(requests) = requests else {
                let t = Instant::now();
                let r = engine.recommend(&base)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if json {
                    println!("{}", recommendation_json(&serde_json::Value::Null, &r, ms));
                } else {
                    let p = engine.pack();
                    let shown = base.history.len().min(10);
                    println!("history ({} items; the latest {shown}, oldest first):", base.history.len());
                    for h in &base.history[base.history.len() - shown..] {
                        let title = p.item_index(h).and_then(|i| p.item_title(i)).unwrap_or("?");
                        println!("  {h:>8}  {title}");
                    }
                    println!("\n{:>4}  {:>8}  {:>9}  {:>9}  {:>8}  title", "rank", "fused", "seq", "llm", "id");
                    for (k, i) in r.items.iter().enumerate() {
                        let llm = i.llm_score.map(|s| format!("{s:9.3}")).unwrap_or_else(|| "        -".into());
                        println!(
                            "{:>4}  {:>8.3}  {:>9.3}  {llm}  {:>8}  {}",
                            k + 1,
                            i.score,
                            i.seq_score,
                            i.id,
                            i.title
                        );
                    }
                    println!(
                        "\nretrieved {} in {} µs, re-ranked in {:.1} ms; {ms:.1} ms in all",
                        r.stats.retrieved,
                        r.stats.retrieval_micros,
                        r.stats.rerank_micros as f64 / 1e3
                    );
                }
                return Ok(());
            };
            let text = std::fs::read_to_string(&requests)?;
            let mut malformed = 0usize;
            for (k, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let line_no = k + 1;
                let out = match recommend_line(line, &base) {
                    Err(reason) => {
                        malformed += 1;
                        json!({"line": line_no, "error": format!("{}:{line_no}: {reason}", requests.display())})
                    }
                    Ok((user, req)) => {
                        let t = Instant::now();
                        match engine.recommend(&req) {
                            Ok(r) => recommendation_json(&user, &r, t.elapsed().as_secs_f64() * 1e3),
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
        Cmd::RankBatch { model, pack, requests, soft_prompt, exclude_history, eng, json: _ } => {
            let engines = match &pack[..] {
                [one] => vec![Engine::open(&model, one, eng.config()?)?],
                many => {
                    let base = Base::open(&model, eng.config()?)?;
                    many.iter().map(|p| base.open_pack(p)).collect::<Result<Vec<_>, _>>()?
                }
            };
            let names: Vec<String> = pack.iter().map(|p| pack_name(p)).collect();
            let text = std::fs::read_to_string(&requests)?;
            // A bad line is reported on its own output line and the batch goes on; the exit
            // status says whether any line was malformed.
            let mut malformed = 0usize;
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let line_no = n + 1;
                let parsed = batch_request(line, soft_prompt.as_deref(), exclude_history)
                    .and_then(|(user, req, which)| Ok((user, req, pick_pack(&names, which.as_ref())?)));
                let out = match parsed {
                    Err(reason) => {
                        malformed += 1;
                        json!({"line": line_no, "error": format!("{}:{line_no}: {reason}", requests.display())})
                    }
                    Ok((user, req, k)) => {
                        let t = Instant::now();
                        match engines[k].rank(&req) {
                            Ok(r) => {
                                let ms = t.elapsed().as_secs_f64() * 1e3;
                                json!({"user": user, "pack": names[k], "items": items_json(&r), "rank_ms": ms})
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
                    "scoring_desc": scoring_desc(engine.pack()),
                    "template": engine.pack().template.text,
                    "soft_prompts": soft_desc(engine.pack()),
                    "adapter": engine.adapter().map(|a| json!({"path": a.path, "scale": a.scale, "alpha": a.alpha,
                        "ranks": a.ranks, "targets": a.targets, "weights": a.weights, "bytes": a.tensor_bytes})),
                    "backend": backend_json(engine.backend()),
                    "stats": {"open_ms": open_ms, "rank_ms": rank_ms, "backend": s.backend.to_string(), "prefix_rows": s.prefix_rows, "decoded_rows": s.decoded_rows,
                              "decode_calls": s.decode_calls, "candidates": s.candidates,
                              "encoder_passes": s.encoder_passes, "encoder_rows": s.encoder_rows, "tied": ranking.items.iter().filter(|i| i.ties > 0).count()},
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let p = engine.pack();
                if let Some(a) = engine.adapter() {
                    let ranks: Vec<String> = a.ranks.iter().map(|(r, n)| format!("{n}×r{r}")).collect();
                    println!(
                        "adapter: {} ({} weights: {}; {}; scale {}, {:.1} KiB)\n",
                        a.path.display(),
                        a.weights,
                        a.targets.join(","),
                        ranks.join(" "),
                        a.scale,
                        a.tensor_bytes as f64 / 1024.0
                    );
                }
                println!("scoring: {}", scoring_desc(p));
                println!("template: {:?}; soft prompts: {}\n", p.template.text, soft_desc(p).join(", "));
                println!("history (oldest first):");
                for h in &history {
                    let title = p.item_index(h).and_then(|i| p.item_title(i)).unwrap_or("?");
                    println!("  {h:>8}  {title}");
                }
                println!("\n{:>4}  {:>8}  {:>10}  {:>6}  title", "rank", "id", "score", "tokens");
                for (r, i) in ranking.items.iter().enumerate() {
                    let tie = if i.ties > 0 { format!("  (tied with {})", i.ties) } else { String::new() };
                    println!("{:>4}  {:>8}  {:>10.4}  {:>6}  {}{tie}", r + 1, i.id, i.score, i.n_tokens, i.title);
                }
                let s = &ranking.stats;
                println!(
                    "\n{} candidates ranked in {rank_ms:.1} ms ({} rows in {} decodes; prefix {} rows); engine opened in {open_ms:.1} ms",
                    s.candidates, s.decoded_rows, s.decode_calls, s.prefix_rows
                );
                println!("ran on: {}", backend_desc(engine.backend()));
            }
        }
        Cmd::Logits { model, adapter, tokens, encoder, decoder, dev, json } => {
            if tokens.is_empty() {
                return Err("--tokens is empty".into());
            }
            let (params, ran_on) = dev.model_params()?;
            if !json {
                eprintln!("ran on: {}", backend_desc(&ran_on));
            }
            let m = Arc::new(load_checked(&model, params)?);
            if m.has_encoder() {
                if adapter.is_some() {
                    return Err("--adapter is not supported for encoder-decoder models yet".into());
                }
                return encoder_logits(&m, &model, &encoder, tokens, &decoder, json);
            }
            if !encoder.is_empty() || !decoder.is_empty() {
                return Err("--encoder/--decoder need an encoder-decoder model".into());
            }
            let adapter = match &adapter {
                None => None,
                Some(path) => {
                    let g = GgufFile::open(&model)?;
                    let (tensors, identity) = (BaseTensors::of_model(&g)?, BaseIdentity::of_model(&g)?);
                    let file = std::fs::File::open(path)?;
                    check_adapter(&GgufFile::from_file(&file, path)?, &tensors, &identity)?;
                    Some(Arc::new(Adapter::load_file(&m, &file, path)?))
                }
            };
            let rows = sequence_logits(&m, adapter.as_ref().map(|a| (a, 1.0)), &tokens, 2)?;
            if json {
                println!("{}", json!({ "logits": rows }));
            } else {
                for (i, r) in rows.iter().enumerate() {
                    let best = r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j).unwrap_or(0);
                    println!("pos {i}: argmax {best}");
                }
            }
        }
        Cmd::Embed { model, pack, pooling, texts, tokens, items, all_items, exact, eng, json } => {
            embed_cmd(EmbedArgs { model, pack, pooling, texts, tokens, items, all_items, exact, eng, json })?
        }
        Cmd::Devices { json } => devices_cmd(json)?,
        Cmd::Tokenize { model, strings, json } => {
            let list: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&strings)?)?;
            let m = load_checked(&model, ModelParams::default())?;
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

/// What `--backend` chose, in words.
fn backend_desc(b: &BackendInfo) -> String {
    match &b.device {
        Some(d) => {
            let layers = if b.gpu_layers < 0 { "all".to_string() } else { b.gpu_layers.to_string() };
            format!("{} ({}: {}), {layers} layers offloaded", b.kind, d.name, d.description)
        }
        None if b.fell_back => format!("cpu (fallback: {} was requested and is unavailable)", b.requested),
        None => "cpu".into(),
    }
}

fn backend_json(b: &BackendInfo) -> serde_json::Value {
    json!({"kind": b.kind.to_string(), "requested": b.requested.to_string(), "fell_back": b.fell_back,
           "gpu_layers": b.gpu_layers, "device": b.device.as_ref().map(|d| json!({"name": d.name, "description": d.description}))})
}

/// `delrec devices`: every backend this runtime can select, compiled in or not, and every
/// device ggml registered.
fn devices_cmd(json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let devices = delrec_runtime::devices();
    let backends: Vec<serde_json::Value> = BackendKind::ALL
        .iter()
        .map(|&k| {
            let found: Vec<&str> = devices.iter().filter(|d| d.backend == Some(k)).map(|d| d.name.as_str()).collect();
            json!({"backend": k.to_string(), "compiled": k.compiled(), "devices": found})
        })
        .collect();
    let devs: Vec<serde_json::Value> = devices
        .iter()
        .map(|d| {
            json!({"backend": d.backend_name, "name": d.name, "description": d.description,
                   "kind": format!("{:?}", d.kind), "offloads": d.offloads(),
                   "memory_free": d.memory_free, "memory_total": d.memory_total})
        })
        .collect();
    let auto = EngineConfig::default();
    let chosen = delrec_runtime::choose_backend(&auto)?;
    if json {
        println!("{}", json!({"backends": backends, "devices": devs, "auto": backend_json(&chosen)}));
        return Ok(());
    }
    println!("{:<8} {:<9} devices", "backend", "compiled");
    for b in &backends {
        let found = b["devices"].as_array().map_or(0, |a| a.len());
        let names: Vec<&str> = b["devices"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        println!(
            "{:<8} {:<9} {}",
            b["backend"].as_str().unwrap_or("?"),
            if b["compiled"].as_bool() == Some(true) { "yes" } else { "no" },
            if found == 0 { "-".to_string() } else { names.join(", ") }
        );
    }
    println!();
    for d in &devices {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "{:<10} {:<7} {:<14} {} ({:.0} / {:.0} MiB free)",
            d.name,
            d.backend_name,
            format!("{:?}", d.kind),
            d.description,
            mib(d.memory_free),
            mib(d.memory_total)
        );
    }
    println!("\n--backend auto runs on: {}", backend_desc(&chosen));
    Ok(())
}

/// `delrec logits` for an encoder-decoder model: one encoder pass, every decoder sequence.
fn encoder_logits(
    m: &Arc<Model>,
    path: &std::path::Path,
    segments: &[String],
    first: Vec<i32>,
    more: &[String],
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let parse_ids = |s: &str| -> Result<Vec<i32>, Box<dyn std::error::Error>> {
        s.split(',').filter(|t| !t.trim().is_empty()).map(|t| Ok(t.trim().parse::<i32>()?)).collect()
    };
    enum Seg {
        Tokens(Vec<i32>),
        Embeds(Vec<f32>),
    }
    let mut segs = Vec::new();
    for s in segments {
        if let Some(ids) = s.strip_prefix("tokens:") {
            segs.push(Seg::Tokens(parse_ids(ids)?));
        } else if let Some(file) = s.strip_prefix("embeds:") {
            let bytes = std::fs::read(file)?;
            if bytes.len() % 4 != 0 {
                return Err(format!("{file}: {} bytes is not a whole number of f32 values", bytes.len()).into());
            }
            segs.push(Seg::Embeds(
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            ));
        } else {
            return Err(format!("--encoder {s:?}: expected tokens:IDS or embeds:FILE").into());
        }
    }
    if segs.is_empty() {
        return Err("an encoder-decoder model needs --encoder input".into());
    }
    let view: Vec<EncoderSegment> = segs
        .iter()
        .map(|s| match s {
            Seg::Tokens(t) => EncoderSegment::Tokens(t),
            Seg::Embeds(e) => EncoderSegment::Embeddings(e),
        })
        .collect();
    let table = if segs.iter().any(|s| matches!(s, Seg::Embeds(_))) {
        Some(TokenEmbeddings::from_gguf(&GgufFile::open(path)?)?)
    } else {
        None
    };
    let mut decoders = vec![first];
    for d in more {
        decoders.push(parse_ids(d)?);
    }
    let (seqs, passes) = encoder_decoder_logits(m, table.as_ref(), &view, &decoders, 2)?;
    if json {
        println!("{}", json!({ "logits": seqs[0], "sequences": seqs, "encoder_passes": passes }));
    } else {
        for (s, rows) in seqs.iter().enumerate() {
            for (i, r) in rows.iter().enumerate() {
                let best = r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j).unwrap_or(0);
                println!("seq {s} pos {i}: argmax {best}");
            }
        }
        println!("{passes} encoder pass(es)");
    }
    Ok(())
}
