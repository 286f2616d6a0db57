//! The `delrec-convert` command line. Errors are printed with their causes and the process exits
//! with status 1 (2 for usage errors, from clap); no partial output file is ever left behind.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use delrec_convert::adapter::{build_adapter, AdapterOptions, AdapterOutType};
use delrec_convert::merge::{merge_lora_gguf, MergeOptions, MergeOutType};
use delrec_convert::model::{convert_model, ModelOptions, OutType};
use delrec_convert::pack::{build_pack, parse_soft_arg, AdapterPack, BosChoice, PackOptions, SeqInput, SeqOptions};
use delrec_convert::quant::{quantize_file, QuantType};
use delrec_convert::{inspect, ConvertError};
use delrec_format::pack::{Handler, LabelRule, ScoringMode, VerbalizerSpec};
use delrec_format::seq::Fusion;

#[derive(Parser)]
#[command(
    name = "delrec-convert",
    version,
    about = "Convert models to GGUF, quantize them, and build recommender packs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Convert a Hugging Face Llama/Qwen2/T5 checkpoint (safetensors) to a llama.cpp GGUF.
    Model {
        /// The HF model directory (config.json, tokenizer.json, model.safetensors or shards).
        #[arg(long)]
        hf: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "f16")]
        outtype: OutType,
        /// A PEFT LoRA adapter directory to merge into the weights before conversion.
        #[arg(long)]
        lora: Option<PathBuf>,
        /// general.name (default: the directory name).
        #[arg(long)]
        name: Option<String>,
        /// Skip loading the result in llama.cpp before publishing it.
        #[arg(long)]
        no_verify: bool,
        /// Quantizer threads (0: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Merge a PEFT LoRA into a GGUF base model (llama/qwen2; F32, F16, BF16, Q8_0, Q4_0, Q4_1,
    /// Q5_0, Q5_1, Q4_K, Q5_K or Q6_K tensors): every tensor dequantized, matrices written at
    /// --outtype, vectors as F32, all metadata and the tokenizer copied.
    MergeLora {
        /// The base model GGUF.
        #[arg(long)]
        base: PathBuf,
        /// The PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        lora: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "f16")]
        outtype: MergeOutType,
        /// Skip loading the result in llama.cpp before publishing it.
        #[arg(long)]
        no_verify: bool,
        /// Also print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a PEFT LoRA or AdaLoRA as a llama.cpp LoRA adapter GGUF for a base model (llama/qwen2,
    /// any quantization), applied at run time instead of merged.
    Adapter {
        /// The base model GGUF the adapter will run over.
        #[arg(long)]
        base: PathBuf,
        /// The PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        lora: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "f16")]
        outtype: AdapterOutType,
        /// Also print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Quantize a GGUF model with llama.cpp's quantizer.
    Quantize {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long = "type", value_enum)]
        ty: QuantType,
        /// Allow re-quantizing already quantized tensors (loses precision).
        #[arg(long)]
        allow_requantize: bool,
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Build a recommender pack (catalog, template, soft prompts) for a base model.
    Pack {
        /// The base model GGUF; repeat for other files of the same model (e.g. other quantizations).
        #[arg(long = "model", required = true)]
        models: Vec<PathBuf>,
        /// HF tokenizer (directory with tokenizer.json, or the file); default: the model's own vocabulary.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Catalog: .csv (header id,title[,text]) or .jsonl ({"id","title","text"?}).
        #[arg(long)]
        catalog: PathBuf,
        /// The prompt template, e.g. '{soft:user}Watched:{history}\nNext:{candidate}\n'.
        #[arg(long, required_unless_present = "template_file", conflicts_with = "template_file")]
        template: Option<String>,
        /// Read the template from a file instead.
        #[arg(long)]
        template_file: Option<PathBuf>,
        /// NAME=SOURCE[@A..B]; repeatable. SOURCE: a PEFT prompt-tuning directory, an OpenPrompt
        /// checkpoint (MixedTemplate / SoftTemplate state dict), or a file with one tensor;
        /// @A..B keeps soft rows A..B (OpenPrompt numbers all soft segments in one sequence).
        #[arg(long = "soft-prompt", value_parser = parse_soft_arg)]
        soft_prompts: Vec<(String, PathBuf)>,
        #[arg(long, default_value = " ", allow_hyphen_values = true)]
        item_prefix: String,
        #[arg(long = "history-sep", default_value = ",", allow_hyphen_values = true)]
        history_sep: String,
        /// auto (what the model's tokenizer does), none, or a token id.
        #[arg(long, default_value = "auto")]
        bos: BosChoice,
        /// The prompt takes only the latest N history items (the history length the LLM was
        /// trained with); default: all.
        #[arg(long)]
        max_history: Option<u32>,
        /// sum / mean: title log-likelihood (the template has {candidate}); verbalizer: one
        /// prediction at {mask} read by label words (OpenPrompt's ManualVerbalizer, DELRec).
        #[arg(long, default_value = "sum", value_parser = ["sum", "mean", "verbalizer"])]
        scoring: String,
        /// Verbalizer: how a label word of several tokens is scored (OpenPrompt's multi_token_handler).
        #[arg(long, value_parser = ["first", "mean", "max"])]
        verbalizer_handler: Option<String>,
        /// Verbalizer: label words per item: title, or title+no-year (DELRec's: the title and the
        /// title without its " (YYYY)").
        #[arg(long, value_parser = ["title", "title+no-year"])]
        label_words: Option<String>,
        /// Verbalizer: put before each label word before tokenizing (OpenPrompt's " ").
        #[arg(long, allow_hyphen_values = true)]
        label_prefix: Option<String>,
        /// Between the candidates a {candidates} slot lists.
        #[arg(long = "candidates-sep", default_value = ", ", allow_hyphen_values = true)]
        candidates_sep: String,
        /// Store soft prompts as F16 (half the size) instead of F32.
        #[arg(long)]
        soft_f16: bool,
        /// A SASRec checkpoint for the cascade (`recommend`): RecBole's Trainer file, the recipe's
        /// sasrec.pth, or a state dict saved with torch.save.
        #[arg(long)]
        seq_model: Option<PathBuf>,
        /// The model's item tokens, one per line in row order (row 0 = [PAD]); needed when the
        /// checkpoint does not list them (RecBole's own files).
        #[arg(long, requires = "seq_model")]
        seq_items: Option<PathBuf>,
        /// Store the sequential model as F16 instead of F32.
        #[arg(long, requires = "seq_model")]
        seq_f16: bool,
        /// Store the item table as Q8_0 (ggml's int8 blocks, a quarter of F32; the runtime
        /// scans it without widening). The model's hidden size must be a multiple of 32.
        #[arg(long, requires = "seq_model")]
        seq_q8_items: bool,
        /// The cascade's LLM weight in [0, 1] (fitted by the recipe on the validation split).
        #[arg(long)]
        fusion_weight: Option<f32>,
        /// Items the sequential model retrieves for the LLM by default.
        #[arg(long)]
        retrieve: Option<u32>,
        /// A LoRA adapter GGUF (`delrec-convert adapter`) to serve the pack with over the base:
        /// checked against every --model, pinned by sha256, copied beside the pack.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The adapter's scale (times alpha / rank), in (0, 16].
        #[arg(long, default_value_t = 1.0, requires = "adapter")]
        adapter_scale: f32,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Show what a GGUF model or pack holds.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Catalog items to show for a pack.
        #[arg(long, default_value_t = 5)]
        items: usize,
    },
}

fn types_line(types: &std::collections::BTreeMap<String, usize>) -> String {
    types.iter().map(|(t, n)| format!("{n} {t}")).collect::<Vec<_>>().join(", ")
}

fn run(cli: Cli) -> Result<(), ConvertError> {
    match cli.cmd {
        Cmd::Model { hf, out, outtype, lora, name, no_verify, threads } => {
            let r = convert_model(&ModelOptions { hf_dir: hf, out, outtype, lora, name, verify: !no_verify, threads })?;
            eprintln!(
                "wrote {} ({} {}, {} tensors: {}, {} bytes, tokenizer pre {:?}{})",
                r.out.display(),
                r.arch,
                outtype.name(),
                r.n_tensors,
                types_line(&r.types),
                r.bytes,
                r.tokenizer_pre,
                if r.lora_merged > 0 { format!(", LoRA merged into {} tensors", r.lora_merged) } else { String::new() }
            );
            if r.f16_overflow > 0 {
                eprintln!(
                    "warning: {} values overflowed to ±inf when narrowed to F16; consider --outtype bf16 or f32",
                    r.f16_overflow
                );
            }
        }
        Cmd::MergeLora { base, lora, out, outtype, no_verify, json } => {
            let r = merge_lora_gguf(&MergeOptions { base, lora, out, outtype, verify: !no_verify })?;
            eprintln!(
                "wrote {} ({} {}, {} tensors: {}, {} bytes; base tensors: {}; LoRA merged into {} tensors)",
                r.out.display(),
                r.arch,
                outtype.name(),
                r.n_tensors,
                types_line(&r.types),
                r.bytes,
                types_line(&r.base_types),
                r.lora_merged
            );
            if r.f16_overflow > 0 {
                eprintln!(
                    "warning: {} values overflowed to ±inf when narrowed to F16; consider --outtype bf16 or f32",
                    r.f16_overflow
                );
            }
            if json {
                let v = serde_json::json!({
                    "out": r.out.display().to_string(),
                    "arch": r.arch,
                    "outtype": outtype.name(),
                    "n_tensors": r.n_tensors,
                    "types": r.types,
                    "base_types": r.base_types,
                    "bytes": r.bytes,
                    "lora_merged": r.lora_merged,
                    "f16_overflow": r.f16_overflow,
                });
                println!("{v}");
            }
        }
        Cmd::Adapter { base, lora, out, outtype, json } => {
            let r = build_adapter(&AdapterOptions { base, lora, out, outtype })?;
            let ranks: Vec<String> = r.ranks.iter().map(|(rank, n)| format!("{n} of rank {rank}")).collect();
            let scale = if r.scale_folded {
                "scales folded into lora_b, alpha 0".to_string()
            } else {
                format!("alpha {}", r.alpha_written)
            };
            eprintln!(
                "wrote {} ({} {} adapter from {}, {} pairs: {}; targets {}; {}{}; {} bytes)",
                r.out.display(),
                r.arch,
                outtype.name(),
                r.peft_type.name(),
                r.pairs,
                ranks.join(", "),
                r.targets.join(", "),
                scale,
                if r.pruned > 0 { format!("; {} pruned to rank 0, left out", r.pruned) } else { String::new() },
                r.bytes
            );
            if r.f16_overflow > 0 {
                eprintln!(
                    "warning: {} values overflowed to ±inf when narrowed to F16; consider --outtype f32",
                    r.f16_overflow
                );
            }
            if json {
                let v = serde_json::json!({
                    "out": r.out.display().to_string(),
                    "arch": r.arch,
                    "outtype": outtype.name(),
                    "peft_type": r.peft_type.name(),
                    "pairs": r.pairs,
                    "ranks": r.ranks.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
                    "targets": r.targets,
                    "pruned": r.pruned,
                    "alpha_written": r.alpha_written,
                    "scale_folded": r.scale_folded,
                    "bytes": r.bytes,
                    "f16_overflow": r.f16_overflow,
                });
                println!("{v}");
            }
        }
        Cmd::Quantize { input, out, ty, allow_requantize, threads } => {
            let r = quantize_file(&input, &out, ty, allow_requantize, threads)?;
            eprintln!("wrote {} ({} bytes; tensors: {})", r.out.display(), r.bytes, types_line(&r.types));
        }
        Cmd::Pack {
            models,
            tokenizer,
            catalog,
            template,
            template_file,
            soft_prompts,
            item_prefix,
            history_sep,
            bos,
            max_history,
            scoring,
            verbalizer_handler,
            label_words,
            label_prefix,
            candidates_sep,
            soft_f16,
            seq_model,
            seq_items,
            seq_f16,
            seq_q8_items,
            fusion_weight,
            retrieve,
            adapter,
            adapter_scale,
            name,
            out,
        } => {
            let fusion = match (fusion_weight, retrieve) {
                (None, None) => None,
                (w, n) => {
                    let d = Fusion::default();
                    Some(Fusion { llm_weight: w.unwrap_or(d.llm_weight), retrieve: n.unwrap_or(d.retrieve) })
                }
            };
            let seq = seq_model.map(|path| SeqOptions {
                input: SeqInput::File { path, items: seq_items },
                f16: seq_f16,
                q8_items: seq_q8_items,
            });
            let template = match (template, template_file) {
                (Some(t), _) => t,
                (None, Some(p)) => std::fs::read_to_string(&p).map_err(|e| ConvertError::Io { path: p, source: e })?,
                (None, None) => return Err(ConvertError::Usage("give --template or --template-file".into())),
            };
            let scoring = ScoringMode::parse(&scoring)?;
            let verbalizer = if verbalizer_handler.is_none() && label_words.is_none() && label_prefix.is_none() {
                None
            } else {
                let d = VerbalizerSpec::default();
                Some(VerbalizerSpec {
                    handler: verbalizer_handler.as_deref().map(Handler::parse).transpose()?.unwrap_or(d.handler),
                    rule: label_words.as_deref().map(LabelRule::parse).transpose()?.unwrap_or(d.rule),
                    prefix: label_prefix.unwrap_or(d.prefix),
                })
            };
            let r = build_pack(&PackOptions {
                models,
                tokenizer,
                catalog,
                template,
                soft_prompts,
                item_prefix,
                history_separator: history_sep,
                candidates_separator: candidates_sep,
                verbalizer,
                bos,
                max_history,
                scoring,
                soft_f16,
                name,
                out,
                seq,
                fusion,
                adapter: adapter.map(|path| AdapterPack { path, scale: adapter_scale }),
            })?;
            let soft: Vec<String> = r.soft_prompts.iter().map(|(n, k)| format!("{n} ({k} tokens)")).collect();
            eprintln!(
                "wrote {} ({} items, {} catalog tokens, soft prompts: [{}], BOS {}, tokenized with {}, {} bytes)",
                r.out.display(),
                r.n_items,
                r.n_catalog_tokens,
                soft.join(", "),
                r.bos.map(|b| b.to_string()).unwrap_or_else(|| "none".into()),
                r.tokenizer,
                r.bytes
            );
            if let Some((a, path)) = &r.adapter {
                eprintln!("adapter: {} (sha256 {}…, scale {})", path.display(), &a.sha256[..12], a.scale);
            }
            if let Some(q) = &r.seq {
                eprintln!(
                    "sequential model: SASRec {} layers, hidden {}, max_len {}; {} of its {} items in the catalog",
                    q.n_layers,
                    q.hidden,
                    q.max_len,
                    q.model_items - q.dropped,
                    q.model_items
                );
            }
        }
        Cmd::Inspect { file, json, items } => {
            if json {
                let v = inspect::inspect_json(&file, items)?;
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", inspect::inspect_text(&file, items)?);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!("\n  caused by: {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
