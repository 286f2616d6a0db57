//! The worker: a child process that opens one (model, pack) pair per stdin line with the
//! engine, exercises what opened, and answers one line per case on stdout:
//!
//! - `ok`: opened, ranked, and (packs with a sequential model) recommended;
//! - `err <Group>.<Variant> <stage> <message>`: the first typed error, its public group (the
//!   `delrec_runtime::Error` variant), where it happened, and its message on one line.
//!
//! Anything that kills the process (a llama.cpp abort, a signal, a panic: panics are not
//! caught, a panic through our library is a bug) is for the parent to see.
//!
//! An encoder-decoder model (`general.architecture = "t5"`) is not opened with a pack (the engine
//! does not rank with one yet): it must pass `model_check`, then it is loaded by the `llm` layer,
//! tokenizes a text (the UGM normalizer walks the charsmap) and runs one encoder pass and two
//! decoder sequences, as the engine will.
//!
//! A case line is `MODEL<TAB>PACK<TAB>VERIFY` (`VERIFY` = 0 or 1). The lines `!abort`, `!panic`
//! and `!hang` make the worker fail on purpose: the parent's self-test proves it sees each.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use delrec_runtime::format::gguf::{GgufFile, Value};
use delrec_runtime::format::model_check::check_model;
use delrec_runtime::llm::{encoder_decoder_logits, EncoderSegment, Model, ModelParams};
use delrec_runtime::{Engine, EngineConfig, Error, FileError, KvType, RankRequest, RecommendRequest};

/// Text for the tokenizer: ASCII, NFKC-foldable fullwidth and compatibility characters, accents,
/// an emoji, controls and a special-token lookalike.
const TEXT: &str = "The Fuzzed Film (2024) <|endoftext|> </s> é🦀 ＡＢＣ ﬁ ① \t\n\u{0}";

/// Limits the worker's address space (a hostile file must not be able to take the machine).
fn limit_memory() {
    let Some(mb) = std::env::var("DELREC_FUZZ_MEM_MB").ok().and_then(|s| s.parse::<u64>().ok()) else { return };
    let bytes = mb << 20;
    let lim = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
    // SAFETY: setrlimit reads the struct we pass; nothing else is touched.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
    if rc != 0 {
        eprintln!("delrec-fuzz worker: setrlimit failed ({})", std::io::Error::last_os_error());
    }
}

pub fn group(e: &Error) -> String {
    // `Debug` of the inner enums starts with the variant's name.
    fn variant(debug: String) -> String {
        debug.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap_or("?").to_string()
    }
    match e {
        Error::BadRequest(r) => format!("BadRequest.{}", variant(format!("{r:?}"))),
        Error::BadFile(f) => format!("BadFile.{}", variant(format!("{f:?}"))),
        Error::Capacity { .. } => "Capacity".into(),
        Error::Cancelled => "Cancelled".into(),
        Error::DeadlineExceeded => "DeadlineExceeded".into(),
        Error::Internal { .. } => "Internal".into(),
        other => format!("Other.{}", variant(format!("{other:?}"))),
    }
}

fn one_line(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    s.chars().take(600).collect()
}

fn cfg(verify: bool) -> EngineConfig {
    EngineConfig {
        threads: 1,
        context_size: 256,
        max_contexts: 1,
        kv_type: KvType::F32,
        flash_attention: false,
        verify_checksum: verify,
        ..Default::default()
    }
}

/// Says on stderr which step a case is in: when the process dies, the last line names it.
fn stage(s: &'static str) -> &'static str {
    eprintln!("delrec-fuzz worker: stage {s}");
    s
}

/// An encoder-decoder model: checked, loaded, then tokenize, encode and decode.
fn run_encdec(model: &Path) -> Result<(), (Error, &'static str)> {
    let st = stage("t5-check");
    let io = |source| (Error::BadFile(FileError::Io { path: model.into(), source }), st);
    let file = std::fs::File::open(model).map_err(io)?;
    check_model(&GgufFile::from_file(&file, model).map_err(|e| (e.into(), st))?).map_err(|e| (e.into(), st))?;
    let st = stage("t5-load");
    let m = Arc::new(Model::load_file(&file, model, ModelParams::default()).map_err(|e| (e.into(), st))?);
    let st = stage("t5-tokenize");
    let mut tokens = m.tokenize(TEXT, false).map_err(|e| (e.into(), st))?;
    tokens.extend(m.tokenize(TEXT, true).map_err(|e| (e.into(), st))?);
    let st = stage("t5-encode-decode");
    let start = m.decoder_start_token().unwrap_or(0);
    let decoders = [vec![start], vec![start, tokens.first().copied().unwrap_or(start)]];
    encoder_decoder_logits(&m, None, &[EncoderSegment::Tokens(&tokens)], &decoders, 1).map_err(|e| (e.into(), st))?;
    stage("done");
    Ok(())
}

fn is_encoder_decoder(model: &Path) -> bool {
    GgufFile::open(model).is_ok_and(|f| f.get("general.architecture").and_then(Value::as_str) == Some("t5"))
}

/// One case: `Ok(())` or the first error with the stage it came from.
fn run_case(model: &Path, pack: &Path, verify: bool) -> Result<(), (Error, &'static str)> {
    if is_encoder_decoder(model) {
        return run_encdec(model);
    }
    let st = stage("open");
    let e = Engine::open(model, pack, cfg(verify)).map_err(|e| (e, st))?;
    let p = e.pack();
    let ids: Vec<String> = (0..p.n_items() as u32).filter_map(|i| p.item_id(i)).map(str::to_string).collect();
    let history: Vec<String> = ids.iter().take(2).cloned().collect();
    let candidates: Vec<String> = ids.iter().skip(2).take(4).cloned().collect();
    let req = RankRequest {
        history: history.clone(),
        candidates: (!candidates.is_empty()).then_some(candidates.clone()),
        ..Default::default()
    };
    let st = stage("rank");
    e.rank(&req).map_err(|e| (e, st))?;
    let top = RankRequest { history: history.clone(), top_k: Some(5), ..Default::default() };
    let st = stage("rank-top-k");
    e.rank(&top).map_err(|e| (e, st))?;
    // A title tokenized on the device with the model's own (possibly hostile) vocabulary.
    let st = stage("add-item");
    e.add_item("fuzz-added", "The Fuzzed Film (2024) <|endoftext|> é🦀").map_err(|e| (e, st))?;
    let mut with_added = candidates;
    with_added.push("fuzz-added".into());
    let req = RankRequest { history: history.clone(), candidates: Some(with_added), ..Default::default() };
    let st = stage("rank-added");
    e.rank(&req).map_err(|e| (e, st))?;
    if p.seq.is_some() {
        let rec = RecommendRequest { history, n: 3, ..Default::default() };
        let st = stage("recommend");
        e.recommend(&rec).map_err(|e| (e, st))?;
    }
    stage("done");
    Ok(())
}

pub fn main() -> ! {
    limit_memory();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.as_str() {
            "!abort" => std::process::abort(),
            "!panic" => panic!("delrec-fuzz worker: the self-test's panic"),
            "!hang" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            _ => {}
        }
        let f: Vec<&str> = line.split('\t').collect();
        let answer = match f.as_slice() {
            [model, pack, verify] => match run_case(Path::new(model), Path::new(pack), *verify == "1") {
                Ok(()) => "ok".to_string(),
                Err((e, stage)) => format!("err {} {stage} {}", group(&e), one_line(&e.to_string())),
            },
            _ => format!("err Protocol.BadLine worker {}", one_line(&line)),
        };
        if writeln!(out, "{answer}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    std::process::exit(0)
}
