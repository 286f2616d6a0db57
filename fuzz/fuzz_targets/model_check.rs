//! Any bytes: parsing, `model_check::check_model` and the base identity return without
//! panicking; what the check accepts satisfies what it promises llama.cpp.
#![no_main]

use delrec_format::gguf::GgufFile;
use delrec_format::model_check::{check_model, MAX_LAYERS};
use delrec_format::BaseIdentity;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::input_file(data);
    if let Ok(f) = GgufFile::open(&path) {
        if let Ok(m) = check_model(&f) {
            assert!(m.n_layer >= 1 && m.n_layer as u64 <= MAX_LAYERS);
            assert!(m.n_embd > 0 && m.n_head > 0 && m.n_head_kv > 0 && m.n_head % m.n_head_kv == 0);
            assert!(m.head_dim > 0 && m.head_dim % 2 == 0);
            assert!(m.rms_eps.is_finite() && m.rms_eps > 0.0);
        }
        let _ = BaseIdentity::of_model(&f);
    }
});
