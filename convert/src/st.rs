//! Memory-mapped safetensors reading, single-file or sharded.
//!
//! The header length and every tensor's data range are checked against the file size before the
//! `safetensors` crate sees the bytes, so a truncated download is reported as such (with the file
//! and tensor) instead of as a generic parse error or, worse, a short read later on.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{read_json, ConvertError, Result};

/// Largest header we accept (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// Element types the converter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Dtype::F32),
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            _ => None,
        }
    }
}

/// Size in bytes of one element of a safetensors dtype name, for range checks.
fn any_dtype_size(s: &str) -> Option<u64> {
    Some(match s {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// One mapped file.
pub struct StFile {
    pub path: PathBuf,
    map: Mmap,
}

/// A tensor in a mapped file.
#[derive(Clone)]
pub struct StTensor {
    pub name: String,
    /// The dtype as written in the file (`F32`, `I64`, ...).
    pub dtype_name: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub offset: u64,
    pub len: u64,
    file: Arc<StFile>,
}

impl StTensor {
    pub fn dtype(&self) -> Option<Dtype> {
        Dtype::parse(&self.dtype_name)
    }

    /// The dtype, or `DtypeUnsupported`.
    pub fn float_dtype(&self) -> Result<Dtype> {
        self.dtype()
            .ok_or_else(|| ConvertError::DtypeUnsupported { name: self.name.clone(), dtype: self.dtype_name.clone() })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn bytes(&self) -> &[u8] {
        // Ranges were checked against the map length when the file was opened.
        &self.file.map[self.offset as usize..(self.offset + self.len) as usize]
    }

    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// All values as f32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        Ok(decode_f32(self.bytes(), self.float_dtype()?))
    }
}

/// Decodes little-endian floats of `dt` to f32.
pub fn decode_f32(bytes: &[u8], dt: Dtype) -> Vec<f32> {
    match dt {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    }
}

impl StFile {
    /// Maps a safetensors file and lists its tensors, checking every range against the file size.
    pub fn open(path: &Path) -> Result<(Arc<StFile>, Vec<StTensor>)> {
        let file = File::open(path).map_err(|e| ConvertError::io(path, e))?;
        let size = file.metadata().map_err(|e| ConvertError::io(path, e))?.len();
        let trunc = |reason: String| ConvertError::TruncatedSafetensors { path: path.to_path_buf(), reason };
        let invalid = |reason: String| ConvertError::InvalidSafetensors { path: path.to_path_buf(), reason };
        if size < 8 {
            return Err(trunc(format!("{size} bytes, not even the 8-byte header length")));
        }
        // SAFETY: read-only map of a file we do not modify; inputs are not expected to change while
        // the converter runs.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ConvertError::io(path, e))?;
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(&map[..8]);
        let n = u64::from_le_bytes(n8);
        if n > MAX_HEADER {
            return Err(invalid(format!("header length {n} is absurd")));
        }
        if 8 + n > size {
            return Err(trunc(format!(
                "the header claims {n} bytes but the file has only {} after the length",
                size - 8
            )));
        }
        let header: serde_json::Value = serde_json::from_slice(&map[8..(8 + n) as usize])
            .map_err(|e| invalid(format!("header is not JSON: {e}")))?;
        let obj = header.as_object().ok_or_else(|| invalid("header is not a JSON object".into()))?;
        let data_start = 8 + n;
        let data_len = size - data_start;
        let mut raw = Vec::with_capacity(obj.len());
        for (name, info) in obj {
            if name == "__metadata__" {
                continue;
            }
            let bad = |what: &str| invalid(format!("tensor {name:?}: {what}"));
            let dtype = info.get("dtype").and_then(|v| v.as_str()).ok_or_else(|| bad("no dtype"))?;
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("shape is not a list of sizes"))?;
            let offs = info.get("data_offsets").and_then(|v| v.as_array()).ok_or_else(|| bad("no data_offsets"))?;
            let (b, e) = match (offs.first().and_then(|v| v.as_u64()), offs.get(1).and_then(|v| v.as_u64())) {
                (Some(b), Some(e)) if offs.len() == 2 && b <= e => (b, e),
                _ => return Err(bad("data_offsets is not [begin, end]")),
            };
            if e > data_len {
                return Err(trunc(format!(
                    "tensor {name:?} needs bytes up to {e} of the data section, which holds only {data_len}"
                )));
            }
            let n_el = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            if let (Some(es), Some(n_el)) = (any_dtype_size(dtype), n_el) {
                if n_el.checked_mul(es) != Some(e - b) {
                    return Err(bad(&format!("{} bytes for {shape:?} {dtype}", e - b)));
                }
            }
            raw.push((name.clone(), dtype.to_string(), shape, data_start + b, e - b));
        }
        // The crate checks what we do not: overlapping or non-contiguous ranges, header padding.
        if let Err(e) = safetensors::SafeTensors::deserialize(&map) {
            return Err(invalid(e.to_string()));
        }
        let f = Arc::new(StFile { path: path.to_path_buf(), map });
        let tensors = raw
            .into_iter()
            .map(|(name, dtype_name, shape, offset, len)| StTensor {
                name,
                dtype_name,
                shape,
                offset,
                len,
                file: f.clone(),
            })
            .collect();
        Ok((f, tensors))
    }
}

/// All tensors of a checkpoint, by name.
pub struct StSet {
    pub tensors: BTreeMap<String, StTensor>,
    /// What to call the source in messages (a file or a directory).
    pub desc: String,
}

impl StSet {
    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let (_, list) = StFile::open(path)?;
        let tensors = list.into_iter().map(|t| (t.name.clone(), t)).collect();
        Ok(StSet { tensors, desc: path.display().to_string() })
    }

    /// Opens `model.safetensors` or the shards listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Self::open_file(&single);
        }
        let index = dir.join("model.safetensors.index.json");
        if !index.is_file() {
            return Err(ConvertError::MissingWeights { dir: dir.to_path_buf() });
        }
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|v| v.as_object())
            .ok_or_else(|| ConvertError::json(&index, "no weight_map object"))?;
        let mut files: BTreeMap<String, BTreeMap<String, StTensor>> = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| ConvertError::json(&index, format!("weight_map[{name:?}] is not a file name")))?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(ConvertError::json(
                    &index,
                    format!("weight_map[{name:?}] = {file:?} leaves the directory"),
                ));
            }
            if !files.contains_key(file) {
                let (_, list) = StFile::open(&dir.join(file))?;
                files.insert(file.to_string(), list.into_iter().map(|t| (t.name.clone(), t)).collect());
            }
            let t = files[file].get(name).ok_or_else(|| ConvertError::MissingTensor {
                name: name.clone(),
                source_desc: format!("{} (the index says it is there)", dir.join(file).display()),
            })?;
            tensors.insert(name.clone(), t.clone());
        }
        // Tensors present in a shard but absent from the index are still part of the checkpoint.
        for (file, list) in &files {
            for (name, t) in list {
                match tensors.get(name) {
                    None => {
                        tensors.insert(name.clone(), t.clone());
                    }
                    Some(prev) if prev.path() != t.path() => {
                        return Err(ConvertError::InvalidSafetensors {
                            path: dir.join(file),
                            reason: format!("tensor {name:?} is also in {}", prev.path().display()),
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(StSet { tensors, desc: dir.display().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let mut t = BTreeMap::new();
        t.insert("a".to_string(), (Dtype::F32, vec![2, 3], vec![1.0; 6]));
        t.insert("b".to_string(), (Dtype::BF16, vec![4], vec![2.0; 4]));
        crate::testing::write_floats(&p, &t);
        let s = StSet::open_file(&p).unwrap();
        assert_eq!(s.tensors["a"].to_f32().unwrap(), vec![1.0; 6]);
        assert_eq!(s.tensors["b"].to_f32().unwrap(), vec![2.0; 4]);
        let full = std::fs::read(&p).unwrap();
        let q = dir.path().join("cut.safetensors");
        for cut in 0..full.len() {
            std::fs::write(&q, &full[..cut]).unwrap();
            match StSet::open_file(&q) {
                Err(ConvertError::TruncatedSafetensors { .. }) => {}
                Err(e) => panic!("cut at {cut}: {e}"),
                Ok(_) => panic!("cut at {cut} opened"),
            }
        }
    }

    #[test]
    fn hostile_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("h.safetensors");
        let mut b = (u64::MAX).to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        std::fs::write(&q, &b).unwrap();
        assert!(matches!(StSet::open_file(&q), Err(ConvertError::InvalidSafetensors { .. })));
        let hdr = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
        let mut b = (hdr.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(hdr);
        b.extend_from_slice(&[0u8; 8]);
        std::fs::write(&q, &b).unwrap();
        assert!(matches!(StSet::open_file(&q), Err(ConvertError::InvalidSafetensors { .. })));
    }
}
