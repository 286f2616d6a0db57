//! `delrec-convert quantize`: llama.cpp's own quantizer on an existing GGUF, published atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use delrec_format::gguf::GgufFile;

use crate::error::{ConvertError, Result};
use crate::llama::{self, ftype};
use crate::model::{out_dir, publish, summarize};
use crate::progress;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantType {
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_k_m")]
    Q4KM,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "f16")]
    F16,
}

impl QuantType {
    pub fn ftype(self) -> u32 {
        match self {
            QuantType::Q8_0 => ftype::MOSTLY_Q8_0,
            QuantType::Q4_0 => ftype::MOSTLY_Q4_0,
            QuantType::Q4KM => ftype::MOSTLY_Q4_K_M,
            QuantType::Q4_1 => ftype::MOSTLY_Q4_1,
            QuantType::F16 => ftype::MOSTLY_F16,
        }
    }
}

#[derive(Debug)]
pub struct QuantReport {
    pub out: PathBuf,
    pub types: BTreeMap<String, usize>,
    pub bytes: u64,
}

/// Quantizes `input` into `output`; a failure leaves no output file.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    ty: QuantType,
    allow_requantize: bool,
    threads: usize,
) -> Result<QuantReport> {
    // Our own reader first: a clearer message for a file that is not a GGUF model at all.
    let f = GgufFile::open(input)?;
    if f.get("general.architecture").and_then(|v| v.as_str()) == Some(delrec_format::pack::PACK_ARCH) {
        return Err(ConvertError::Usage(format!("{} is a delrec pack, not a model", input.display())));
    }
    drop(f);
    let dir = out_dir(output);
    let tmp = tempfile::Builder::new()
        .prefix(".delrec-convert-")
        .suffix(".gguf")
        .tempfile_in(&dir)
        .map_err(|e| ConvertError::io(&dir, e))?;
    let sp = progress::spinner("quantizing");
    let r = llama::quantize(input, tmp.path(), ty.ftype(), allow_requantize, threads);
    sp.finish_and_clear();
    r?;
    // The quantizer writes what it is asked; make sure the result reads back.
    GgufFile::open(tmp.path())?;
    publish(tmp, output)?;
    let (types, _, bytes) = summarize(output)?;
    Ok(QuantReport { out: output.to_path_buf(), types, bytes })
}
