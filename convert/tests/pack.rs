//! `pack`: catalogs, soft prompts and both tokenization paths against a converted tiny model.

mod common;

use std::path::{Path, PathBuf};

use common::{convert_tiny, stray_files};
use delrec_convert::model::OutType;
use delrec_convert::pack::{build_pack, BosChoice, PackOptions};
use delrec_convert::testing::{tokenizer_json, write_lora_adapter, write_prompt_adapter, TinySpec};
use delrec_convert::ConvertError;
use delrec_format::gguf::TensorType;
use delrec_format::pack::{Pack, Part, ScoringMode};

const TEMPLATE: &str = "{soft:user}Seen:{history}\nNext:{candidate}\n";

struct Fixture {
    root: tempfile::TempDir,
    model: PathBuf,
    hf: PathBuf,
}

fn fixture(spec: &TinySpec) -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let model = convert_tiny(root.path(), "hf", spec, OutType::F16);
    let hf = root.path().join("hf");
    Fixture { root, model, hf }
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn options(f: &Fixture, catalog: PathBuf, out: &Path) -> PackOptions {
    PackOptions {
        models: vec![f.model.clone()],
        tokenizer: Some(f.hf.clone()),
        catalog,
        template: TEMPLATE.into(),
        soft_prompts: vec![],
        item_prefix: " ".into(),
        history_separator: ",".into(),
        candidates_separator: ", ".into(),
        verbalizer: None,
        bos: BosChoice::Auto,
        max_history: None,
        scoring: ScoringMode::Sum,
        soft_f16: false,
        name: Some("test".into()),
        out: out.to_path_buf(),
        seq: None,
        fusion: None,
        adapter: None,
    }
}

const CSV: &str = "id,title,text\nm1,Star Wars (1977),Sci-Fi\nm2,\"Good, the Bad and the Ugly, The (1966)\",Western\nm3,Amélie (2001),\nm4,The thin <|im_start|> man,\n";

#[test]
fn hf_and_gguf_tokenization_give_the_same_pack() {
    let f = fixture(&TinySpec::llama());
    let cat = write(f.root.path(), "c.csv", CSV);
    let soft = f.root.path().join("soft");
    let values = write_prompt_adapter(&soft, 3, 32, 5);
    let a = f.root.path().join("a.pack");
    let mut o = options(&f, cat.clone(), &a);
    o.soft_prompts = vec![("user".into(), soft.clone())];
    let r = build_pack(&o).unwrap();
    assert_eq!((r.n_items, r.bos), (4, None));
    let b = f.root.path().join("b.pack");
    o.tokenizer = None;
    o.out = b.clone();
    build_pack(&o).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "HF and llama.cpp tokenization differ");

    let pack = Pack::open(&a).unwrap();
    assert_eq!(pack.model_sha256, vec![delrec_format::identity::file_sha256(&f.model).unwrap()]);
    assert_eq!(pack.soft_prompt_values(0).unwrap(), values.as_slice());
    assert_eq!(pack.soft_prompts[0].ty, TensorType::F32);
    assert_eq!(pack.item_title(1), Some("Good, the Bad and the Ugly, The (1966)"));
    // A title spelling a control token stays text; the template may use control tokens.
    assert!(!pack.item_tokens(3).unwrap().contains(&1), "{:?}", pack.item_tokens(3));
    let mut o2 = options(&f, cat, &f.root.path().join("c.pack"));
    o2.template = "<|im_start|>{history}{candidate}<|im_end|>".into();
    build_pack(&o2).unwrap();
    let p2 = Pack::open(&o2.out).unwrap();
    assert_eq!(p2.template.parts[0], Part::Text(vec![1]));
    assert_eq!(p2.template.terminator(), vec![2]);
}

#[test]
fn soft_prompt_width_must_match_the_model() {
    let f = fixture(&TinySpec::llama());
    let cat = write(f.root.path(), "c.csv", CSV);
    let soft = f.root.path().join("soft");
    write_prompt_adapter(&soft, 4, 48, 1);
    let out = f.root.path().join("p.pack");
    let mut o = options(&f, cat.clone(), &out);
    o.soft_prompts = vec![("user".into(), soft.clone())];
    let e = build_pack(&o).unwrap_err();
    assert!(matches!(e, ConvertError::SoftPromptWidth { width: 48, n_embd: 32, .. }), "{e}");
    // Also when the config does not state token_dim.
    std::fs::write(soft.join("adapter_config.json"), r#"{"peft_type":"PROMPT_TUNING","num_virtual_tokens":4}"#)
        .unwrap();
    let e = build_pack(&o).unwrap_err();
    assert!(matches!(e, ConvertError::SoftPromptWidth { width: 48, .. }), "{e}");
    // A LoRA adapter is not a soft prompt.
    let lora = f.root.path().join("lora");
    write_lora_adapter(&lora, &TinySpec::llama(), 2, 4.0, &["q_proj"], 1);
    o.soft_prompts = vec![("user".into(), lora)];
    assert!(matches!(build_pack(&o).unwrap_err(), ConvertError::SoftPrompt { .. }));
    assert!(!out.exists());
}

#[test]
fn catalog_errors_name_the_line_and_write_nothing() {
    let f = fixture(&TinySpec::llama());
    let out_dir = f.root.path().join("packs");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("p.pack");
    for (name, body, line, want) in [
        ("dup.csv", "id,title\na,Alpha\nb,Beta\na,Again\n", 4, "duplicate"),
        ("empty.csv", "id,title\na,Alpha\nb,\n", 3, "empty title"),
        ("dup.jsonl", "{\"id\":\"a\",\"title\":\"A\"}\n{\"id\":\"a\",\"title\":\"B\"}\n", 2, "duplicate"),
        ("empty.jsonl", "{\"id\":\"a\",\"title\":\"A\"}\n{\"id\":\"b\",\"title\":\" \"}\n", 2, "empty title"),
    ] {
        let cat = write(f.root.path(), name, body);
        match build_pack(&options(&f, cat, &out)) {
            Err(ConvertError::Catalog { line: l, reason, .. }) => {
                assert_eq!(l, line, "{name}");
                assert!(reason.contains(want), "{name}: {reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(stray_files(&out_dir, &[]), Vec::<PathBuf>::new());
}

#[test]
fn tokenizer_must_be_the_models() {
    let f = fixture(&TinySpec::llama());
    let cat = write(f.root.path(), "c.csv", CSV);
    let out = f.root.path().join("p.pack");
    // Same vocabulary, different pre-tokenizer.
    let other = f.root.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("tokenizer.json"), tokenizer_json(delrec_convert::testing::qwen2_pre()).to_string())
        .unwrap();
    let mut o = options(&f, cat.clone(), &out);
    o.tokenizer = Some(other.join("tokenizer.json"));
    let e = build_pack(&o).unwrap_err();
    assert!(matches!(e, ConvertError::TokenizerMismatch { ref reason, .. } if reason.contains("pre-tokenizer")), "{e}");
    // One merge changed.
    let mut j = tokenizer_json(delrec_convert::testing::gpt2_pre());
    j["model"]["merges"][4] = serde_json::json!(["Ġ", "b"]);
    std::fs::write(other.join("tokenizer.json"), j.to_string()).unwrap();
    let e = build_pack(&o).unwrap_err();
    assert!(matches!(e, ConvertError::TokenizerMismatch { ref reason, .. } if reason.contains("merge 4")), "{e}");
    // A directory without tokenizer.json.
    o.tokenizer = Some(f.root.path().to_path_buf());
    assert!(matches!(build_pack(&o).unwrap_err(), ConvertError::MissingTokenizer { .. }));
    assert!(!out.exists());
}

#[test]
fn all_models_must_share_the_base_identity() {
    let f = fixture(&TinySpec::llama());
    let g = fixture(&TinySpec { hidden: 64, ..TinySpec::llama() });
    let cat = write(f.root.path(), "c.csv", CSV);
    let out = f.root.path().join("p.pack");
    let mut o = options(&f, cat, &out);
    o.template = "Seen:{history}\nNext:{candidate}\n".into();
    o.models.push(g.model.clone());
    let e = build_pack(&o).unwrap_err();
    assert!(matches!(e, ConvertError::ModelMismatch(ref m) if m.contains("n_embd")), "{e}");
    // Another quantization of the same model is fine, and both hashes are recorded.
    let q = f.root.path().join("out/q.gguf");
    delrec_convert::quant::quantize_file(&f.model, &q, delrec_convert::quant::QuantType::Q8_0, false, 2).unwrap();
    o.models = vec![f.model.clone(), q];
    build_pack(&o).unwrap();
    assert_eq!(Pack::open(&out).unwrap().model_sha256.len(), 2);
}

#[test]
fn bos_follows_the_model_and_soft_prompts_can_be_f16() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let hf = root.path().join("hf");
    spec.write(&hf);
    std::fs::write(hf.join("tokenizer_config.json"), r#"{"bos_token":"<|im_start|>","add_bos_token":true}"#).unwrap();
    let model = root.path().join("m.gguf");
    delrec_convert::model::convert_model(&common::opts(&hf, &model, OutType::F32)).unwrap();
    let f = Fixture { root, model, hf };
    let cat = write(f.root.path(), "c.csv", CSV);
    let soft = f.root.path().join("soft");
    write_prompt_adapter(&soft, 2, 32, 9);
    let out = f.root.path().join("p.pack");
    let mut o = options(&f, cat, &out);
    o.soft_prompts = vec![("user".into(), soft)];
    o.soft_f16 = true;
    assert_eq!(build_pack(&o).unwrap().bos, Some(1));
    let p = Pack::open(&out).unwrap();
    assert_eq!((p.template.bos, p.soft_prompts[0].ty), (Some(1), TensorType::F16));
    o.bos = BosChoice::None;
    assert_eq!(build_pack(&o).unwrap().bos, None);
    o.bos = BosChoice::Id(100_000);
    assert!(build_pack(&o).is_err());
}
