//! `delrec-convert inspect`: what is in a GGUF model, pack or LoRA adapter, for people (text) and
//! scripts (JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use delrec_format::gguf::{Array, GgufFile, Value};
use delrec_format::pack::{Pack, Part, PACK_ARCH};
use delrec_format::BaseIdentity;
use serde_json::{json, Value as J};

use crate::adapter::{is_adapter, AdapterInfo};
use crate::error::Result;

/// Arrays longer than this are summarized in JSON output.
const JSON_ARRAY_LIMIT: usize = 16;

fn value_json(v: &Value) -> J {
    fn arr<T: Clone + Into<J>>(v: &[T]) -> J {
        if v.len() <= JSON_ARRAY_LIMIT {
            J::Array(v.iter().cloned().map(Into::into).collect())
        } else {
            json!({"len": v.len(), "first": v[..JSON_ARRAY_LIMIT].iter().cloned().map(Into::into).collect::<Vec<J>>()})
        }
    }
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::Str(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Array(a) => match a {
            Array::U8(v) => arr(v),
            Array::I8(v) => arr(v),
            Array::U16(v) => arr(v),
            Array::I16(v) => arr(v),
            Array::U32(v) => arr(v),
            Array::I32(v) => arr(v),
            Array::F32(v) => arr(v),
            Array::Bool(v) => arr(v),
            Array::Str(v) => arr(v),
            Array::U64(v) => arr(v),
            Array::I64(v) => arr(v),
            Array::F64(v) => arr(v),
        },
    }
}

fn part_desc(p: &Part, pack: &Pack) -> String {
    match p {
        Part::Text(t) => format!("text {t:?}"),
        Part::Soft(i) => format!("soft prompt {:?}", pack.soft_prompts[*i].name),
        Part::History => "{history}".into(),
        Part::Candidate => "{candidate}".into(),
        Part::Candidates => "{candidates}".into(),
        Part::Mask => "{mask}".into(),
    }
}

/// Everything `inspect` reports, as JSON.
pub fn inspect_json(path: &Path, n_items: usize) -> Result<J> {
    let f = GgufFile::open(path)?;
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    let tensors: Vec<J> = f
        .tensors()
        .iter()
        .map(|t| {
            *types.entry(crate::model::type_name(t.ty)).or_insert(0) += 1;
            json!({"name": t.name, "type": crate::model::type_name(t.ty), "dims": t.dims, "bytes": t.size})
        })
        .collect();
    let metadata: serde_json::Map<String, J> = f.kv().iter().map(|(k, v)| (k.clone(), value_json(v))).collect();
    let mut out = json!({
        "path": path.display().to_string(),
        "gguf_version": f.version(),
        "bytes": f.len(),
        "metadata": metadata,
        "tensors": tensors,
        "tensor_types": types,
    });
    let arch = f.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    if arch == PACK_ARCH {
        drop(f);
        let pack = Pack::open(path)?;
        let t = &pack.template;
        let items: Vec<J> = (0..pack.n_items().min(n_items) as u32)
            .map(|i| json!({"id": pack.item_id(i), "title": pack.item_title(i), "text": pack.item_text(i), "tokens": pack.item_tokens(i)}))
            .collect();
        out["pack"] = json!({
            "base": {"architecture": pack.base.architecture, "n_embd": pack.base.n_embd, "n_vocab": pack.base.n_vocab,
                     "tokenizer_fingerprint": pack.base.tokenizer_fingerprint},
            "model_sha256": pack.model_sha256,
            "template": t.text,
            "parts": t.parts.iter().map(|p| part_desc(p, &pack)).collect::<Vec<_>>(),
            "item_prefix": t.item_prefix,
            "history_separator": t.history_separator,
            "separator_tokens": t.separator_tokens,
            "bos": t.bos,
            "scoring": pack.scoring.as_str(),
            "candidates_separator": t.candidates_separator,
            "verbalizer": pack.verbalizer.as_ref().map(|v| json!({"handler": v.handler.as_str(), "label_words": v.rule.as_str(),
                "prefix": v.prefix, "n_words": v.n_words()})),
            "soft_prompts": pack.soft_prompts.iter().map(|s| json!({"name": s.name, "n_virtual": s.n_virtual, "n_embd": pack.base.n_embd, "type": s.ty.name()})).collect::<Vec<_>>(),
            "n_items": pack.n_items(),
            "items": items,
            "max_history": t.max_history,
            "sequential": pack.seq.as_ref().map(|m| json!({
                "kind": "sasrec", "n_layers": m.blocks.len(), "n_heads": m.n_heads, "hidden": m.hidden,
                "inner": m.inner, "max_len": m.max_len, "hidden_act": m.act.as_str(),
                "item_source": m.source.as_str(),
                "item_table": {"type": m.items.type_name(), "bytes": m.items.bytes()},
                "item_projection": m.item_proj.as_ref().map(|p| json!({"n_in": p.linear.n_in, "pooling": p.pooling.as_str()})),
            })),
            "fusion": {"llm_weight": pack.fusion.llm_weight, "retrieve": pack.fusion.retrieve},
            "adapter": pack.adapter.as_ref().map(|a| {
                let beside = beside_pack(&pack, &a.file);
                json!({"file": a.file, "sha256": a.sha256, "scale": a.scale,
                       "found": beside.as_ref().map(|(_, ok)| *ok),
                       "pairs": beside.as_ref().map(|(i, _)| i.pairs),
                       "ranks": beside.as_ref().map(|(i, _)| i.ranks.iter().map(|(r, n)| json!({"rank": r, "count": n})).collect::<Vec<_>>()),
                       "targets": beside.as_ref().map(|(i, _)| i.targets.clone()),
                       "bytes": beside.as_ref().map(|(i, _)| i.bytes)})
            }),
        });
    } else if is_adapter(&f) {
        let a = AdapterInfo::read(&f);
        out["adapter"] = json!({
            "architecture": a.arch,
            "alpha": a.alpha,
            "peft_type": a.peft_type,
            "scale_folded": a.scale_folded,
            "pairs": a.pairs,
            "ranks": a.ranks.iter().map(|(r, n)| (r.to_string(), J::from(*n))).collect::<serde_json::Map<_, _>>(),
            "targets": a.targets,
            "unpaired": a.unpaired,
            "tensor_types": a.types,
            "bytes": a.bytes,
            "base": a.base.as_ref().map(|b| json!({"architecture": b.architecture, "n_embd": b.n_embd, "n_vocab": b.n_vocab,
                                                   "tokenizer_fingerprint": b.tokenizer_fingerprint})),
        });
    } else if f.get("tokenizer.ggml.tokens").is_some() {
        if let Ok(b) = BaseIdentity::of_model(&f) {
            out["base_identity"] = json!({"architecture": b.architecture, "n_embd": b.n_embd, "n_vocab": b.n_vocab, "tokenizer_fingerprint": b.tokenizer_fingerprint});
        }
    }
    Ok(out)
}

/// The human-readable report.
pub fn inspect_text(path: &Path, n_items: usize) -> Result<String> {
    let f = GgufFile::open(path)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: GGUF v{}, {} bytes, {} metadata keys, {} tensors",
        path.display(),
        f.version(),
        f.len(),
        f.kv().len(),
        f.tensors().len()
    );
    let _ = writeln!(s, "\nmetadata:");
    for (k, v) in f.kv() {
        let _ = writeln!(s, "  {k} = {}", v.summary());
    }
    let _ = writeln!(s, "\ntensors:");
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for t in f.tensors() {
        *types.entry(crate::model::type_name(t.ty)).or_insert(0) += 1;
        let _ = writeln!(s, "  {:<32} {:<6} {:?}", t.name, crate::model::type_name(t.ty), t.dims);
    }
    let counts: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let _ = writeln!(s, "  by type: {}", counts.join(", "));
    let arch = f.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_string();
    if arch == PACK_ARCH {
        drop(f);
        let pack = Pack::open(path)?;
        let b = &pack.base;
        let t = &pack.template;
        let _ = writeln!(s, "\npack:");
        let _ = writeln!(
            s,
            "  base model: {} n_embd={} n_vocab={} tokenizer={}",
            b.architecture, b.n_embd, b.n_vocab, b.tokenizer_fingerprint
        );
        for sha in &pack.model_sha256 {
            let _ = writeln!(s, "  built for model file sha256 {sha}");
        }
        let _ = writeln!(s, "  template: {:?}", t.text);
        for p in &t.parts {
            let _ = writeln!(s, "    - {}", part_desc(p, &pack));
        }
        let _ = writeln!(
            s,
            "  item prefix {:?}, history separator {:?} → {:?}",
            t.item_prefix, t.history_separator, t.separator_tokens
        );
        let _ = writeln!(s, "  BOS: {}", t.bos.map(|b| b.to_string()).unwrap_or_else(|| "none".into()));
        let _ = writeln!(s, "  scoring: {}", pack.scoring.as_str());
        if let Some(v) = &pack.verbalizer {
            let _ = writeln!(
                s,
                "  verbalizer: handler {}, label words {} (prefix {:?}), {} words over {} items",
                v.handler.as_str(),
                v.rule.as_str(),
                v.prefix,
                v.n_words(),
                v.n_items()
            );
        }
        if let Some(a) = &pack.adapter {
            let _ = writeln!(s, "  LoRA adapter: {} (sha256 {}…), scale {}", a.file, &a.sha256[..16], a.scale);
            match beside_pack(&pack, &a.file) {
                Some((info, true)) => {
                    let ranks: Vec<String> = info.ranks.iter().map(|(r, n)| format!("{n} × rank {r}")).collect();
                    let _ = writeln!(
                        s,
                        "    beside the pack: {} pairs ({}), targets {}, {} bytes",
                        info.pairs,
                        ranks.join(", "),
                        info.targets.join(", "),
                        info.bytes
                    );
                }
                Some((_, false)) => {
                    let _ = writeln!(s, "    beside the pack, but with other bytes than the pack pins");
                }
                None => {
                    let _ = writeln!(s, "    not beside the pack (the app must give its path)");
                }
            }
        }
        for sp in &pack.soft_prompts {
            let _ = writeln!(s, "  soft prompt {:?}: {} × {} {}", sp.name, sp.n_virtual, b.n_embd, sp.ty.name());
        }
        if let Some(h) = t.max_history {
            let _ = writeln!(s, "  the prompt takes the latest {h} history items");
        }
        if let Some(m) = &pack.seq {
            let _ = writeln!(
                s,
                "  sequential model: SASRec {} layers × {} heads, hidden {}, inner {}, max_len {}, {}, items from {} ({} table, {} KiB){}",
                m.blocks.len(),
                m.n_heads,
                m.hidden,
                m.inner,
                m.max_len,
                m.act.as_str(),
                m.source.as_str(),
                m.items.type_name(),
                m.items.bytes().div_ceil(1024),
                m.item_proj
                    .as_ref()
                    .map(|p| format!(
                        ", item projection {} → {} ({} pooling)",
                        p.linear.n_in,
                        m.hidden,
                        p.pooling.as_str()
                    ))
                    .unwrap_or_default()
            );
            let _ = writeln!(s, "  cascade: retrieve {}, LLM weight {}", pack.fusion.retrieve, pack.fusion.llm_weight);
        }
        let _ = writeln!(s, "  catalog: {} items", pack.n_items());
        for i in 0..pack.n_items().min(n_items) as u32 {
            let _ = writeln!(
                s,
                "    {:?} {:?} → {:?}",
                pack.item_id(i).unwrap_or_default(),
                pack.item_title(i).unwrap_or_default(),
                pack.item_tokens(i).unwrap_or_default()
            );
        }
    } else if is_adapter(&f) {
        adapter_text(&mut s, &AdapterInfo::read(&f));
    } else if f.get("tokenizer.ggml.tokens").is_some() {
        if let Ok(b) = BaseIdentity::of_model(&f) {
            let _ = writeln!(
                s,
                "\nbase identity (what packs for this model record): {} n_embd={} n_vocab={} tokenizer={}",
                b.architecture, b.n_embd, b.n_vocab, b.tokenizer_fingerprint
            );
        }
    }
    Ok(s)
}

/// The adapter section of the text report.
/// The pack's adapter file beside it, read: what it holds, and whether its sha256 is the pinned one.
fn beside_pack(pack: &Pack, file: &str) -> Option<(AdapterInfo, bool)> {
    let path = pack.path().parent().unwrap_or(Path::new(".")).join(file);
    let g = GgufFile::open(&path).ok()?;
    let ok = pack.adapter.as_ref().is_some_and(|a| delrec_format::identity::bytes_sha256(g.bytes()) == a.sha256);
    Some((AdapterInfo::read(&g), ok))
}

fn adapter_text(s: &mut String, a: &AdapterInfo) {
    let _ = writeln!(s, "\nLoRA adapter (llama.cpp, applied at run time over a {} base):", a.arch);
    let from = a.peft_type.as_deref().map(|p| format!("PEFT {p}; ")).unwrap_or_default();
    let scale = if a.alpha != 0.0 {
        format!("alpha {} (llama.cpp scales each pair by alpha / rank)", a.alpha)
    } else if a.scale_folded == Some(true) {
        "alpha 0: each pair's scale is folded into lora_b".to_string()
    } else {
        "alpha 0 (llama.cpp scale 1)".to_string()
    };
    let _ = writeln!(s, "  {from}{scale}");
    let ranks: Vec<String> = a.ranks.iter().map(|(r, n)| format!("{n} of rank {r}")).collect();
    let _ = writeln!(s, "  {} pairs: {}", a.pairs, ranks.join(", "));
    let _ = writeln!(s, "  targets: {}", a.targets.join(", "));
    if !a.unpaired.is_empty() {
        let _ =
            writeln!(s, "  lora_a/lora_b without the other half (llama.cpp refuses these): {}", a.unpaired.join(", "));
    }
    let types: Vec<String> = a.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let _ = writeln!(s, "  tensors: {}; {} bytes", types.join(", "), a.bytes);
    match &a.base {
        Some(b) => {
            let fp = b.tokenizer_fingerprint.get(..16).unwrap_or(&b.tokenizer_fingerprint);
            let _ = writeln!(
                s,
                "  built for base model: {} n_embd={} n_vocab={} tokenizer={fp}…",
                b.architecture, b.n_embd, b.n_vocab
            );
        }
        None => {
            let _ = writeln!(s, "  no base identity recorded (not written by delrec-convert adapter)");
        }
    }
}
