//! `uniffi-bindgen`: generates the Kotlin and Swift sources from the built library, e.g.
//! `cargo run --release -p delrec-ffi --features cli --bin uniffi-bindgen -- generate \
//!    --library target/release/libdelrec_ffi.so --language kotlin --out-dir out/`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
