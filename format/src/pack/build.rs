//! Writing packs (feature `build`): the converter's side of `docs/format.md`.

use std::collections::HashMap;
use std::path::Path;

use half::f16;

use super::*;
use crate::gguf::{f32_bytes, i32_bytes, GgufWriter, TensorData};
use crate::template;

/// An item to put in a pack.
#[derive(Clone, Debug)]
pub struct CatalogItem {
    pub id: String,
    pub title: String,
    pub text: Option<String>,
}

/// Assembles and writes a pack. Tokenization is passed in, so the caller decides which tokenizer
/// (HF `tokenizers` or the model GGUF's own) produces the ids.
pub struct PackBuilder {
    pub base: BaseIdentity,
    pub model_sha256: Vec<String>,
    pub template: String,
    pub item_prefix: String,
    pub history_separator: String,
    pub bos: Option<i32>,
    pub scoring: ScoringMode,
    pub name: Option<String>,
    soft: Vec<(String, usize, Vec<f32>, bool)>,
    items: Vec<CatalogItem>,
}

impl PackBuilder {
    pub fn new(base: BaseIdentity, template: &str) -> Self {
        Self {
            base,
            model_sha256: vec![],
            template: template.to_string(),
            item_prefix: " ".into(),
            history_separator: ",".into(),
            bos: None,
            scoring: ScoringMode::Sum,
            name: None,
            soft: vec![],
            items: vec![],
        }
    }

    /// Adds a soft prompt of `n_virtual` rows (row-major `n_virtual × n_embd`), stored as f16 or f32.
    pub fn add_soft_prompt(&mut self, name: &str, n_virtual: usize, values: Vec<f32>, as_f16: bool) -> Result<()> {
        if !template::valid_name(name) {
            return Err(Error::InvalidInput(format!("soft prompt name {name:?}: use 1-64 of [A-Za-z0-9_.-]")));
        }
        if self.soft.iter().any(|s| s.0 == name) {
            return Err(Error::InvalidInput(format!("soft prompt {name:?} added twice")));
        }
        let width = self.base.n_embd as usize;
        if n_virtual == 0 || values.len() != n_virtual * width {
            return Err(Error::InvalidInput(format!(
                "soft prompt {name:?}: {} values is not {n_virtual} rows of the model width {width}",
                values.len()
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!("soft prompt {name:?} holds NaN or infinite values")));
        }
        self.soft.push((name.to_string(), n_virtual, values, as_f16));
        Ok(())
    }

    pub fn add_item(&mut self, item: CatalogItem) {
        self.items.push(item);
    }

    /// Validates everything, tokenizes, and writes the pack atomically.
    pub fn write(&self, path: &Path, tokenize: &mut dyn FnMut(&str) -> Result<Vec<i32>>) -> Result<()> {
        let pieces = template::parse(&self.template)?;
        let n_vocab = self.base.n_vocab as i64;
        let mut tok = |what: &str, s: &str| -> Result<Vec<i32>> {
            let t = tokenize(s)?;
            if let Some(bad) = t.iter().find(|&&x| x < 0 || x as i64 >= n_vocab) {
                return Err(Error::InvalidInput(format!("{what}: token {bad} outside the vocabulary")));
            }
            Ok(t)
        };
        if self.items.is_empty() {
            return Err(Error::InvalidInput("the catalog is empty".into()));
        }
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str(PACK_ARCH.into()));
        if let Some(n) = &self.name {
            w.set("general.name", Value::Str(n.clone()));
        }
        w.set(K_VERSION, Value::U32(PACK_VERSION));
        w.set(K_ARCH, Value::Str(self.base.architecture.clone()));
        w.set(K_EMBD, Value::U32(self.base.n_embd));
        w.set(K_VOCAB, Value::U32(self.base.n_vocab));
        w.set(K_FP, Value::Str(self.base.tokenizer_fingerprint.clone()));
        w.set(K_SHA, Value::Array(Array::Str(self.model_sha256.clone())));
        w.set(K_TEXT, Value::Str(self.template.clone()));
        w.set(K_PARTS, Value::Array(Array::Str(pieces.iter().map(Piece::tag).collect())));
        for (i, p) in pieces.iter().enumerate() {
            match p {
                Piece::Text(t) => w.set(&part_key(i), Value::Array(Array::I32(tok("template text", t)?))),
                Piece::Soft(n) if !self.soft.iter().any(|s| &s.0 == n) => {
                    return Err(Error::InvalidInput(format!(
                        "the template uses soft prompt {n:?}, which was not given"
                    )));
                }
                _ => {}
            }
        }
        w.set(K_PREFIX, Value::Str(self.item_prefix.clone()));
        w.set(K_SEP, Value::Str(self.history_separator.clone()));
        w.set(K_SEP_TOK, Value::Array(Array::I32(tok("history separator", &self.history_separator)?)));
        if let Some(b) = self.bos {
            if b < 0 || b as i64 >= n_vocab {
                return Err(Error::InvalidInput(format!("BOS token {b} outside the vocabulary")));
            }
        }
        w.set(K_BOS, Value::I32(self.bos.unwrap_or(-1)));
        w.set(K_SCORING, Value::Str(self.scoring.as_str().into()));
        w.set(K_SOFT, Value::Array(Array::Str(self.soft.iter().map(|s| s.0.clone()).collect())));
        for (name, n_virtual, values, as_f16) in &self.soft {
            let dims = [self.base.n_embd as u64, *n_virtual as u64];
            let (ty, bytes) = if *as_f16 {
                (TensorType::F16, values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect())
            } else {
                (TensorType::F32, f32_bytes(values))
            };
            w.add_tensor(&soft_tensor(name), &dims, ty, TensorData::Owned(bytes))?;
        }
        let mut seen = HashMap::new();
        let mut tokens = Vec::new();
        let mut offsets = vec![0i32];
        for (i, it) in self.items.iter().enumerate() {
            let line = i + 1;
            if it.id.trim().is_empty() {
                return Err(Error::InvalidInput(format!("catalog item {line}: empty id")));
            }
            if let Some(prev) = seen.insert(it.id.as_str(), line) {
                return Err(Error::InvalidInput(format!(
                    "catalog: duplicate id {:?} (items {prev} and {line})",
                    it.id
                )));
            }
            if it.title.trim().is_empty() {
                return Err(Error::InvalidInput(format!("catalog item {:?}: empty title", it.id)));
            }
            let t = tok("catalog title", &format!("{}{}", self.item_prefix, it.title))?;
            if t.is_empty() {
                return Err(Error::InvalidInput(format!("catalog item {:?}: the title tokenizes to nothing", it.id)));
            }
            tokens.extend_from_slice(&t);
            let end = i32::try_from(tokens.len()).map_err(|_| Error::InvalidInput("catalog too large".into()))?;
            offsets.push(end);
        }
        w.set(K_IDS, Value::Array(Array::Str(self.items.iter().map(|i| i.id.clone()).collect())));
        w.set(K_TITLES, Value::Array(Array::Str(self.items.iter().map(|i| i.title.clone()).collect())));
        if self.items.iter().any(|i| i.text.is_some()) {
            let texts = self.items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
            w.set(K_TEXTS, Value::Array(Array::Str(texts)));
        }
        w.add_tensor(T_TOKENS, &[tokens.len() as u64], TensorType::I32, TensorData::Owned(i32_bytes(&tokens)))?;
        w.add_tensor(T_OFFSETS, &[offsets.len() as u64], TensorType::I32, TensorData::Owned(i32_bytes(&offsets)))?;
        w.write_atomic(path, &mut |_, _| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{Pack, Part};

    fn base() -> BaseIdentity {
        BaseIdentity { architecture: "llama".into(), n_embd: 4, n_vocab: 300, tokenizer_fingerprint: "ab".into() }
    }

    /// A stand-in tokenizer for format tests: one token per byte.
    fn bytes_tok(s: &str) -> Result<Vec<i32>> {
        Ok(s.bytes().map(|b| b as i32).collect())
    }

    fn builder() -> PackBuilder {
        let mut b = PackBuilder::new(base(), "{soft:u}Seen:{history}\nNext:{candidate}\n");
        b.add_soft_prompt("u", 2, vec![0.5, -1.0, 2.0, 0.25, 1.0, 2.0, 3.0, 4.0], false).unwrap();
        b.add_item(CatalogItem { id: "a".into(), title: "Alpha".into(), text: Some("x".into()) });
        b.add_item(CatalogItem { id: "b".into(), title: "Beta (1999)".into(), text: None });
        b
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        builder().write(&p, &mut bytes_tok).unwrap();
        let pack = Pack::open(&p).unwrap();
        assert_eq!(pack.base, base());
        assert_eq!(pack.n_items(), 2);
        assert_eq!(pack.item_index("b"), Some(1));
        assert_eq!(pack.item_title(1), Some("Beta (1999)"));
        assert_eq!(pack.item_text(0), Some("x"));
        assert_eq!(pack.item_tokens(1).unwrap(), bytes_tok(" Beta (1999)").unwrap());
        assert_eq!(pack.item_tokens(2), None);
        assert_eq!(pack.item_id(2), None);
        assert_eq!(pack.soft_prompt_values(0).unwrap(), vec![0.5, -1.0, 2.0, 0.25, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(pack.template.parts[0], Part::Soft(0));
        assert_eq!(pack.template.parts[1], Part::Text(bytes_tok("Seen:").unwrap()));
        assert_eq!(pack.template.terminator(), bytes_tok("\n").unwrap());
        assert_eq!(pack.template.separator_tokens, bytes_tok(",").unwrap());
        assert_eq!(pack.scoring, ScoringMode::Sum);
    }

    #[test]
    fn bad_builds_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        let mut b = builder();
        b.add_item(CatalogItem { id: "a".into(), title: "Again".into(), text: None });
        assert!(matches!(b.write(&p, &mut bytes_tok), Err(Error::InvalidInput(m)) if m.contains("duplicate")));
        let mut b = builder();
        b.add_item(CatalogItem { id: "c".into(), title: "  ".into(), text: None });
        assert!(matches!(b.write(&p, &mut bytes_tok), Err(Error::InvalidInput(m)) if m.contains("empty title")));
        let mut b = builder();
        assert!(b.add_soft_prompt("w", 2, vec![0.0; 6], false).is_err(), "width 3 accepted for n_embd 4");
        let b = PackBuilder::new(base(), "{soft:missing}{history}{candidate}");
        assert!(b.write(&p, &mut bytes_tok).is_err());
        let mut b = builder();
        b.item_prefix = String::new();
        b.add_item(CatalogItem { id: "z".into(), title: "\u{200b}".into(), text: None });
        let mut empty_for_zw = |s: &str| Ok(if s == "\u{200b}" { vec![] } else { bytes_tok(s)? });
        assert!(matches!(b.write(&p, &mut empty_for_zw), Err(Error::InvalidInput(m)) if m.contains("nothing")));
        assert!(!p.exists(), "a failed build left a file");
    }

    #[test]
    fn non_finite_soft_prompt_values_are_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        builder().write(&p, &mut bytes_tok).unwrap();
        let pack = Pack::open(&p).unwrap();
        let t = pack.file().tensor("soft_prompt.u").unwrap();
        let at = t.offset as usize + 4; // the second value, an f32
        drop(pack);
        let mut bytes = std::fs::read(&p).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            bytes[at..at + 4].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&p, &bytes).unwrap();
            let pack = Pack::open(&p).unwrap();
            let e = pack.soft_prompt_values(0);
            assert!(matches!(&e, Err(Error::InvalidFile { reason, .. }) if reason.contains("value 1")), "{e:?}");
        }
    }

    #[test]
    fn every_truncation_and_byte_flip_is_safe() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        builder().write(&p, &mut bytes_tok).unwrap();
        let full = std::fs::read(&p).unwrap();
        let q = dir.path().join("q.gguf");
        for cut in (0..full.len()).step_by(7) {
            std::fs::write(&q, &full[..cut]).unwrap();
            assert!(Pack::open(&q).is_err(), "cut at {cut} opened");
        }
        // Flipped bytes must never panic (they may or may not be detected).
        for i in (0..full.len()).step_by(3) {
            let mut m = full.clone();
            m[i] ^= 0xff;
            std::fs::write(&q, &m).unwrap();
            if let Ok(pack) = Pack::open(&q) {
                for j in 0..pack.n_items() as u32 {
                    let _ = pack.item_tokens(j);
                }
                for s in 0..pack.soft_prompts.len() {
                    let _ = pack.soft_prompt_values(s);
                }
            }
        }
    }
}
