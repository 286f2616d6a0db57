//! `delrec-bench`: latency, cold start, memory and thread scaling of delrec-runtime, side by side
//! with the strongest baselines measured in the same run (llama.cpp naive, llama.cpp raw prefill,
//! PyTorch eager naive and shared-prefix, and the compute floor of this machine).
//!
//! ```text
//! cargo build --release -p delrec-convert -p delrec-bench
//! target/release/delrec-bench --quick          # < 3 min on 2 cores once fixtures are cached
//! target/release/delrec-bench --full           # the whole grid, all weight types, both models
//! target/release/delrec-bench cascade          # retrieval + re-rank at 1,682 / 10^4 / 10^5 items
//! target/release/delrec-bench open             # the model checks' cost at Engine::open
//! target/release/delrec-bench adapter          # LoRA at run time over Q4 vs merged: fidelity, speed, memory
//! target/release/delrec-bench verbalizer       # DELRec's one-pass verbalizer vs title likelihood (SmolLM2, T5)
//! ```

mod adapter;
mod cascade;
mod fixtures;
mod open;
mod plan;
mod report;
mod scan;
mod sys;
mod verbalizer;
mod worker;

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

pub type BResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(name = "delrec-bench", version, about = "Benchmark delrec-runtime against llama.cpp and PyTorch baselines")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Rewrite results.md (and the plots) from a results.json.
    Report {
        results: PathBuf,
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
        scripts: PathBuf,
    },
    /// The cascade (`Engine::recommend`): retrieval alone, the LLM re-rank, the whole call and
    /// the LLM's exact whole-catalog top 10, at several catalog sizes (generated items).
    Cascade(Box<cascade::CascadeArgs>),
    /// What `Engine::open`'s model checks cost: no verification, the first verified open (hash),
    /// a remembered one, and an unpinned pack (llama.cpp's tensor checks).
    Open(Box<open::OpenArgs>),
    /// The cascade's catalog scan alone up to 10^6 items: f32 and Q8_0 item tables against the
    /// kernel they replaced, and the Q8_0 table's top-N overlap with the f32 one.
    Scan(Box<scan::ScanArgs>),
    /// A LoRA fine-tune as a run-time adapter over Q4_0/Q4_1 vs merged and quantized: fidelity
    /// to merged F16, speed, and the memory of two packs over one base vs two merged models.
    Adapter(Box<adapter::AdapterArgs>),
    /// DELRec's one-pass verbalizer against title-likelihood ranking (shared trie, exact
    /// whole-catalog search), on SmolLM2-135M and on a T5 of Flan-T5-small's shape.
    Verbalizer(Box<verbalizer::VerbalizerArgs>),
    /// Internal: one memory case of `adapter` in a fresh process.
    #[command(hide = true)]
    AdapterMem {
        #[arg(long)]
        case: String,
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        spec: String,
    },
    /// Internal: the cascade's measurements in one process (spawned by `cascade`).
    #[command(hide = true)]
    CascadeWorker {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Internal: measure one model file in this process (spawned by the main command).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args, Clone, Debug, Serialize)]
struct RunArgs {
    /// A subset that finishes in under 3 minutes on 2 cores (the default).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The whole grid: both models, all weight types, threads 1/2/all.
    #[arg(long)]
    full: bool,
    /// Fixture cache (models, packs, catalog); regenerated when missing.
    #[arg(long, default_value = "target/bench-cache")]
    cache: PathBuf,
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = "target/bench-results")]
    out: PathBuf,
    /// Models: smollm2-135m (real weights), qwen2.5-0.5b, smollm2-360m, smollm2-135m-random.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Weight types: q4_0, q4_1, q4_k_m, q8_0, f16.
    #[arg(long, value_delimiter = ',')]
    types: Option<Vec<String>>,
    /// Thread counts (numbers or `all`); the first runs the grid, the others the headline cell.
    #[arg(long, value_delimiter = ',')]
    threads: Option<Vec<String>>,
    /// History lengths of the grid.
    #[arg(long, value_delimiter = ',')]
    hs: Option<Vec<usize>>,
    /// Candidate counts of the grid.
    #[arg(long, value_delimiter = ',')]
    ks: Option<Vec<usize>>,
    /// Skip ranking the whole catalog (full mode).
    #[arg(long)]
    no_catalog: bool,
    /// Rank the whole catalog in quick mode too.
    #[arg(long)]
    catalog: bool,
    /// Timed repetitions per cell (p50/p95 over them).
    #[arg(long)]
    reps: Option<usize>,
    /// Largest estimated seconds one naive call may take; above it the naive cell is skipped.
    #[arg(long)]
    naive_budget: Option<f64>,
    /// Run the whole H × K grid and the whole catalog for every weight type (default: the first
    /// type; the others get H = 10 × every K and every H × K = 20).
    #[arg(long)]
    grid_all_types: bool,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    no_torch: bool,
    /// Skip the PNG plots.
    #[arg(long)]
    no_plots: bool,
    /// Vocabulary of the random-weight models (default: the real model's).
    #[arg(long)]
    vocab: Option<u64>,
    /// KV cells per context (default: the engine's, as an app gets it).
    #[arg(long, default_value_t = delrec_runtime::EngineConfig::default().context_size)]
    context_size: u32,
    #[arg(long, default_value_t = delrec_runtime::EngineConfig::default().batch_size)]
    batch_size: u32,
    #[arg(long, default_value_t = delrec_runtime::EngineConfig::default().max_sequences)]
    max_sequences: u32,
    /// The delrec-convert binary (default: next to this one).
    #[arg(long)]
    convert: Option<PathBuf>,
    #[arg(long, default_value = "python3")]
    python: String,
    /// Python with torch + transformers for the PyTorch baseline (default: --python if it has
    /// them, else target/train-venv/bin/python, the venv scripts/setup-train.sh makes).
    #[arg(long)]
    torch_python: Option<String>,
    /// Directory of the helper scripts (gemm.py, torch_baseline.py, plot.py).
    #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
    scripts: PathBuf,
    /// OMP_WAIT_POLICY for every measured process (ours, baselines, PyTorch): `passive` (default:
    /// on a shared or busy machine spinning threads wreck every number), `active`, or `inherit`.
    #[arg(long, default_value = "passive", value_parser = ["passive", "active", "inherit"])]
    omp_wait: String,
    /// Also measure the headline cell with the OpenMP library's default waiting (llama.cpp as the
    /// runtime ships it); on by default in full mode.
    #[arg(long)]
    omp_compare: bool,
    /// Seed of the histories and candidates.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The settings a run used, after the mode's defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub mode: String,
    pub models: Vec<String>,
    pub types: Vec<String>,
    pub threads: Vec<usize>,
    pub hs: Vec<usize>,
    pub ks: Vec<usize>,
    pub catalog: bool,
    pub reps: usize,
    pub catalog_reps: usize,
    pub naive_budget_s: f64,
    pub torch_budget_s: f64,
    pub warm_opens: usize,
    pub headline: (usize, usize),
    pub context_size: u32,
    pub batch_size: u32,
    pub max_sequences: u32,
    pub omp_wait: String,
    pub omp_compare: bool,
    pub grid_all_types: bool,
}

fn settings(a: &RunArgs) -> BResult<Settings> {
    let full = a.full;
    let all = sys::n_cpus();
    let threads: Vec<usize> = match &a.threads {
        Some(t) => {
            t.iter()
                .map(|x| {
                    if x == "all" {
                        Ok(all)
                    } else {
                        x.parse::<usize>().map_err(|_| format!("bad thread count {x:?}"))
                    }
                })
                .collect::<Result<_, _>>()?
        }
        None if full => vec![all, 2, 1],
        None => vec![all],
    };
    let mut seen = std::collections::HashSet::new();
    let threads: Vec<usize> = threads.into_iter().filter(|t| *t > 0 && seen.insert(*t)).collect();
    let types = a.types.clone().unwrap_or_else(|| {
        if full {
            fixtures::ALL_TYPES.iter().map(|s| s.to_string()).collect()
        } else {
            vec!["q4_0".into()]
        }
    });
    for t in &types {
        if !fixtures::ALL_TYPES.contains(&t.as_str()) {
            return Err(format!("unknown weight type {t:?}; use {}", fixtures::ALL_TYPES.join(", ")).into());
        }
    }
    let models = a.models.clone().unwrap_or_else(|| {
        if full {
            vec![fixtures::SMOLLM2.into(), "qwen2.5-0.5b".into()]
        } else {
            vec![fixtures::SMOLLM2.into()]
        }
    });
    for m in &models {
        if m != fixtures::SMOLLM2 && !fixtures::RANDOM_SHAPES.contains(&m.as_str()) {
            return Err(format!("unknown model {m:?}").into());
        }
    }
    let hs = a.hs.clone().unwrap_or_else(|| if full { vec![5, 10, 20, 50] } else { vec![10] });
    let ks = a.ks.clone().unwrap_or_else(|| if full { vec![1, 5, 20, 100] } else { vec![1, 20] });
    if hs.iter().chain(&ks).any(|&x| x == 0 || x > 500) {
        return Err("H and K must be in 1..=500".into());
    }
    if threads.is_empty() || models.is_empty() || types.is_empty() || hs.is_empty() || ks.is_empty() {
        return Err("empty list of threads, models, types, H or K".into());
    }
    Ok(Settings {
        mode: if full { "full" } else { "quick" }.into(),
        models,
        types,
        threads,
        hs,
        ks,
        catalog: !a.no_catalog && (full || a.catalog),
        reps: a.reps.unwrap_or(3).max(1),
        catalog_reps: 1,
        naive_budget_s: a.naive_budget.unwrap_or(20.0),
        torch_budget_s: 20.0,
        warm_opens: if full { 3 } else { 1 },
        headline: (10, 20),
        context_size: a.context_size,
        batch_size: a.batch_size,
        max_sequences: a.max_sequences,
        omp_wait: a.omp_wait.clone(),
        omp_compare: a.omp_compare || full,
        grid_all_types: a.grid_all_types,
    })
}

/// Applies the OpenMP wait policy to a child (read by libgomp when the process starts).
fn omp_env(cmd: &mut Command, policy: &str) {
    match policy {
        "inherit" => {}
        "default" => {
            cmd.env_remove("OMP_WAIT_POLICY");
        }
        p => {
            cmd.env("OMP_WAIT_POLICY", p.to_uppercase());
        }
    }
}

/// Everything one run measured; written as results.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub settings: Settings,
    pub floor: Option<serde_json::Value>,
    pub floor_note: Option<String>,
    pub models: Vec<ModelResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub command: String,
    pub cpu: String,
    pub cpus: usize,
    pub os: String,
    pub git_rev: Option<String>,
    /// The SIMD level this binary (and the llama.cpp built with it) was compiled for.
    #[serde(default)]
    pub build: String,
    pub started_unix: u64,
    pub wall_s: f64,
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelResult {
    pub name: String,
    pub description: String,
    pub types: Vec<worker::WorkerResult>,
    pub failures: Vec<String>,
    pub torch: Option<serde_json::Value>,
    pub torch_note: Option<String>,
    /// The headline cell of the first weight type with OMP_WAIT_POLICY unset (libgomp's default
    /// spin-then-sleep), everything else as in the main run...
    #[serde(default)]
    pub omp_default: Option<worker::WorkerResult>,
    /// ...and right before it, the same with the run's policy (an A/B pair).
    #[serde(default)]
    pub omp_passive: Option<worker::WorkerResult>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::Worker { spec, out }) => worker::run(&spec, &out),
        Some(Cmd::Report { results, python, scripts }) => rewrite_report(&results, &python, &scripts),
        Some(Cmd::Cascade(args)) => cascade::run(&args),
        Some(Cmd::Open(args)) => open::run(&args),
        Some(Cmd::Scan(args)) => scan::run(&args),
        Some(Cmd::Adapter(args)) => adapter::run(&args),
        Some(Cmd::Verbalizer(args)) => verbalizer::run(&args),
        Some(Cmd::AdapterMem { case, threads, spec }) => adapter::mem_worker(&case, threads, &spec),
        Some(Cmd::CascadeWorker { spec, out }) => cascade::worker(&spec, &out),
        None => run(&cli.run),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a child that prints `@len N` / `@step MSG` lines, driving the progress bar.
fn run_child(cmd: &mut Command, pb: &ProgressBar, prefix: &str, log: &Path) -> BResult<bool> {
    let log_file = std::fs::File::create(log)?;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::from(log_file)).spawn()?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            if let Some(n) = line.strip_prefix("@len ") {
                pb.inc_length(n.trim().parse().unwrap_or(0));
            } else if let Some(m) = line.strip_prefix("@step ") {
                pb.inc(1);
                pb.set_message(format!("{prefix}{m}"));
                if !std::io::stderr().is_terminal() {
                    // No bar without a terminal: plain lines instead.
                    eprintln!("[{:>6.1} s] {prefix}{m}", pb.elapsed().as_secs_f64());
                }
            }
        }
    }
    Ok(child.wait()?.success())
}

fn python_ok(python: &str, code: &str) -> Result<(), String> {
    match Command::new(python).args(["-c", code]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string()),
        Err(e) => Err(format!("could not run {python}: {e}")),
    }
}

fn run(a: &RunArgs) -> BResult<()> {
    let st = settings(a)?;
    let t0 = Instant::now();
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let loadavg_start = sys::loadavg();
    std::fs::create_dir_all(&a.out)?;
    let work = a.out.join("work");
    std::fs::create_dir_all(&work)?;
    let exe = std::env::current_exe()?;
    let convert = match &a.convert {
        Some(c) => c.clone(),
        None => exe.parent().map(|d| d.join("delrec-convert")).ok_or("no directory for the current executable")?,
    };
    let tools = fixtures::Tools { python: a.python.clone(), convert };

    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(500));
    eprintln!("build: {}", sys::build());
    eprintln!(
        "delrec-bench {} mode: models {:?}, types {:?}, threads {:?}, H {:?}, K {:?}{}; {} reps",
        st.mode,
        st.models,
        st.types,
        st.threads,
        st.hs,
        st.ks,
        if st.catalog { " + whole catalog" } else { "" },
        st.reps
    );

    // Fixtures first (they are the slow part of a first run).
    let mut fx = vec![];
    pb.inc_length(st.models.len() as u64);
    for m in &st.models {
        pb.set_message(format!("fixtures for {m}"));
        let mut step = |s: &str| pb.set_message(format!("{m}: {s}"));
        let f = fixtures::ensure(&tools, &a.cache, m, &st.types, a.vocab, &mut step)
            .map_err(|e| format!("fixtures for {m}: {e}"))?;
        fx.push(f);
        pb.inc(1);
    }

    // The compute floor's matmul throughput.
    let mut floor = None;
    let mut floor_note = None;
    pb.set_message("measuring matmul throughput (numpy GEMM)");
    match python_ok(&a.python, "import numpy") {
        Ok(()) => {
            let out = work.join("gemm.json");
            let th: Vec<String> = st.threads.iter().map(|t| t.to_string()).collect();
            let mut cmd = Command::new(&a.python);
            cmd.arg(a.scripts.join("gemm.py")).args(["--threads", &th.join(","), "--out"]).arg(&out);
            match run_child(&mut cmd, &pb, "", &work.join("gemm.log")) {
                Ok(true) => floor = std::fs::read(&out).ok().and_then(|b| serde_json::from_slice(&b).ok()),
                _ => floor_note = Some(format!("GEMM measurement failed; see {}", work.join("gemm.log").display())),
            }
        }
        Err(e) => floor_note = Some(format!("compute floor skipped: numpy not importable ({e})")),
    }

    let torch_py: Result<String, String> = if a.no_torch {
        Err("skipped (--no-torch)".to_string())
    } else {
        let cands: Vec<String> = match &a.torch_python {
            Some(p) => vec![p.clone()],
            None => vec![a.python.clone(), "target/train-venv/bin/python".into()],
        };
        let mut why = vec![];
        let mut found = None;
        for p in &cands {
            match python_ok(p, "import torch, transformers") {
                Ok(()) => {
                    found = Some(p.clone());
                    break;
                }
                Err(e) => why.push(format!("{p}: {e}")),
            }
        }
        found.ok_or_else(|| format!("skipped: torch/transformers not importable ({})", why.join("; ")))
    };
    match &torch_py {
        Err(e) => pb.println(format!("PyTorch baseline {e}")),
        Ok(p) => pb.println(format!("PyTorch baseline with {p}")),
    }
    let torch_ok = torch_py.as_ref().map(|_| ());
    let mut models = vec![];
    for f in &fx {
        let mut mr = ModelResult {
            name: f.name.clone(),
            description: f.description.clone(),
            types: vec![],
            failures: vec![],
            torch: None,
            torch_note: None,
            omp_default: None,
            omp_passive: None,
        };
        let job = work.join(format!("{}.torch-job.json", f.name));
        // PyTorch's scores are compared with the weight type it loads exactly, when measured.
        let job_type = f.files.iter().find(|(t, _)| *t == f.reference_type).unwrap_or(&f.files[0]).0.clone();
        for (i, (ty, path)) in f.files.iter().enumerate() {
            let full_grid = i == 0 || st.grid_all_types;
            let (hs, ks) =
                if full_grid { (st.hs.clone(), st.ks.clone()) } else { (vec![st.headline.0], st.ks.clone()) };
            let spec = worker::Spec {
                model: f.name.clone(),
                weight_type: ty.clone(),
                model_path: path.clone(),
                pack_path: f.pack.clone(),
                threads: st.threads.clone(),
                hs,
                ks,
                cross_hs: if full_grid { vec![] } else { st.hs.clone() },
                catalog: st.catalog && full_grid,
                reps: st.reps,
                catalog_reps: st.catalog_reps,
                naive_budget_s: st.naive_budget_s,
                context_size: st.context_size,
                batch_size: st.batch_size,
                max_sequences: st.max_sequences,
                headline: st.headline,
                warm_opens: st.warm_opens,
                torch_job: (*ty == job_type && torch_ok.is_ok()).then(|| job.clone()),
                seed: a.seed,
            };
            let tag = format!("{}.{ty}", f.name);
            let spec_path = work.join(format!("{tag}.spec.json"));
            let out_path = work.join(format!("{tag}.result.json"));
            let _ = std::fs::remove_file(&out_path);
            std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
            let mut cmd = Command::new(&exe);
            cmd.arg("worker").arg("--spec").arg(&spec_path).arg("--out").arg(&out_path);
            cmd.env("DELREC_LLAMA_LOG", "1");
            omp_env(&mut cmd, &st.omp_wait);
            let log = work.join(format!("{tag}.log"));
            let ok = run_child(&mut cmd, &pb, &format!("{} {ty}: ", f.name), &log)?;
            match std::fs::read(&out_path).ok().and_then(|b| serde_json::from_slice::<worker::WorkerResult>(&b).ok()) {
                Some(mut r) if ok => {
                    r.llama_buffers = report::llama_buffers(&log);
                    mr.types.push(r)
                }
                _ => {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().filter(|l| l.contains("error")).rev().take(3).collect();
                    let msg = format!("{ty}: worker failed (log {}): {}", log.display(), tail.join(" | "));
                    pb.println(&msg);
                    mr.failures.push(msg);
                }
            }
            if i == 0 && st.omp_compare && st.omp_wait != "inherit" {
                for policy in [st.omp_wait.as_str(), "default"] {
                    let r = omp_ab(&exe, &work, &pb, &st, f, ty, path, policy, a.seed)?;
                    if policy == "default" {
                        mr.omp_default = r;
                    } else {
                        mr.omp_passive = r;
                    }
                }
            }
        }
        match &torch_ok {
            Err(e) => mr.torch_note = Some((*e).clone()),
            Ok(()) if !job.exists() => mr.torch_note = Some("no job file (the first worker failed)".into()),
            Ok(()) => {
                let src = work.join(format!("{}.torch-source.json", f.name));
                std::fs::write(&src, serde_json::to_vec(&f.torch)?)?;
                let out = work.join(format!("{}.torch.json", f.name));
                let _ = std::fs::remove_file(&out);
                let py = torch_py.as_deref().unwrap_or("python3");
                let mut cmd = Command::new(py);
                cmd.arg(a.scripts.join("torch_baseline.py"))
                    .arg("--job")
                    .arg(&job)
                    .arg("--source")
                    .arg(&src)
                    .args(["--threads", &st.threads[0].to_string(), "--reps", &st.reps.to_string()])
                    .args(["--budget", &st.torch_budget_s.to_string(), "--out"])
                    .arg(&out);
                omp_env(&mut cmd, &st.omp_wait);
                pb.set_message(format!("{}: PyTorch baseline", f.name));
                let log = work.join(format!("{}.torch.log", f.name));
                let ok = run_child(&mut cmd, &pb, &format!("{}: ", f.name), &log)?;
                let v: Option<serde_json::Value> =
                    std::fs::read(&out).ok().and_then(|b| serde_json::from_slice(&b).ok());
                match v {
                    Some(v) if ok => {
                        if let Some(s) = v.get("skipped").and_then(|s| s.as_str()) {
                            mr.torch_note = Some(s.to_string());
                        } else {
                            mr.torch = Some(v);
                        }
                    }
                    _ => mr.torch_note = Some(format!("PyTorch baseline failed; see {}", log.display())),
                }
            }
        }
        models.push(mr);
    }
    pb.finish_and_clear();

    let res = Results {
        meta: Meta {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            cpu: sys::cpu_model(),
            cpus: sys::n_cpus(),
            os: std::env::consts::OS.into(),
            git_rev: git_rev(),
            build: sys::build(),
            started_unix,
            wall_s: t0.elapsed().as_secs_f64(),
            loadavg_start,
            loadavg_end: sys::loadavg(),
        },
        settings: st,
        floor,
        floor_note,
        models,
    };
    let json_path = a.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&res)?)?;
    let md = report::markdown(&res);
    let md_path = a.out.join("results.md");
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    if !a.no_plots {
        plots(&a.python, &a.scripts, &json_path, &a.out.join("plots"));
    }
    eprintln!("wrote {} and {} in {:.0} s", json_path.display(), md_path.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

/// `git rev-parse --short HEAD`, when run inside a checkout.
fn git_rev() -> Option<String> {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn plots(python: &str, scripts: &Path, json: &Path, out: &Path) {
    match python_ok(python, "import matplotlib") {
        Ok(()) => {
            let st = Command::new(python).arg(scripts.join("plot.py")).arg(json).arg(out).status();
            if !st.is_ok_and(|s| s.success()) {
                eprintln!("plots failed (bench/plot.py)");
            }
        }
        Err(e) => eprintln!("plots skipped: matplotlib not importable ({e}); `pip install matplotlib`"),
    }
}

fn rewrite_report(results: &Path, python: &str, scripts: &Path) -> BResult<()> {
    let res: Results = serde_json::from_slice(&std::fs::read(results)?)?;
    let dir = results.parent().unwrap_or(Path::new("."));
    let md = report::markdown(&res);
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    plots(python, scripts, results, &dir.join("plots"));
    Ok(())
}

/// One headline-only worker with the given OpenMP wait policy (an A/B pair with the other).
#[allow(clippy::too_many_arguments)]
fn omp_ab(
    exe: &Path,
    work: &Path,
    pb: &ProgressBar,
    st: &Settings,
    f: &fixtures::ModelFixture,
    ty: &str,
    path: &Path,
    policy: &str,
    seed: u64,
) -> BResult<Option<worker::WorkerResult>> {
    let spec = worker::Spec {
        model: f.name.clone(),
        weight_type: ty.to_string(),
        model_path: path.to_path_buf(),
        pack_path: f.pack.clone(),
        threads: vec![st.threads[0]],
        hs: vec![st.headline.0],
        ks: vec![st.headline.1],
        cross_hs: vec![],
        catalog: false,
        reps: st.reps,
        catalog_reps: 1,
        naive_budget_s: 0.0,
        context_size: st.context_size,
        batch_size: st.batch_size,
        max_sequences: st.max_sequences,
        headline: st.headline,
        warm_opens: 0,
        torch_job: None,
        seed,
    };
    let tag = format!("{}.{ty}.omp-{policy}", f.name);
    let spec_path = work.join(format!("{tag}.spec.json"));
    let out_path = work.join(format!("{tag}.result.json"));
    let _ = std::fs::remove_file(&out_path);
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
    let mut cmd = Command::new(exe);
    cmd.arg("worker").arg("--spec").arg(&spec_path).arg("--out").arg(&out_path);
    omp_env(&mut cmd, policy);
    let log = work.join(format!("{tag}.log"));
    let ok = run_child(&mut cmd, pb, &format!("{} {ty} (OpenMP wait {policy}): ", f.name), &log)?;
    Ok(std::fs::read(&out_path)
        .ok()
        .filter(|_| ok)
        .and_then(|b| serde_json::from_slice::<worker::WorkerResult>(&b).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_defaults() {
        let cli = Cli::parse_from(["delrec-bench"]);
        let s = settings(&cli.run).unwrap();
        assert_eq!(s.mode, "quick");
        assert_eq!(s.models, vec![fixtures::SMOLLM2.to_string()]);
        let cli = Cli::parse_from(["delrec-bench", "--full", "--threads", "1,all,1"]);
        let s = settings(&cli.run).unwrap();
        assert_eq!(s.types.len(), 5);
        assert_eq!(s.threads[0], 1);
        assert_eq!(s.threads.len(), if sys::n_cpus() == 1 { 1 } else { 2 });
        assert!(settings(&Cli::parse_from(["delrec-bench", "--types", "q3"]).run).is_err());
    }
}
