//! Any string: the template parser returns; what it accepts obeys the structural rules.
#![no_main]

use delrec_format::template::{parse, validate, Piece};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(pieces) = parse(s) {
        assert!(validate(&pieces).is_ok());
        assert_eq!(pieces.iter().filter(|p| **p == Piece::History).count(), 1);
        assert_eq!(pieces.iter().filter(|p| **p == Piece::Candidate).count(), 1);
    }
});
