//! Sequential-model import: a SASRec checkpoint (RecBole 1.2.1's `Trainer` file, the recipe's
//! `sasrec.pth`, or a plain state dict; read by [`crate::torch_ckpt`], no Python) becomes the
//! pack's [`Sasrec`], its item table reordered to the catalog.
//!
//! RecBole numbers items by its own remapping (row 0 = padding), so the model's item list comes
//! from the checkpoint (`item_tokens`, as the recipe saves it) or from a file (`--seq-items`, one
//! token per line in row order: RecBole's `dataset.field2id_token['item_id']`). Every catalog id
//! must have a row; model items outside the catalog are dropped (they could never be shown).

use std::collections::HashMap;
use std::path::Path;

use delrec_format::seq::{
    Activation, ItemPooling, ItemProjection, ItemSource, ItemTable, LayerNorm, Linear, Sasrec, SasrecBlock,
};

use crate::error::{ConvertError, Result};
use crate::torch_ckpt::{self, PyValue};

/// A float tensor: shape and row-major values.
pub type Tensor = (Vec<usize>, Vec<f32>);

/// SASRec hyperparameters, named as RecBole's config names them.
#[derive(Clone, Debug, PartialEq)]
pub struct SasrecConfig {
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

/// A loaded checkpoint, before it meets a catalog.
pub struct SeqSource {
    pub tensors: HashMap<String, Tensor>,
    pub config: SasrecConfig,
    /// Row `r` of the item table belongs to `item_tokens[r]` (`[PAD]` at row 0 in RecBole).
    pub item_tokens: Vec<String>,
    /// `"llm"` for TSLRec (the table is the projection of LLM item embeddings); default `"id"`.
    pub item_source: Option<String>,
    /// With an `item_proj`: how the item embeddings were pooled (`"mean"`, `"last"`).
    pub item_pooling: Option<String>,
}

/// What the import did, for the converter's report.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqReport {
    pub hidden: usize,
    pub n_layers: usize,
    pub max_len: usize,
    pub model_items: usize,
    /// Items of the model that are not in the catalog (padding excluded).
    pub dropped: usize,
}

fn err(path: &Path, reason: impl Into<String>) -> ConvertError {
    ConvertError::SeqModel { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads a checkpoint. `items` (one token per line) overrides or supplies the item list.
pub fn load(path: &Path, items: Option<&Path>) -> Result<SeqSource> {
    let root = torch_ckpt::load(path)?;
    let sd = torch_ckpt::state_dict(&root)
        .ok_or_else(|| err(path, "no state dict (expected a dict of tensors, or one under 'state_dict')"))?;
    let mut tensors = HashMap::new();
    for (name, t) in sd {
        tensors.insert(name.to_string(), (t.shape.clone(), t.to_f32()));
    }
    let cfg = root.get("config").ok_or_else(|| err(path, "no 'config' (RecBole's checkpoint or the recipe's blob)"))?;
    // A RecBole `Config` object keeps its settings in `final_config_dict`; the recipe saves a dict.
    let cfg = cfg.get("final_config_dict").unwrap_or(cfg);
    let int = |k: &str| -> Result<usize> {
        cfg.get(k)
            .and_then(PyValue::as_i64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| err(path, format!("config lacks an integer {k:?}")))
    };
    let config = SasrecConfig {
        n_layers: int("n_layers")?,
        n_heads: int("n_heads")?,
        hidden_act: cfg.get("hidden_act").and_then(PyValue::as_str).unwrap_or("gelu").to_string(),
        layer_norm_eps: cfg.get("layer_norm_eps").and_then(PyValue::as_f64).unwrap_or(1e-12),
    };
    let item_tokens = match items {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConvertError::io(p, e))?;
            text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect()
        }
        None => match root.get("item_tokens").and_then(PyValue::as_list) {
            Some(list) => list
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(path, "item_tokens is not a list of strings"))?,
            None => {
                return Err(err(
                    path,
                    "the checkpoint does not list its items (RecBole keeps them in the dataset): \
                     pass --seq-items FILE, one item token per line in row order, row 0 = [PAD]",
                ))
            }
        },
    };
    let text = |k: &str| root.get(k).and_then(PyValue::as_str).map(str::to_string);
    Ok(SeqSource { tensors, config, item_tokens, item_source: text("item_source"), item_pooling: text("item_pooling") })
}

/// The model with its item table in `catalog` order; `n_embd` is the base model's width (the
/// input of a TSLRec item projection).
pub fn for_catalog(src: &SeqSource, catalog: &[String], n_embd: usize, path: &Path) -> Result<(Sasrec, SeqReport)> {
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let (s, v) = src.tensors.get(name).ok_or_else(|| err(path, format!("tensor {name:?} is missing")))?;
        if s.as_slice() != shape {
            return Err(err(path, format!("tensor {name:?} has shape {s:?}, expected {shape:?}")));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(err(path, format!("tensor {name:?} holds {} at {i}", v[i])));
        }
        Ok(v.clone())
    };
    let shape_of = |name: &str| -> Result<&[usize]> {
        src.tensors.get(name).map(|t| t.0.as_slice()).ok_or_else(|| err(path, format!("tensor {name:?} is missing")))
    };
    let (n_rows, hidden) = match shape_of("item_embedding.weight")? {
        [r, h] => (*r, *h),
        s => return Err(err(path, format!("item_embedding.weight has shape {s:?}, expected 2-D"))),
    };
    let max_len = match shape_of("position_embedding.weight")? {
        [l, h] if *h == hidden => *l,
        s => return Err(err(path, format!("position_embedding.weight has shape {s:?}, expected [max_len, {hidden}]"))),
    };
    let c = &src.config;
    let act = Activation::parse(&c.hidden_act)
        .ok_or_else(|| err(path, format!("hidden_act {:?} is not supported (gelu, relu)", c.hidden_act)))?;
    if c.n_heads == 0 || !hidden.is_multiple_of(c.n_heads) {
        return Err(err(path, format!("hidden size {hidden} is not a multiple of n_heads {}", c.n_heads)));
    }
    if src.item_tokens.len() != n_rows {
        return Err(err(
            path,
            format!("the item list has {} entries but the item table {n_rows} rows", src.item_tokens.len()),
        ));
    }
    let inner = match shape_of("trm_encoder.layer.0.feed_forward.dense_1.weight")? {
        [i, h] if *h == hidden => *i,
        s => return Err(err(path, format!("feed_forward.dense_1.weight has shape {s:?}"))),
    };
    // Every tensor must be one we read: a checkpoint of another model fails here, not later.
    let mut expected = vec!["item_embedding.weight".to_string(), "position_embedding.weight".into()];
    expected.extend(["LayerNorm.weight", "LayerNorm.bias"].map(String::from));
    let linear = |p: &str, n_in: usize, n_out: usize| -> Result<Linear> {
        Ok(Linear {
            n_in,
            n_out,
            weight: get(&format!("{p}.weight"), &[n_out, n_in])?,
            bias: get(&format!("{p}.bias"), &[n_out])?,
        })
    };
    let norm = |p: &str| -> Result<LayerNorm> {
        Ok(LayerNorm { weight: get(&format!("{p}.weight"), &[hidden])?, bias: get(&format!("{p}.bias"), &[hidden])? })
    };
    let mut blocks = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let a = format!("trm_encoder.layer.{i}.multi_head_attention");
        let f = format!("trm_encoder.layer.{i}.feed_forward");
        for p in ["query", "key", "value", "dense", "LayerNorm"] {
            expected.extend(["weight", "bias"].map(|w| format!("{a}.{p}.{w}")));
        }
        for p in ["dense_1", "dense_2", "LayerNorm"] {
            expected.extend(["weight", "bias"].map(|w| format!("{f}.{p}.{w}")));
        }
        blocks.push(SasrecBlock {
            q: linear(&format!("{a}.query"), hidden, hidden)?,
            k: linear(&format!("{a}.key"), hidden, hidden)?,
            v: linear(&format!("{a}.value"), hidden, hidden)?,
            out: linear(&format!("{a}.dense"), hidden, hidden)?,
            attn_norm: norm(&format!("{a}.LayerNorm"))?,
            up: linear(&format!("{f}.dense_1"), hidden, inner)?,
            down: linear(&format!("{f}.dense_2"), inner, hidden)?,
            ffn_norm: norm(&format!("{f}.LayerNorm"))?,
        });
    }
    let item_proj = match src.tensors.get("item_proj.weight") {
        None => None,
        Some((shape, _)) => {
            if shape.as_slice() != [hidden, n_embd] {
                return Err(err(
                    path,
                    format!(
                        "item_proj.weight has shape {shape:?}, expected [{hidden}, {n_embd}] (hidden × the base model's width): \
                         the LLM embeddings were made with another model"
                    ),
                ));
            }
            expected.extend(["item_proj.weight", "item_proj.bias"].map(String::from));
            let pooling = src.item_pooling.as_deref().unwrap_or("mean");
            Some(ItemProjection {
                linear: linear("item_proj", n_embd, hidden)?,
                pooling: ItemPooling::parse(pooling)
                    .ok_or_else(|| err(path, format!("item_pooling {pooling:?} (expected mean or last)")))?,
            })
        }
    };
    let source = match src.item_source.as_deref() {
        None | Some("id") => ItemSource::Id,
        Some("llm") => ItemSource::Llm,
        Some(o) => return Err(err(path, format!("item_source {o:?} (expected id or llm)"))),
    };
    if let Some(extra) = src.tensors.keys().filter(|k| !expected.contains(k)).min() {
        return Err(err(path, format!("unexpected tensor {extra:?}: not SASRec with {} layers", c.n_layers)));
    }
    let table = get("item_embedding.weight", &[n_rows, hidden])?;
    let mut row_of = HashMap::with_capacity(n_rows);
    for (r, t) in src.item_tokens.iter().enumerate() {
        if row_of.insert(t.as_str(), r).is_some() {
            return Err(err(path, format!("item token {t:?} appears twice in the item list")));
        }
    }
    let mut items = Vec::with_capacity(catalog.len() * hidden);
    let mut used = 0usize;
    for id in catalog {
        let r = *row_of.get(id.as_str()).ok_or_else(|| {
            err(path, format!("catalog item {id:?} is not among the model's {} items (another dataset?)", n_rows))
        })?;
        if r == 0 {
            return Err(err(path, format!("catalog item {id:?} maps to row 0, the padding row")));
        }
        items.extend_from_slice(&table[r * hidden..(r + 1) * hidden]);
        used += 1;
    }
    let model = Sasrec {
        n_heads: c.n_heads,
        hidden,
        inner,
        max_len,
        act,
        eps: c.layer_norm_eps as f32,
        source,
        item_proj,
        items: items.into(),
        positions: get("position_embedding.weight", &[max_len, hidden])?,
        norm: norm("LayerNorm")?,
        blocks,
    };
    model.validate(catalog.len()).map_err(|e| err(path, e))?;
    let report = SeqReport {
        hidden,
        n_layers: c.n_layers,
        max_len,
        model_items: n_rows.saturating_sub(1),
        dropped: n_rows.saturating_sub(1 + used),
    };
    Ok((model, report))
}

/// Stores the item table as Q8_0 (`pack --seq-q8-items`).
pub fn quantize_items(m: &mut Sasrec, path: &Path) -> Result<()> {
    if !m.hidden.is_multiple_of(delrec_format::seq::Q8_BLOCK) {
        return Err(err(
            path,
            format!("--seq-q8-items needs a hidden size divisible by 32, this model's is {}", m.hidden),
        ));
    }
    m.items = ItemTable::quantize_q8_0(&m.items.to_f32()).map_err(|e| err(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_sasrec;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("i{i}")).collect()
    }

    fn source() -> SeqSource {
        let mut tokens = vec!["[PAD]".to_string()];
        tokens.extend(ids(6).into_iter().rev());
        random_sasrec(tokens, 8, 2, 2, 4, 1)
    }

    fn fails(src: &SeqSource, catalog: &[String], needle: &str) {
        match for_catalog(src, catalog, 12, Path::new("m.pth")) {
            Err(ConvertError::SeqModel { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
            Err(e) => panic!("{needle}: wrong error {e:?}"),
            Ok(_) => panic!("{needle}: accepted"),
        }
    }

    #[test]
    fn rows_follow_the_catalog() {
        let src = source();
        let catalog = vec!["i2".to_string(), "i5".into()];
        let (m, rep) = for_catalog(&src, &catalog, 12, Path::new("m.pth")).unwrap();
        let table = &src.tensors["item_embedding.weight"].1;
        // i2 is row 5 of the reversed list (PAD, i6, i5, i4, i3, i2, i1), i5 is row 2.
        let items = m.items.to_f32();
        assert_eq!(&items[..8], &table[5 * 8..6 * 8]);
        assert_eq!(&items[8..], &table[2 * 8..3 * 8]);
        assert_eq!((rep.hidden, rep.n_layers, rep.max_len, rep.model_items, rep.dropped), (8, 2, 4, 6, 4));
        assert_eq!(m.inner, 16);
        assert!(m.item_proj.is_none() && m.source == ItemSource::Id);
        // A TSLRec export: the projection from the 12-wide LLM comes along.
        let mut s = source();
        s.tensors.insert("item_proj.weight".into(), (vec![8, 12], vec![0.25; 96]));
        s.tensors.insert("item_proj.bias".into(), (vec![8], vec![0.5; 8]));
        s.item_source = Some("llm".into());
        s.item_pooling = Some("last".into());
        let (m, _) = for_catalog(&s, &catalog, 12, Path::new("m.pth")).unwrap();
        let p = m.item_proj.unwrap();
        assert_eq!((p.linear.n_in, p.linear.n_out, p.pooling, m.source), (12, 8, ItemPooling::Last, ItemSource::Llm));
        match for_catalog(&s, &catalog, 16, Path::new("m.pth")) {
            Err(ConvertError::SeqModel { reason, .. }) => assert!(reason.contains("another model"), "{reason}"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn bad_models_are_typed_errors() {
        let src = source();
        fails(&src, &["i9".to_string()], "\"i9\" is not among");
        fails(&src, &["[PAD]".to_string()], "padding row");
        let mut s = source();
        s.item_tokens.pop();
        fails(&s, &ids(2), "item list has 6 entries but the item table 7 rows");
        let mut s = source();
        s.item_tokens[3] = "i6".into();
        fails(&s, &ids(2), "appears twice");
        let mut s = source();
        if let Some(t) = s.tensors.get_mut("trm_encoder.layer.1.feed_forward.dense_2.bias") {
            t.1[3] = f32::NAN;
        }
        fails(&s, &ids(2), "holds NaN");
        let mut s = source();
        s.tensors.insert("trm_encoder.layer.2.feed_forward.dense_2.bias".into(), (vec![8], vec![0.0; 8]));
        fails(&s, &ids(2), "unexpected tensor");
        let mut s = source();
        s.tensors.remove("LayerNorm.bias");
        fails(&s, &ids(2), "\"LayerNorm.bias\" is missing");
        let mut s = source();
        s.config.n_heads = 3;
        fails(&s, &ids(2), "multiple of n_heads");
        let mut s = source();
        s.config.hidden_act = "swish".into();
        fails(&s, &ids(2), "swish");
        let mut s = source();
        if let Some(t) = s.tensors.get_mut("trm_encoder.layer.0.multi_head_attention.key.weight") {
            t.0 = vec![4, 16];
        }
        fails(&s, &ids(2), "shape [4, 16]");
    }
}
