//! The GGUF writer (feature `build`): what the converter uses for models and packs. It writes to
//! a temp file beside the target and renames, so a failure leaves no partial output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{Array, TensorType, Value, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, VERSION};
use crate::error::{Error, Result};

/// Tensor payload for the writer.
pub enum TensorData {
    Owned(Vec<u8>),
    /// A byte range of a file, streamed at write time (keeps big models out of memory).
    FileRange {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl TensorData {
    fn len(&self) -> u64 {
        match self {
            TensorData::Owned(v) => v.len() as u64,
            TensorData::FileRange { len, .. } => *len,
        }
    }
}

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: TensorType,
    data: TensorData,
}

/// Builds a GGUF file in memory (metadata) and streams tensor data on write.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a key, replacing an earlier value (keys keep their first insertion order).
    pub fn set(&mut self, key: &str, value: Value) {
        if let Some(slot) = self.kv.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.kv.push((key.to_string(), value));
        }
    }

    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Adds a tensor; `dims` in ggml order (`dims[0]` contiguous). Checks the byte size.
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ty: TensorType, data: TensorData) -> Result<()> {
        let bad = |reason: String| Error::InvalidInput(format!("tensor {name:?}: {reason}"));
        if dims.is_empty() || dims.len() > MAX_DIMS as usize {
            return Err(bad(format!("{} dimensions", dims.len())));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("added twice".into()));
        }
        let n_el =
            dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("dimensions overflow".into()))?;
        let want = ty.size_of(dims[0], n_el).ok_or_else(|| bad(format!("size unknown for {}", ty.name())))?;
        if want != data.len() {
            return Err(bad(format!("{} bytes given, {} expected for {:?} {}", data.len(), want, dims, ty.name())));
        }
        self.tensors.push(PendingTensor { name: name.to_string(), dims: dims.to_vec(), ty, data });
        Ok(())
    }

    /// Writes the file atomically: a temp file beside `path`, fsync, then rename.
    /// `progress` is called with (bytes written, total tensor bytes).
    pub fn write_atomic(&self, path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
            self.write_to(&mut w, progress).map_err(|e| match e {
                Error::Io { source, .. } => Error::io(path, source),
                other => other,
            })?;
            w.flush().map_err(|e| Error::io(path, e))?;
        }
        tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
        // Temp files are created 0600; outputs are ordinary shareable files.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let perms = std::fs::Permissions::from_mode(0o644);
            tmp.as_file().set_permissions(perms).map_err(|e| Error::io(path, e))?;
        }
        tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
        Ok(())
    }

    fn write_to(&self, w: &mut dyn Write, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let io = |e: std::io::Error| Error::io(Path::new("<gguf>"), e);
        let alignment = match self.kv.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, v)) => v.as_u64().filter(|a| a.is_power_of_two()).unwrap_or(DEFAULT_ALIGNMENT),
            None => DEFAULT_ALIGNMENT,
        };
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut head, k);
            put_value(&mut head, v);
        }
        let mut rel = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&rel.to_le_bytes());
            offsets.push(rel);
            rel = (rel + t.data.len()).div_ceil(alignment) * alignment;
        }
        let pad = (head.len() as u64).div_ceil(alignment) * alignment - head.len() as u64;
        head.resize(head.len() + pad as usize, 0);
        w.write_all(&head).map_err(io)?;
        let total: u64 = self.tensors.iter().map(|t| t.data.len()).sum();
        let mut done = 0u64;
        let mut pos = 0u64;
        for (t, off) in self.tensors.iter().zip(offsets) {
            w.write_all(&vec![0u8; (off - pos) as usize]).map_err(io)?;
            match &t.data {
                TensorData::Owned(v) => w.write_all(v).map_err(io)?,
                TensorData::FileRange { path, offset, len } => {
                    use std::io::{Read, Seek, SeekFrom};
                    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
                    f.seek(SeekFrom::Start(*offset)).map_err(|e| Error::io(path, e))?;
                    let copied = std::io::copy(&mut f.take(*len), w).map_err(|e| Error::io(path, e))?;
                    if copied != *len {
                        return Err(Error::InvalidFile {
                            path: path.clone(),
                            reason: "truncated while copying a tensor".into(),
                        });
                    }
                }
            }
            pos = off + t.data.len();
            done += t.data.len();
            progress(done, total);
        }
        Ok(())
    }
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

fn put_value(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(&value_type(v).to_le_bytes());
    put_payload(out, v);
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

/// Little-endian bytes of a slice of plain numbers, for `TensorData::Owned`.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
