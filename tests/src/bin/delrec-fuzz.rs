//! delrec-fuzz: proves that hostile packs and model files never crash the process (issue #22).
//!
//! ```text
//! delrec-fuzz [--seconds N] [--cases M] [--seed S] [--jobs J] [--out report.json]
//!             [--crash-dir DIR] [--timeout SECS] [--mem-mb MB] [--verify-fraction F]
//! delrec-fuzz --replay CASE_DIR_OR_JSON...
//! ```
//!
//! The parent mutates valid seeds (the converted tiny llama, qwen2 and t5 models, their packs, a pack
//! with a SASRec and one with a TSLRec projection) class by class (see `fuzz/mutate.rs`), writes
//! each mutant to a temp file and hands it to a worker child process (`delrec-fuzz worker`, see
//! `fuzz/worker.rs`), which runs `Engine::open` and, if that succeeds, ranks, adds an item and
//! recommends. A worker that dies (signal, panic, nonzero exit) or exceeds the per-case timeout
//! is a CRASH or HANG: the case is saved under the crash directory (model, pack, `case.json`)
//! and the worker restarted. Exit status: 0 no crash or hang, 1 crashes or hangs, 2 the harness
//! itself failed (bad arguments, seeds, or a failed self-test).
//!
//! Before fuzzing, a self-test proves the harness can fail: the genuine pairs must rank (`ok`),
//! and a worker told to abort, panic or hang must be seen as a crash, a crash and a hang.

mod fuzz;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use delrec_runtime::format::gguf::{Array, GgufFile, Value};
use delrec_runtime::format::identity::bytes_sha256;
use delrec_runtime::format::BaseIdentity;
use fuzz::gguf;
use fuzz::mutate::{self, Seed, Target, MODEL_CLASSES, PACK_CLASSES};
use fuzz::rng::{mix, Rng};
use serde_json::json;

const USAGE: &str = "usage: delrec-fuzz [--seconds N] [--cases M] [--seed S] [--jobs J] [--out FILE] \
[--crash-dir DIR] [--timeout SECS] [--mem-mb MB] [--verify-fraction F] [--no-self-test]\n       \
[--target model|pack] [--class NAME[,NAME...]]\n       \
delrec-fuzz --replay CASE_DIR_OR_JSON...";

struct Opts {
    seconds: f64,
    cases: u64,
    seed: u64,
    jobs: usize,
    out: Option<PathBuf>,
    crash_dir: PathBuf,
    timeout: Duration,
    mem_mb: u64,
    verify_fraction: f64,
    self_test: bool,
    replay: Vec<PathBuf>,
    /// Only this target's seeds, only these classes (triage); empty: all.
    target: Option<String>,
    classes: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        seconds: 90.0,
        cases: u64::MAX,
        seed: 0x5eed_de1e_c0de,
        jobs: 1,
        out: None,
        crash_dir: delrec_tests::repo().join("target/fuzz-crashes"),
        timeout: Duration::from_secs(20),
        mem_mb: 4096,
        verify_fraction: 0.1,
        self_test: true,
        replay: vec![],
        target: None,
        classes: vec![],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        let num = |s: String, name: &str| -> Result<f64, String> {
            s.parse::<f64>().map_err(|_| format!("{name}: {s:?} is not a number"))
        };
        match a.as_str() {
            "--seconds" => o.seconds = num(val(a)?, a)?,
            "--cases" => o.cases = num(val(a)?, a)? as u64,
            "--seed" => {
                let s = val(a)?;
                o.seed = match s.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => s.parse(),
                }
                .map_err(|_| format!("--seed: {s:?} is not an integer"))?
            }
            "--jobs" => o.jobs = (num(val(a)?, a)? as usize).clamp(1, 64),
            "--out" => o.out = Some(PathBuf::from(val(a)?)),
            "--crash-dir" => o.crash_dir = PathBuf::from(val(a)?),
            "--timeout" => o.timeout = Duration::from_secs_f64(num(val(a)?, a)?.max(0.1)),
            "--mem-mb" => o.mem_mb = num(val(a)?, a)? as u64,
            "--verify-fraction" => o.verify_fraction = num(val(a)?, a)?.clamp(0.0, 1.0),
            "--no-self-test" => o.self_test = false,
            "--target" => o.target = Some(val(a)?),
            "--class" => o.classes.extend(val(a)?.split(',').map(str::to_string)),
            "--replay" => {
                o.replay.extend(it.by_ref().map(PathBuf::from));
                if o.replay.is_empty() {
                    return Err("--replay needs at least one case".into());
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// The worker process, seen from the parent

enum Answer {
    Ok,
    Err { group: String, stage: String, message: String },
    Crash { status: String, stderr: String },
    Hang { stderr: String },
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
}

const STDERR_TAIL: usize = 24 << 10;

impl Worker {
    fn spawn(mem_mb: u64) -> std::io::Result<Worker> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("worker")
            .env("RUST_BACKTRACE", "1")
            .env("DELREC_FUZZ_MEM_MB", mem_mb.to_string())
            // llama.cpp's log stays silenced (the runtime routes it nowhere unless this is 1).
            .env_remove("DELREC_LLAMA_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b2 = buf.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut b = b2.lock().unwrap_or_else(|e| e.into_inner());
                b.extend_from_slice(&chunk[..n]);
                if b.len() > 2 * STDERR_TAIL {
                    let cut = b.len() - STDERR_TAIL;
                    b.drain(..cut);
                }
            }
        });
        Ok(Worker { child, stdin, lines: rx, stderr: buf, stderr_thread: Some(stderr_thread) })
    }

    fn stderr_tail(&mut self) -> String {
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let b = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let from = b.len().saturating_sub(STDERR_TAIL);
        String::from_utf8_lossy(&b[from..]).into_owned()
    }

    fn died(&mut self) -> Answer {
        let status = match self.child.wait() {
            Ok(s) => describe_status(s),
            Err(e) => format!("wait failed: {e}"),
        };
        Answer::Crash { status, stderr: self.stderr_tail() }
    }

    /// Sends one line and waits for its answer.
    fn ask(&mut self, line: &str, timeout: Duration) -> Answer {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if writeln!(self.stdin, "{line}").and_then(|_| self.stdin.flush()).is_err() {
            return self.died();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l == "ok" => return Answer::Ok,
                Ok(l) if l.starts_with("err ") => {
                    let mut f = l[4..].splitn(3, ' ');
                    let group = f.next().unwrap_or("?").to_string();
                    let stage = f.next().unwrap_or("?").to_string();
                    let message = f.next().unwrap_or("").to_string();
                    return Answer::Err { group, stage, message };
                }
                // Anything else on stdout is not ours (llama.cpp printing): ignored.
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => return self.died(),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Answer::Hang { stderr: self.stderr_tail() };
                }
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (_, Some(sig)) => {
            let name = match sig {
                libc::SIGABRT => "SIGABRT",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGBUS => "SIGBUS",
                libc::SIGFPE => "SIGFPE",
                libc::SIGILL => "SIGILL",
                libc::SIGKILL => "SIGKILL",
                libc::SIGTRAP => "SIGTRAP",
                _ => "signal",
            };
            format!("killed by signal {sig} ({name}){}", if s.core_dumped() { ", core dumped" } else { "" })
        }
        (Some(101), _) => "exit 101 (a Rust panic)".into(),
        (Some(c), _) => format!("exit {c}"),
        _ => "unknown".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

fn load_seed(name: &str, target: Target, path: PathBuf, partner: PathBuf, order_seed: u64) -> Result<Seed, String> {
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (doc, layout) = gguf::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    gguf::check_seed(&path, &bytes, &doc, &layout)?;
    let arch = match target {
        Target::Model => doc.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_string(),
        Target::Pack => doc.get("delrec.base.architecture").and_then(Value::as_str).unwrap_or("").to_string(),
    };
    let n_vocab = match target {
        Target::Model => {
            doc.get("tokenizer.ggml.tokens").and_then(Value::as_str_array).map_or(0, <[String]>::len) as i64
        }
        Target::Pack => doc.get("delrec.base.n_vocab").and_then(Value::as_u64).unwrap_or(0) as i64,
    };
    let n_layer = doc.get(&format!("{arch}.block_count")).and_then(Value::as_u64).unwrap_or(2);
    let partner_doc = match target {
        Target::Model => {
            let b = std::fs::read(&partner).map_err(|e| format!("{}: {e}", partner.display()))?;
            Some(gguf::parse(&b).map_err(|e| format!("{}: {e}", partner.display()))?.0)
        }
        Target::Pack => None,
    };
    let mut elements = layout.element_boundaries.clone();
    Rng::new(order_seed).shuffle(&mut elements);
    let mut cuts = layout.boundaries.clone();
    let primary_cuts = cuts.len();
    cuts.extend(elements);
    Ok(Seed {
        name: name.to_string(),
        target,
        path,
        bytes,
        doc,
        layout,
        partner,
        partner_doc,
        cuts,
        primary_cuts,
        arch,
        n_vocab,
        n_layer,
    })
}

fn seeds(run_seed: u64) -> Result<Vec<Seed>, String> {
    let llama = delrec_tests::model("llama-tiny", "f32");
    let qwen = delrec_tests::model("qwen2-tiny", "f32");
    let llama_q8 = delrec_tests::model("llama-tiny", "q8_0");
    let t5 = delrec_tests::model("t5-tiny", "f32");
    let p_llama = delrec_tests::pack(&llama, "llama-tiny", "prompt-llama");
    let p_seq = delrec_tests::seq_pack(&llama, "llama-tiny", "prompt-llama");
    let p_tsl = delrec_tests::tslrec_pack(&llama, "llama-tiny", "prompt-llama");
    let p_qwen = delrec_tests::pack(&qwen, "qwen2-tiny", "prompt-qwen2");
    let list = [
        ("llama-tiny.f32", Target::Model, llama.clone(), p_llama.clone()),
        ("qwen2-tiny.f32", Target::Model, qwen.clone(), p_qwen.clone()),
        // Quantized tensors (Q8_0 blocks); its pack is the f32 model's (same identity, digest differs).
        ("llama-tiny.q8_0", Target::Model, llama_q8, p_llama.clone()),
        // An encoder-decoder: the worker checks, loads and runs it without a pack (the partner
        // only keeps the harness's pairs uniform).
        ("t5-tiny.f32", Target::Model, t5, p_llama.clone()),
        ("pack.llama", Target::Pack, p_llama, llama.clone()),
        ("pack.llama.seq", Target::Pack, p_seq, llama.clone()),
        ("pack.llama.tslrec", Target::Pack, p_tsl, llama),
        ("pack.qwen2", Target::Pack, p_qwen, qwen),
    ];
    list.into_iter()
        .enumerate()
        .map(|(i, (name, t, path, partner))| load_seed(name, t, path, partner, mix(run_seed ^ i as u64)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Default)]
struct ClassStats {
    cases: u64,
    ok: u64,
    /// `Group.Variant@stage` → count.
    errors: BTreeMap<String, u64>,
    crashes: u64,
    hangs: u64,
    /// Cases whose engine opened (ok, or an error after open): the mutant got through every
    /// check and llama.cpp loaded it.
    opened: u64,
    verify_on: u64,
    repinned: u64,
    /// Wall time of the cases (writing the mutant to the worker's answer), milliseconds.
    millis: f64,
    /// The first messages of each error kind, with the mutation that caused them.
    examples: BTreeMap<String, Vec<String>>,
}

#[derive(Default)]
struct Stats {
    classes: BTreeMap<(Target, String), ClassStats>,
    /// (seed, class) → cases.
    per_seed: BTreeMap<(String, String), u64>,
    failures: Vec<serde_json::Value>,
    internal: Vec<serde_json::Value>,
    internal_total: u64,
    writer_checks: u64,
    writer_mismatches: Vec<String>,
    restarts: u64,
    /// Crash kinds (status | stage | last stderr line) → count.
    signatures: BTreeMap<String, u64>,
}

struct Shared {
    opts: Opts,
    seeds: Vec<Seed>,
    /// The round-robin schedule: (seed, class, slot within the class's weight, weight).
    schedule: Vec<(usize, &'static str, usize, usize)>,
    next: AtomicU64,
    deadline: Instant,
    stats: Mutex<Stats>,
    work: PathBuf,
    stop: AtomicBool,
}

struct Case {
    index: u64,
    case_seed: u64,
    target: Target,
    seed: usize,
    class: &'static str,
    desc: Vec<String>,
    model: PathBuf,
    pack: PathBuf,
    verify: bool,
    repinned: bool,
    /// Files this case wrote (removed after it).
    written: Vec<PathBuf>,
}

impl Case {
    fn line(&self) -> String {
        format!("{}\t{}\t{}", self.model.display(), self.pack.display(), if self.verify { 1 } else { 0 })
    }
}

/// The pack re-pinned to a model mutant: its identity and digest, so the model reaches
/// llama.cpp even when its vocabulary or width changed (an attacker who ships both files).
fn repin(seed: &Seed, model_path: &Path, model_bytes: &[u8], out: &Path) -> Option<()> {
    let f = GgufFile::open(model_path).ok()?;
    let id = BaseIdentity::of_model(&f).ok()?;
    drop(f);
    let mut doc = seed.partner_doc.clone()?;
    doc.set("delrec.base.architecture", Value::Str(id.architecture));
    doc.set("delrec.base.n_embd", Value::U32(id.n_embd));
    doc.set("delrec.base.n_vocab", Value::U32(id.n_vocab));
    doc.set("delrec.base.tokenizer_fingerprint", Value::Str(id.tokenizer_fingerprint));
    doc.set("delrec.base.model_sha256", Value::Array(Array::Str(vec![bytes_sha256(model_bytes)])));
    std::fs::write(out, doc.serialize()).ok()
}

fn make_case(sh: &Shared, index: u64, dir: &Path) -> Result<Case, String> {
    let (si, class, slot, weight) = sh.schedule[(index % sh.schedule.len() as u64) as usize];
    let round = index / sh.schedule.len() as u64;
    let nth = round * weight as u64 + slot as u64;
    let case_seed = mix(sh.opts.seed ^ mix(index));
    let mut rng = Rng::new(case_seed);
    let seed = &sh.seeds[si];
    let m = mutate::generate(&mut rng, seed, class, nth);
    let mutant = dir.join(format!("c{index}.{}.gguf", seed.target.name()));
    std::fs::write(&mutant, &m.bytes).map_err(|e| format!("{}: {e}", mutant.display()))?;
    let mut written = vec![mutant.clone()];
    let mut desc = m.desc;
    // A sample of the consistent structural mutants, written by GgufWriter too: the bytes must
    // be the serializer's.
    if let Some(doc) = m.doc.as_ref().filter(|d| index.is_multiple_of(20) && d.writer_can_express()) {
        let x = dir.join(format!("c{index}.writer.gguf"));
        let same = doc.write_with_writer(&x).ok().and_then(|_| std::fs::read(&x).ok()).map(|b| b == m.bytes);
        let _ = std::fs::remove_file(&x);
        let mut st = sh.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.writer_checks += 1;
        if same != Some(true) {
            st.writer_mismatches.push(format!("case {index} ({} {class}): {}", seed.name, desc.join("; ")));
        }
    }
    let (model, pack, verify, repinned) = match seed.target {
        Target::Pack => (seed.partner.clone(), mutant, rng.chance(0.5), false),
        Target::Model => {
            let pinned = dir.join(format!("c{index}.repinned.pack.gguf"));
            if rng.chance(0.5) && repin(seed, &mutant, &m.bytes, &pinned).is_some() {
                written.push(pinned.clone());
                desc.push("pack re-pinned to the mutant's identity and digest".into());
                (mutant, pinned, rng.chance(0.5), true)
            } else {
                (mutant, seed.partner.clone(), rng.chance(sh.opts.verify_fraction), false)
            }
        }
    };
    Ok(Case { index, case_seed, target: seed.target, seed: si, class, desc, model, pack, verify, repinned, written })
}

fn save_case(dir: &Path, case: &Case, seed: &Seed, outcome: &str, status: &str, stderr: &str) -> Option<PathBuf> {
    let d = dir.join(format!("{}-{}-{}-{:08}", seed.target.name(), class_slug(case.class), seed.name, case.index));
    std::fs::create_dir_all(&d).ok()?;
    std::fs::copy(&case.model, d.join("model.gguf")).ok()?;
    std::fs::copy(&case.pack, d.join("pack.gguf")).ok()?;
    let j = json!({
        "outcome": outcome,
        "status": status,
        "target": seed.target.name(),
        "class": case.class,
        "seed_file": seed.name,
        "case_index": case.index,
        "case_seed": format!("{:#x}", case.case_seed),
        "mutations": case.desc,
        "verify_checksum": case.verify,
        "repinned_pack": case.repinned,
        "model": "model.gguf",
        "pack": "pack.gguf",
        "stderr_tail": stderr,
    });
    std::fs::write(d.join("case.json"), serde_json::to_string_pretty(&j).ok()?).ok()?;
    Some(d)
}

fn class_slug(c: &str) -> String {
    c.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

fn run_slot(sh: &Shared, slot: usize) -> Result<(), String> {
    let dir = sh.work.join(format!("slot{slot}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut worker: Option<Worker> = None;
    loop {
        if sh.stop.load(Ordering::Relaxed) || Instant::now() >= sh.deadline {
            return Ok(());
        }
        let index = sh.next.fetch_add(1, Ordering::Relaxed);
        if index >= sh.opts.cases {
            return Ok(());
        }
        let case = make_case(sh, index, &dir)?;
        let w = match worker.as_mut() {
            Some(w) => w,
            None => worker.insert(Worker::spawn(sh.opts.mem_mb).map_err(|e| format!("spawning the worker: {e}"))?),
        };
        let t_case = Instant::now();
        let answer = w.ask(&case.line(), sh.opts.timeout);
        let case_ms = t_case.elapsed().as_secs_f64() * 1e3;
        let seed = &sh.seeds[case.seed];
        let mut st = sh.stats.lock().unwrap_or_else(|e| e.into_inner());
        *st.per_seed.entry((seed.name.clone(), case.class.to_string())).or_default() += 1;
        let cs = st.classes.entry((case.target, case.class.to_string())).or_default();
        cs.cases += 1;
        cs.millis += case_ms;
        cs.verify_on += case.verify as u64;
        cs.repinned += case.repinned as u64;
        match answer {
            Answer::Ok => {
                cs.ok += 1;
                cs.opened += 1;
            }
            Answer::Err { group, stage, message } => {
                if stage != "open" {
                    cs.opened += 1;
                }
                let kind = format!("{group}@{stage}");
                *cs.errors.entry(kind.clone()).or_default() += 1;
                let ex = cs.examples.entry(kind).or_default();
                if ex.len() < 2 {
                    let m: String = message.chars().take(300).collect();
                    ex.push(format!("{} [{}]: {m}", case.desc.join("; "), seed.name));
                }
                if group == "Internal" {
                    st.internal_total += 1;
                    if st.internal.len() < 40 {
                        let saved = save_case(&sh.opts.crash_dir.join("internal"), &case, seed, "internal", "", "");
                        st.internal.push(json!({
                            "target": case.target.name(), "class": case.class, "seed_file": seed.name,
                            "case_index": case.index, "stage": stage, "message": message,
                            "mutations": case.desc, "saved": saved.map(|p| p.display().to_string()),
                        }));
                    }
                }
            }
            ans @ (Answer::Crash { .. } | Answer::Hang { .. }) => {
                let (outcome, status, stderr) = match ans {
                    Answer::Crash { status, stderr } => {
                        cs.crashes += 1;
                        ("crash", status, stderr)
                    }
                    Answer::Hang { stderr } => {
                        cs.hangs += 1;
                        ("hang", format!("no answer within {:?}; killed", sh.opts.timeout), stderr)
                    }
                    _ => unreachable!(),
                };
                st.restarts += 1;
                // The step the worker was in (its last stage line) and what it printed after.
                let stage = stderr
                    .lines()
                    .rev()
                    .find_map(|l| l.strip_prefix("delrec-fuzz worker: stage "))
                    .unwrap_or("before open")
                    .to_string();
                let last =
                    stderr.lines().rev().find(|l| !l.starts_with("delrec-fuzz worker:")).unwrap_or("").to_string();
                // Every crash is counted; the first few of each kind are saved.
                let signature = format!("{status} | {stage} | {last}");
                let seen = st.signatures.entry(signature.clone()).or_default();
                *seen += 1;
                let saved = if *seen <= 3 {
                    save_case(&sh.opts.crash_dir, &case, seed, outcome, &status, &stderr)
                } else {
                    None
                };
                let first_of_kind = *seen <= 3;
                if first_of_kind {
                    eprintln!(
                        "delrec-fuzz: {} {} on case {} ({} {} {}): {}; saved to {}",
                        outcome.to_uppercase(),
                        status,
                        case.index,
                        seed.target.name(),
                        case.class,
                        seed.name,
                        case.desc.join("; "),
                        saved.as_ref().map_or("(could not save)".into(), |p| p.display().to_string())
                    );
                }
                let tail: String =
                    stderr.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                if st.failures.len() < 200 {
                    st.failures.push(json!({
                        "outcome": outcome, "status": status, "stage": stage, "signature": signature,
                        "target": case.target.name(), "class": case.class,
                        "seed_file": seed.name, "case_index": case.index, "mutations": case.desc,
                        "verify_checksum": case.verify, "repinned_pack": case.repinned,
                        "saved": saved.map(|p| p.display().to_string()), "stderr_tail": tail,
                    }));
                }
                worker = None;
            }
        }
        drop(st);
        for f in &case.written {
            let _ = std::fs::remove_file(f);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Self-test, replay, report

fn self_test(sh: &Shared) -> Result<(), String> {
    let timeout = sh.opts.timeout;
    let mut w = Worker::spawn(sh.opts.mem_mb).map_err(|e| e.to_string())?;
    for s in &sh.seeds {
        let (model, pack) = match s.target {
            Target::Model => (&s.path, &s.partner),
            Target::Pack => (&s.partner, &s.path),
        };
        let pinned = {
            let sum = bytes_sha256(&std::fs::read(model).map_err(|e| e.to_string())?);
            let p = GgufFile::open(pack).map_err(|e| e.to_string())?;
            p.get("delrec.base.model_sha256").and_then(Value::as_str_array).is_some_and(|v| v.contains(&sum))
        };
        for verify in [false, true].into_iter().filter(|&v| !v || pinned) {
            let line = format!("{}\t{}\t{}", model.display(), pack.display(), verify as u8);
            match w.ask(&line, timeout) {
                Answer::Ok => {}
                Answer::Err { group, stage, message } => {
                    return Err(format!(
                        "the genuine pair of {} (verify {verify}) does not rank: {group} at {stage}: {message}",
                        s.name
                    ))
                }
                Answer::Crash { status, stderr } => {
                    return Err(format!("the genuine pair of {} crashed the worker: {status}\n{stderr}", s.name))
                }
                Answer::Hang { .. } => return Err(format!("the genuine pair of {} hung", s.name)),
            }
        }
    }
    drop(w);
    let probes = [
        ("!abort", "crash", Duration::from_secs(10)),
        ("!panic", "crash", Duration::from_secs(10)),
        ("!hang", "hang", Duration::from_millis(1500)),
    ];
    for (line, want, t) in probes {
        let mut w = Worker::spawn(sh.opts.mem_mb).map_err(|e| e.to_string())?;
        let got = match w.ask(line, t) {
            Answer::Ok | Answer::Err { .. } => "an answer".to_string(),
            Answer::Crash { status, stderr } => {
                if line == "!panic" && !stderr.contains("self-test's panic") {
                    return Err(format!("the panic probe's message is not in the captured stderr: {stderr:?}"));
                }
                if line == "!abort" && !status.contains("SIGABRT") {
                    return Err(format!("the abort probe ended as {status:?}, not SIGABRT"));
                }
                "crash".into()
            }
            Answer::Hang { .. } => "hang".into(),
        };
        if got != want {
            return Err(format!("self-test: {line} was seen as {got}, not a {want}"));
        }
    }
    Ok(())
}

fn replay(opts: &Opts) -> i32 {
    let mut bad = 0;
    for p in &opts.replay {
        let dir = if p.is_dir() { p.clone() } else { p.parent().map(Path::to_path_buf).unwrap_or_default() };
        let json_path = if p.is_dir() { p.join("case.json") } else { p.clone() };
        let j: serde_json::Value = match std::fs::read_to_string(&json_path)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
        {
            Ok(j) => j,
            Err(e) => {
                eprintln!("{}: {e}", json_path.display());
                return 2;
            }
        };
        let model = dir.join(j["model"].as_str().unwrap_or("model.gguf"));
        let pack = dir.join(j["pack"].as_str().unwrap_or("pack.gguf"));
        let verify = j["verify_checksum"].as_bool().unwrap_or(false);
        let mut w = match Worker::spawn(opts.mem_mb) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("spawning the worker: {e}");
                return 2;
            }
        };
        let line = format!("{}\t{}\t{}", model.display(), pack.display(), verify as u8);
        let what = match w.ask(&line, opts.timeout) {
            Answer::Ok => "ok".to_string(),
            Answer::Err { group, stage, message } => format!("err {group} at {stage}: {message}"),
            Answer::Crash { status, stderr } => {
                bad += 1;
                format!("CRASH: {status}\n{stderr}")
            }
            Answer::Hang { stderr } => {
                bad += 1;
                format!("HANG (no answer within {:?})\n{stderr}", opts.timeout)
            }
        };
        println!("{}: {what}", dir.display());
    }
    if bad > 0 {
        1
    } else {
        0
    }
}

fn report(sh: &Shared, elapsed: f64, setup: f64) -> (serde_json::Value, u64) {
    let st = sh.stats.lock().unwrap_or_else(|e| e.into_inner());
    let mut targets = serde_json::Map::new();
    let (mut total, mut crashes, mut hangs) = (0u64, 0u64, 0u64);
    println!(
        "{:<6} {:<18} {:>7} {:>7} {:>7} {:>7} {:>6} {:>5} {:>6}  top errors",
        "target", "class", "cases", "ok", "opened", "errors", "crash", "hang", "ms/c"
    );
    for ((t, class), c) in &st.classes {
        total += c.cases;
        crashes += c.crashes;
        hangs += c.hangs;
        let n_err: u64 = c.errors.values().sum();
        let mut top: Vec<(&String, &u64)> = c.errors.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = top.iter().take(3).map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "{:<6} {:<18} {:>7} {:>7} {:>7} {:>7} {:>6} {:>5} {:>6.1}  {}",
            t.name(),
            class,
            c.cases,
            c.ok,
            c.opened,
            n_err,
            c.crashes,
            c.hangs,
            c.millis / c.cases.max(1) as f64,
            top.join(", ")
        );
        let entry = targets.entry(t.name()).or_insert_with(|| json!({}));
        entry[class.as_str()] = json!({
            "cases": c.cases, "ok": c.ok, "opened": c.opened, "errors": c.errors,
            "crashes": c.crashes, "hangs": c.hangs, "verify_checksum_on": c.verify_on, "repinned_pack": c.repinned,
            "mean_case_ms": c.millis / c.cases.max(1) as f64, "error_examples": c.examples,
        });
    }
    let seeds: Vec<serde_json::Value> = sh
        .seeds
        .iter()
        .map(|s| {
            let cases: BTreeMap<&str, u64> =
                st.per_seed.iter().filter(|((n, _), _)| n == &s.name).map(|((_, c), v)| (c.as_str(), *v)).collect();
            let cuts_done = cases.get("truncate-boundary").copied().unwrap_or(0);
            json!({
                "name": s.name, "target": s.target.name(), "file": s.path.display().to_string(),
                "bytes": s.bytes.len(), "cases": cases,
                "truncation_boundaries": {
                    "structural": s.primary_cuts, "array_elements": s.cuts.len() - s.primary_cuts,
                    "structural_covered": cuts_done.min(s.primary_cuts as u64),
                    "all_covered": cuts_done.min(s.cuts.len() as u64),
                },
            })
        })
        .collect();
    let rate = total as f64 / elapsed.max(1e-9);
    let j = json!({
        "seed": format!("{:#x}", sh.opts.seed),
        "jobs": sh.opts.jobs,
        "seconds_limit": sh.opts.seconds,
        "setup_seconds": setup,
        "elapsed_seconds": elapsed,
        "cases": total,
        "cases_per_second": rate,
        "crashes": crashes,
        "hangs": hangs,
        "worker_restarts": st.restarts,
        "per_case_timeout_seconds": sh.opts.timeout.as_secs_f64(),
        "targets": targets,
        "seeds": seeds,
        "failure_kinds": st.signatures,
        "failures": st.failures,
        "internal_errors_total": st.internal_total,
        "internal_errors": st.internal,
        "writer_crosschecks": st.writer_checks,
        "writer_mismatches": st.writer_mismatches,
        "crash_dir": sh.opts.crash_dir.display().to_string(),
    });
    println!(
        "delrec-fuzz: {total} cases in {elapsed:.1} s ({rate:.1}/s, {} jobs, seed {:#x}): {crashes} crashes, {hangs} hangs, {} Internal errors, writer cross-checks {} ({} mismatches)",
        sh.opts.jobs,
        sh.opts.seed,
        st.internal_total,
        st.writer_checks,
        st.writer_mismatches.len()
    );
    (j, crashes + hangs)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        fuzz::worker::main();
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("delrec-fuzz: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if !opts.replay.is_empty() {
        std::process::exit(replay(&opts));
    }
    std::process::exit(run(opts));
}

fn run(opts: Opts) -> i32 {
    let t0 = Instant::now();
    let seeds = match seeds(opts.seed) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("delrec-fuzz: seeds: {e}");
            return 2;
        }
    };
    let mut schedule = Vec::new();
    for (i, s) in seeds.iter().enumerate() {
        let classes = match s.target {
            Target::Model => MODEL_CLASSES,
            Target::Pack => PACK_CLASSES,
        };
        if opts.target.as_ref().is_some_and(|t| t != s.target.name()) {
            continue;
        }
        for &(c, w) in classes {
            if !opts.classes.is_empty() && !opts.classes.iter().any(|x| x == c) {
                continue;
            }
            for j in 0..w {
                schedule.push((i, c, j, w));
            }
        }
    }
    if schedule.is_empty() {
        eprintln!("delrec-fuzz: --target/--class select nothing (classes: {MODEL_CLASSES:?} / {PACK_CLASSES:?})");
        return 2;
    }
    // Mutants live in memory-backed storage when there is some (they are written per case).
    let work = tempfile::Builder::new()
        .prefix("delrec-fuzz-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::Builder::new().prefix("delrec-fuzz-").tempdir());
    let work = match work {
        Ok(w) => w,
        Err(e) => {
            eprintln!("delrec-fuzz: a work directory: {e}");
            return 2;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&opts.crash_dir) {
        eprintln!("delrec-fuzz: {}: {e}", opts.crash_dir.display());
        return 2;
    }
    let jobs = opts.jobs;
    let self_test_on = opts.self_test;
    let mut sh = Shared {
        seeds,
        schedule,
        next: AtomicU64::new(0),
        deadline: Instant::now(),
        stats: Mutex::new(Stats::default()),
        work: work.path().to_path_buf(),
        stop: AtomicBool::new(false),
        opts,
    };
    for s in &sh.seeds {
        eprintln!(
            "delrec-fuzz: seed {} ({} bytes, {} KV, {} tensors, {} structural + {} element cut points)",
            s.name,
            s.bytes.len(),
            s.doc.kv.len(),
            s.doc.tensors.len(),
            s.primary_cuts,
            s.cuts.len() - s.primary_cuts
        );
    }
    if self_test_on {
        if let Err(e) = self_test(&sh) {
            eprintln!("delrec-fuzz: SELF-TEST FAILED: {e}");
            return 2;
        }
        eprintln!("delrec-fuzz: self-test passed (genuine pairs rank; abort, panic and hang are detected)");
    }
    let setup = t0.elapsed().as_secs_f64();
    let start = Instant::now();
    sh.deadline = start + Duration::from_secs_f64(sh.opts.seconds);
    let sh = Arc::new(sh);
    let progress = {
        let sh = sh.clone();
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while !sh.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= Duration::from_secs(15) {
                    last = Instant::now();
                    let st = sh.stats.lock().unwrap_or_else(|e| e.into_inner());
                    let n: u64 = st.classes.values().map(|c| c.cases).sum();
                    let bad: u64 = st.classes.values().map(|c| c.crashes + c.hangs).sum();
                    eprintln!("delrec-fuzz: {:.0} s: {n} cases, {bad} crashes/hangs", start.elapsed().as_secs_f64());
                }
            }
        })
    };
    let handles: Vec<_> = (0..jobs)
        .map(|slot| {
            let sh = sh.clone();
            std::thread::spawn(move || run_slot(&sh, slot))
        })
        .collect();
    let mut harness_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => harness_error = Some(e),
            Err(_) => harness_error = Some("a slot thread panicked".into()),
        }
    }
    sh.stop.store(true, Ordering::Relaxed);
    let _ = progress.join();
    let elapsed = start.elapsed().as_secs_f64();
    let (j, bad) = report(&sh, elapsed, setup);
    if let Some(out) = &sh.opts.out {
        let text = serde_json::to_string_pretty(&j).expect("the report serializes");
        if let Err(e) = std::fs::write(out, text) {
            eprintln!("delrec-fuzz: {}: {e}", out.display());
            return 2;
        }
    }
    drop(work);
    if let Some(e) = harness_error {
        eprintln!("delrec-fuzz: HARNESS ERROR: {e}");
        return 2;
    }
    let mismatches = sh.stats.lock().unwrap_or_else(|e| e.into_inner()).writer_mismatches.len();
    if mismatches > 0 {
        eprintln!("delrec-fuzz: HARNESS ERROR: {mismatches} serializer/GgufWriter mismatches");
        return 2;
    }
    if bad > 0 {
        eprintln!("delrec-fuzz: FAILED: {bad} crashes/hangs; cases saved under {}", sh.opts.crash_dir.display());
        return 1;
    }
    0
}
