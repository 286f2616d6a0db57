//! Any bytes: `GgufFile::open` returns, and what it accepts can be read without panicking.
#![no_main]

use delrec_format::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::input_file(data);
    if let Ok(f) = GgufFile::open(&path) {
        for v in f.kv().values() {
            let _ = (v.summary(), v.as_u64(), v.as_f64(), v.as_str_array());
        }
        for t in f.tensors() {
            if let Some(b) = f.tensor_bytes(t) {
                assert!(t.offset as usize + b.len() <= data.len(), "a tensor view outside the file");
            }
        }
    }
});
