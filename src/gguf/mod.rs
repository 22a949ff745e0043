//! GGUF files (llama.cpp's model format), versions 2 and 3: the header, every metadata value
//! type (arrays included), the tensor table and the aligned data section, memory-mapped and
//! never copied whole. Every count, length and offset is checked against the file before it
//! is used, as the safetensors path does: a hostile or truncated file is an [`Error::Gguf`]
//! naming it, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::loader::Shard;

use crate::{Error, Result};

mod config;
mod dequant;
mod tokenizer;
mod weights;

pub use weights::{Source, packed_as};

pub use dequant::DEQUANTIZED;

/// Whether `path` names a GGUF file (a file ending in `.gguf`) rather than a model folder.
pub fn is_gguf_path(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a GGUF tensor has.
pub const MAX_DIMS: usize = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7 (a byte, 0 or 1).
    Bool(bool),
    /// Type 8 (a u64 length, then UTF-8).
    String(String),
    /// Type 9 (the items' type, a u64 count, then the items).
    Array(Vec<Value>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl Value {
    /// An integer value of any width, if it is one and fits.
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

    /// A float value (or an integer, as a float).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A ggml tensor type: its id, name, and the elements and bytes of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorType {
    /// The id in the file.
    pub id: u32,
    /// ggml's name (`Q4_K`).
    pub name: &'static str,
    /// Elements per block.
    pub block: usize,
    /// Bytes per block.
    pub bytes: usize,
}

/// ggml's tensor types (ggml.h `ggml_type`, with their block sizes from ggml-common.h).
pub const TENSOR_TYPES: &[TensorType] = &[
    TensorType {
        id: 0,
        name: "F32",
        block: 1,
        bytes: 4,
    },
    TensorType {
        id: 1,
        name: "F16",
        block: 1,
        bytes: 2,
    },
    TensorType {
        id: 2,
        name: "Q4_0",
        block: 32,
        bytes: 18,
    },
    TensorType {
        id: 3,
        name: "Q4_1",
        block: 32,
        bytes: 20,
    },
    TensorType {
        id: 6,
        name: "Q5_0",
        block: 32,
        bytes: 22,
    },
    TensorType {
        id: 7,
        name: "Q5_1",
        block: 32,
        bytes: 24,
    },
    TensorType {
        id: 8,
        name: "Q8_0",
        block: 32,
        bytes: 34,
    },
    TensorType {
        id: 9,
        name: "Q8_1",
        block: 32,
        bytes: 36,
    },
    TensorType {
        id: 10,
        name: "Q2_K",
        block: 256,
        bytes: 84,
    },
    TensorType {
        id: 11,
        name: "Q3_K",
        block: 256,
        bytes: 110,
    },
    TensorType {
        id: 12,
        name: "Q4_K",
        block: 256,
        bytes: 144,
    },
    TensorType {
        id: 13,
        name: "Q5_K",
        block: 256,
        bytes: 176,
    },
    TensorType {
        id: 14,
        name: "Q6_K",
        block: 256,
        bytes: 210,
    },
    TensorType {
        id: 15,
        name: "Q8_K",
        block: 256,
        bytes: 292,
    },
    TensorType {
        id: 16,
        name: "IQ2_XXS",
        block: 256,
        bytes: 66,
    },
    TensorType {
        id: 17,
        name: "IQ2_XS",
        block: 256,
        bytes: 74,
    },
    TensorType {
        id: 18,
        name: "IQ3_XXS",
        block: 256,
        bytes: 98,
    },
    TensorType {
        id: 19,
        name: "IQ1_S",
        block: 256,
        bytes: 50,
    },
    TensorType {
        id: 20,
        name: "IQ4_NL",
        block: 32,
        bytes: 18,
    },
    TensorType {
        id: 21,
        name: "IQ3_S",
        block: 256,
        bytes: 110,
    },
    TensorType {
        id: 22,
        name: "IQ2_S",
        block: 256,
        bytes: 82,
    },
    TensorType {
        id: 23,
        name: "IQ4_XS",
        block: 256,
        bytes: 136,
    },
    TensorType {
        id: 24,
        name: "I8",
        block: 1,
        bytes: 1,
    },
    TensorType {
        id: 25,
        name: "I16",
        block: 1,
        bytes: 2,
    },
    TensorType {
        id: 26,
        name: "I32",
        block: 1,
        bytes: 4,
    },
    TensorType {
        id: 27,
        name: "I64",
        block: 1,
        bytes: 8,
    },
    TensorType {
        id: 28,
        name: "F64",
        block: 1,
        bytes: 8,
    },
    TensorType {
        id: 29,
        name: "IQ1_M",
        block: 256,
        bytes: 56,
    },
    TensorType {
        id: 30,
        name: "BF16",
        block: 1,
        bytes: 2,
    },
    TensorType {
        id: 34,
        name: "TQ1_0",
        block: 256,
        bytes: 54,
    },
    TensorType {
        id: 35,
        name: "TQ2_0",
        block: 256,
        bytes: 66,
    },
];

/// One tensor of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as ggml orders them.
    pub dims: Vec<u64>,
    /// Its storage type.
    pub ty: TensorType,
    /// Where its bytes start, from the start of the data section.
    pub offset: u64,
    /// How many bytes it takes.
    pub bytes: u64,
}

/// A GGUF file: its metadata and tensor table, its bytes mapped.
pub struct Gguf {
    path: PathBuf,
    bytes: Shard,
    /// The format version (2 or 3).
    pub version: u32,
    /// Every metadata key and value, sorted by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts in the file.
    pub data_start: u64,
}

impl Gguf {
    /// Maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Gguf> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only; a file changed underneath us can give wrong numbers
        // but not unsafety in our code, which only reads bytes out of it, bounds-checked.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Shard::Mapped(map))
    }

    /// Parses a GGUF file already in memory (`path` only names it in errors).
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Gguf> {
        Self::parse(path, Shard::Owned(bytes))
    }

    fn parse(path: &Path, bytes: Shard) -> Result<Gguf> {
        let mut r = Reader {
            path,
            bytes: &bytes,
            at: 0,
        };
        if r.take(4)? != MAGIC {
            return Err(r.bad("is not a GGUF file (no \"GGUF\" magic)".into()));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!(
                "is GGUF version {version}; wgpt reads versions 2 and 3"
            )));
        }
        let n_tensors = r.count("tensor count", 8 + 4 + 8 + 4 + 8)?;
        let n_kv = r.count("metadata count", 8 + 4 + 1)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.bad(format!("has metadata key {key:?} twice")));
            }
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            tensors.push(r.tensor_info()?);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(r.bad(format!("has general.alignment {v:?}, not a power of two"))),
            },
        };
        let data_start = (r.at as u64).next_multiple_of(alignment);
        let g = Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            bytes,
        };
        g.check_tensors(alignment)?;
        Ok(g)
    }

    /// Every tensor aligned, inside the file, and overlapping none other.
    fn check_tensors(&self, alignment: u64) -> Result<()> {
        let data = (self.bytes.len() as u64).saturating_sub(self.data_start);
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            if !t.offset.is_multiple_of(alignment) {
                let msg = format!(
                    "tensor {:?} starts at {}, not a multiple of the alignment {alignment}",
                    t.name, t.offset
                );
                return Err(self.bad(msg));
            }
            match t.offset.checked_add(t.bytes) {
                Some(end) if end <= data => spans.push((t.offset, end, &t.name)),
                _ => {
                    let msg = format!(
                        "tensor {:?} claims bytes {}..+{} of a {data}-byte data section; the file is truncated or corrupt",
                        t.name, t.offset, t.bytes
                    );
                    return Err(self.bad(msg));
                }
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                let msg = format!("tensors {:?} and {:?} overlap", w[0].2, w[1].2);
                return Err(self.bad(msg));
            }
        }
        Ok(())
    }

    fn bad(&self, msg: String) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            msg,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of `t` (one of this file's tensors: checked against the file at parse).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_start + t.offset) as usize;
        self.bytes
            .get(start..start + t.bytes as usize)
            .unwrap_or_default()
    }

    /// Lets the OS drop the mapped pages of `t` (re-read from the file if used again), so a
    /// load's resident memory stays near one tensor.
    pub fn release(&self, t: &TensorInfo) {
        self.release_range(t, 0, t.bytes as usize);
    }

    /// [`Gguf::release`] for bytes `from .. to` of `t`'s data.
    pub fn release_range(&self, t: &TensorInfo, from: usize, to: usize) {
        let start = (self.data_start + t.offset) as usize;
        self.bytes.release(start + from, start + to);
    }

    /// How many tensors of each type the file holds, by type name.
    pub fn type_histogram(&self) -> BTreeMap<&'static str, usize> {
        let mut h = BTreeMap::new();
        for t in &self.tensors {
            *h.entry(t.ty.name).or_insert(0) += 1;
        }
        h
    }
}

/// A bounds-checked cursor over the file's bytes.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

/// Arrays nest at most this deep (GGUF writers nest none; a hostile file must not recurse
/// without end).
const MAX_NESTING: usize = 4;

impl Reader<'_> {
    fn bad(&self, msg: String) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let Some(s) = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
        else {
            return Err(self.bad(format!(
                "ends at byte {} while {n} more bytes were expected at {}; the file is truncated",
                self.bytes.len(),
                self.at
            )));
        };
        self.at += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min_bytes` long: more than the rest of the file could
    /// hold is refused before anything is allocated for them.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize> {
        let n = self.u64()?;
        let room = (self.bytes.len() - self.at) / min_bytes.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= room => Ok(n),
            _ => Err(self.bad(format!(
                "has a {what} of {n}, more than its {} remaining bytes can hold; the file is corrupt",
                self.bytes.len() - self.at
            ))),
        }
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count("string length", 1)?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| self.bad("holds a string that is not UTF-8".into()))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.bad(format!("holds a bool of value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 if depth < MAX_NESTING => {
                let item = self.u32()?;
                // Every item takes at least one byte.
                let n = self.count("array length", 1)?;
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            9 => return Err(self.bad("nests arrays deeper than any GGUF writer does".into())),
            other => {
                return Err(self.bad(format!("holds a metadata value of unknown type {other}")));
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string()?;
        let n_dims = self.u32()? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.bad(format!(
                "tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(self.u64()?);
        }
        let id = self.u32()?;
        let offset = self.u64()?;
        let Some(&ty) = TENSOR_TYPES.iter().find(|t| t.id == id) else {
            return Err(self.bad(format!("tensor {name:?} has unknown type {id}")));
        };
        let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let bytes = match elements {
            Some(n) if dims[0].is_multiple_of(ty.block as u64) => {
                let bytes = (n / ty.block as u64).checked_mul(ty.bytes as u64);
                bytes.ok_or_else(|| self.bad(format!("tensor {name:?} is larger than any file")))?
            }
            Some(_) => {
                return Err(self.bad(format!(
                    "tensor {name:?} ({}) has rows of {} elements, not whole blocks of {}",
                    ty.name, dims[0], ty.block
                )));
            }
            None => {
                return Err(self.bad(format!(
                    "tensor {name:?} has dimensions {dims:?} whose product overflows"
                )));
            }
        };
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            bytes,
        })
    }
}
