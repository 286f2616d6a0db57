//! The sequential recommender a pack may carry (SASRec, as RecBole defines it), and the fusion
//! settings of the cascade that retrieves with it and re-ranks with the LLM. Format in
//! `docs/format.md` ("Sequential model"); optional: packs without it are still version 1.
//!
//! The weights are copied out of the map at open (they are read at every request; a file
//! truncated under us must not turn them into SIGBUS) and checked finite: one NaN would make
//! every score NaN.

use half::f16;

use crate::error::{bad_file, Result};
use crate::gguf::{GgufFile, TensorType, Value};

pub(crate) const K_KIND: &str = "delrec.seq.kind";
pub(crate) const K_LAYERS: &str = "delrec.seq.n_layers";
pub(crate) const K_HEADS: &str = "delrec.seq.n_heads";
pub(crate) const K_ACT: &str = "delrec.seq.hidden_act";
pub(crate) const K_EPS: &str = "delrec.seq.layer_norm_eps";
pub(crate) const K_SOURCE: &str = "delrec.seq.item_source";
pub(crate) const K_POOLING: &str = "delrec.seq.item_pooling";
pub(crate) const K_FUSION_W: &str = "delrec.fusion.llm_weight";
pub(crate) const K_FUSION_N: &str = "delrec.fusion.retrieve";

/// The only kind version 1 defines.
pub const KIND_SASREC: &str = "sasrec";

/// Largest accepted sizes: far above any phone model, low enough that a hostile header cannot
/// ask for absurd allocations before the tensor sizes are checked against the file.
const MAX_LAYERS: usize = 64;
const MAX_HIDDEN: usize = 8192;

/// The feed-forward activation (RecBole's `hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · Φ(x)` with the exact normal CDF (RecBole's `gelu`, erf form).
    Gelu,
    Relu,
}

impl Activation {
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gelu" => Some(Activation::Gelu),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// Where the item table came from: the trained ID embeddings, or (TSLRec) the LLM's item
/// embeddings through the recipe's learned projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemSource {
    Id,
    Llm,
}

impl ItemSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemSource::Id => "id",
            ItemSource::Llm => "llm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "id" => Some(ItemSource::Id),
            "llm" => Some(ItemSource::Llm),
            _ => None,
        }
    }
}

/// How an item's LLM embedding pools the hidden states of its tokens (`item_prefix + title`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemPooling {
    Mean,
    Last,
}

impl ItemPooling {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemPooling::Mean => "mean",
            ItemPooling::Last => "last",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mean" => Some(ItemPooling::Mean),
            "last" => Some(ItemPooling::Last),
            _ => None,
        }
    }
}

/// TSLRec's item projection: an item's vector is `proj(LLM embedding of item_prefix + title)`,
/// so an item added on the device gets one without retraining.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemProjection {
    /// `n_in` = the base model's width, `n_out` = the SASRec hidden size.
    pub linear: Linear,
    pub pooling: ItemPooling,
}

/// `y = W x + b`, `W` row-major `n_out × n_in` (PyTorch's `nn.Linear.weight` layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub n_in: usize,
    pub n_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One transformer block: attention (`q`, `k`, `v`, `out`, then add & norm) and the
/// feed-forward (`up`, activation, `down`, then add & norm), post-norm as in RecBole.
#[derive(Clone, Debug, PartialEq)]
pub struct SasrecBlock {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub attn_norm: LayerNorm,
    pub up: Linear,
    pub down: Linear,
    pub ffn_norm: LayerNorm,
}

/// SASRec weights, the item table in catalog order (row `i` = catalog item `i`).
#[derive(Clone, Debug, PartialEq)]
pub struct Sasrec {
    pub n_heads: usize,
    pub hidden: usize,
    pub inner: usize,
    /// Longest history the model reads (its position table); longer histories keep the latest.
    pub max_len: usize,
    pub act: Activation,
    pub eps: f32,
    pub source: ItemSource,
    /// `n_items × hidden`, row-major.
    pub items: ItemTable,
    /// `max_len × hidden`.
    pub positions: Vec<f32>,
    /// Applied to item + position embeddings before the first block.
    pub norm: LayerNorm,
    pub blocks: Vec<SasrecBlock>,
    /// Present when item vectors can be made from LLM embeddings (TSLRec).
    pub item_proj: Option<ItemProjection>,
}

/// Values per Q8_0 block (ggml's `QK8_0`): one scale for 32 int8 values.
pub const Q8_BLOCK: usize = 32;

/// The item table as the runtime scans it. F32 and F16 storage are widened to f32 at open;
/// Q8_0 (ggml's block layout: per 32 values an f16 scale `d` and 32 int8 `q`, value = `d · q`)
/// stays quantized in memory, a quarter of f32's size, for catalogs where the scan is
/// memory-bound (10^5 items and up).
#[derive(Clone, Debug, PartialEq)]
pub enum ItemTable {
    F32(Vec<f32>),
    Q8_0(Q8Table),
}

/// Q8_0 rows: `scales[b]` (the f16 scale, widened) belongs to `quants[32 b .. 32 b + 32]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Q8Table {
    pub scales: Vec<f32>,
    pub quants: Vec<i8>,
}

impl ItemTable {
    /// Quantizes f32 rows to Q8_0 exactly as ggml's reference `quantize_row_q8_0_ref` does
    /// (`d = amax / 127` stored as f16, `q = round(x / d)` with the f32 `d`), so ggml's and
    /// gguf-py's dequantizers read the same values. `v.len()` must be a multiple of 32.
    pub fn quantize_q8_0(v: &[f32]) -> std::result::Result<Self, String> {
        if !v.len().is_multiple_of(Q8_BLOCK) {
            return Err(format!("Q8_0 needs a multiple of {Q8_BLOCK} values, got {}", v.len()));
        }
        finite("item table", v)?;
        let mut scales = Vec::with_capacity(v.len() / Q8_BLOCK);
        let mut quants = Vec::with_capacity(v.len());
        for b in v.chunks_exact(Q8_BLOCK) {
            let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            scales.push(f16::from_f32(d).to_f32());
            quants.extend(b.iter().map(|x| (x * id).round() as i8));
        }
        Ok(ItemTable::Q8_0(Q8Table { scales, quants }))
    }

    /// Number of values (`n_items × hidden`).
    pub fn len(&self) -> usize {
        match self {
            ItemTable::F32(v) => v.len(),
            ItemTable::Q8_0(q) => q.quants.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage type's name as `inspect` prints it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ItemTable::F32(_) => "f32",
            ItemTable::Q8_0(_) => "q8_0",
        }
    }

    /// Bytes the table holds in memory.
    pub fn bytes(&self) -> usize {
        match self {
            ItemTable::F32(v) => v.len() * 4,
            ItemTable::Q8_0(q) => q.quants.len() + q.scales.len() * 4,
        }
    }

    /// Row `i` (`hidden` values, dequantized), or `None` when out of range.
    pub fn row(&self, i: usize, hidden: usize) -> Option<Vec<f32>> {
        let r = i.checked_mul(hidden)?..(i.checked_add(1)?).checked_mul(hidden)?;
        match self {
            ItemTable::F32(v) => v.get(r).map(<[f32]>::to_vec),
            ItemTable::Q8_0(q) => {
                let qs = q.quants.get(r.clone())?;
                qs.iter().enumerate().map(|(j, &x)| Some(q.scales.get((r.start + j) / Q8_BLOCK)? * x as f32)).collect()
            }
        }
    }

    /// Every value as f32 (dequantized): what a writer stores for F32/F16.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            ItemTable::F32(v) => v.clone(),
            // Blocks without a scale (a table `check` would refuse) read as zeros.
            ItemTable::Q8_0(q) => q
                .quants
                .chunks(Q8_BLOCK)
                .enumerate()
                .flat_map(|(b, qs)| {
                    let d = q.scales.get(b).copied().unwrap_or(0.0);
                    qs.iter().map(move |&x| d * x as f32)
                })
                .collect(),
        }
    }

    /// Sizes consistent with `rows × hidden`, every value finite.
    fn check(&self, rows: usize, hidden: usize) -> std::result::Result<(), String> {
        let want = rows.checked_mul(hidden);
        if Some(self.len()) != want {
            return Err(format!("item table holds {} values, expected {rows} × {hidden}", self.len()));
        }
        match self {
            ItemTable::F32(v) => finite("item table", v),
            ItemTable::Q8_0(q) => {
                if !hidden.is_multiple_of(Q8_BLOCK) {
                    return Err(format!("a Q8_0 item table needs a hidden size divisible by {Q8_BLOCK}, not {hidden}"));
                }
                if q.scales.len() * Q8_BLOCK != q.quants.len() {
                    return Err(format!("Q8_0 item table: {} scales for {} values", q.scales.len(), q.quants.len()));
                }
                finite("item table scales", &q.scales)
            }
        }
    }
}

impl From<Vec<f32>> for ItemTable {
    fn from(v: Vec<f32>) -> Self {
        ItemTable::F32(v)
    }
}

/// How the cascade combines its two scores (documented in `docs/format.md`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fusion {
    /// Weight of the LLM's standardized score, in `[0, 1]`; the sequential model gets the rest.
    pub llm_weight: f32,
    /// Default number of items the sequential model retrieves for the LLM to re-rank.
    pub retrieve: u32,
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion { llm_weight: 0.5, retrieve: 20 }
    }
}

impl Sasrec {
    pub fn n_items(&self) -> usize {
        self.items.len().checked_div(self.hidden).unwrap_or(0)
    }

    /// Every size consistent and every value finite; `n_items` is the catalog's size.
    pub fn validate(&self, n_items: usize) -> std::result::Result<(), String> {
        let h = self.hidden;
        if h == 0 || h > MAX_HIDDEN || self.n_heads == 0 || !h.is_multiple_of(self.n_heads) {
            return Err(format!("hidden size {h} is not a positive multiple of n_heads {}", self.n_heads));
        }
        if self.max_len == 0 || self.inner == 0 || self.blocks.is_empty() || self.blocks.len() > MAX_LAYERS {
            return Err(format!(
                "max_len {}, inner {} and {} layers must be positive (at most {MAX_LAYERS} layers)",
                self.max_len,
                self.inner,
                self.blocks.len()
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("layer_norm_eps {} is not a positive number", self.eps));
        }
        let table = |what: &str, v: &[f32], rows: usize| -> std::result::Result<(), String> {
            if Some(v.len()) != rows.checked_mul(h) {
                return Err(format!("{what} holds {} values, expected {rows} × {h}", v.len()));
            }
            finite(what, v)
        };
        self.items.check(n_items, h)?;
        table("position table", &self.positions, self.max_len)?;
        norm_ok("norm", &self.norm, h)?;
        if let Some(p) = &self.item_proj {
            let l = &p.linear;
            if l.n_out != h || l.n_in == 0 || Some(l.weight.len()) != l.n_in.checked_mul(h) || l.bias.len() != h {
                return Err(format!(
                    "item projection: shape {}×{} (bias {}), expected {h}×width",
                    l.n_out,
                    l.n_in,
                    l.bias.len()
                ));
            }
            finite("item projection", &l.weight)?;
            finite("item projection", &l.bias)?;
        }
        for (i, b) in self.blocks.iter().enumerate() {
            for (name, l, n_in, n_out) in [
                ("attn_q", &b.q, h, h),
                ("attn_k", &b.k, h, h),
                ("attn_v", &b.v, h, h),
                ("attn_out", &b.out, h, h),
                ("ffn_up", &b.up, h, self.inner),
                ("ffn_down", &b.down, self.inner, h),
            ] {
                let what = format!("block {i} {name}");
                if l.n_in != n_in
                    || l.n_out != n_out
                    || Some(l.weight.len()) != n_in.checked_mul(n_out)
                    || l.bias.len() != n_out
                {
                    return Err(format!(
                        "{what}: shape {}×{} (bias {}), expected {n_out}×{n_in}",
                        l.n_out,
                        l.n_in,
                        l.bias.len()
                    ));
                }
                finite(&what, &l.weight)?;
                finite(&what, &l.bias)?;
            }
            norm_ok(&format!("block {i} attn_norm"), &b.attn_norm, h)?;
            norm_ok(&format!("block {i} ffn_norm"), &b.ffn_norm, h)?;
        }
        Ok(())
    }
}

fn finite(what: &str, v: &[f32]) -> std::result::Result<(), String> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(format!("{what}: value {i} is {}", v[i])),
        None => Ok(()),
    }
}

fn norm_ok(what: &str, n: &LayerNorm, h: usize) -> std::result::Result<(), String> {
    if n.weight.len() != h || n.bias.len() != h {
        return Err(format!("{what}: {} weights and {} biases, expected {h}", n.weight.len(), n.bias.len()));
    }
    finite(what, &n.weight)?;
    finite(what, &n.bias)
}

pub(crate) const PROJ_W: &str = "seq.item_proj.weight";
pub(crate) const PROJ_B: &str = "seq.item_proj.bias";

pub(crate) fn item_tensor() -> &'static str {
    "seq.item_embd"
}

pub(crate) fn tensor_names(i: usize) -> [String; 16] {
    let b = |s: &str| format!("seq.blk.{i}.{s}");
    [
        b("attn_q.weight"),
        b("attn_q.bias"),
        b("attn_k.weight"),
        b("attn_k.bias"),
        b("attn_v.weight"),
        b("attn_v.bias"),
        b("attn_out.weight"),
        b("attn_out.bias"),
        b("attn_norm.weight"),
        b("attn_norm.bias"),
        b("ffn_up.weight"),
        b("ffn_up.bias"),
        b("ffn_down.weight"),
        b("ffn_down.bias"),
        b("ffn_norm.weight"),
        b("ffn_norm.bias"),
    ]
}

/// Reads a tensor of exactly `dims` (ggml order) as f32, F32 or F16 storage.
fn read(f: &GgufFile, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
    let t = f.tensor(name).ok_or_else(|| bad_file(f, format!("tensor {name} is missing")))?;
    let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    if t.dims != want || !matches!(t.ty, TensorType::F32 | TensorType::F16) {
        return Err(bad_file(f, format!("{name}: expected F32/F16 {want:?}, found {} {:?}", t.ty.name(), t.dims)));
    }
    let bytes = f.tensor_bytes(t).ok_or_else(|| bad_file(f, format!("{name} unreadable")))?;
    let v: Vec<f32> = match t.ty {
        TensorType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
    };
    finite(name, &v).map_err(|e| bad_file(f, e))?;
    Ok(v)
}

/// The item table: F32/F16 widened, Q8_0 kept quantized (its scales checked finite).
fn read_items(f: &GgufFile, hidden: usize, n_items: usize) -> Result<ItemTable> {
    let name = item_tensor();
    let t = f.tensor(name).ok_or_else(|| bad_file(f, format!("tensor {name} is missing")))?;
    if t.ty != TensorType::Q8_0 {
        return Ok(ItemTable::F32(read(f, name, &[hidden, n_items])?));
    }
    let want = [hidden as u64, n_items as u64];
    if t.dims != want || !hidden.is_multiple_of(Q8_BLOCK) {
        return Err(bad_file(
            f,
            format!("{name}: expected Q8_0 {want:?} (hidden a multiple of 32), found {:?}", t.dims),
        ));
    }
    let bytes = f.tensor_bytes(t).ok_or_else(|| bad_file(f, format!("{name} unreadable")))?;
    let n_blocks = hidden / Q8_BLOCK * n_items;
    if bytes.len() != n_blocks * (2 + Q8_BLOCK) {
        return Err(bad_file(f, format!("{name}: {} bytes for {n_blocks} Q8_0 blocks", bytes.len())));
    }
    let mut scales = Vec::with_capacity(n_blocks);
    let mut quants = Vec::with_capacity(n_blocks * Q8_BLOCK);
    for b in bytes.chunks_exact(2 + Q8_BLOCK) {
        scales.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
        quants.extend(b[2..].iter().map(|&x| x as i8));
    }
    let table = ItemTable::Q8_0(Q8Table { scales, quants });
    table.check(n_items, hidden).map_err(|e| bad_file(f, e))?;
    Ok(table)
}

/// The pack's sequential model, if it has one; `n_items` is the catalog size, `n_embd` the base
/// model's width (an item projection's input).
pub(crate) fn read_sasrec(f: &GgufFile, n_items: usize, n_embd: usize) -> Result<Option<Sasrec>> {
    let kind = match f.get(K_KIND) {
        None => return Ok(None),
        Some(v) => v.as_str().ok_or_else(|| bad_file(f, format!("{K_KIND} is not a string")))?,
    };
    if kind != KIND_SASREC {
        return Err(bad_file(f, format!("sequential model kind {kind:?}; this build reads {KIND_SASREC:?}")));
    }
    let small = |k: &str, max: usize| -> Result<usize> {
        let v = f.req_u64(k)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v >= 1 && v <= max)
            .ok_or_else(|| bad_file(f, format!("{k} = {v} outside 1..={max}")))
    };
    let n_layers = small(K_LAYERS, MAX_LAYERS)?;
    let n_heads = small(K_HEADS, MAX_HIDDEN)?;
    let act =
        Activation::parse(f.req_str(K_ACT)?).ok_or_else(|| bad_file(f, format!("{K_ACT}: expected gelu or relu")))?;
    let eps = f.get(K_EPS).and_then(Value::as_f64).ok_or_else(|| bad_file(f, format!("{K_EPS} is missing")))? as f32;
    let source = match f.get(K_SOURCE) {
        None => ItemSource::Id,
        Some(v) => v
            .as_str()
            .and_then(ItemSource::parse)
            .ok_or_else(|| bad_file(f, format!("{K_SOURCE}: expected id or llm")))?,
    };
    // Sizes come from the tables' shapes, each checked against the file before reading.
    let dims_of = |name: &str| -> Result<Vec<u64>> {
        Ok(f.tensor(name).ok_or_else(|| bad_file(f, format!("tensor {name} is missing")))?.dims.clone())
    };
    let as_size = |v: u64| usize::try_from(v).map_err(|_| bad_file(f, "sequential model too large"));
    let pos = dims_of("seq.pos_embd")?;
    let up = dims_of(&tensor_names(0)[10])?;
    let (hidden, max_len, inner) = match (pos.as_slice(), up.as_slice()) {
        ([h, l], [_, i]) => (as_size(*h)?, as_size(*l)?, as_size(*i)?),
        _ => return Err(bad_file(f, "seq.pos_embd / ffn_up are not 2-D")),
    };
    if hidden == 0 || hidden > MAX_HIDDEN || !hidden.is_multiple_of(n_heads) {
        return Err(bad_file(f, format!("hidden size {hidden} is not a positive multiple of n_heads {n_heads}")));
    }
    let linear = |w: &str, b: &str, n_in: usize, n_out: usize| -> Result<Linear> {
        Ok(Linear { n_in, n_out, weight: read(f, w, &[n_in, n_out])?, bias: read(f, b, &[n_out])? })
    };
    let norm = |w: &str, b: &str| -> Result<LayerNorm> {
        Ok(LayerNorm { weight: read(f, w, &[hidden])?, bias: read(f, b, &[hidden])? })
    };
    let mut blocks = Vec::with_capacity(n_layers);
    for i in 0..n_layers {
        let n = tensor_names(i);
        blocks.push(SasrecBlock {
            q: linear(&n[0], &n[1], hidden, hidden)?,
            k: linear(&n[2], &n[3], hidden, hidden)?,
            v: linear(&n[4], &n[5], hidden, hidden)?,
            out: linear(&n[6], &n[7], hidden, hidden)?,
            attn_norm: norm(&n[8], &n[9])?,
            up: linear(&n[10], &n[11], hidden, inner)?,
            down: linear(&n[12], &n[13], inner, hidden)?,
            ffn_norm: norm(&n[14], &n[15])?,
        });
    }
    let item_proj = match f.tensor(PROJ_W) {
        None => None,
        Some(_) => {
            let pooling = f
                .get(K_POOLING)
                .and_then(Value::as_str)
                .and_then(ItemPooling::parse)
                .ok_or_else(|| bad_file(f, format!("{K_POOLING}: expected mean or last")))?;
            Some(ItemProjection { linear: linear(PROJ_W, PROJ_B, n_embd, hidden)?, pooling })
        }
    };
    let s = Sasrec {
        item_proj,
        n_heads,
        hidden,
        inner,
        max_len,
        act,
        eps,
        source,
        items: read_items(f, hidden, n_items)?,
        positions: read(f, "seq.pos_embd", &[hidden, max_len])?,
        norm: norm("seq.norm.weight", "seq.norm.bias")?,
        blocks,
    };
    s.validate(n_items).map_err(|e| bad_file(f, format!("sequential model: {e}")))?;
    Ok(Some(s))
}

/// The pack's fusion settings; defaults when absent.
pub(crate) fn read_fusion(f: &GgufFile, n_items: usize) -> Result<Fusion> {
    let mut fu = Fusion::default();
    if let Some(v) = f.get(K_FUSION_W) {
        let w = v.as_f64().ok_or_else(|| bad_file(f, format!("{K_FUSION_W} is not a number")))?;
        if !(0.0..=1.0).contains(&w) {
            return Err(bad_file(f, format!("{K_FUSION_W} = {w} outside [0, 1]")));
        }
        fu.llm_weight = w as f32;
    }
    if let Some(v) = f.get(K_FUSION_N) {
        let n = v.as_u64().ok_or_else(|| bad_file(f, format!("{K_FUSION_N} is not an integer")))?;
        fu.retrieve =
            u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| bad_file(f, format!("{K_FUSION_N} = {n}")))?;
    }
    fu.retrieve = fu.retrieve.min(u32::try_from(n_items).unwrap_or(u32::MAX));
    Ok(fu)
}

/// Checks fusion settings given to a writer.
#[cfg(feature = "build")]
pub(crate) fn check_fusion(fu: &Fusion) -> Result<()> {
    use crate::error::Error;
    if !(0.0..=1.0).contains(&fu.llm_weight) || fu.retrieve == 0 {
        return Err(Error::InvalidInput(format!(
            "fusion weight {} must be in [0, 1] and retrieve {} at least 1",
            fu.llm_weight, fu.retrieve
        )));
    }
    Ok(())
}
