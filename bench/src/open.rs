//! `delrec-bench open`: what the model checks cost at `Engine::open`, side by side in one run:
//! opening without verification, the first verified open (the file hashed), a verified open the
//! process remembers, the hash alone, and the open of a pack that pins no digest (llama.cpp's
//! tensor data checks instead). Page cache warm throughout (the file is read first), so the
//! numbers are the checks' own cost, not the disk's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use delrec_runtime::format::gguf::{GgufFile, GgufWriter, TensorData};
use delrec_runtime::{DigestSource, Engine, EngineConfig, ModelVerification};

use crate::{fixtures, BResult};

#[derive(clap::Args, Clone, Debug)]
pub struct OpenArgs {
    /// Models (fixture names): smollm2-135m (real weights), qwen2.5-0.5b (random weights).
    #[arg(long, value_delimiter = ',', default_value = "smollm2-135m,qwen2.5-0.5b")]
    models: Vec<String>,
    #[arg(long, default_value = "target/bench-cache")]
    cache: PathBuf,
    /// Timed repetitions of each warm measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long)]
    convert: Option<PathBuf>,
    #[arg(long, default_value = "python3")]
    python: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn open(model: &Path, pack: &Path, verify: bool) -> BResult<(f64, ModelVerification)> {
    let cfg = EngineConfig { threads: 2, verify_checksum: verify, max_contexts: 1, ..Default::default() };
    let t = Instant::now();
    let e = Engine::open(model, pack, cfg)?;
    Ok((ms(t), e.model_verification()))
}

/// `pack` rewritten without its digest pin.
fn unpinned(pack: &Path, out: &Path) -> BResult<()> {
    let f = GgufFile::open(pack)?;
    let mut w = GgufWriter::new();
    for (k, v) in f.kv() {
        if k != "delrec.base.model_sha256" {
            w.set(k, v.clone());
        }
    }
    for t in f.tensors() {
        let bytes = f.tensor_bytes(t).ok_or("unsized tensor")?;
        w.add_tensor(&t.name, &t.dims, t.ty, TensorData::Owned(bytes.to_vec()))?;
    }
    w.write_atomic(out, &mut |_, _| {})?;
    Ok(())
}

pub fn run(a: &OpenArgs) -> BResult<()> {
    let exe = std::env::current_exe()?;
    let convert = match &a.convert {
        Some(c) => c.clone(),
        None => exe.parent().map(|d| d.join("delrec-convert")).ok_or("no directory for the current executable")?,
    };
    let tools = fixtures::Tools { python: a.python.clone(), convert };
    let reps = a.reps.max(1);
    println!("| model | file MiB | open, no verification | first verified open (hash) | verified open, remembered | sha256 alone | sha256 MB/s | open, unpinned pack (tensor checks) |");
    println!("|---|---|---|---|---|---|---|---|");
    for name in &a.models {
        let f = fixtures::ensure(&tools, &a.cache, name, &[], None, &mut |s| eprintln!("{name}: {s}"))?;
        // The pack pins the file it was built from.
        let (model, pack) = (f.base.clone(), f.pack.clone());
        let bytes = std::fs::read(&model)?; // warms the page cache
        let mib = bytes.len() as f64 / (1 << 20) as f64;
        let hash = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(delrec_runtime::format::identity::bytes_sha256(&bytes));
                    ms(t)
                })
                .collect(),
        );
        drop(bytes);
        let plain = median((0..reps).map(|_| open(&model, &pack, false).map(|r| r.0)).collect::<BResult<_>>()?);
        let (first, how) = open(&model, &pack, true)?;
        if how != ModelVerification::Digest(DigestSource::Hashed) {
            return Err(format!("{name}: the first verified open was {how:?}, not hashed (opened before?)").into());
        }
        let again = median(
            (0..reps)
                .map(|_| {
                    let (t, how) = open(&model, &pack, true)?;
                    match how {
                        ModelVerification::Digest(DigestSource::Process) => Ok(t),
                        other => Err(format!("{name}: a repeated open was {other:?}").into()),
                    }
                })
                .collect::<BResult<_>>()?,
        );
        let bare = pack.with_file_name("unpinned.pack.gguf");
        unpinned(&pack, &bare)?;
        let (checked, how) = open(&model, &bare, true)?;
        if how != ModelVerification::TensorChecks {
            return Err(format!("{name}: an unpinned pack opened as {how:?}").into());
        }
        println!(
            "| {name} ({}) | {mib:.0} | {plain:.0} ms | {first:.0} ms ({:.2}×) | {again:.0} ms ({:.2}×) | {hash:.0} ms | {:.0} | {checked:.0} ms ({:.2}×) |",
            f.reference_type,
            first / plain,
            again / plain,
            mib * 1.048576 / (hash / 1e3),
            checked / plain
        );
    }
    Ok(())
}
