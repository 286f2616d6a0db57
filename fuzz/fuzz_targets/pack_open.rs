//! Any bytes: `Pack::open` returns, and an opened pack's reads never panic.
#![no_main]

use delrec_format::Pack;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::input_file(data);
    if let Ok(p) = Pack::open(&path) {
        for i in 0..=p.n_items() as u32 {
            let _ = (p.item_id(i), p.item_title(i), p.item_text(i), p.item_tokens(i));
        }
        for s in 0..=p.soft_prompts.len() {
            let _ = p.soft_prompt_values(s);
        }
        let _ = p.template.terminator();
        if let Some(m) = &p.seq {
            assert_eq!(m.validate(p.n_items()), Ok(()), "an opened pack with an invalid sequential model");
        }
    }
});
