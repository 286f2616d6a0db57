//! Reading PyTorch checkpoints (`torch.save` files, torch >= 1.6) without Python.
//!
//! Such a file is a zip archive of stored entries: `<archive>/data.pkl`, a pickle of the saved
//! object, and `<archive>/data/<key>`, the raw little-endian bytes of each tensor storage (the
//! archive folder is the file stem or `archive`). Unpickling with Python would run whatever the
//! file names (pickle's GLOBAL + REDUCE call any importable function), so this module interprets
//! the pickle with a restricted VM instead: a global is only a name, a call builds an inert
//! [`PyValue::Object`], and only a fixed set of known constructors is interpreted — tensors and
//! their storages (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`,
//! `torch._tensor._rebuild_from_type_v2`), `collections.OrderedDict`/`defaultdict`, `set`,
//! `frozenset`, `torch.device`, `torch.Size`, numpy scalars (RecBole's item tokens are
//! `numpy.str_`), and the `_codecs.encode` by which protocol 2 pickles `bytes`. A RecBole `Trainer`
//! checkpoint (its `Config`, enums, optimizer state) thus loads as data, and a file that names
//! `os.system` loads as an `Object` of that name: nothing is ever executed.
//!
//! Tensors come back contiguous and row-major whatever their view (offset, shape, stride) was,
//! copied once from the memory-mapped file. Dtypes: float32/16, bfloat16, float64, int64/32/16/8,
//! uint8, bool. Every length, offset, count and view is checked against the input, and memo,
//! stack, nesting and output sizes are bounded: a malformed or hostile file is a
//! [`ConvertError::TorchCheckpoint`], never a panic or an unbounded allocation. The legacy
//! (pre-1.6, non-zip) format is refused with a hint to re-save the file.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{ConvertError, Result};

/// Most values the pickle may create, hold on its stack or memoize: each also costs at least one
/// byte of pickle. 64 Mi (2 GiB of values at most) allows a few million `numpy.str_` item
/// tokens (about 20 values each).
const MAX_VALUES: usize = 1 << 26;
/// How many more values than the pickle created the loaded tree may hold, shared references
/// being expanded each time they occur.
const SHARED_SLACK: usize = 1 << 20;
/// Most MARKs open at once (Python's own recursion limit keeps real pickles far below).
const MAX_MARKS: usize = 100_000;
/// Deepest nesting of containers in the loaded value (each level is a recursive call).
const MAX_DEPTH: usize = 256;
/// Most dimensions of a tensor.
const MAX_DIMS: usize = 64;
/// Deepest chain of interpreted constructors calling each other (`_rebuild_from_type_v2`).
const MAX_CALL_DEPTH: usize = 8;
/// Output allowance beyond 4× the file size: expanded views (stride 0) and several views of one
/// storage may legitimately materialize more bytes than the file holds, but not without bound.
const OUTPUT_SLACK: usize = 256 << 20;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The torch name (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// The dtype of a `torch.<Name>Storage` class as written in persistent ids. `UntypedStorage`
    /// (bytes) appears when a bare untyped storage was saved.
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
}

/// A dense tensor: contiguous, row-major, little-endian.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    data: Vec<u8>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor").field("dtype", &self.dtype).field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl Tensor {
    /// A tensor from contiguous little-endian bytes; `None` unless `data` holds exactly
    /// `shape.product()` elements.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Option<Self> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        (n.checked_mul(dtype.size())? == data.len()).then_some(Tensor { dtype, shape, data })
    }

    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// The raw contiguous little-endian bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// All values as f32 (integers rounded to the nearest f32, bools as 0/1).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => self.data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => self.data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => self.to_f64().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// All values as f64 (exact except int64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match self.dtype {
            DType::F64 => self.data.chunks_exact(8).map(|c| f64::from_le_bytes(le8(c))).collect(),
            DType::F32 | DType::F16 | DType::BF16 => self.to_f32().into_iter().map(f64::from).collect(),
            _ => self.to_i64().unwrap_or_default().into_iter().map(|v| v as f64).collect(),
        }
    }

    /// All values as i64 for integer and bool tensors; `None` for floating-point ones.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let d = &self.data;
        Some(match self.dtype {
            DType::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(le8(c))).collect(),
            DType::I32 => d.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
            DType::I16 => d.chunks_exact(2).map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
            DType::I8 => d.iter().map(|&b| i64::from(b as i8)).collect(),
            DType::U8 => d.iter().map(|&b| i64::from(b)).collect(),
            DType::Bool => d.iter().map(|&b| i64::from(b != 0)).collect(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => return None,
        })
    }
}

fn le8(c: &[u8]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(c);
    b
}

/// A Python value as the restricted unpickler sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    /// An int; one beyond the i64 range is loaded as the nearest [`PyValue::Float`].
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// A list, set or frozenset (sets keep their pickled order).
    List(Vec<PyValue>),
    Tuple(Vec<PyValue>),
    /// A dict, `OrderedDict` or `defaultdict`, in insertion order; a key set twice keeps its first
    /// position and its last value (as in Python). Attributes set on the dict itself (the
    /// `_metadata` of a `state_dict()`) are dropped.
    Dict(Vec<(PyValue, PyValue)>),
    Tensor(Tensor),
    /// A module-level name (a class, function or `torch.float16`-style constant), not resolved.
    Global {
        module: String,
        name: String,
    },
    /// An instance of a class this reader does not interpret: `class` is the qualified name of the
    /// callable (`recbole.config.configurator.Config`), `args` its arguments, `state` what BUILD
    /// gave it (usually the instance `__dict__`), `listitems`/`dictitems` what APPEND/SETITEM added
    /// (list and dict subclasses). A call on something other than a global has class `<call>` and
    /// the callee as its first argument.
    Object {
        class: String,
        args: Vec<PyValue>,
        state: Option<Box<PyValue>>,
        listitems: Vec<PyValue>,
        dictitems: Vec<(PyValue, PyValue)>,
    },
}

impl PyValue {
    /// The value under a string key: of a dict, or of an object's state dict (its `__dict__`) or
    /// dict items.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        fn find<'v>(pairs: &'v [(PyValue, PyValue)], key: &str) -> Option<&'v PyValue> {
            pairs.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
        }
        match self {
            PyValue::Dict(pairs) => find(pairs, key),
            PyValue::Object { state, dictitems, .. } => {
                let from_state = state.as_deref().and_then(|s| match s {
                    PyValue::Dict(pairs) => find(pairs, key),
                    // (instance dict, slots dict) of a class with __slots__
                    PyValue::Tuple(parts) => parts.iter().find_map(|p| p.as_dict().and_then(|d| find(d, key))),
                    _ => None,
                });
                from_state.or_else(|| find(dictitems, key))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            PyValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A float, or an int as a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Float(f) => Some(*f),
            PyValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            PyValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items of a list or tuple.
    pub fn as_list(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(v) | PyValue::Tuple(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&[(PyValue, PyValue)]> {
        match self {
            PyValue::Dict(pairs) => Some(pairs),
            _ => None,
        }
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            PyValue::Tensor(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, PyValue::None)
    }

    /// The class of an [`PyValue::Object`].
    pub fn class(&self) -> Option<&str> {
        match self {
            PyValue::Object { class, .. } => Some(class),
            _ => None,
        }
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PyValue::None => "None",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Bytes(_) => "bytes",
            PyValue::List(_) => "list",
            PyValue::Tuple(_) => "tuple",
            PyValue::Dict(_) => "dict",
            PyValue::Tensor(_) => "tensor",
            PyValue::Global { .. } => "global",
            PyValue::Object { .. } => "object",
        }
    }
}

/// The tensors of a state dict: `v["state_dict"]` when `v` has that key (RecBole checkpoints,
/// `{'state_dict': ..., ...}` blobs), else `v` itself. `None` unless that is a dict whose keys are
/// all strings and values all tensors.
pub fn state_dict(v: &PyValue) -> Option<Vec<(String, &Tensor)>> {
    let d = v.get("state_dict").unwrap_or(v);
    d.as_dict()?.iter().map(|(k, t)| Some((k.as_str()?.to_string(), t.as_tensor()?))).collect()
}

/// Loads a `torch.save` file (memory-mapped; each tensor copied once).
pub fn load(path: &Path) -> Result<PyValue> {
    let file = File::open(path).map_err(|e| ConvertError::io(path, e))?;
    let len = file.metadata().map_err(|e| ConvertError::io(path, e))?.len();
    if len == 0 {
        return load_bytes(&[], path);
    }
    // SAFETY: read-only map of a file we do not modify; inputs are not expected to change while
    // the converter runs.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ConvertError::io(path, e))?;
    load_bytes(&map, path)
}

/// Loads a `torch.save` file held in memory; `desc` names it in errors.
pub fn load_bytes(bytes: &[u8], desc: &Path) -> Result<PyValue> {
    read(bytes).map_err(|reason| ConvertError::TorchCheckpoint { path: desc.to_path_buf(), reason })
}

/// Internal results carry the reason only; [`load_bytes`] adds the path.
type R<T> = std::result::Result<T, String>;

fn read(bytes: &[u8]) -> R<PyValue> {
    let zip = Zip::parse(bytes)?;
    let (prefix, pkl_entry) = zip.find_data_pkl()?;
    if let Some(e) = zip.entry(&format!("{prefix}/byteorder")) {
        let order = zip.data(e)?;
        if order.trim_ascii() != b"little" {
            return Err(format!(
                "{prefix}/byteorder is {:?}: only little-endian checkpoints are supported",
                String::from_utf8_lossy(order)
            ));
        }
    }
    let pkl = zip.data(pkl_entry)?;
    let mut vm = Vm::new(pkl, &zip, prefix);
    let root = vm.run().map_err(|e| format!("{prefix}/data.pkl: {e}"))?;
    let budget = bytes.len().saturating_mul(4).saturating_add(OUTPUT_SLACK);
    let values_left = vm.nodes.len().saturating_add(SHARED_SLACK);
    Builder { nodes: &vm.nodes, file: bytes, values_left, bytes_left: budget }.build(root, 0)
}

// ---------------------------------------------------------------------------------------------
// Zip: the end of central directory record (zip64 when present), the central directory, and each
// needed entry's local header. Only stored entries can be read; sizes come from the central
// directory (torch's writer sets the data-descriptor flag and leaves the local sizes zero).

const SIG_EOCD: u32 = 0x0605_4b50;
const SIG_ZIP64_LOCATOR: u32 = 0x0706_4b50;
const SIG_ZIP64_EOCD: u32 = 0x0606_4b50;
const SIG_CENTRAL: u32 = 0x0201_4b50;
const SIG_LOCAL: u32 = 0x0403_4b50;

/// The first bytes of a legacy torch.save file: PROTO 2, LONG1 of the magic number
/// 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 14] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn read_le<const N: usize>(b: &[u8], at: u64) -> Option<[u8; N]> {
    let at = usize::try_from(at).ok()?;
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], at: u64) -> R<u16> {
    read_le(b, at).map(u16::from_le_bytes).ok_or_else(|| format!("zip structure truncated at byte {at}"))
}
fn u32_at(b: &[u8], at: u64) -> R<u32> {
    read_le(b, at).map(u32::from_le_bytes).ok_or_else(|| format!("zip structure truncated at byte {at}"))
}
fn u64_at(b: &[u8], at: u64) -> R<u64> {
    read_le(b, at).map(u64::from_le_bytes).ok_or_else(|| format!("zip structure truncated at byte {at}"))
}

struct Entry {
    name: String,
    flags: u16,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

struct Zip<'a> {
    bytes: &'a [u8],
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    /// Where the central directory starts: entry data must end before it.
    cd_offset: u64,
}

/// Why bytes without an end of central directory record are not a checkpoint we read.
fn not_a_zip(bytes: &[u8]) -> String {
    let resave = "re-save it with torch >= 1.6: torch.save(torch.load(old, weights_only=False), new)";
    if bytes.starts_with(&LEGACY_MAGIC) || bytes.get(257..262) == Some(b"ustar") {
        format!("this is the legacy (pre-1.6, non-zip) torch.save format, which is not supported; {resave}")
    } else if bytes.first() == Some(&0x80) {
        format!("this is a bare pickle, not a torch.save zip archive; {resave}")
    } else if bytes.starts_with(b"PK") {
        "truncated zip archive: no end of central directory record".into()
    } else {
        "not a torch.save zip archive (no end of central directory record)".into()
    }
}

impl<'a> Zip<'a> {
    fn parse(bytes: &'a [u8]) -> R<Self> {
        let len = bytes.len() as u64;
        let last = len.checked_sub(22).ok_or_else(|| not_a_zip(bytes))?;
        let first = last.saturating_sub(0xFFFF);
        let eocd = (first..=last)
            .rev()
            .find(|&p| {
                u32_at(bytes, p).ok() == Some(SIG_EOCD)
                    && u16_at(bytes, p + 20).is_ok_and(|c| p + 22 + u64::from(c) == len)
            })
            .ok_or_else(|| not_a_zip(bytes))?;
        let mut disk = u32::from(u16_at(bytes, eocd + 4)?);
        let mut cd_disk = u32::from(u16_at(bytes, eocd + 6)?);
        let mut n_here = u64::from(u16_at(bytes, eocd + 8)?);
        let mut n = u64::from(u16_at(bytes, eocd + 10)?);
        let mut cd_size = u64::from(u32_at(bytes, eocd + 12)?);
        let mut cd_offset = u64::from(u32_at(bytes, eocd + 16)?);
        let mut cd_limit = eocd;
        let locator = eocd.checked_sub(20).filter(|&l| u32_at(bytes, l).ok() == Some(SIG_ZIP64_LOCATOR));
        if let Some(loc) = locator {
            let z = u64_at(bytes, loc + 8)?;
            if past(z.checked_add(56), loc) || u32_at(bytes, z)? != SIG_ZIP64_EOCD {
                return Err(format!("bad zip64 end of central directory offset {z}"));
            }
            disk = u32_at(bytes, z + 16)?;
            cd_disk = u32_at(bytes, z + 20)?;
            n_here = u64_at(bytes, z + 24)?;
            n = u64_at(bytes, z + 32)?;
            cd_size = u64_at(bytes, z + 40)?;
            cd_offset = u64_at(bytes, z + 48)?;
            cd_limit = z;
        } else if n == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            return Err("zip64 archive without its zip64 end of central directory locator".into());
        }
        if disk != 0 || cd_disk != 0 || n_here != n {
            return Err("multi-disk zip archives are not supported".into());
        }
        if past(cd_offset.checked_add(cd_size), cd_limit) {
            return Err(format!("central directory ({cd_size} bytes at {cd_offset}) lies outside the file"));
        }
        if n > cd_size / 46 {
            return Err(format!("zip claims {n} entries in a {cd_size}-byte central directory"));
        }
        let mut zip = Zip { bytes, entries: Vec::new(), by_name: HashMap::new(), cd_offset };
        let mut p = cd_offset;
        let cd_end = cd_offset + cd_size;
        for _ in 0..n {
            let e = zip.central_header(&mut p, cd_end)?;
            if zip.by_name.insert(e.name.clone(), zip.entries.len()).is_some() {
                return Err(format!("zip entry {:?} appears twice", e.name));
            }
            zip.entries.push(e);
        }
        Ok(zip)
    }

    /// One central directory header at `*p`; advances `*p` past it.
    fn central_header(&self, p: &mut u64, cd_end: u64) -> R<Entry> {
        let b = self.bytes;
        let at = *p;
        if past(at.checked_add(46), cd_end) || u32_at(b, at)? != SIG_CENTRAL {
            return Err(format!("bad central directory header at byte {at}"));
        }
        let flags = u16_at(b, at + 8)?;
        let method = u16_at(b, at + 10)?;
        let crc = u32_at(b, at + 16)?;
        let mut compressed = u64::from(u32_at(b, at + 20)?);
        let mut size = u64::from(u32_at(b, at + 24)?);
        let name_len = u64::from(u16_at(b, at + 28)?);
        let extra_len = u64::from(u16_at(b, at + 30)?);
        let comment_len = u64::from(u16_at(b, at + 32)?);
        let disk = u16_at(b, at + 34)?;
        let mut local_offset = u64::from(u32_at(b, at + 42)?);
        let name_at = at + 46;
        let extra_at = name_at + name_len;
        let next = extra_at + extra_len + comment_len;
        if next > cd_end {
            return Err(format!("central directory header at byte {at} runs past the directory"));
        }
        let name = String::from_utf8_lossy(slice(b, name_at, name_len)?).into_owned();
        // zip64 extended information: the 8-byte values replacing saturated 4-byte ones, in order.
        let extra = slice(b, extra_at, extra_len)?;
        let mut q = 0u64;
        while q + 4 <= extra_len {
            let id = u16_at(extra, q)?;
            let sz = u64::from(u16_at(extra, q + 2)?);
            let field = slice(extra, q + 4, sz).map_err(|_| format!("entry {name:?}: bad extra field"))?;
            if id == 1 {
                let mut f = 0u64;
                for v in [&mut size, &mut compressed, &mut local_offset] {
                    if *v == 0xFFFF_FFFF {
                        *v = u64_at(field, f).map_err(|_| format!("entry {name:?}: short zip64 extra field"))?;
                        f += 8;
                    }
                }
            }
            q += 4 + sz;
        }
        if size == 0xFFFF_FFFF || compressed == 0xFFFF_FFFF || local_offset == 0xFFFF_FFFF {
            return Err(format!("entry {name:?}: zip64 sizes without a zip64 extra field"));
        }
        if disk != 0 && disk != 0xFFFF {
            return Err("multi-disk zip archives are not supported".into());
        }
        *p = next;
        Ok(Entry { name, flags, method, crc, compressed, size, local_offset })
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).and_then(|&i| self.entries.get(i))
    }

    /// The archive folder and its `data.pkl`: exactly one `<folder>/data.pkl` at the top level.
    fn find_data_pkl(&self) -> R<(&str, &Entry)> {
        let mut found = self.entries.iter().filter_map(|e| {
            let prefix = e.name.strip_suffix("/data.pkl")?;
            (!prefix.is_empty() && !prefix.contains('/')).then_some((prefix, e))
        });
        let first = found.next().ok_or("no <archive>/data.pkl entry: not a torch.save file")?;
        if let Some((other, _)) = found.next() {
            return Err(format!("several archives in one file ({}/data.pkl and {other}/data.pkl)", first.0));
        }
        Ok(first)
    }

    /// An entry's bytes: stored (not compressed), inside the file, CRC checked.
    fn data(&self, e: &Entry) -> R<&'a [u8]> {
        self.data_at(e).map(|(_, d)| d)
    }

    /// [`Zip::data`] and where it starts in the file.
    fn data_at(&self, e: &Entry) -> R<(usize, &'a [u8])> {
        let name = &e.name;
        if e.flags & 1 != 0 {
            return Err(format!("entry {name:?} is encrypted"));
        }
        if e.method != 0 {
            return Err(format!(
                "entry {name:?} uses zip compression method {}; torch.save writes stored (method 0) \
                 entries only — re-save the checkpoint with torch.save",
                e.method
            ));
        }
        if e.compressed != e.size {
            return Err(format!("stored entry {name:?} has compressed size {} ≠ size {}", e.compressed, e.size));
        }
        let b = self.bytes;
        let lh = e.local_offset;
        if u32_at(b, lh).ok() != Some(SIG_LOCAL) {
            return Err(format!("entry {name:?}: no local header at byte {lh}"));
        }
        let name_len = u64::from(u16_at(b, lh + 26)?);
        let extra_len = u64::from(u16_at(b, lh + 28)?);
        if slice(b, lh + 30, name_len).ok() != Some(name.as_bytes()) {
            return Err(format!("entry {name:?}: the local header at byte {lh} names another entry"));
        }
        let start = lh + 30 + name_len + extra_len;
        if past(start.checked_add(e.size), self.cd_offset) {
            return Err(format!("entry {name:?} ({} bytes at {start}) runs past its place in the file", e.size));
        }
        let data = slice(b, start, e.size)?;
        if crc32(data) != e.crc {
            return Err(format!("entry {name:?} fails its CRC check: the file is corrupt"));
        }
        Ok((usize::try_from(start).map_err(|_| "offset overflows")?, data))
    }
}

fn slice(b: &[u8], at: u64, len: u64) -> R<&[u8]> {
    let r = usize::try_from(at).ok().and_then(|a| Some(a..a.checked_add(usize::try_from(len).ok()?)?));
    r.and_then(|r| b.get(r)).ok_or_else(|| format!("{len} bytes at {at} lie outside the data"))
}

/// Whether a checked end offset overflowed or lies beyond `limit`.
fn past(end: Option<u64>, limit: u64) -> bool {
    !matches!(end, Some(e) if e <= limit)
}

/// CRC-32 (IEEE) tables for slicing-by-8: `T[0]` is the bytewise table, `T[k]` advances `k`
/// more zero bytes.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

fn crc32(data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let byte = |v: u32, shift: u32| ((v >> shift) & 0xFF) as usize;
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
        let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = t[7][byte(lo, 0)]
            ^ t[6][byte(lo, 8)]
            ^ t[5][byte(lo, 16)]
            ^ t[4][byte(lo, 24)]
            ^ t[3][byte(hi, 0)]
            ^ t[2][byte(hi, 8)]
            ^ t[1][byte(hi, 16)]
            ^ t[0][byte(hi, 24)];
    }
    for &b in chunks.remainder() {
        c = t[0][byte(c ^ u32::from(b), 0)] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------------------------
// The pickle VM. Values live in an arena and the stack holds their ids, so that a memoized
// container filled after its PUT (the pickler memoizes a dict before its items) is seen filled by
// every later GET, as in Python.

type Id = usize;

#[derive(Clone, Copy)]
struct Storage {
    dtype: DType,
    /// Byte offset of the storage in the file.
    start: usize,
    numel: usize,
}

struct View {
    storage: Storage,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

enum Node {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    /// (module, name); the rare variants are boxed to keep values at 32 bytes.
    Global(Box<(String, String)>),
    Object(Box<Obj>),
    Storage(Storage),
    Tensor(Box<View>),
}

struct Obj {
    class: String,
    args: Vec<Id>,
    state: Option<Id>,
    listitems: Vec<Id>,
    dictitems: Vec<(Id, Id)>,
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::None => "None",
            Node::Bool(_) => "bool",
            Node::Int(_) => "int",
            Node::Float(_) => "float",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::List(_) => "list",
            Node::Tuple(_) => "tuple",
            Node::Dict(_) => "dict",
            Node::Global(..) => "global",
            Node::Object(_) => "object",
            Node::Storage(_) => "storage",
            Node::Tensor(_) => "tensor",
        }
    }

    fn object(class: String, args: Vec<Id>) -> Node {
        Node::Object(Box::new(Obj { class, args, state: None, listitems: Vec::new(), dictitems: Vec::new() }))
    }

    fn global(module: &str, name: String) -> Node {
        Node::Global(Box::new((py3_module(module).to_string(), name)))
    }
}

struct Vm<'a> {
    pkl: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    /// The stacks below each open MARK (Python's metastack).
    marks: Vec<Vec<Id>>,
    /// Ids held in `marks`, for the bound on ids held in all.
    marked: usize,
    /// The memo: indices are dense in what Python writes (0, 1, 2, ...), so a vector, with a map
    /// for any index beyond its end.
    memo: Vec<Id>,
    memo_sparse: HashMap<u32, Id>,
    zip: &'a Zip<'a>,
    prefix: &'a str,
    /// Storage key → (byte offset in the file, byte length), each entry checked once.
    storages: HashMap<String, (usize, usize)>,
    /// Ids left to copy out of existing tuples and lists (call arguments, `set(list)`): a large
    /// tuple passed to many calls must not turn a linear input into quadratic memory. Real
    /// pickles copy each (small) argument tuple about once.
    copies_left: Cell<usize>,
}

/// Opcode names, for errors.
fn opcode_name(op: u8) -> &'static str {
    match op {
        0x80 => "PROTO",
        0x95 => "FRAME",
        b'.' => "STOP",
        b'(' => "MARK",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'N' => "NONE",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'M' => "BININT2",
        b'L' => "LONG",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'G' => "BINFLOAT",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'X' => "BINUNICODE",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        b'V' => "UNICODE",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8e => "BINBYTES8",
        0x96 => "BYTEARRAY8",
        b']' => "EMPTY_LIST",
        b'a' => "APPEND",
        b'e' => "APPENDS",
        b'l' => "LIST",
        b')' => "EMPTY_TUPLE",
        b't' => "TUPLE",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        b'}' => "EMPTY_DICT",
        b'd' => "DICT",
        b's' => "SETITEM",
        b'u' => "SETITEMS",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        0x94 => "MEMOIZE",
        b'g' => "GET",
        b'h' => "BINGET",
        b'j' => "LONG_BINGET",
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        b'R' => "REDUCE",
        b'b' => "BUILD",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

/// Python 2 module names that protocol 2 pickles use (`fix_imports`), mapped as Python 3 does.
fn py3_module(m: &str) -> &str {
    match m {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        _ => m,
    }
}

impl<'a> Vm<'a> {
    fn new(pkl: &'a [u8], zip: &'a Zip<'a>, prefix: &'a str) -> Self {
        Vm {
            pkl,
            pos: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            marked: 0,
            memo: Vec::new(),
            memo_sparse: HashMap::new(),
            zip,
            prefix,
            storages: HashMap::new(),
            copies_left: Cell::new(pkl.len().saturating_mul(2).saturating_add(SHARED_SLACK)),
        }
    }

    /// Runs to STOP; returns the id of the unpickled value.
    fn run(&mut self) -> R<Id> {
        loop {
            let at = self.pos;
            let op = *self.pkl.get(at).ok_or_else(|| format!("truncated: no STOP opcode by byte {at}"))?;
            self.pos += 1;
            match self.step(op) {
                Ok(true) => return self.pop().map_err(|e| format!("at byte {at} (STOP): {e}")),
                Ok(false) => {}
                Err(e) => return Err(format!("at byte {at} ({}): {e}", opcode_name(op))),
            }
        }
    }

    /// Executes one opcode; `Ok(true)` on STOP.
    fn step(&mut self, op: u8) -> R<bool> {
        match op {
            0x80 => {
                let v = self.byte()?;
                if v > 5 {
                    return Err(format!("pickle protocol {v} is newer than 5"));
                }
            }
            0x95 => {
                let n = self.u64()?;
                if n > (self.pkl.len() - self.pos) as u64 {
                    return Err(format!("frame of {n} bytes runs past the end"));
                }
            }
            b'.' => return Ok(true),
            b'(' => {
                if self.marks.len() >= MAX_MARKS {
                    return Err(format!("more than {MAX_MARKS} nested MARKs"));
                }
                let below = std::mem::take(&mut self.stack);
                self.marked += below.len();
                self.marks.push(below);
            }
            b'0' => {
                if self.stack.pop().is_none() {
                    self.pop_mark()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.push(top)?;
            }
            b'N' => self.push_new(Node::None)?,
            0x88 => self.push_new(Node::Bool(true))?,
            0x89 => self.push_new(Node::Bool(false))?,
            b'I' => {
                let line = self.line()?;
                let node = match line.trim_ascii() {
                    b"00" => Node::Bool(false),
                    b"01" => Node::Bool(true),
                    s => parse_int_text(s)?,
                };
                self.push_new(node)?;
            }
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push_new(Node::Int(v.into()))?;
            }
            b'K' => {
                let v = self.byte()?;
                self.push_new(Node::Int(v.into()))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push_new(Node::Int(v.into()))?;
            }
            b'L' => {
                let line = self.line()?;
                let s = line.trim_ascii();
                let node = parse_int_text(s.strip_suffix(b"L").unwrap_or(s))?;
                self.push_new(node)?;
            }
            0x8a => {
                let n = self.byte()?;
                let b = self.take(n.into())?;
                self.push_new(decode_long(b))?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.array()?);
                let n = u64::try_from(n).map_err(|_| format!("negative length {n}"))?;
                let b = self.take(n)?;
                self.push_new(decode_long(b))?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.array()?);
                self.push_new(Node::Float(v))?;
            }
            b'F' => {
                let line = self.line()?;
                let v = std::str::from_utf8(line.trim_ascii())
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or("not a float literal")?;
                self.push_new(Node::Float(v))?;
            }
            b'S' => {
                let line = self.line()?;
                let raw = unquote(line.trim_ascii_end())?;
                self.push_new(str_or_bytes(raw))?;
            }
            b'T' => {
                let n = i32::from_le_bytes(self.array()?);
                let n = u64::try_from(n).map_err(|_| format!("negative length {n}"))?;
                let b = self.take(n)?.to_vec();
                self.push_new(str_or_bytes(b))?;
            }
            b'U' => {
                let n = self.byte()?;
                let b = self.take(n.into())?.to_vec();
                self.push_new(str_or_bytes(b))?;
            }
            b'X' => {
                let n = u32::from_le_bytes(self.array()?);
                self.push_utf8(n.into())?;
            }
            0x8c => {
                let n = self.byte()?;
                self.push_utf8(n.into())?;
            }
            0x8d => {
                let n = u64::from_le_bytes(self.array()?);
                self.push_utf8(n)?;
            }
            b'V' => {
                let line = self.line()?;
                let s = raw_unicode_escape(line)?;
                self.push_new(Node::Str(s))?;
            }
            b'B' => {
                let n = u32::from_le_bytes(self.array()?);
                let b = self.take(n.into())?.to_vec();
                self.push_new(Node::Bytes(b))?;
            }
            b'C' => {
                let n = self.byte()?;
                let b = self.take(n.into())?.to_vec();
                self.push_new(Node::Bytes(b))?;
            }
            0x8e | 0x96 => {
                let n = u64::from_le_bytes(self.array()?);
                let b = self.take(n)?.to_vec();
                self.push_new(Node::Bytes(b))?;
            }
            b']' | 0x8f => self.push_new(Node::List(Vec::new()))?,
            b'a' => {
                let v = self.pop()?;
                let target = self.top()?;
                self.append(target, vec![v])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.append(target, items)?;
            }
            b'l' | 0x91 => {
                let items = self.pop_mark()?;
                self.push_new(Node::List(items))?;
            }
            b')' => self.push_new(Node::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push_new(Node::Tuple(items))?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let split = self.stack.len().checked_sub(n).ok_or("stack underflow")?;
                let items = self.stack.split_off(split);
                self.push_new(Node::Tuple(items))?;
            }
            b'}' => self.push_new(Node::Dict(Vec::new()))?,
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(&items)?;
                self.push_new(Node::Dict(pairs))?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let target = self.top()?;
                self.set_items(target, vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.set_items(target, pairs(&items)?)?;
            }
            b'p' => {
                let line = self.line()?;
                let i = parse_memo_index(line)?;
                self.memo_put(i)?;
            }
            b'q' => {
                let i = self.byte()?;
                self.memo_put(i.into())?;
            }
            b'r' => {
                let i = u32::from_le_bytes(self.array()?);
                self.memo_put(i)?;
            }
            0x94 => {
                let len = self.memo.len() + self.memo_sparse.len();
                let i = u32::try_from(len).map_err(|_| "memo too large")?;
                self.memo_put(i)?;
            }
            b'g' => {
                let line = self.line()?;
                let i = parse_memo_index(line)?;
                self.memo_get(i)?;
            }
            b'h' => {
                let i = self.byte()?;
                self.memo_get(i.into())?;
            }
            b'j' => {
                let i = u32::from_le_bytes(self.array()?);
                self.memo_get(i)?;
            }
            b'c' => {
                let module = utf8_line(self.line()?)?;
                let name = utf8_line(self.line()?)?;
                self.push_new(Node::global(&module, name))?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Node::Str(m), Node::Str(n)) = (self.node(module)?, self.node(name)?) else {
                    return Err("module and name are not strings".into());
                };
                let g = Node::global(m, n.clone());
                self.push_new(g)?;
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let args = self.tuple_items(args)?;
                let v = self.call(callable, args, 0)?;
                self.push(v)?;
            }
            0x81 | 0x92 => {
                let kwargs = if op == 0x92 { Some(self.pop()?) } else { None };
                let args = self.pop()?;
                let cls = self.pop()?;
                let mut args = self.tuple_items(args)?;
                if let Some(kw) = kwargs {
                    if !matches!(self.node(kw)?, Node::Dict(d) if d.is_empty()) {
                        args.push(kw);
                    }
                }
                let v = self.new_object(cls, args)?;
                self.push(v)?;
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?;
                // Instances record their state; attributes set on dicts (a state_dict's
                // `_metadata`), lists or tensors are dropped.
                if let Node::Object(o) = self.node_mut(target)? {
                    o.state = Some(state);
                }
            }
            b'P' => {
                let pid = utf8_line(self.line()?)?;
                return Err(format!("persistent id {pid:?} is not a torch storage reference"));
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent_load(pid)?;
                self.push_new(v)?;
            }
            _ => return Err(format!("unsupported pickle opcode 0x{op:02x}")),
        }
        Ok(false)
    }

    // --- input

    fn take(&mut self, n: u64) -> R<&'a [u8]> {
        let pkl = self.pkl;
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).filter(|&e| e <= pkl.len());
        let end = end.ok_or_else(|| format!("{n} bytes wanted, {} left", pkl.len() - self.pos))?;
        let s = pkl.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        self.take(N as u64)?.try_into().map_err(|_| "truncated".to_string())
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// The bytes up to the next newline (excluded).
    fn line(&mut self) -> R<&'a [u8]> {
        let pkl = self.pkl;
        let rest = pkl.get(self.pos..).unwrap_or_default();
        let n = rest.iter().position(|&b| b == b'\n').ok_or("unterminated line")?;
        let line = rest.get(..n).unwrap_or_default();
        self.pos += n + 1;
        Ok(line)
    }

    fn push_utf8(&mut self, n: u64) -> R<()> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|e| format!("invalid UTF-8 in a string: {e}"))?;
        self.push_new(Node::Str(s.to_string()))
    }

    // --- arena and stack

    fn add(&mut self, n: Node) -> R<Id> {
        if self.nodes.len() >= MAX_VALUES {
            return Err(format!("more than {MAX_VALUES} values"));
        }
        self.nodes.push(n);
        Ok(self.nodes.len() - 1)
    }

    fn node(&self, id: Id) -> R<&Node> {
        self.nodes.get(id).ok_or_else(|| "internal: dangling value id".to_string())
    }

    fn node_mut(&mut self, id: Id) -> R<&mut Node> {
        self.nodes.get_mut(id).ok_or_else(|| "internal: dangling value id".to_string())
    }

    fn push(&mut self, id: Id) -> R<()> {
        if self.stack.len() + self.marked >= MAX_VALUES {
            return Err(format!("more than {MAX_VALUES} values on the stack"));
        }
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, n: Node) -> R<()> {
        let id = self.add(n)?;
        self.push(id)
    }

    fn pop(&mut self) -> R<Id> {
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }

    fn top(&self) -> R<Id> {
        self.stack.last().copied().ok_or_else(|| "stack underflow".to_string())
    }

    /// The items pushed since the last MARK; restores the stack below it.
    fn pop_mark(&mut self) -> R<Vec<Id>> {
        let below = self.marks.pop().ok_or("no MARK to pop to")?;
        self.marked -= below.len();
        Ok(std::mem::replace(&mut self.stack, below))
    }

    fn memo_put(&mut self, i: u32) -> R<()> {
        let top = self.top()?;
        let at = i as usize;
        if let Some(slot) = self.memo.get_mut(at) {
            *slot = top;
            return Ok(());
        }
        if self.memo.len() + self.memo_sparse.len() >= MAX_VALUES {
            return Err(format!("more than {MAX_VALUES} memo entries"));
        }
        if at == self.memo.len() && !self.memo_sparse.contains_key(&i) {
            self.memo.push(top);
        } else {
            self.memo_sparse.insert(i, top);
        }
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> R<()> {
        let id = self.memo.get(i as usize).or_else(|| self.memo_sparse.get(&i));
        let id = *id.ok_or_else(|| format!("memo entry {i} was never stored"))?;
        self.push(id)
    }

    fn append(&mut self, target: Id, items: Vec<Id>) -> R<()> {
        match self.node_mut(target)? {
            Node::List(v) => v.extend(items),
            Node::Object(o) => o.listitems.extend(items),
            other => return Err(format!("cannot append to a {}", other.kind())),
        }
        Ok(())
    }

    fn set_items(&mut self, target: Id, items: Vec<(Id, Id)>) -> R<()> {
        match self.node_mut(target)? {
            Node::Dict(v) => v.extend(items),
            Node::Object(o) => o.dictitems.extend(items),
            other => return Err(format!("cannot set items of a {}", other.kind())),
        }
        Ok(())
    }

    /// A copy of the ids of a tuple or list.
    fn tuple_items(&self, id: Id) -> R<Vec<Id>> {
        match self.node(id)? {
            Node::Tuple(v) | Node::List(v) => {
                self.charge_copies(v.len())?;
                Ok(v.clone())
            }
            other => Err(format!("arguments are a {}, not a tuple", other.kind())),
        }
    }

    fn charge_copies(&self, n: usize) -> R<()> {
        let left = self.copies_left.get().checked_sub(n);
        self.copies_left.set(left.ok_or("containers copied into calls more often than the pickle's size allows")?);
        Ok(())
    }

    fn int(&self, id: Id) -> Option<i64> {
        match self.node(id).ok()? {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    fn str(&self, id: Id) -> Option<&str> {
        match self.node(id).ok()? {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    // --- calls

    /// REDUCE: `callable(*args)`, interpreted for the known constructors, else an inert object.
    fn call(&mut self, callable: Id, args: Vec<Id>, depth: usize) -> R<Id> {
        let Node::Global(g) = self.node(callable)? else {
            let mut all = vec![callable];
            all.extend(args);
            return self.add(Node::object("<call>".into(), all));
        };
        let (module, name) = (**g).clone();
        let arg = |i: usize| args.get(i).copied();
        let interpreted: Option<Node> = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => match args.as_slice() {
                [] => Some(Node::Dict(Vec::new())),
                [items] => self.pairs_of(*items).map(Node::Dict),
                _ => None,
            },
            // defaultdict(factory): the items follow by SETITEMS; the factory is dropped.
            ("collections", "defaultdict") if args.len() <= 1 => Some(Node::Dict(Vec::new())),
            ("builtins", "set" | "frozenset" | "list") => match args.as_slice() {
                [] => Some(Node::List(Vec::new())),
                [items] => self.tuple_items(*items).ok().map(Node::List),
                _ => None,
            },
            ("builtins", "tuple") => match args.as_slice() {
                [] => Some(Node::Tuple(Vec::new())),
                [items] => self.tuple_items(*items).ok().map(Node::Tuple),
                _ => None,
            },
            ("builtins", "bytes" | "bytearray") if args.is_empty() => Some(Node::Bytes(Vec::new())),
            // Protocol 2 writes bytes as _codecs.encode(latin-1 text, 'latin1').
            ("_codecs", "encode") => match (arg(0).and_then(|i| self.str(i)), arg(1).and_then(|i| self.str(i))) {
                (Some(s), Some("latin1" | "latin-1" | "iso-8859-1")) => {
                    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect::<Option<Vec<u8>>>().map(Node::Bytes)
                }
                (Some(s), Some("utf-8" | "utf8")) => Some(Node::Bytes(s.as_bytes().to_vec())),
                _ => None,
            },
            ("torch", "device") => match (arg(0).and_then(|i| self.str(i)), arg(1)) {
                (Some(t), None) => Some(Node::Str(t.to_string())),
                (Some(t), Some(i)) => match self.node(i)? {
                    Node::Int(i) => Some(Node::Str(format!("{t}:{i}"))),
                    Node::None => Some(Node::Str(t.to_string())),
                    _ => None,
                },
                _ => None,
            },
            ("torch", "Size") => match args.as_slice() {
                [dims] => self.tuple_items(*dims).ok().map(Node::Tuple),
                _ => None,
            },
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Some(self.rebuild_tensor(&args)?),
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match arg(0) {
                Some(t) if matches!(self.node(t)?, Node::Tensor(_)) => return Ok(t),
                _ => None,
            },
            // (func, type, args, state): a tensor subclass or a tensor with Python attributes.
            ("torch._tensor", "_rebuild_from_type_v2") if args.len() == 4 && depth < MAX_CALL_DEPTH => {
                if let (Some(func), Some(inner)) = (arg(0), arg(2).and_then(|a| self.tuple_items(a).ok())) {
                    let t = self.call(func, inner, depth + 1)?;
                    if matches!(self.node(t)?, Node::Tensor(_)) {
                        return Ok(t);
                    }
                }
                None
            }
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => self.numpy_scalar(&args),
            // Protocol < 2 objects: _reconstructor(cls, base, state).
            ("copyreg", "_reconstructor") => match arg(0).map(|c| self.node(c)).transpose()? {
                Some(Node::Global(g)) => {
                    Some(Node::object(format!("{}.{}", g.0, g.1), args.get(1..).unwrap_or_default().to_vec()))
                }
                _ => None,
            },
            _ => None,
        };
        let node = interpreted.unwrap_or_else(|| Node::object(format!("{module}.{name}"), args));
        self.add(node)
    }

    /// NEWOBJ / NEWOBJ_EX: `cls.__new__(cls, *args)`; the contents, if any, follow.
    fn new_object(&mut self, cls: Id, args: Vec<Id>) -> R<Id> {
        let node = match self.node(cls)? {
            Node::Global(g) => match (g.0.as_str(), g.1.as_str()) {
                ("collections", "OrderedDict" | "defaultdict") | ("builtins", "dict") => Node::Dict(Vec::new()),
                ("builtins", "list" | "set" | "frozenset") => Node::List(Vec::new()),
                (m, n) => Node::object(format!("{m}.{n}"), args),
            },
            _ => {
                let mut all = vec![cls];
                all.extend(args);
                Node::object("<call>".into(), all)
            }
        };
        self.add(node)
    }

    /// The pairs of `dict(items)` / `OrderedDict(items)`: a dict, or a list of 2-item sequences.
    fn pairs_of(&self, items: Id) -> Option<Vec<(Id, Id)>> {
        match self.node(items).ok()? {
            Node::Dict(d) => {
                self.charge_copies(2 * d.len()).ok()?;
                Some(d.clone())
            }
            Node::List(v) | Node::Tuple(v) => self.charge_copies(2 * v.len()).ok().and_then(|()| {
                v.iter()
                    .map(|&p| match self.node(p).ok()? {
                        Node::List(kv) | Node::Tuple(kv) if kv.len() == 2 => Some((*kv.first()?, *kv.get(1)?)),
                        _ => None,
                    })
                    .collect()
            }),
            _ => None,
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ...)`:
    /// checks the view against its storage; the data is copied when the value is built.
    fn rebuild_tensor(&self, args: &[Id]) -> R<Node> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(format!("_rebuild_tensor_v2 takes at least 4 arguments, got {}", args.len()));
        };
        let Node::Storage(storage) = *self.node(*storage)? else {
            return Err(format!("_rebuild_tensor_v2: argument 0 is a {}, not a storage", self.node(*storage)?.kind()));
        };
        let dims = |id: Id, what: &str| -> R<Vec<usize>> {
            let items = self.tuple_items(id).map_err(|e| format!("tensor {what}: {e}"))?;
            if items.len() > MAX_DIMS {
                return Err(format!("tensor has {} dimensions (at most {MAX_DIMS})", items.len()));
            }
            items
                .iter()
                .map(|&i| self.int(i).and_then(|v| usize::try_from(v).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| format!("tensor {what} is not a tuple of non-negative ints"))
        };
        let shape = dims(*size, "size")?;
        let stride = dims(*stride, "stride")?;
        let offset = self
            .int(*offset)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or("tensor storage offset is not a non-negative int")?;
        if shape.len() != stride.len() {
            return Err(format!("tensor size {shape:?} and stride {stride:?} differ in length"));
        }
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let numel = numel.ok_or_else(|| format!("tensor size {shape:?} overflows"))?;
        numel.checked_mul(storage.dtype.size()).ok_or_else(|| format!("tensor size {shape:?} overflows"))?;
        let out_of_range = || {
            format!(
                "tensor view (offset {offset}, size {shape:?}, stride {stride:?}) reads outside its storage of {} \
                 elements",
                storage.numel
            )
        };
        if numel > 0 {
            let last = shape.iter().zip(&stride).try_fold(offset, |a, (&n, &s)| a.checked_add((n - 1).checked_mul(s)?));
            if !matches!(last, Some(l) if l < storage.numel) {
                return Err(out_of_range());
            }
        } else if offset > storage.numel {
            return Err(out_of_range());
        }
        Ok(Node::Tensor(Box::new(View { storage, offset, shape, stride })))
    }

    /// `numpy.core.multiarray.scalar(dtype, bytes)` for bool, int, uint, float, str (`U`) and bytes
    /// (`S`) dtypes; `None` (an inert object) for the rest.
    fn numpy_scalar(&self, args: &[Id]) -> Option<Node> {
        let [dtype, data] = args else { return None };
        let Node::Object(dt) = self.node(*dtype).ok()? else { return None };
        let Obj { class, args: dargs, state, .. } = &**dt;
        if class != "numpy.dtype" {
            return None;
        }
        let code = self.str(*dargs.first()?)?;
        let Node::Bytes(b) = self.node(*data).ok()? else { return None };
        // The byte order is the second item of the dtype's BUILD state (version, order, ...).
        let order = match state.map(|s| self.node(s)) {
            Some(Ok(Node::Tuple(st))) => st.get(1).and_then(|&o| self.str(o)).unwrap_or("<"),
            _ => "<",
        };
        let big = order == ">";
        let kind = code.get(..1)?;
        let width: usize = code.get(1..)?.parse().ok()?;
        let fixed = |n: usize| -> Option<[u8; 8]> {
            if width != n || b.len() != n {
                return None;
            }
            let mut v = [0u8; 8];
            let le: Vec<u8> = if big { b.iter().rev().copied().collect() } else { b.clone() };
            v.get_mut(..n)?.copy_from_slice(&le);
            Some(v)
        };
        let sign_extend = |v: [u8; 8], n: usize| -> i64 {
            let shift = 64 - 8 * n as u32;
            (i64::from_le_bytes(v) << shift) >> shift
        };
        Some(match kind {
            "b" | "?" => Node::Bool(fixed(1)?[0] != 0),
            "i" if matches!(width, 1 | 2 | 4 | 8) => Node::Int(sign_extend(fixed(width)?, width)),
            "u" if matches!(width, 1 | 2 | 4 | 8) => {
                let v = u64::from_le_bytes(fixed(width)?);
                i64::try_from(v).map_or(Node::Float(v as f64), Node::Int)
            }
            "f" => match width {
                2 => {
                    let v = fixed(2)?;
                    Node::Float(f16::from_le_bytes([v[0], v[1]]).to_f64())
                }
                4 => {
                    let v = fixed(4)?;
                    Node::Float(f32::from_le_bytes([v[0], v[1], v[2], v[3]]).into())
                }
                8 => Node::Float(f64::from_le_bytes(fixed(8)?)),
                _ => return None,
            },
            "U" if b.len() == width.checked_mul(4)? => {
                let chars: Option<String> = b
                    .chunks_exact(4)
                    .map(|c| {
                        let c = [c[0], c[1], c[2], c[3]];
                        char::from_u32(if big { u32::from_be_bytes(c) } else { u32::from_le_bytes(c) })
                    })
                    .collect();
                Node::Str(chars?.trim_end_matches('\0').to_string())
            }
            "S" if b.len() == width => {
                let end = b.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
                Node::Bytes(b.get(..end)?.to_vec())
            }
            _ => return None,
        })
    }

    /// BINPERSID: `('storage', torch.<Type>Storage, key, location, numel)` → the storage
    /// `<archive>/data/<key>`, its size checked against the entry.
    fn persistent_load(&mut self, pid: Id) -> R<Node> {
        let bad = || "persistent id is not ('storage', storage type, key, location, numel)".to_string();
        let items = match self.node(pid)? {
            Node::Tuple(v) => v.clone(),
            _ => return Err(bad()),
        };
        let [tag, class, key, _location, numel] = items.as_slice() else { return Err(bad()) };
        if self.str(*tag) != Some("storage") {
            return Err(bad());
        }
        let Node::Global(g) = self.node(*class)? else { return Err(bad()) };
        let (module, class) = &**g;
        let dtype = DType::from_storage_class(class).filter(|_| module == "torch" || module == "torch.cuda");
        let dtype = dtype.ok_or_else(|| {
            format!(
                "unsupported storage type {module}.{class} (supported: Float, Half, BFloat16, Double, Long, \
                 Int, Short, Char, Byte, Bool storages)"
            )
        })?;
        let key = match self.node(*key)? {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => return Err(bad()),
        };
        let numel = self.int(*numel).and_then(|n| usize::try_from(n).ok()).ok_or_else(bad)?;
        let (start, len) = match self.storages.get(&key) {
            Some(&r) => r,
            None => {
                let name = format!("{}/data/{key}", self.prefix);
                let e = self.zip.entry(&name).ok_or_else(|| format!("storage {key:?}: no entry {name}"))?;
                let (start, data) = self.zip.data_at(e)?;
                self.storages.insert(key.clone(), (start, data.len()));
                (start, data.len())
            }
        };
        match numel.checked_mul(dtype.size()) {
            Some(n) if n <= len => Ok(Node::Storage(Storage { dtype, start, numel })),
            _ => Err(format!("storage {key:?}: {numel} {} elements do not fit in its {len}-byte entry", dtype.name())),
        }
    }
}

fn pairs(items: &[Id]) -> R<Vec<(Id, Id)>> {
    let chunks = items.chunks_exact(2);
    if !chunks.remainder().is_empty() {
        return Err("odd number of items for a dict".into());
    }
    Ok(chunks.map(|kv| (kv[0], kv[1])).collect())
}

fn parse_memo_index(line: &[u8]) -> R<u32> {
    std::str::from_utf8(line.trim_ascii()).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "bad memo index".into())
}

fn utf8_line(line: &[u8]) -> R<String> {
    String::from_utf8(line.to_vec()).map_err(|_| "name is not UTF-8".to_string())
}

/// A decimal int line; one beyond i64 becomes the nearest float.
fn parse_int_text(s: &[u8]) -> R<Node> {
    let s = std::str::from_utf8(s).map_err(|_| "not an int literal")?;
    if let Ok(v) = s.parse::<i64>() {
        return Ok(Node::Int(v));
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<f64>().map(Node::Float).map_err(|_| "not an int literal".into());
    }
    Err(format!("{s:?} is not an int literal"))
}

/// A little-endian two's complement int (LONG1/LONG4); beyond i64, the nearest float.
fn decode_long(b: &[u8]) -> Node {
    let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
    let fill = if negative { 0xFF } else { 0 };
    if b.len() <= 8 || b.get(8..).is_some_and(|hi| hi.iter().all(|&x| x == fill)) {
        let mut v = [fill; 8];
        for (d, s) in v.iter_mut().zip(b) {
            *d = *s;
        }
        let i = i64::from_le_bytes(v);
        if (i < 0) == negative {
            return Node::Int(i);
        }
    }
    // Magnitude from the most significant byte down (of the complement when negative).
    let mag = b.iter().rev().fold(0f64, |a, &x| a * 256.0 + f64::from(if negative { !x } else { x }));
    Node::Float(if negative { -(mag + 1.0) } else { mag })
}

fn str_or_bytes(b: Vec<u8>) -> Node {
    match String::from_utf8(b) {
        Ok(s) => Node::Str(s),
        Err(e) => Node::Bytes(e.into_bytes()),
    }
}

/// The text of a protocol 0 STRING line: a quoted Python 2 literal with backslash escapes.
fn unquote(s: &[u8]) -> R<Vec<u8>> {
    let inner = match s {
        [q, inner @ .., q2] if (*q == b'\'' || *q == b'"') && q == q2 => inner,
        _ => return Err("STRING argument is not quoted".into()),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter().copied().peekable();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'0') => out.push(0),
            Some(b'x') => {
                let hex = [it.next(), it.next()];
                let v = match hex {
                    [Some(a), Some(b)] => {
                        std::str::from_utf8(&[a, b]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
                    }
                    _ => None,
                };
                out.push(v.ok_or("bad \\x escape")?);
            }
            Some(c @ (b'\\' | b'\'' | b'"')) => out.push(c),
            Some(c) => out.extend([b'\\', c]),
            None => out.push(b'\\'),
        }
    }
    Ok(out)
}

/// The text of a protocol 0 UNICODE line: latin-1 with `\uXXXX` and `\UXXXXXXXX` escapes.
fn raw_unicode_escape(line: &[u8]) -> R<String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while let Some(&c) = line.get(i) {
        let digits = match (c, line.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        if digits == 0 {
            out.push(char::from(c));
            i += 1;
            continue;
        }
        let hex = line.get(i + 2..i + 2 + digits).and_then(|h| std::str::from_utf8(h).ok());
        let ch = hex.and_then(|h| u32::from_str_radix(h, 16).ok()).and_then(char::from_u32);
        out.push(ch.ok_or("bad \\u escape in UNICODE")?);
        i += 2 + digits;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The arena → the owned value tree, with tensors materialized from the file. Shared references
// are expanded, so the values and bytes produced are bounded (a pickle of lists each holding the
// previous one twice would otherwise grow exponentially), and so is the depth (a list that
// contains itself).

struct Builder<'a> {
    nodes: &'a [Node],
    file: &'a [u8],
    values_left: usize,
    bytes_left: usize,
}

#[derive(PartialEq, Eq, Hash)]
enum DictKey {
    Str(String),
    Int(i64),
}

impl Builder<'_> {
    fn charge(&mut self, bytes: usize) -> R<()> {
        self.bytes_left = self.bytes_left.checked_sub(bytes).ok_or_else(|| {
            "the loaded value would exceed 4× the file size plus 256 MiB (shared references or expanded views)"
                .to_string()
        })?;
        Ok(())
    }

    fn build(&mut self, id: Id, depth: usize) -> R<PyValue> {
        if depth > MAX_DEPTH {
            return Err(format!("values nested deeper than {MAX_DEPTH} (or a value that contains itself)"));
        }
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or("shared references expand to more values than the pickle holds plus 1 Mi")?;
        let nodes = self.nodes;
        let node = nodes.get(id).ok_or("internal: dangling value id")?;
        let list = |b: &mut Self, ids: &[Id]| ids.iter().map(|&c| b.build(c, depth + 1)).collect::<R<Vec<_>>>();
        Ok(match node {
            Node::None => PyValue::None,
            Node::Bool(b) => PyValue::Bool(*b),
            Node::Int(i) => PyValue::Int(*i),
            Node::Float(f) => PyValue::Float(*f),
            Node::Str(s) => {
                self.charge(s.len())?;
                PyValue::Str(s.clone())
            }
            Node::Bytes(b) => {
                self.charge(b.len())?;
                PyValue::Bytes(b.clone())
            }
            Node::List(v) => PyValue::List(list(self, v)?),
            Node::Tuple(v) => PyValue::Tuple(list(self, v)?),
            Node::Dict(pairs) => PyValue::Dict(self.dict(pairs, depth)?),
            Node::Global(g) => PyValue::Global { module: g.0.clone(), name: g.1.clone() },
            Node::Object(o) => PyValue::Object {
                class: o.class.clone(),
                args: list(self, &o.args)?,
                state: match o.state {
                    Some(s) => Some(Box::new(self.build(s, depth + 1)?)),
                    None => None,
                },
                listitems: list(self, &o.listitems)?,
                dictitems: self.dict(&o.dictitems, depth)?,
            },
            // A bare storage: its elements as a 1-D tensor.
            Node::Storage(s) => {
                let v = View { storage: *s, offset: 0, shape: vec![s.numel], stride: vec![1] };
                PyValue::Tensor(self.tensor(&v)?)
            }
            Node::Tensor(v) => PyValue::Tensor(self.tensor(v)?),
        })
    }

    /// Dict items in insertion order; a str or int key set twice keeps its first position and its
    /// last value, as in Python.
    fn dict(&mut self, pairs: &[(Id, Id)], depth: usize) -> R<Vec<(PyValue, PyValue)>> {
        // No capacity reserved up front: the pairs may all share one value, so only the budget
        // checks in `build` bound their size.
        let mut out: Vec<(PyValue, PyValue)> = Vec::new();
        let mut index: HashMap<DictKey, usize> = HashMap::new();
        for &(k, v) in pairs {
            let k = self.build(k, depth + 1)?;
            let v = self.build(v, depth + 1)?;
            let key = match &k {
                PyValue::Str(s) => Some(DictKey::Str(s.clone())),
                PyValue::Int(i) => Some(DictKey::Int(*i)),
                PyValue::Bool(b) => Some(DictKey::Int(i64::from(*b))),
                _ => None,
            };
            if let Some(key) = key {
                if let Some(slot) = index.get(&key).and_then(|&i| out.get_mut(i)) {
                    slot.1 = v;
                    continue;
                }
                index.insert(key, out.len());
            }
            out.push((k, v));
        }
        Ok(out)
    }

    /// Copies a (checked) view out of the file, contiguous and row-major.
    fn tensor(&mut self, v: &View) -> R<Tensor> {
        let es = v.storage.dtype.size();
        let numel = v.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("tensor size overflows")?;
        let nbytes = numel.checked_mul(es).ok_or("tensor size overflows")?;
        self.charge(nbytes)?;
        let mut data = Vec::new();
        data.try_reserve_exact(nbytes).map_err(|_| format!("cannot allocate {nbytes} bytes for a tensor"))?;
        let storage_bytes = v.storage.numel.checked_mul(es).ok_or("storage size overflows")?;
        let storage = slice(self.file, v.storage.start as u64, storage_bytes as u64)?;
        let outside = || "internal: tensor view outside its storage".to_string();
        if numel > 0 {
            // Copy runs along the last dimension when it is contiguous, else single elements.
            let nd = v.shape.len();
            let (run, outer) = match (v.shape.last(), v.stride.last()) {
                (Some(&n), Some(&1)) => (n, nd - 1),
                _ => (1, nd),
            };
            let run_bytes = run * es;
            let mut idx = vec![0usize; outer];
            loop {
                let base = v.offset + idx.iter().zip(&v.stride).map(|(&i, &s)| i * s).sum::<usize>();
                let src = storage.get(base * es..base * es + run_bytes).ok_or_else(outside)?;
                data.extend_from_slice(src);
                let mut carried = true;
                for (i, &n) in idx.iter_mut().zip(&v.shape).rev() {
                    *i += 1;
                    if *i < n {
                        carried = false;
                        break;
                    }
                    *i = 0;
                }
                if carried {
                    break;
                }
            }
        }
        Tensor::new(v.storage.dtype, v.shape.clone(), data).ok_or_else(outside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    // --- builders: a pickle assembler and a minimal zip writer

    struct P(Vec<u8>);

    impl P {
        fn new(proto: u8) -> Self {
            P(vec![0x80, proto])
        }
        fn op(&mut self, b: u8) -> &mut Self {
            self.0.push(b);
            self
        }
        fn raw(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn s(&mut self, s: &str) -> &mut Self {
            self.op(b'X').raw(&(s.len() as u32).to_le_bytes()).raw(s.as_bytes())
        }
        fn int(&mut self, v: i64) -> &mut Self {
            match v {
                0..=255 => self.op(b'K').op(v as u8),
                _ if i32::try_from(v).is_ok() => self.op(b'J').raw(&(v as i32).to_le_bytes()),
                _ => self.op(0x8a).op(8).raw(&v.to_le_bytes()),
            }
        }
        fn ints(&mut self, v: &[i64]) -> &mut Self {
            self.op(b'(');
            for &x in v {
                self.int(x);
            }
            self.op(b't')
        }
        fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.op(b'c').raw(m.as_bytes()).op(b'\n').raw(n.as_bytes()).op(b'\n')
        }
        /// `_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())`.
        fn tensor(
            &mut self,
            class: &str,
            key: &str,
            numel: i64,
            offset: i64,
            shape: &[i64],
            stride: &[i64],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b'(');
            self.op(b'(').s("storage").global("torch", class).s(key).s("cpu").int(numel).op(b't').op(b'Q');
            self.int(offset).ints(shape).ints(stride).op(0x89);
            self.global("collections", "OrderedDict").op(b')').op(b'R');
            self.op(b't').op(b'R')
        }
        fn done(&mut self) -> Vec<u8> {
            self.op(b'.');
            std::mem::take(&mut self.0)
        }
    }

    #[derive(Default)]
    struct ZipOpts {
        zip64: bool,
        method: u16,
        flags: u16,
    }

    fn zip_with(entries: &[(&str, &[u8])], o: &ZipOpts) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cd = Vec::new();
        for (name, data) in entries {
            let offset = out.len() as u32;
            let crc = crc32(data);
            out.extend_from_slice(&SIG_LOCAL.to_le_bytes());
            out.extend_from_slice(&[20, 0]);
            out.extend_from_slice(&o.flags.to_le_bytes());
            out.extend_from_slice(&o.method.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            let (size32, offset32) = if o.zip64 { (u32::MAX, u32::MAX) } else { (data.len() as u32, offset) };
            cd.extend_from_slice(&SIG_CENTRAL.to_le_bytes());
            cd.extend_from_slice(&[20, 0, 45, 0]);
            cd.extend_from_slice(&o.flags.to_le_bytes());
            cd.extend_from_slice(&o.method.to_le_bytes());
            cd.extend_from_slice(&[0; 4]);
            cd.extend_from_slice(&crc.to_le_bytes());
            cd.extend_from_slice(&size32.to_le_bytes());
            cd.extend_from_slice(&size32.to_le_bytes());
            cd.extend_from_slice(&(name.len() as u16).to_le_bytes());
            cd.extend_from_slice(&(if o.zip64 { 28u16 } else { 0 }).to_le_bytes());
            cd.extend_from_slice(&[0; 10]);
            cd.extend_from_slice(&offset32.to_le_bytes());
            cd.extend_from_slice(name.as_bytes());
            if o.zip64 {
                cd.extend_from_slice(&[1, 0, 24, 0]);
                for v in [data.len() as u64, data.len() as u64, u64::from(offset)] {
                    cd.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        let (cd_offset, n) = (out.len() as u64, entries.len() as u64);
        out.extend_from_slice(&cd);
        if o.zip64 {
            let z = out.len() as u64;
            out.extend_from_slice(&SIG_ZIP64_EOCD.to_le_bytes());
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            for v in [n, n, cd.len() as u64, cd_offset] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&SIG_ZIP64_LOCATOR.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&z.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        out.extend_from_slice(&SIG_EOCD.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let (n16, size32, off32) =
            if o.zip64 { (u16::MAX, u32::MAX, u32::MAX) } else { (n as u16, cd.len() as u32, cd_offset as u32) };
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&size32.to_le_bytes());
        out.extend_from_slice(&off32.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    /// A checkpoint archive `archive/...` with `pkl` and storages `archive/data/<key>`.
    fn ckpt_with(pkl: &[u8], storages: &[(&str, Vec<u8>)], o: &ZipOpts) -> Vec<u8> {
        let names: Vec<String> = storages.iter().map(|(k, _)| format!("archive/data/{k}")).collect();
        let mut entries: Vec<(&str, &[u8])> = vec![("archive/data.pkl", pkl), ("archive/byteorder", b"little")];
        entries.extend(names.iter().zip(storages).map(|(n, (_, d))| (n.as_str(), d.as_slice())));
        entries.push(("archive/version", b"3\n"));
        zip_with(&entries, o)
    }

    fn ckpt(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        ckpt_with(pkl, storages, &ZipOpts::default())
    }

    fn load_ok(b: &[u8]) -> PyValue {
        load_bytes(b, Path::new("t.pth")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn load_err(b: &[u8]) -> String {
        match load_bytes(b, Path::new("t.pth")) {
            Err(ConvertError::TorchCheckpoint { reason, .. }) => reason,
            Err(e) => panic!("wrong error: {e}"),
            Ok(v) => panic!("loaded: {v:?}"),
        }
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn tensor<'v>(v: &'v PyValue, key: &str) -> &'v Tensor {
        v.get(key).and_then(PyValue::as_tensor).unwrap_or_else(|| panic!("no tensor {key}"))
    }

    fn s(x: &str) -> PyValue {
        PyValue::Str(x.into())
    }

    /// A dict of f32, f16, bf16 and i64 tensors (and a `max_len`), with its storages.
    fn sample() -> (Vec<u8>, Vec<(&'static str, Vec<u8>)>) {
        let mut p = P::new(2);
        p.op(b'}').op(b'q').op(0).op(b'(');
        p.s("w").tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
        p.s("h").tensor("HalfStorage", "1", 3, 0, &[3], &[1]);
        p.s("b").tensor("BFloat16Storage", "2", 2, 0, &[2], &[1]);
        p.s("i").tensor("LongStorage", "3", 3, 0, &[3], &[1]);
        p.op(b'u');
        let h: Vec<u8> = [0.5f32, -1.0, 65504.0].iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
        let b: Vec<u8> = [1.5f32, -3.0].iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
        let i: Vec<u8> = [-1i64, 0, 1 << 40].iter().flat_map(|x| x.to_le_bytes()).collect();
        let storages = vec![("0", f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), ("1", h), ("2", b), ("3", i)];
        (p.done(), storages)
    }

    // --- well-formed input

    #[test]
    fn dict_of_tensors() {
        let (pkl, st) = sample();
        let v = load_ok(&ckpt(&pkl, &st));
        let w = tensor(&v, "w");
        assert_eq!((w.dtype, w.shape.clone(), w.numel()), (DType::F32, vec![2, 3], 6));
        assert_eq!(w.to_f32(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(w.to_i64(), None);
        assert_eq!(tensor(&v, "h").to_f32(), [0.5, -1.0, 65504.0]);
        assert_eq!(tensor(&v, "h").dtype, DType::F16);
        assert_eq!(tensor(&v, "b").to_f32(), [1.5, -3.0]);
        assert_eq!(tensor(&v, "b").dtype, DType::BF16);
        assert_eq!(tensor(&v, "i").to_i64(), Some(vec![-1, 0, 1 << 40]));
        let sd = state_dict(&v).unwrap();
        assert_eq!(sd.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["w", "h", "b", "i"]);
        // zip64 records and torch's data-descriptor flag read the same
        let o = ZipOpts { zip64: true, flags: 0x0808, ..Default::default() };
        assert_eq!(load_ok(&ckpt_with(&pkl, &st, &o)), v);
    }

    #[test]
    fn every_dtype() {
        let cases: [(&str, DType, Vec<u8>, Vec<f32>); 6] = [
            (
                "DoubleStorage",
                DType::F64,
                [1.5f64, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect(),
                vec![1.5, -2.0],
            ),
            ("IntStorage", DType::I32, [-7i32, 9].iter().flat_map(|x| x.to_le_bytes()).collect(), vec![-7.0, 9.0]),
            (
                "ShortStorage",
                DType::I16,
                [-300i16, 300].iter().flat_map(|x| x.to_le_bytes()).collect(),
                vec![-300.0, 300.0],
            ),
            ("CharStorage", DType::I8, vec![0x80, 0x7f], vec![-128.0, 127.0]),
            ("ByteStorage", DType::U8, vec![0, 255], vec![0.0, 255.0]),
            ("BoolStorage", DType::Bool, vec![1, 0], vec![1.0, 0.0]),
        ];
        for (class, dtype, data, want) in cases {
            let pkl = P::new(2).tensor(class, "0", 2, 0, &[2], &[1]).done();
            let v = load_ok(&ckpt(&pkl, &[("0", data)]));
            let t = v.as_tensor().unwrap();
            assert_eq!(t.dtype, dtype);
            assert_eq!(t.to_f32(), want, "{class}");
            assert_eq!(t.to_f64().len(), 2);
            assert_eq!(t.to_i64().is_some(), !dtype.is_float());
        }
    }

    #[test]
    fn strided_views_come_back_contiguous() {
        let mut p = P::new(2);
        p.op(b'}').op(b'(');
        p.s("t").tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]); // w.t()
        p.s("col").tensor("FloatStorage", "0", 6, 1, &[2], &[3]); // w[:, 1]
        p.s("tail").tensor("FloatStorage", "0", 6, 3, &[3], &[1]); // w[1]
        p.s("scalar").tensor("FloatStorage", "0", 6, 4, &[], &[]);
        p.s("expand").tensor("FloatStorage", "1", 1, 0, &[2, 3], &[0, 0]);
        p.s("empty").tensor("FloatStorage", "0", 6, 0, &[0, 3], &[3, 1]);
        p.s("perm").tensor("FloatStorage", "2", 8, 0, &[2, 2, 2], &[1, 4, 2]); // x.permute(2, 0, 1)
        p.op(b'u');
        let pkl = p.done();
        let st = [
            ("0", f32s(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])),
            ("1", f32s(&[7.0])),
            ("2", f32s(&[0., 1., 2., 3., 4., 5., 6., 7.])),
        ];
        let v = load_ok(&ckpt(&pkl, &st));
        assert_eq!(tensor(&v, "t").shape, [3, 2]);
        assert_eq!(tensor(&v, "t").to_f32(), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(tensor(&v, "col").to_f32(), [1.0, 4.0]);
        assert_eq!(tensor(&v, "tail").to_f32(), [3.0, 4.0, 5.0]);
        assert_eq!((tensor(&v, "scalar").shape.len(), tensor(&v, "scalar").to_f32()), (0, vec![4.0]));
        assert_eq!(tensor(&v, "expand").to_f32(), [7.0; 6]);
        assert_eq!((tensor(&v, "empty").shape.clone(), tensor(&v, "empty").numel()), (vec![0, 3], 0));
        assert_eq!(tensor(&v, "perm").to_f32(), [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
    }

    #[test]
    fn ordered_dict_memo_and_shared_references() {
        let mut p = P::new(2);
        p.op(b'(');
        // a list memoized empty and filled afterwards: every GET sees it filled
        p.op(b']').op(b'q').op(1).op(b'(').int(1).int(2).op(b'e').op(b'h').op(1);
        // OrderedDict with a later duplicate key and a state_dict's `_metadata` attribute
        p.global("collections", "OrderedDict").op(b')').op(b'R').op(b'r').raw(&7u32.to_le_bytes());
        p.op(b'(').s("b").int(1).s("a").int(2).op(b'u').s("b").int(3).op(b's');
        p.op(b'}').s("_metadata").op(b'}').op(b's').op(b'b');
        p.op(b'j').raw(&7u32.to_le_bytes());
        // text PUT/GET and MEMOIZE
        p.s("x").raw(b"p30\n").op(b'0').raw(b"g30\n").op(0x94).op(b'h').op(3); // MEMOIZE stores at len(memo)
        p.op(b't');
        let v = load_ok(&ckpt(&p.done(), &[]));
        let list = PyValue::List(vec![PyValue::Int(1), PyValue::Int(2)]);
        let od = PyValue::Dict(vec![(s("b"), PyValue::Int(3)), (s("a"), PyValue::Int(2))]);
        assert_eq!(v, PyValue::Tuple(vec![list.clone(), list, od.clone(), od, s("x"), s("x")]));
    }

    #[test]
    fn unknown_classes_load_as_inert_objects() {
        // protocol 4, as RecBole writes: FRAME, MEMOIZE, STACK_GLOBAL
        let mut p = P::new(4);
        p.op(0x95).raw(&0u64.to_le_bytes());
        p.op(b'}').op(0x94).op(b'(');
        p.s("config").op(0x8c).op(27).raw(b"recbole.config.configurator").op(0x8c).op(6).raw(b"Config");
        p.op(0x93).op(0x94).op(b')').op(0x81).op(0x94);
        p.op(b'}').op(b'(').s("final_config_dict").op(b'}').op(b'(');
        p.s("MAX_ITEM_LIST_LENGTH").int(20);
        p.s("MODEL_TYPE").global("recbole.utils.enum_type", "ModelType").int(2).op(0x85).op(b'R');
        p.s("device").global("torch", "device").s("cuda").int(0).op(0x86).op(b'R');
        p.op(b'u').op(b'u').op(b'b');
        // a call that Python would execute
        p.s("evil").global("os", "system").s("echo pwned").op(0x85).op(b'R');
        // NEWOBJ_EX with kwargs; list and dict subclasses; a call on a non-global
        p.s("ex").global("m", "K").int(1).op(0x85).op(b'}').s("k").int(2).op(b's').op(0x92);
        p.s("ls").global("m", "L").op(b')').op(0x81).op(b'(').int(5).op(b'e');
        p.s("ds").global("m", "D").op(b')').op(0x81).s("q").int(6).op(b's');
        p.s("odd").op(b'N').op(b')').op(b'R');
        p.op(b'u');
        let v = load_ok(&ckpt(&p.done(), &[]));
        let cfg = v.get("config").unwrap();
        assert_eq!(cfg.class(), Some("recbole.config.configurator.Config"));
        let fcd = cfg.get("final_config_dict").unwrap();
        assert_eq!(fcd.get("MAX_ITEM_LIST_LENGTH").and_then(PyValue::as_i64), Some(20));
        assert_eq!(fcd.get("device").and_then(PyValue::as_str), Some("cuda:0"));
        let mt = fcd.get("MODEL_TYPE").unwrap();
        assert_eq!(mt.class(), Some("recbole.utils.enum_type.ModelType"));
        let PyValue::Object { class, args, state, .. } = v.get("evil").unwrap() else { panic!() };
        assert_eq!((class.as_str(), args.as_slice(), state), ("os.system", &[s("echo pwned")][..], &None));
        let PyValue::Object { args, .. } = v.get("ex").unwrap() else { panic!() };
        assert_eq!(args[1], PyValue::Dict(vec![(s("k"), PyValue::Int(2))]));
        let PyValue::Object { listitems, .. } = v.get("ls").unwrap() else { panic!() };
        assert_eq!(listitems, &[PyValue::Int(5)]);
        assert_eq!(v.get("ds").unwrap().get("q"), Some(&PyValue::Int(6)));
        assert_eq!(v.get("odd").unwrap().class(), Some("<call>"));
        assert_eq!(state_dict(&v), None);
    }

    #[test]
    fn scalars_strings_and_containers() {
        let mut p = P::new(2);
        p.op(b'(');
        p.op(b'N').op(0x88).op(0x89).raw(b"I42\n").raw(b"I01\n").raw(b"L-123L\n").raw(b"F2.5\n");
        p.int(-5).op(b'M').raw(&513u16.to_le_bytes()).op(b'G').raw(&0.1f64.to_be_bytes());
        p.op(0x8a).op(1).op(0xfe); // LONG1 -2
        p.op(0x8a).op(9).raw(&[0, 0, 0, 0, 0, 0, 0, 0, 1]); // 2**64: beyond i64
        p.op(0x8b).raw(&2i32.to_le_bytes()).raw(&[0xff, 0x7f]); // LONG4 32767
        p.raw(b"S'a\\nb\\x41'\n")
            .raw(b"Vcaf\\u00e9\n")
            .op(b'U')
            .op(2)
            .raw(b"hi")
            .op(b'T')
            .raw(&1i32.to_le_bytes())
            .op(0xff);
        p.op(0x8c).op(3).raw("é!".as_bytes()).op(0x8d).raw(&1u64.to_le_bytes()).raw(b"z");
        p.op(b'B').raw(&2u32.to_le_bytes()).raw(&[1, 2]).op(b'C').op(1).raw(&[3]);
        p.op(0x8e).raw(&1u64.to_le_bytes()).raw(&[4]).op(0x96).raw(&0u64.to_le_bytes());
        p.op(0x8f).op(b'(').int(1).int(2).op(0x90).op(b'(').int(3).op(0x91);
        p.global("__builtin__", "set").op(b']').int(4).op(b'a').op(0x85).op(b'R');
        p.global("_codecs", "encode").s("\u{ff}\u{0}").s("latin1").op(0x86).op(b'R');
        p.global("torch", "Size").int(2).int(3).op(0x86).op(0x85).op(b'R');
        p.global("collections", "defaultdict").global("__builtin__", "list").op(0x85).op(b'R').s("k").op(b']').op(b's');
        // numpy.float64(0.5) and numpy.str_('ab') as pickled by numpy
        let dtype = |p: &mut P, code: &str| {
            p.global("numpy", "dtype").s(code).op(0x89).op(0x88).op(0x87).op(b'R');
            p.op(b'(').int(3).s("<").op(b'N').op(b'N').op(b'N').int(-1).int(-1).int(0).op(b't').op(b'b');
        };
        p.global("numpy.core.multiarray", "scalar");
        dtype(&mut p, "f8");
        p.op(b'C').op(8).raw(&0.5f64.to_le_bytes()).op(0x86).op(b'R');
        p.global("numpy.core.multiarray", "scalar");
        dtype(&mut p, "U3");
        p.op(b'C').op(12).raw(&[b'a', 0, 0, 0, b'b', 0, 0, 0, 0, 0, 0, 0]).op(0x86).op(b'R');
        p.global("torch", "float16");
        // nested containers, DICT/LIST/TUPLEn, DUP, POP, POP_MARK
        p.op(b'(').int(1).op(b')').int(2).int(3).op(0x86).op(b'l').op(b'2').op(0x86);
        p.op(b'(').s("k").int(1).op(b'd').int(9).op(0x85).int(7).op(b'0').int(8).op(b'(').int(0).op(b'1').op(0x87);
        p.op(b't');
        let v = load_ok(&ckpt(&p.done(), &[]));
        let int = PyValue::Int;
        let b = |x: &[u8]| PyValue::Bytes(x.to_vec());
        let nested = PyValue::List(vec![int(1), PyValue::Tuple(vec![]), PyValue::Tuple(vec![int(2), int(3)])]);
        let want = vec![
            PyValue::None,
            PyValue::Bool(true),
            PyValue::Bool(false),
            int(42),
            PyValue::Bool(true),
            int(-123),
            PyValue::Float(2.5),
            int(-5),
            int(513),
            PyValue::Float(0.1),
            int(-2),
            PyValue::Float(18446744073709551616.0),
            int(32767),
            s("a\nbA"),
            s("café"),
            s("hi"),
            b(&[0xff]),
            s("é!"),
            s("z"),
            b(&[1, 2]),
            b(&[3]),
            b(&[4]),
            b(&[]),
            PyValue::List(vec![int(1), int(2)]),
            PyValue::List(vec![int(3)]),
            PyValue::List(vec![int(4)]),
            b(&[0xff, 0]),
            PyValue::Tuple(vec![int(2), int(3)]),
            PyValue::Dict(vec![(s("k"), PyValue::List(vec![]))]),
            PyValue::Float(0.5),
            s("ab"),
            PyValue::Global { module: "torch".into(), name: "float16".into() },
            PyValue::Tuple(vec![nested.clone(), nested]),
            PyValue::Tuple(vec![PyValue::Dict(vec![(s("k"), int(1))]), PyValue::Tuple(vec![int(9)]), int(8)]),
        ];
        assert_eq!(v, PyValue::Tuple(want));
        assert_eq!(v.as_list().map(<[PyValue]>::len), Some(34));
    }

    #[test]
    fn parameters_and_tensor_subclasses_are_tensors() {
        let mut p = P::new(2);
        p.op(b'(');
        p.global("torch._utils", "_rebuild_parameter");
        p.op(b'(').tensor("FloatStorage", "0", 2, 0, &[2], &[1]).op(0x88).global("collections", "OrderedDict");
        p.op(b')').op(b'R').op(b't').op(b'R');
        p.global("torch._tensor", "_rebuild_from_type_v2").op(b'(');
        p.global("torch._utils", "_rebuild_tensor_v2").global("torch", "Tensor");
        // the arguments of _rebuild_tensor_v2, then the Python attributes
        p.op(b'(').op(b'(').s("storage").global("torch", "FloatStorage").s("0").s("cpu").int(2).op(b't').op(b'Q');
        p.int(1).ints(&[1]).ints(&[1]).op(0x89).global("collections", "OrderedDict").op(b')').op(b'R').op(b't');
        p.op(b'}').s("foo").s("bar").op(b's').op(b't').op(b'R');
        p.op(b't');
        let v = load_ok(&ckpt(&p.done(), &[("0", f32s(&[1.0, 2.0]))]));
        let items = v.as_list().unwrap();
        assert_eq!(items[0].as_tensor().unwrap().to_f32(), [1.0, 2.0]);
        assert_eq!(items[1].as_tensor().unwrap().to_f32(), [2.0]);
    }

    /// `tests/data/torch_small.pth`, written by torch 2.8:
    /// `torch.save({"w": w, "wt": w.t(), "h": h, "max_len": 20, "item_tokens": ["[PAD]", "a"]})`
    /// with `w = [[1, -2, 3.5], [0.25, 5, -6]]`, `h = [[0.5, -1], [2, 65504]]` in float16.
    const REAL: &[u8] = include_bytes!("../tests/data/torch_small.pth");

    #[test]
    fn real_torch_file() {
        let v = load_ok(REAL);
        assert_eq!(tensor(&v, "w").to_f32(), [1.0, -2.0, 3.5, 0.25, 5.0, -6.0]);
        assert_eq!(tensor(&v, "wt").shape, [3, 2]);
        assert_eq!(tensor(&v, "wt").to_f32(), [1.0, 0.25, -2.0, 5.0, 3.5, -6.0]);
        assert_eq!((tensor(&v, "h").dtype, tensor(&v, "h").to_f32()), (DType::F16, vec![0.5, -1.0, 2.0, 65504.0]));
        assert_eq!(v.get("max_len").and_then(PyValue::as_i64), Some(20));
        assert_eq!(v.get("item_tokens"), Some(&PyValue::List(vec![s("[PAD]"), s("a")])));
        assert_eq!(state_dict(&v), None); // not all tensors
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.pth");
        std::fs::write(&path, REAL).unwrap();
        assert_eq!(load(&path).unwrap(), v);
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(load(&path), Err(ConvertError::TorchCheckpoint { .. })));
        assert!(matches!(load(&dir.path().join("missing.pth")), Err(ConvertError::Io { .. })));
    }

    // --- hostile input

    #[test]
    fn every_truncation_is_an_error() {
        let (pkl, st) = sample();
        for file in [ckpt(&pkl, &st), REAL.to_vec()] {
            for cut in 0..file.len() {
                assert!(load_bytes(&file[..cut], Path::new("t")).is_err(), "cut at {cut} loaded");
            }
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let (pkl, st) = sample();
        for file in [ckpt(&pkl, &st), REAL.to_vec()] {
            for at in 0..file.len() {
                for flip in [0xff, 0x01, 0x80] {
                    let mut f = file.clone();
                    f[at] ^= flip;
                    let _ = load_bytes(&f, Path::new("t"));
                }
            }
        }
        // a corrupted pickle with a correct CRC reaches the VM
        for at in 2..pkl.len() - 1 {
            for flip in [0xff, 0x01, 0x80, 0x10] {
                let mut p = pkl.clone();
                p[at] ^= flip;
                let _ = load_bytes(&ckpt(&p, &st), Path::new("t"));
            }
        }
    }

    #[test]
    fn hostile_tensors_are_errors() {
        let one = |class: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]| {
            let pkl = P::new(2).tensor(class, "0", numel, offset, shape, stride).done();
            load_err(&ckpt(&pkl, &[("0", f32s(&[1.0; 6]))]))
        };
        assert!(one("FloatStorage", 7, 0, &[7], &[1]).contains("do not fit in its 24-byte entry"));
        assert!(one("FloatStorage", i64::MAX, 0, &[1], &[1]).contains("do not fit"));
        assert!(one("FloatStorage", 6, 1, &[2, 3], &[3, 1]).contains("reads outside its storage"));
        assert!(one("FloatStorage", 6, 0, &[3, 2], &[1, 4]).contains("reads outside its storage"));
        assert!(one("FloatStorage", 6, 0, &[2], &[i64::MAX]).contains("reads outside its storage"));
        assert!(one("FloatStorage", 6, 7, &[0], &[1]).contains("reads outside its storage"));
        assert!(one("FloatStorage", 6, -1, &[1], &[1]).contains("offset"));
        assert!(one("FloatStorage", 6, 0, &[-1], &[1]).contains("non-negative"));
        assert!(one("FloatStorage", 6, 0, &[2, 3], &[1]).contains("differ in length"));
        assert!(one("FloatStorage", 6, 0, &[1 << 32, 1 << 32, 1 << 32], &[0, 0, 0]).contains("overflows"));
        assert!(one("FloatStorage", 6, 0, &[1 << 40], &[0]).contains("exceed 4× the file size"));
        assert!(
            one("ComplexFloatStorage", 1, 0, &[1], &[1]).contains("unsupported storage type torch.ComplexFloatStorage")
        );
        let pkl = P::new(2).tensor("FloatStorage", "9", 1, 0, &[1], &[1]).done();
        assert!(load_err(&ckpt(&pkl, &[])).contains("no entry archive/data/9"));
        let pkl = P::new(2).op(b'(').s("storage").int(1).op(b't').op(b'Q').done();
        assert!(load_err(&ckpt(&pkl, &[])).contains("persistent id"));
        assert!(load_err(&ckpt(&P::new(2).raw(b"Pkey\n").done(), &[])).contains("persistent id"));
        let pkl = P::new(2).global("torch._utils", "_rebuild_tensor_v2").int(1).op(0x85).op(b'R').done();
        assert!(load_err(&ckpt(&pkl, &[])).contains("at least 4 arguments"));
    }

    #[test]
    fn hostile_pickles_are_errors() {
        let err = |pkl: Vec<u8>| load_err(&ckpt(&pkl, &[]));
        let e = err(P::new(2).op(b'N').op(b'i').done());
        assert!(e.contains("at byte 3 (INST): unsupported pickle opcode 0x69"), "{e}");
        assert!(err(P::new(2).op(0xf0).done()).contains("unsupported pickle opcode 0xf0"));
        assert!(err(P::new(6).op(b'N').done()).contains("protocol 6"));
        assert!(err(P::new(2).op(0x8d).raw(&u64::MAX.to_le_bytes()).done()).contains("bytes wanted"));
        assert!(err(P::new(2).op(b'X').raw(&u32::MAX.to_le_bytes()).done()).contains("bytes wanted"));
        assert!(err(P::new(2).op(0x8b).raw(&(-1i32).to_le_bytes()).done()).contains("negative length"));
        assert!(err(P::new(2).op(0x95).raw(&u64::MAX.to_le_bytes()).done()).contains("frame"));
        assert!(err(P::new(2).op(b'X').raw(&1u32.to_le_bytes()).op(0xff).done()).contains("UTF-8"));
        assert!(err(P::new(2).op(b'h').op(3).done()).contains("memo entry 3"));
        assert!(err(P::new(2).op(b'q').op(3).done()).contains("underflow"));
        assert!(err(P::new(2).int(1).op(0x86).done()).contains("underflow"));
        assert!(err(P::new(2).int(1).op(b'a').done()).contains("underflow"));
        assert!(err(P::new(2).op(b'1').done()).contains("no MARK"));
        assert!(err(P::new(2).int(1).int(2).op(b'a').done()).contains("cannot append to a int"));
        assert!(err(P::new(2).op(b']').int(1).int(2).op(b's').done()).contains("cannot set items of a list"));
        assert!(err(P::new(2).op(b'}').op(b'(').int(1).op(b'u').done()).contains("odd number"));
        assert!(err(P::new(2).op(b'N').op(b'N').op(b'R').done()).contains("not a tuple"));
        assert!(err(P::new(2).int(1).int(2).op(0x93).done()).contains("not strings"));
        assert!(err(P::new(2).raw(b"Ixyz\n").done()).contains("not an int"));
        assert!(err(P::new(2).raw(b"I12").0.clone()).contains("unterminated line"));
        assert!(err(P::new(2).op(b'N').0.clone()).contains("no STOP"));
        assert!(err(P::new(2).done()).contains("underflow"));
        // a list containing itself; nesting beyond the bound
        assert!(err(P::new(2).op(b']').op(b'2').op(b'a').done()).contains("nested deeper"));
        let mut deep = P::new(2);
        deep.raw(&[b']'; 100_000]).raw(&[b'a'; 99_999]);
        assert!(err(deep.done()).contains("nested deeper"));
        // each list holds the previous one twice: 2^60 values once expanded
        let mut bomb = P::new(2);
        bomb.op(b']').op(b'q').op(0);
        for _ in 0..60 {
            bomb.op(b'(').op(b'h').op(0).op(b'h').op(0).op(b'l').op(b'q').op(0);
        }
        assert!(err(bomb.done()).contains("shared references expand"));
        // the same string shared a million times: bounded by the output budget
        let mut strings = P::new(2);
        strings.op(b'(').op(0x8d).raw(&(1u64 << 20).to_le_bytes()).raw(&vec![b'x'; 1 << 20]).op(b'q').op(0);
        strings.raw(&[b'h', 0].repeat(300)).op(b'l');
        assert!(err(strings.done()).contains("exceed 4× the file size"));
        // one big tuple passed to many calls
        let mut calls = P::new(2);
        calls.global("m", "f").op(b'q').op(0).op(b'(').op(b'N').raw(&[b'2'; 100_000]).op(b't').op(b'q').op(1);
        calls.raw(&[b'h', 0, b'h', 1, b'R', b'0'].repeat(1000)).op(b'N');
        assert!(err(calls.done()).contains("copied into calls"));
        // a dict of a million pairs that all share one value, in a list twice
        let mut dict = P::new(2);
        dict.op(b'(').op(b'}').op(b'(').op(b'N').raw(&vec![b'2'; 2_000_000 - 1]).op(b'u').op(b'2').op(b'l');
        assert!(err(dict.done()).contains("shared references expand"));
        let mut marks = P::new(2);
        marks.raw(&vec![b'('; MAX_MARKS + 1]);
        assert!(err(marks.done()).contains("nested MARKs"));
    }

    #[test]
    fn hostile_archives_are_errors() {
        let (pkl, st) = sample();
        let good = ckpt(&pkl, &st);
        let e = load_err(&ckpt_with(&pkl, &st, &ZipOpts { method: 8, ..Default::default() }));
        assert!(e.contains("compression method 8"), "{e}");
        assert!(load_err(&ckpt_with(&pkl, &st, &ZipOpts { flags: 1, ..Default::default() })).contains("encrypted"));
        // a flipped data byte fails the CRC
        let mut bad = good.clone();
        let at = good.windows(4).position(|w| w == f32s(&[2.0]).as_slice()).unwrap();
        bad[at] ^= 1;
        assert!(load_err(&bad).contains("CRC"));
        // the end record: entry count, directory offset
        let eocd = good.len() - 22;
        let mut bad = good.clone();
        bad[eocd + 10] = 0xff;
        bad[eocd + 8] = 0xff;
        assert!(load_err(&bad).contains("entries"));
        let mut bad = good.clone();
        bad[eocd + 16..eocd + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(load_err(&bad).contains("zip64"));
        let mut bad = good.clone();
        bad[eocd + 16..eocd + 20].copy_from_slice(&(good.len() as u32).to_le_bytes());
        assert!(load_err(&bad).contains("outside the file"));
        // a central header pointing at a bogus local header
        let cd = u32::from_le_bytes(good[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        let mut bad = good.clone();
        bad[cd + 42..cd + 46].copy_from_slice(&5u32.to_le_bytes());
        assert!(load_err(&bad).contains("no local header"));
        let two = zip_with(&[("a/data.pkl", &pkl), ("b/data.pkl", &pkl)], &ZipOpts::default());
        assert!(load_err(&two).contains("several archives"));
        let none = zip_with(&[("a/b/data.pkl", &pkl)], &ZipOpts::default());
        assert!(load_err(&none).contains("no <archive>/data.pkl"));
        let dup = zip_with(&[("a/data.pkl", &pkl), ("a/data.pkl", &pkl)], &ZipOpts::default());
        assert!(load_err(&dup).contains("twice"));
        let big = zip_with(&[("a/data.pkl", &pkl), ("a/byteorder", b"big")], &ZipOpts::default());
        assert!(load_err(&big).contains("little-endian"));
        // not zip archives at all
        let mut legacy = LEGACY_MAGIC.to_vec();
        legacy.extend_from_slice(b".\x80\x02M\xe9\x03.");
        assert!(load_err(&legacy).contains("re-save it with torch >= 1.6"));
        assert!(load_err(&pkl).contains("bare pickle"));
        assert!(load_err(&good[..good.len() - 1]).contains("truncated zip"));
        assert!(load_err(b"hello").contains("not a torch.save zip"));
        assert!(load_err(b"").contains("not a torch.save zip"));
    }

    #[test]
    fn values_stay_small() {
        // the VM's memory bound (MAX_VALUES values) assumes this
        assert!(std::mem::size_of::<Node>() <= 32);
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let bytewise = !long.iter().fold(!0u32, |c, &b| CRC_TABLES[0][((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8));
        assert_eq!(crc32(&long), bytewise);
    }
}
