//! Writing packs (feature `build`): the converter's side of `docs/format.md`.

use std::collections::HashMap;
use std::path::Path;

use half::f16;

use super::*;
use crate::gguf::{f32_bytes, i32_bytes, GgufWriter, TensorData};
use crate::seq::{self as seqm, Fusion, ItemTable, Sasrec};
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
    /// Between the candidates a `{candidates}` slot lists.
    pub candidates_separator: String,
    pub bos: Option<i32>,
    /// Encoder-decoder packs: the mask token (T5's `<extra_id_0>`).
    pub mask_token: Option<i32>,
    /// The prompt takes only the latest this many history items.
    pub max_history: Option<u32>,
    pub scoring: ScoringMode,
    pub name: Option<String>,
    soft: Vec<(String, usize, Vec<f32>, bool)>,
    items: Vec<CatalogItem>,
    /// The sequential model (item table in catalog order) and whether to store it as f16.
    pub seq: Option<(Sasrec, bool)>,
    pub fusion: Option<Fusion>,
    /// The adapter the pack is served with (written as a version-2 pack).
    pub adapter: Option<AdapterRef>,
    /// With verbalizer scoring: how label words are made and scored.
    pub verbalizer: Option<VerbalizerSpec>,
}

/// How a verbalizer's label words are made from titles (tokenized with the pack's tokenizer as
/// `prefix + word`) and scored.
#[derive(Clone, Debug, PartialEq)]
pub struct VerbalizerSpec {
    pub handler: Handler,
    pub rule: LabelRule,
    pub prefix: String,
}

impl Default for VerbalizerSpec {
    /// OpenPrompt's `ManualVerbalizer` defaults with DELRec's label words.
    fn default() -> Self {
        Self { handler: Handler::First, rule: LabelRule::TitleAndNoYear, prefix: " ".into() }
    }
}

impl PackBuilder {
    pub fn new(base: BaseIdentity, template: &str) -> Self {
        Self {
            base,
            model_sha256: vec![],
            template: template.to_string(),
            item_prefix: " ".into(),
            history_separator: ",".into(),
            candidates_separator: ", ".into(),
            bos: None,
            mask_token: None,
            max_history: None,
            scoring: ScoringMode::Sum,
            name: None,
            soft: vec![],
            items: vec![],
            seq: None,
            fusion: None,
            adapter: None,
            verbalizer: None,
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
        let kind = template::validate(&pieces)?;
        if !is_encoder_decoder(&self.base.architecture) {
            template::check_for_decoder_only(&pieces)?;
        }
        let enc_dec = is_encoder_decoder(&self.base.architecture);
        check_scoring(self.scoring, kind, enc_dec)?;
        match self.mask_token {
            Some(t) if enc_dec && t >= 0 && (t as i64) < self.base.n_vocab as i64 => {}
            None if !enc_dec => {}
            _ => {
                return Err(Error::InvalidInput(format!(
                    "an encoder-decoder pack needs its mask token (a token id), and only it: {:?}",
                    self.mask_token
                )))
            }
        }
        if self.verbalizer.is_some() != (self.scoring == ScoringMode::Verbalizer) {
            return Err(Error::InvalidInput("a verbalizer spec goes with verbalizer scoring, and only with it".into()));
        }
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
        match &self.adapter {
            None => w.set(K_VERSION, Value::U32(PACK_VERSION)),
            Some(a) => {
                if !valid_adapter_file(&a.file) {
                    return Err(Error::InvalidInput(format!("adapter file name {:?}: a bare file name", a.file)));
                }
                let hex = a.sha256.len() == 64 && a.sha256.bytes().all(|b| b.is_ascii_hexdigit());
                if !hex || !valid_adapter_scale(a.scale) {
                    return Err(Error::InvalidInput(format!(
                        "adapter: sha256 {:?} must be 64 hex digits and scale {} in (0, 16]",
                        a.sha256, a.scale
                    )));
                }
                w.set(K_VERSION, Value::U32(PACK_VERSION_ADAPTER));
                w.set(K_ADAPTER_FILE, Value::Str(a.file.clone()));
                w.set(K_ADAPTER_SHA, Value::Str(a.sha256.to_ascii_lowercase()));
                w.set(K_ADAPTER_SCALE, Value::F32(a.scale));
            }
        }
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
        if pieces.contains(&Piece::Candidates) {
            w.set(K_CANDS_SEP, Value::Str(self.candidates_separator.clone()));
            let t = tok("candidates separator", &self.candidates_separator)?;
            w.set(K_CANDS_SEP_TOK, Value::Array(Array::I32(t)));
        }
        if let Some(b) = self.bos {
            if b < 0 || b as i64 >= n_vocab {
                return Err(Error::InvalidInput(format!("BOS token {b} outside the vocabulary")));
            }
        }
        w.set(K_BOS, Value::I32(self.bos.unwrap_or(-1)));
        if let Some(t) = self.mask_token {
            w.set(K_MASK_TOK, Value::I32(t));
        }
        match self.max_history {
            Some(0) => return Err(Error::InvalidInput("max_history must be at least 1".into())),
            Some(n) => w.set(K_MAX_HISTORY, Value::U32(n)),
            None => {}
        }
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
        if let Some(spec) = &self.verbalizer {
            let mut words = Vec::with_capacity(self.items.len());
            for it in &self.items {
                let mut ws = Vec::new();
                for word in spec.rule.words(&it.title) {
                    let t = tok("label word", &format!("{}{word}", spec.prefix))?;
                    if t.is_empty() {
                        return Err(Error::InvalidInput(format!(
                            "catalog item {:?}: label word {word:?} tokenizes to nothing",
                            it.id
                        )));
                    }
                    ws.push(t);
                }
                words.push(ws);
            }
            Verbalizer::new(spec.handler, spec.rule, &spec.prefix, &words)?.write(&mut w)?;
        }
        w.add_tensor(T_TOKENS, &[tokens.len() as u64], TensorType::I32, TensorData::Owned(i32_bytes(&tokens)))?;
        w.add_tensor(T_OFFSETS, &[offsets.len() as u64], TensorType::I32, TensorData::Owned(i32_bytes(&offsets)))?;
        if let Some((m, as_f16)) = &self.seq {
            write_sasrec(&mut w, m, *as_f16, self.items.len(), self.base.n_embd as usize)?;
        }
        if let Some(fu) = &self.fusion {
            seqm::check_fusion(fu)?;
            w.set(seqm::K_FUSION_W, Value::F32(fu.llm_weight));
            w.set(seqm::K_FUSION_N, Value::U32(fu.retrieve));
        }
        w.write_atomic(path, &mut |_, _| {})
    }
}

fn write_sasrec(w: &mut GgufWriter, m: &Sasrec, as_f16: bool, n_items: usize, n_embd: usize) -> Result<()> {
    m.validate(n_items).map_err(|e| Error::InvalidInput(format!("sequential model: {e}")))?;
    if let Some(p) = &m.item_proj {
        if p.linear.n_in != n_embd {
            return Err(Error::InvalidInput(format!(
                "sequential model: the item projection takes {}-wide embeddings, the base model is {n_embd} wide",
                p.linear.n_in
            )));
        }
    }
    let h = m.hidden;
    // A Q8_0 table is written as it is; f32 tables follow `as_f16` with the other weights.
    if let ItemTable::Q8_0(q) = &m.items {
        let mut bytes = Vec::with_capacity(q.scales.len() * (2 + seqm::Q8_BLOCK));
        for (d, qs) in q.scales.iter().zip(q.quants.chunks_exact(seqm::Q8_BLOCK)) {
            bytes.extend(f16::from_f32(*d).to_le_bytes()); // the widened f16: exact
            bytes.extend(qs.iter().map(|&x| x as u8));
        }
        let dims = [h as u64, n_items as u64];
        w.add_tensor(seqm::item_tensor(), &dims, TensorType::Q8_0, TensorData::Owned(bytes))?;
    }
    let mut put = |name: &str, dims: &[usize], v: &[f32]| -> Result<()> {
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        let (ty, bytes) = if as_f16 {
            (TensorType::F16, v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect())
        } else {
            (TensorType::F32, f32_bytes(v))
        };
        w.add_tensor(name, &dims, ty, TensorData::Owned(bytes))
    };
    if let ItemTable::F32(v) = &m.items {
        put(seqm::item_tensor(), &[h, n_items], v)?;
    }
    put("seq.pos_embd", &[h, m.max_len], &m.positions)?;
    put("seq.norm.weight", &[h], &m.norm.weight)?;
    put("seq.norm.bias", &[h], &m.norm.bias)?;
    for (i, b) in m.blocks.iter().enumerate() {
        let n = seqm::tensor_names(i);
        let lin = [&b.q, &b.k, &b.v, &b.out];
        for (j, l) in lin.iter().enumerate() {
            put(&n[2 * j], &[l.n_in, l.n_out], &l.weight)?;
            put(&n[2 * j + 1], &[l.n_out], &l.bias)?;
        }
        put(&n[8], &[h], &b.attn_norm.weight)?;
        put(&n[9], &[h], &b.attn_norm.bias)?;
        put(&n[10], &[b.up.n_in, b.up.n_out], &b.up.weight)?;
        put(&n[11], &[b.up.n_out], &b.up.bias)?;
        put(&n[12], &[b.down.n_in, b.down.n_out], &b.down.weight)?;
        put(&n[13], &[b.down.n_out], &b.down.bias)?;
        put(&n[14], &[h], &b.ffn_norm.weight)?;
        put(&n[15], &[h], &b.ffn_norm.bias)?;
    }
    if let Some(p) = &m.item_proj {
        put(seqm::PROJ_W, &[p.linear.n_in, h], &p.linear.weight)?;
        put(seqm::PROJ_B, &[h], &p.linear.bias)?;
        w.set(seqm::K_POOLING, Value::Str(p.pooling.as_str().into()));
    }
    w.set(seqm::K_KIND, Value::Str(seqm::KIND_SASREC.into()));
    w.set(seqm::K_LAYERS, Value::U32(m.blocks.len() as u32));
    w.set(seqm::K_HEADS, Value::U32(m.n_heads as u32));
    w.set(seqm::K_ACT, Value::Str(m.act.as_str().into()));
    w.set(seqm::K_EPS, Value::F32(m.eps));
    w.set(seqm::K_SOURCE, Value::Str(m.source.as_str().into()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{Pack, Part};
    use crate::seq::{Fusion, Sasrec};

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
        assert_eq!(pack.template.max_history, None);
        let mut b = builder();
        b.max_history = Some(10);
        b.write(&p, &mut bytes_tok).unwrap();
        assert_eq!(Pack::open(&p).unwrap().template.max_history, Some(10));
        b.max_history = Some(0);
        assert!(b.write(&p, &mut bytes_tok).is_err());
    }

    /// A small SASRec for the 2-item catalog of [`builder`], values from a counter.
    fn sasrec() -> Sasrec {
        sasrec_of(4)
    }

    fn sasrec_of(h: usize) -> Sasrec {
        use crate::seq::{Activation, ItemSource, LayerNorm, Linear, SasrecBlock};
        let mut k = 0f32;
        let mut v = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    k += 1.0;
                    (k * 0.37).sin()
                })
                .collect()
        };
        let inner = 2 * h;
        let mut lin = |n_in: usize, n_out: usize| Linear { n_in, n_out, weight: v(n_in * n_out), bias: v(n_out) };
        let block = SasrecBlock {
            q: lin(h, h),
            k: lin(h, h),
            v: lin(h, h),
            out: lin(h, h),
            attn_norm: LayerNorm { weight: vec![1.0; h], bias: vec![0.1; h] },
            up: lin(h, inner),
            down: lin(inner, h),
            ffn_norm: LayerNorm { weight: vec![0.9; h], bias: vec![0.0; h] },
        };
        Sasrec {
            n_heads: 2,
            hidden: h,
            inner,
            max_len: 3,
            act: Activation::Gelu,
            eps: 1e-12,
            source: ItemSource::Id,
            items: ItemTable::F32((0..2 * h).map(|i| i as f32 * 0.25).collect()),
            positions: (0..3 * h).map(|i| i as f32 * -0.5).collect(),
            norm: LayerNorm { weight: vec![1.1; h], bias: vec![0.2; h] },
            blocks: vec![block.clone(), block],
            item_proj: None,
        }
    }

    #[test]
    fn a_q8_0_item_table_round_trips_and_hostile_scales_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        let mut m = sasrec_of(32);
        m.items = ItemTable::quantize_q8_0(&m.items.to_f32()).unwrap();
        for f16 in [false, true] {
            let mut b = builder();
            b.seq = Some((m.clone(), f16));
            b.write(&p, &mut bytes_tok).unwrap();
            let got = Pack::open(&p).unwrap().seq.unwrap();
            assert_eq!(got.items, m.items, "the quantized table is stored as it is (f16 weights: {f16})");
        }
        // Hidden sizes that are not whole Q8_0 blocks are refused by the writer.
        let mut small = sasrec();
        small.items = ItemTable::Q8_0(crate::seq::Q8Table { scales: vec![1.0], quants: vec![1; 8] });
        let mut b = builder();
        b.seq = Some((small, false));
        assert!(matches!(b.write(&p, &mut bytes_tok), Err(Error::InvalidInput(e)) if e.contains("divisible by 32")));
        // A scale that is not finite (f16 0x7e00 is NaN, 0x7c00 infinity) → a bad file, not NaN scores.
        let mut b = builder();
        b.seq = Some((m, false));
        b.write(&p, &mut bytes_tok).unwrap();
        let off = GgufFile::open(&p).unwrap().tensor(seqm::item_tensor()).unwrap().offset as usize;
        for bad in [[0x00, 0x7e], [0x00, 0x7c]] {
            let mut bytes = std::fs::read(&p).unwrap();
            bytes[off + 34..off + 36].copy_from_slice(&bad);
            let q = dir.path().join("bad.gguf");
            std::fs::write(&q, bytes).unwrap();
            match Pack::open(&q) {
                Err(Error::InvalidFile { reason, .. }) => assert!(reason.contains("scales"), "{reason}"),
                Err(e) => panic!("wrong error: {e:?}"),
                Ok(_) => panic!("accepted a non-finite scale"),
            }
        }
    }

    #[test]
    fn sequential_model_round_trips_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        let pack = {
            builder().write(&p, &mut bytes_tok).unwrap();
            Pack::open(&p).unwrap()
        };
        assert!(pack.seq.is_none(), "a pack without one");
        // The defaults, retrieve capped at the catalog's 2 items.
        assert_eq!(pack.fusion, Fusion { retrieve: 2, ..Fusion::default() });
        for f16 in [false, true] {
            let mut b = builder();
            b.seq = Some((sasrec(), f16));
            b.fusion = Some(Fusion { llm_weight: 0.25, retrieve: 50 });
            b.write(&p, &mut bytes_tok).unwrap();
            let pack = Pack::open(&p).unwrap();
            let got = pack.seq.clone().unwrap();
            if f16 {
                let want = sasrec();
                assert_eq!(got.items.len(), want.items.len());
                assert!(got.items.to_f32().iter().zip(&want.items.to_f32()).all(|(a, b)| (a - b).abs() < 1e-3));
            } else {
                assert_eq!(got, sasrec());
            }
            // retrieve is capped at the catalog's 2 items.
            assert_eq!(pack.fusion, Fusion { llm_weight: 0.25, retrieve: 2 });
        }
        // With a TSLRec item projection (base width 4 → hidden 4).
        let mut b = builder();
        let mut m = sasrec();
        m.source = crate::seq::ItemSource::Llm;
        m.item_proj = Some(crate::seq::ItemProjection {
            linear: crate::seq::Linear { n_in: 4, n_out: 4, weight: vec![0.5; 16], bias: vec![0.1; 4] },
            pooling: crate::seq::ItemPooling::Last,
        });
        b.seq = Some((m.clone(), false));
        b.write(&p, &mut bytes_tok).unwrap();
        assert_eq!(Pack::open(&p).unwrap().seq, Some(m.clone()));
        m.item_proj.as_mut().unwrap().linear =
            crate::seq::Linear { n_in: 3, n_out: 4, weight: vec![0.5; 12], bias: vec![0.1; 4] };
        b.seq = Some((m, false));
        assert!(matches!(b.write(&p, &mut bytes_tok), Err(Error::InvalidInput(e)) if e.contains("3-wide")));
        // Writers refuse what readers would.
        let mut b = builder();
        let mut m = sasrec();
        if let ItemTable::F32(v) = &mut m.items {
            v.pop();
        }
        b.seq = Some((m, false));
        assert!(matches!(b.write(&p, &mut bytes_tok), Err(Error::InvalidInput(e)) if e.contains("item table")));
        let mut b = builder();
        let mut m = sasrec();
        m.blocks[1].up.bias[2] = f32::INFINITY;
        b.seq = Some((m, false));
        assert!(matches!(b.write(&p, &mut bytes_tok), Err(Error::InvalidInput(e)) if e.contains("inf")));
        let mut b = builder();
        b.fusion = Some(Fusion { llm_weight: 1.5, retrieve: 5 });
        assert!(b.write(&p, &mut bytes_tok).is_err());
    }

    #[test]
    fn a_hostile_sequential_model_is_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        let mut b = builder();
        b.seq = Some((sasrec(), false));
        b.write(&p, &mut bytes_tok).unwrap();
        let file = GgufFile::open(&p).unwrap();
        let at = file.tensor("seq.blk.1.ffn_down.weight").unwrap().offset as usize + 8;
        drop(file);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = Pack::open(&p).err().unwrap();
        assert!(
            matches!(&e, Error::InvalidFile { reason, .. } if reason.contains("ffn_down") && reason.contains("NaN")),
            "{e}"
        );
        // Every truncation is an error, never a panic.
        b.write(&p, &mut bytes_tok).unwrap();
        let full = std::fs::read(&p).unwrap();
        let q = dir.path().join("q.gguf");
        for cut in (0..full.len()).step_by(13) {
            std::fs::write(&q, &full[..cut]).unwrap();
            assert!(Pack::open(&q).is_err(), "cut at {cut} opened");
        }
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
        let file = GgufFile::open(&p).unwrap();
        let at = file.tensor("soft_prompt.u").unwrap().offset as usize + 4; // the second value, an f32
        drop(file);
        let mut bytes = std::fs::read(&p).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            bytes[at..at + 4].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&p, &bytes).unwrap();
            // Refused on read, at open: no engine ever sees them.
            let e = Pack::open(&p).map(|_| ());
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

    fn verbalizer_builder() -> PackBuilder {
        let mut b = builder();
        b.template = "{soft:u}Seen:{history}; pick one of {candidates}:{mask}".into();
        b.scoring = ScoringMode::Verbalizer;
        b.verbalizer = Some(VerbalizerSpec::default());
        b
    }

    #[test]
    fn verbalizer_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        verbalizer_builder().write(&p, &mut bytes_tok).unwrap();
        let pack = Pack::open(&p).unwrap();
        assert_eq!(pack.scoring, ScoringMode::Verbalizer);
        assert_eq!(pack.template.kind, template::Kind::Mask);
        assert_eq!(*pack.template.parts.last().unwrap(), Part::Mask);
        assert!(pack.template.parts.contains(&Part::Candidates));
        assert_eq!(pack.template.candidates_separator_tokens, bytes_tok(", ").unwrap());
        let v = pack.verbalizer.as_ref().unwrap();
        assert_eq!((v.handler, v.rule, v.n_items(), v.n_words()), (Handler::First, LabelRule::TitleAndNoYear, 2, 4));
        let words: Vec<Vec<i32>> = v.words(1).unwrap().map(<[i32]>::to_vec).collect();
        assert_eq!(words, vec![bytes_tok(" Beta (1999)").unwrap(), bytes_tok(" Beta").unwrap()]);
        // A title pack has none.
        builder().write(&p, &mut bytes_tok).unwrap();
        assert!(Pack::open(&p).unwrap().verbalizer.is_none());
    }

    #[test]
    fn verbalizer_misuse_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        // Verbalizer scoring without a mask slot, a mask template with title scoring, a spec
        // without verbalizer scoring, and a mask mid-template on a decoder-only base.
        let mut no_mask = verbalizer_builder();
        no_mask.template = "{history}{candidate}".into();
        let mut title_scored = verbalizer_builder();
        title_scored.scoring = ScoringMode::Sum;
        let mut no_spec = verbalizer_builder();
        no_spec.verbalizer = None;
        let mut mid = verbalizer_builder();
        mid.template = "{history}{mask} is next".into();
        for (what, b) in [("no mask", no_mask), ("title scored", title_scored), ("no spec", no_spec), ("mid", mid)] {
            let e = b.write(&p, &mut bytes_tok).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{what}: {e}");
            assert!(!p.exists(), "{what}: a file was written");
        }
        // An encoder-decoder base reads the whole input: a mask may sit mid-template.
        let mut t5 = verbalizer_builder();
        t5.base.architecture = "t5".into();
        t5.template = "{history}{mask} is next".into();
        assert!(t5.write(&p, &mut bytes_tok).is_err(), "an encoder-decoder pack needs its mask token");
        t5.mask_token = Some(7);
        t5.write(&p, &mut bytes_tok).unwrap();
        assert_eq!(Pack::open(&p).unwrap().template.mask_token, Some(7));
        // There, title likelihood at the mask is allowed too; a {candidate} template is not.
        t5.scoring = ScoringMode::Sum;
        t5.verbalizer = None;
        t5.write(&p, &mut bytes_tok).unwrap();
        t5.template = "{history}{candidate}".into();
        assert!(t5.write(&p, &mut bytes_tok).is_err());
        // A decoder-only pack takes no mask token.
        let mut b = verbalizer_builder();
        b.mask_token = Some(7);
        assert!(b.write(&p, &mut bytes_tok).is_err());
    }

    #[test]
    fn verbalizer_pack_truncations_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.gguf");
        verbalizer_builder().write(&p, &mut bytes_tok).unwrap();
        let full = std::fs::read(&p).unwrap();
        let q = dir.path().join("q.gguf");
        for cut in (0..full.len()).step_by(5) {
            std::fs::write(&q, &full[..cut]).unwrap();
            assert!(Pack::open(&q).is_err(), "cut at {cut} opened");
        }
        for i in (0..full.len()).step_by(3) {
            let mut m = full.clone();
            m[i] ^= 0xff;
            std::fs::write(&q, &m).unwrap();
            if let Ok(pack) = Pack::open(&q) {
                if let Some(v) = &pack.verbalizer {
                    for j in 0..=v.n_items() as u32 {
                        let _ = v.words(j).map(|w| w.count());
                    }
                }
            }
        }
    }
}
