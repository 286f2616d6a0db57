//! `delrec logits` (decoder-only models) with a `--gpu-layers N` flag, for the Vulkan parity run
//! (`scripts/vulkan.sh`): the CLI's `logits` loads models with `ModelParams::default()`, so it
//! cannot offload. Same arguments and JSON output as `delrec logits`:
//!
//!   logits_offload logits --model M [--adapter A] --tokens 1,2,3 [--gpu-layers N] --json
//!
//! To be retired once `delrec logits` takes `--gpu-layers` itself.

use std::path::PathBuf;
use std::sync::Arc;

use delrec_runtime::format::adapter::{check_adapter, BaseTensors};
use delrec_runtime::format::gguf::GgufFile;
use delrec_runtime::format::BaseIdentity;
use delrec_runtime::llm::{sequence_logits, Adapter, Model, ModelParams};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    model: PathBuf,
    adapter: Option<PathBuf>,
    tokens: Vec<i32>,
    gpu_layers: i32,
}

fn parse() -> Res<Args> {
    let mut it = std::env::args().skip(1);
    if it.next().as_deref() != Some("logits") {
        return Err("usage: logits_offload logits --model M [--adapter A] --tokens IDS [--gpu-layers N] --json".into());
    }
    let (mut model, mut adapter, mut tokens, mut gpu_layers, mut json) = (None, None, None, 0, false);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(val()?)),
            "--adapter" => adapter = Some(PathBuf::from(val()?)),
            "--tokens" => {
                tokens = Some(val()?.split(',').map(|t| t.trim().parse::<i32>()).collect::<Result<Vec<_>, _>>()?)
            }
            "--gpu-layers" => gpu_layers = val()?.parse()?,
            "--json" => json = true,
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    if !json {
        return Err("only --json output is supported".into());
    }
    let tokens = tokens.filter(|t| !t.is_empty()).ok_or("--tokens is empty")?;
    Ok(Args { model: model.ok_or("--model is required")?, adapter, tokens, gpu_layers })
}

fn run() -> Res<()> {
    let args = parse()?;
    let file = std::fs::File::open(&args.model)?;
    let g = GgufFile::from_file(&file, &args.model)?;
    delrec_runtime::format::model_check::check_model(&g)?;
    let params = ModelParams { gpu_layers: args.gpu_layers, ..Default::default() };
    let m = Arc::new(Model::load_file(&file, &args.model, params)?);
    if m.has_encoder() {
        return Err("encoder-decoder models: use `delrec logits`".into());
    }
    let adapter = match &args.adapter {
        None => None,
        Some(path) => {
            let (tensors, identity) = (BaseTensors::of_model(&g)?, BaseIdentity::of_model(&g)?);
            let f = std::fs::File::open(path)?;
            check_adapter(&GgufFile::from_file(&f, path)?, &tensors, &identity)?;
            Some(Arc::new(Adapter::load_file(&m, &f, path)?))
        }
    };
    let rows = sequence_logits(&m, adapter.as_ref().map(|a| (a, 1.0)), &args.tokens, 2)?;
    // Rust's `{}` for f32 is the shortest string that reads back to the same f32; non-finite
    // values become null, as serde_json writes them in `delrec logits`.
    let num = |v: &f32| if v.is_finite() { format!("{v}") } else { "null".into() };
    let body: Vec<String> =
        rows.iter().map(|r| format!("[{}]", r.iter().map(num).collect::<Vec<_>>().join(","))).collect();
    println!("{{\"logits\":[{}]}}", body.join(","));
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
