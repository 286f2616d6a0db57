//! The fuzzer's own view of a GGUF file: a walker that records where every structural field of a
//! (valid) seed lies, and an editable document with a serializer that writes any document, also
//! inconsistent ones (a tensor whose bytes do not match its type and shape, duplicate keys) that
//! `GgufWriter` refuses. For consistent documents the serializer's bytes are `GgufWriter`'s: the
//! seeds (written by it) must re-serialize byte for byte (checked at startup), and a sample of
//! consistent mutants is written both ways and compared during the run.

use std::path::Path;

use delrec_runtime::format::gguf::{Array, GgufFile, GgufWriter, TensorData, TensorType, Value, DEFAULT_ALIGNMENT};

/// What a field of the layout holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Version,
    NTensors,
    NKv,
    KeyLen,
    ValueType,
    StrLen,
    ArrayType,
    ArrayCount,
    /// An element of a numeric array (its width is the field's).
    ArrayElem,
    Scalar,
    NameLen,
    NDims,
    Dim,
    TensorType,
    TensorOffset,
}

impl FieldKind {
    /// Counts, lengths, dimensions, offsets: what "huge" mutations target.
    pub fn is_count(self) -> bool {
        matches!(
            self,
            FieldKind::NTensors
                | FieldKind::NKv
                | FieldKind::KeyLen
                | FieldKind::StrLen
                | FieldKind::ArrayCount
                | FieldKind::NameLen
                | FieldKind::NDims
                | FieldKind::Dim
                | FieldKind::TensorOffset
                | FieldKind::Version
                | FieldKind::ValueType
                | FieldKind::ArrayType
                | FieldKind::TensorType
        )
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub at: usize,
    pub width: usize,
    pub kind: FieldKind,
}

/// Where things are in a seed file.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub fields: Vec<Field>,
    /// End of the last tensor info (the metadata ends here; padding follows).
    pub meta_end: usize,
    /// Byte range of each tensor's data.
    pub tensors: Vec<(usize, usize)>,
    pub len: usize,
    /// Every position where one structure ends and the next begins (each field, each KV entry,
    /// each tensor info, the data section, each tensor's data), sorted, unique; without the
    /// boundaries between the elements of arrays, which are in `element_boundaries`.
    pub boundaries: Vec<usize>,
    pub element_boundaries: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    /// The ggml type id as stored (any u32, known to us or not).
    pub ty: u32,
    pub data: Vec<u8>,
}

/// An editable GGUF document.
#[derive(Clone, Debug)]
pub struct Doc {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<Tensor>,
}

/// Bytes of a tensor of this type and shape, when the type's block size is known.
pub fn tensor_size(ty: u32, dims: &[u64]) -> Option<u64> {
    let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    TensorType::from_id(ty).size_of(*dims.first()?, n)
}

struct Walk<'a> {
    b: &'a [u8],
    pos: usize,
    fields: Vec<Field>,
    bounds: Vec<usize>,
    element_bounds: Vec<usize>,
    in_array: bool,
}

impl Walk<'_> {
    fn take(&mut self, n: usize, kind: Option<FieldKind>) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("seed truncated")?;
        if let Some(kind) = kind {
            self.fields.push(Field { at: self.pos, width: n, kind });
        }
        if self.in_array {
            self.element_bounds.push(self.pos);
        } else {
            self.bounds.push(self.pos);
        }
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self, kind: FieldKind) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, Some(kind))?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, kind: FieldKind) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, Some(kind))?.try_into().expect("8 bytes")))
    }

    fn string(&mut self, kind: FieldKind) -> Result<String, String> {
        let n = usize::try_from(self.u64(kind)?).map_err(|e| e.to_string())?;
        let s = self.take(n, None)?;
        String::from_utf8(s.to_vec()).map_err(|_| "seed string is not UTF-8".to_string())
    }

    fn scalar(&mut self, ty: u32, kind: FieldKind) -> Result<Value, String> {
        let k = Some(kind);
        Ok(match ty {
            0 => Value::U8(self.take(1, k)?[0]),
            1 => Value::I8(self.take(1, k)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, k)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(self.take(2, k)?.try_into().expect("2"))),
            4 => Value::U32(u32::from_le_bytes(self.take(4, k)?.try_into().expect("4"))),
            5 => Value::I32(i32::from_le_bytes(self.take(4, k)?.try_into().expect("4"))),
            6 => Value::F32(f32::from_le_bytes(self.take(4, k)?.try_into().expect("4"))),
            7 => Value::Bool(self.take(1, k)?[0] != 0),
            8 => Value::Str(self.string(FieldKind::StrLen)?),
            10 => Value::U64(u64::from_le_bytes(self.take(8, k)?.try_into().expect("8"))),
            11 => Value::I64(i64::from_le_bytes(self.take(8, k)?.try_into().expect("8"))),
            12 => Value::F64(f64::from_le_bytes(self.take(8, k)?.try_into().expect("8"))),
            t => return Err(format!("seed value type {t}")),
        })
    }

    fn value(&mut self, ty: u32) -> Result<Value, String> {
        if ty != 9 {
            return self.scalar(ty, FieldKind::Scalar);
        }
        let ety = self.u32(FieldKind::ArrayType)?;
        let n = self.u64(FieldKind::ArrayCount)?;
        let mut vals = Vec::new();
        for i in 0..n {
            // The first element's start is the array's own boundary; the others are elements'.
            self.in_array = i > 0;
            let v = self.scalar(ety, FieldKind::ArrayElem);
            self.in_array = false;
            vals.push(v?);
        }
        macro_rules! collect {
            ($variant:ident) => {
                Array::$variant(
                    vals.into_iter().map(|v| if let Value::$variant(x) = v { x } else { unreachable!() }).collect(),
                )
            };
        }
        Ok(Value::Array(match ety {
            0 => collect!(U8),
            1 => collect!(I8),
            2 => collect!(U16),
            3 => collect!(I16),
            4 => collect!(U32),
            5 => collect!(I32),
            6 => collect!(F32),
            7 => collect!(Bool),
            8 => collect!(Str),
            10 => collect!(U64),
            11 => collect!(I64),
            12 => collect!(F64),
            t => return Err(format!("seed array type {t}")),
        }))
    }
}

fn alignment_of(kv: &[(String, Value)]) -> u64 {
    match kv.iter().find(|(k, _)| k == "general.alignment") {
        // The writer's rule (a power of two), bounded so a hostile value cannot make us pad
        // gigabytes: past the reader's own bound (1 MiB) the file is refused either way.
        Some((_, v)) => v.as_u64().filter(|a| a.is_power_of_two() && *a <= 1 << 20).unwrap_or(DEFAULT_ALIGNMENT),
        None => DEFAULT_ALIGNMENT,
    }
}

/// Walks a valid seed: its document and its layout.
pub fn parse(b: &[u8]) -> Result<(Doc, Layout), String> {
    let mut w = Walk { b, pos: 0, fields: vec![], bounds: vec![], element_bounds: vec![], in_array: false };
    if w.take(4, None)? != b"GGUF" {
        return Err("seed has no GGUF magic".into());
    }
    let version = w.u32(FieldKind::Version)?;
    let n_tensors = w.u64(FieldKind::NTensors)?;
    let n_kv = w.u64(FieldKind::NKv)?;
    let mut kv = Vec::new();
    for _ in 0..n_kv {
        let key = w.string(FieldKind::KeyLen)?;
        let ty = w.u32(FieldKind::ValueType)?;
        kv.push((key, w.value(ty)?));
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = w.string(FieldKind::NameLen)?;
        let nd = w.u32(FieldKind::NDims)?;
        let dims = (0..nd).map(|_| w.u64(FieldKind::Dim)).collect::<Result<Vec<_>, _>>()?;
        let ty = w.u32(FieldKind::TensorType)?;
        let rel = w.u64(FieldKind::TensorOffset)?;
        infos.push((name, dims, ty, rel));
    }
    let meta_end = w.pos;
    let align = alignment_of(&kv);
    let data_start = (meta_end as u64).div_ceil(align) * align;
    let mut bounds = std::mem::take(&mut w.bounds);
    bounds.extend([meta_end, data_start as usize, b.len()]);
    let mut tensors = Vec::new();
    let mut ranges = Vec::new();
    for (name, dims, ty, rel) in infos {
        let size = tensor_size(ty, &dims).ok_or_else(|| format!("seed tensor {name}: unknown size"))?;
        let start = (data_start + rel) as usize;
        let end = start + size as usize;
        let data = b.get(start..end).ok_or_else(|| format!("seed tensor {name} outside the file"))?.to_vec();
        ranges.push((start, end));
        bounds.extend([start, end]);
        tensors.push(Tensor { name, dims, ty, data });
    }
    bounds.sort_unstable();
    bounds.dedup();
    bounds.retain(|&x| x < b.len());
    let mut element_boundaries = std::mem::take(&mut w.element_bounds);
    element_boundaries.retain(|x| bounds.binary_search(x).is_err());
    let layout =
        Layout { element_boundaries, fields: w.fields, meta_end, tensors: ranges, len: b.len(), boundaries: bounds };
    Ok((Doc { version, kv, tensors }, layout))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_payload(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => {
            macro_rules! arr {
                ($v:expr, $ty:expr, $wrap:expr) => {{
                    out.extend_from_slice(&($ty as u32).to_le_bytes());
                    out.extend_from_slice(&($v.len() as u64).to_le_bytes());
                    for x in $v.iter() {
                        put_payload(out, &$wrap(x.clone()));
                    }
                }};
            }
            match a {
                Array::U8(v) => arr!(v, 0, Value::U8),
                Array::I8(v) => arr!(v, 1, Value::I8),
                Array::U16(v) => arr!(v, 2, Value::U16),
                Array::I16(v) => arr!(v, 3, Value::I16),
                Array::U32(v) => arr!(v, 4, Value::U32),
                Array::I32(v) => arr!(v, 5, Value::I32),
                Array::F32(v) => arr!(v, 6, Value::F32),
                Array::Bool(v) => arr!(v, 7, Value::Bool),
                Array::Str(v) => arr!(v, 8, Value::Str),
                Array::U64(v) => arr!(v, 10, Value::U64),
                Array::I64(v) => arr!(v, 11, Value::I64),
                Array::F64(v) => arr!(v, 12, Value::F64),
            }
        }
    }
}

impl Doc {
    /// The file bytes: `GgufWriter`'s layout, whatever the document says.
    pub fn serialize(&self) -> Vec<u8> {
        let align = alignment_of(&self.kv);
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            put_payload(&mut out, v);
        }
        let mut rel = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&rel.to_le_bytes());
            offsets.push(rel);
            rel = (rel + t.data.len() as u64).div_ceil(align) * align;
        }
        let data_start = (out.len() as u64).div_ceil(align) * align;
        out.resize(data_start as usize, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// Whether `GgufWriter` can express this document: unique keys and tensor names, known
    /// types, 1..=4 dimensions, bytes matching type and shape, a small alignment.
    pub fn writer_can_express(&self) -> bool {
        let mut keys: Vec<&str> = self.kv.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        let unique_keys = keys.windows(2).all(|w| w[0] != w[1]);
        let mut names: Vec<&str> = self.tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        let unique_names = names.windows(2).all(|w| w[0] != w[1]);
        let aligned = match self.kv.iter().find(|(k, _)| k == "general.alignment") {
            None => true,
            Some((_, v)) => v.as_u64().is_some_and(|a| a.is_power_of_two() && a <= 1 << 16),
        };
        unique_keys
            && unique_names
            && aligned
            && self.version == 3
            && self
                .tensors
                .iter()
                .all(|t| (1..=4).contains(&t.dims.len()) && tensor_size(t.ty, &t.dims) == Some(t.data.len() as u64))
    }

    /// Writes the document with `GgufWriter` (only for [`Doc::writer_can_express`] documents).
    pub fn write_with_writer(&self, path: &Path) -> Result<(), String> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.kv {
            w.set(k, v.clone());
        }
        for t in &self.tensors {
            w.add_tensor(&t.name, &t.dims, TensorType::from_id(t.ty), TensorData::Owned(t.data.clone()))
                .map_err(|e| e.to_string())?;
        }
        w.write_atomic(path, &mut |_, _| {}).map_err(|e| e.to_string())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.kv.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn set(&mut self, key: &str, v: Value) {
        match self.get_mut(key) {
            Some(slot) => *slot = v,
            None => self.kv.push((key.to_string(), v)),
        }
    }

    pub fn remove(&mut self, key: &str) -> bool {
        let n = self.kv.len();
        self.kv.retain(|(k, _)| k != key);
        self.kv.len() != n
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.tensors.iter_mut().find(|t| t.name == name)
    }
}

/// The startup check of one seed: the walker agrees with `GgufFile` and the serializer
/// reproduces the file byte for byte.
pub fn check_seed(path: &Path, bytes: &[u8], doc: &Doc, layout: &Layout) -> Result<(), String> {
    let f = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if doc.serialize() != bytes {
        return Err(format!("{}: the fuzzer's serializer does not reproduce the file", path.display()));
    }
    if f.kv().len() != doc.kv.len() || doc.kv.iter().any(|(k, v)| f.get(k) != Some(v)) {
        return Err(format!("{}: the walker's metadata differs from GgufFile's", path.display()));
    }
    if f.tensors().len() != doc.tensors.len() {
        return Err(format!("{}: the walker's tensor count differs from GgufFile's", path.display()));
    }
    for ((t, d), (start, end)) in f.tensors().iter().zip(&doc.tensors).zip(&layout.tensors) {
        if t.name != d.name || t.dims != d.dims || t.ty.id() != d.ty || t.offset as usize != *start {
            return Err(format!("{}: tensor {} differs between the walker and GgufFile", path.display(), t.name));
        }
        if f.tensor_bytes(t).map(<[u8]>::len) != Some(end - start) {
            return Err(format!("{}: tensor {} has another size in GgufFile", path.display(), t.name));
        }
    }
    Ok(())
}
