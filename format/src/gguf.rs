//! A small GGUF (v3) reader (and, with the `build` feature, a writer).
//!
//! The reader memory-maps the file and hands out zero-copy views of tensor data; every count,
//! length and offset read from the file is checked against the file size before it is used, so a
//! truncated or hostile file is an error, never a panic or an out-of-bounds read. The writer
//! ([`write`]) is what the converter uses for models and packs.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

pub(crate) const MAGIC: &[u8; 4] = b"GGUF";
#[cfg(feature = "build")]
pub(crate) const VERSION: u32 = 3;
/// Default data alignment of GGUF files (`general.alignment` overrides it).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Hostile-file limits: far above anything real, small enough to stop absurd allocations.
pub(crate) const MAX_DIMS: u32 = 4;
const MAX_STRING: u64 = 1 << 30;

/// ggml tensor types this project reads or writes (the ids are ggml's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    I8,
    I16,
    I32,
    BF16,
    /// Any other ggml type: its id. Block sizes are unknown to us, so its bytes cannot be sized.
    Other(u32),
}

impl TensorType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::I8 => 24,
            Self::I16 => 25,
            Self::I32 => 26,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// (elements per block, bytes per block), when known.
    pub fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            Self::F32 | Self::I32 => (1, 4),
            Self::F16 | Self::BF16 | Self::I16 => (1, 2),
            Self::I8 => (1, 1),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Other(_) => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Q4K => "Q4_K".into(),
            Self::Q5K => "Q5_K".into(),
            Self::Q6K => "Q6_K".into(),
            Self::I8 => "I8".into(),
            Self::I16 => "I16".into(),
            Self::I32 => "I32".into(),
            Self::BF16 => "BF16".into(),
            Self::Other(id) => format!("type{id}"),
        }
    }

    /// Bytes of a tensor with `n_elements` whose rows are `ne0` long.
    pub fn size_of(self, ne0: u64, n_elements: u64) -> Option<u64> {
        let (bs, bb) = self.block()?;
        if !ne0.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(bb)
    }
}

/// A GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Array),
}

/// A GGUF metadata array (homogeneous). Nested arrays are not used by this project and rejected.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Value {
    /// Any unsigned or non-negative integer value as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(v as i64),
            Value::U16(v) => Some(v as i64),
            Value::U32(v) => Some(v as i64),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str_array(&self) -> Option<&[String]> {
        match self {
            Value::Array(Array::Str(v)) => Some(v),
            _ => None,
        }
    }

    /// A short human-readable rendering (arrays summarized), for `inspect`.
    pub fn summary(&self) -> String {
        fn clip(s: &str) -> String {
            let mut out: String = s.chars().take(60).collect();
            if s.chars().count() > 60 {
                out.push('…');
            }
            format!("{out:?}")
        }
        match self {
            Value::Str(s) => clip(s),
            Value::Array(a) => {
                let first = match a {
                    Array::Str(v) => v.iter().take(3).map(|s| clip(s)).collect::<Vec<_>>(),
                    Array::I32(v) => v.iter().take(5).map(|x| x.to_string()).collect(),
                    Array::U32(v) => v.iter().take(5).map(|x| x.to_string()).collect(),
                    Array::F32(v) => v.iter().take(5).map(|x| x.to_string()).collect(),
                    Array::U8(v) => v.iter().take(5).map(|x| x.to_string()).collect(),
                    Array::I8(v) => v.iter().take(5).map(|x| x.to_string()).collect(),
                    _ => vec![],
                };
                format!("[{} items: {}{}]", a.len(), first.join(", "), if a.len() > first.len() { ", …" } else { "" })
            }
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
        }
    }
}

/// Where one tensor lives in a GGUF file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte size, when the type's block size is known.
    pub size: Option<u64>,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A memory-mapped GGUF file (or a GGUF inside a larger file, e.g. an APK asset).
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// Where the GGUF starts in `map` (a range's offset rounded down to a page).
    skew: usize,
    version: u32,
    kv: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn bad(&self, what: impl Into<String>) -> Error {
        Error::InvalidFile { path: self.path.to_path_buf(), reason: format!("{} (at byte {})", what.into(), self.pos) }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let n_usize = usize::try_from(n).map_err(|_| self.bad("length overflows"))?;
        let end = self.pos.checked_add(n_usize).ok_or_else(|| self.bad("length overflows"))?;
        if end > self.buf.len() {
            return Err(self.bad(format!("truncated: needs {n} more bytes, file has {}", self.buf.len() - self.pos)));
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(self.bad(format!("string length {n} is absurd")));
        }
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad("string is not UTF-8"))
    }

    /// Checks that `count` elements of at least `min_size` bytes can still be in the file.
    fn check_count(&self, count: u64, min_size: u64) -> Result<usize> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if count.checked_mul(min_size).is_none_or(|need| need > remaining) {
            return Err(self.bad(format!("count {count} cannot fit in the {remaining} bytes left")));
        }
        usize::try_from(count).map_err(|_| self.bad("count overflows"))
    }

    fn scalar(&mut self, ty: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.bad(format!("bool byte {b}"))),
            },
            8 => Value::Str(self.string()?),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            9 => return Err(self.bad("nested arrays are not supported")),
            t => return Err(self.bad(format!("unknown value type {t}"))),
        })
    }

    fn value(&mut self, ty: u32) -> Result<Value> {
        if ty != 9 {
            return self.scalar(ty);
        }
        let ety = self.u32()?;
        let count = self.u64()?;
        let min = match ety {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => return Err(self.bad("nested arrays are not supported")),
            t => return Err(self.bad(format!("unknown array element type {t}"))),
        };
        let n = self.check_count(count, min)?;
        macro_rules! read_vec {
            ($variant:ident, $scalar:ident) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    match self.scalar(ety)? {
                        Value::$scalar(x) => v.push(x),
                        _ => unreachable!("scalar() returns the variant of its type id"),
                    }
                }
                Array::$variant(v)
            }};
        }
        let arr = match ety {
            0 => read_vec!(U8, U8),
            1 => read_vec!(I8, I8),
            2 => read_vec!(U16, U16),
            3 => read_vec!(I16, I16),
            4 => read_vec!(U32, U32),
            5 => read_vec!(I32, I32),
            6 => read_vec!(F32, F32),
            7 => read_vec!(Bool, Bool),
            8 => read_vec!(Str, Str),
            10 => read_vec!(U64, U64),
            11 => read_vec!(I64, I64),
            _ => read_vec!(F64, F64),
        };
        Ok(Value::Array(arr))
    }
}

impl GgufFile {
    /// Maps and parses a GGUF file; checks every tensor lies inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Self::from_file(&file, path)
    }

    /// Maps and parses an open file (`path` names it in errors). Parsing the descriptor that is
    /// then handed on (to llama.cpp) means the bytes checked are the bytes loaded, even if the
    /// path is replaced in between.
    pub fn from_file(file: &File, path: &Path) -> Result<Self> {
        // SAFETY: the map is read-only; files we map are not expected to change while open (the
        // converter replaces files by rename, which leaves existing maps intact).
        let map = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, map, 0)
    }

    /// Maps and parses the `len` bytes at `offset` of an open file, a GGUF stored inside a larger
    /// one (an uncompressed APK asset): offsets inside it count from its first byte. A range
    /// past the end of the file is an error.
    pub fn from_file_range(file: &File, path: &Path, offset: u64, len: u64) -> Result<Self> {
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("{len} bytes at offset {offset} run past the end of the file ({size} bytes)"),
            });
        }
        // mmap offsets must be page multiples: map from the page below and skip the difference.
        let page = 1u64 << 16; // a multiple of every page size in use (4, 16, 64 KiB)
        let start = offset - offset % page;
        let skew =
            usize::try_from(offset - start).map_err(|_| Error::io(path, std::io::ErrorKind::InvalidInput.into()))?;
        let total = usize::try_from(len + (offset - start))
            .map_err(|_| Error::io(path, std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: as in `from_file`; the range lies inside the file (checked above).
        let map = unsafe { memmap2::MmapOptions::new().offset(start).len(total).map(file) }
            .map_err(|e| Error::io(path, e))?;
        Self::parse(path, map, skew)
    }

    fn parse(path: &Path, map: Mmap, skew: usize) -> Result<Self> {
        let buf = map.get(skew..).unwrap_or_default();
        let mut c = Cursor { buf, pos: 0, path };
        let magic = c.take(4)?;
        if magic != MAGIC {
            return Err(c.bad("not a GGUF file (bad magic)"));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(c.bad(format!("unsupported GGUF version {version}")));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        // Each KV needs at least 8 (key len) + 4 (type) + 1 bytes; each tensor info at least 8+4+4+8.
        let n_kv = c.check_count(n_kv, 13)?;
        let mut kv = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty)?;
            if kv.insert(key.clone(), value).is_some() {
                return Err(c.bad(format!("duplicate key {key:?}")));
            }
        }
        let n_tensors = c.check_count(n_tensors, 24)?;
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.bad(format!("tensor {name:?} has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64()?);
            }
            let ty = TensorType::from_id(c.u32()?);
            let rel = c.u64()?;
            infos.push((name, dims, ty, rel));
        }
        let alignment = match kv.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(c.bad("general.alignment is not a power of two")),
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = BTreeMap::new();
        for (name, dims, ty, rel) in infos {
            let n_el = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let n_el = n_el.ok_or_else(|| c.bad(format!("tensor {name:?}: dimensions overflow")))?;
            if rel % alignment != 0 {
                return Err(c.bad(format!("tensor {name:?}: offset {rel} is not aligned to {alignment}")));
            }
            let offset = data_start.checked_add(rel).ok_or_else(|| c.bad("offset overflows"))?;
            let size = ty.size_of(dims[0], n_el);
            if ty.block().is_some() && size.is_none() {
                return Err(c.bad(format!(
                    "tensor {name:?}: row length {} does not fit {} blocks",
                    dims[0],
                    ty.name()
                )));
            }
            if let Some(size) = size {
                if offset.checked_add(size).is_none_or(|end| end > file_len) {
                    return Err(c.bad(format!("tensor {name:?} ends past the end of the file (truncated?)")));
                }
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(c.bad(format!("duplicate tensor {name:?}")));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }
        Ok(Self { path: path.to_path_buf(), map, skew, version, kv, tensors, by_name })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    pub fn kv(&self) -> &BTreeMap<String, Value> {
        &self.kv
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.get(key)
    }

    /// Moves a value out (a reader that keeps a large array need not copy it).
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.kv.remove(key)
    }

    /// Moves a string array out; `Ok(None)` when the key is absent.
    pub fn take_str_array(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        match self.kv.remove(key) {
            None => Ok(None),
            Some(Value::Array(Array::Str(v))) => Ok(Some(v)),
            Some(_) => Err(self.missing(key, "a string array")),
        }
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (zero-copy); `None` for types whose size is unknown.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Option<&[u8]> {
        let size = info.size?;
        let start = usize::try_from(info.offset).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        self.bytes().get(start..end)
    }

    /// The whole GGUF (the mapped file, or the range of it).
    pub fn bytes(&self) -> &[u8] {
        self.map.get(self.skew..).unwrap_or_default()
    }

    pub(crate) fn missing(&self, key: &str, want: &str) -> Error {
        Error::InvalidFile { path: self.path.clone(), reason: format!("metadata key {key:?} is missing or not {want}") }
    }

    pub fn req_str(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| self.missing(key, "a string"))
    }

    pub fn req_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| self.missing(key, "an unsigned integer"))
    }

    pub fn req_str_array(&self, key: &str) -> Result<&[String]> {
        self.get(key).and_then(Value::as_str_array).ok_or_else(|| self.missing(key, "a string array"))
    }
}

#[cfg(feature = "build")]
mod write;
#[cfg(feature = "build")]
pub use write::{f32_bytes, i32_bytes, GgufWriter, TensorData};

// The tests write what they read (the dev-dependency turns `build` on).
#[cfg(test)]
#[cfg(feature = "build")]
mod tests {
    use super::*;

    fn sample(path: &Path) {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str("test".into()));
        w.set("a.u32", Value::U32(7));
        w.set("a.strs", Value::Array(Array::Str(vec!["x".into(), "héllo".into()])));
        w.set("a.f32s", Value::Array(Array::F32(vec![1.5, -2.0])));
        w.add_tensor("t.f32", &[3, 2], TensorType::F32, TensorData::Owned(f32_bytes(&[1., 2., 3., 4., 5., 6.])))
            .unwrap();
        w.add_tensor("t.i32", &[5], TensorType::I32, TensorData::Owned(i32_bytes(&[9, 8, 7, 6, 5]))).unwrap();
        w.write_atomic(path, &mut |_, _| {}).unwrap();
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        sample(&p);
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.req_str("general.architecture").unwrap(), "test");
        assert_eq!(f.req_u64("a.u32").unwrap(), 7);
        assert_eq!(f.req_str_array("a.strs").unwrap(), &["x".to_string(), "héllo".to_string()]);
        assert_eq!(f.get("a.f32s"), Some(&Value::Array(Array::F32(vec![1.5, -2.0]))));
        let t = f.tensor("t.i32").unwrap();
        assert_eq!(t.dims, vec![5]);
        assert_eq!(f.tensor_bytes(t).unwrap(), &i32_bytes(&[9, 8, 7, 6, 5])[..]);
        let t = f.tensor("t.f32").unwrap();
        assert_eq!(t.offset % DEFAULT_ALIGNMENT, 0);
        assert_eq!(f.tensor_bytes(t).unwrap(), &f32_bytes(&[1., 2., 3., 4., 5., 6.])[..]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        sample(&p);
        let full = std::fs::read(&p).unwrap();
        for cut in 0..full.len() {
            let q = dir.path().join("cut.gguf");
            std::fs::write(&q, &full[..cut]).unwrap();
            assert!(GgufFile::open(&q).is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn hostile_counts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("h.gguf");
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&q, &b).unwrap();
        assert!(matches!(GgufFile::open(&q), Err(Error::InvalidFile { .. })));
        // A string claiming 2^40 bytes.
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&q, &b).unwrap();
        assert!(matches!(GgufFile::open(&q), Err(Error::InvalidFile { .. })));
    }

    #[test]
    fn writer_rejects_wrong_sizes() {
        let mut w = GgufWriter::new();
        let e = w.add_tensor("t", &[4], TensorType::F32, TensorData::Owned(vec![0; 12]));
        assert!(matches!(e, Err(Error::InvalidInput(_))));
    }
}
