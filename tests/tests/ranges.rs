//! Models and packs read in place from part of a larger file, as an Android app reads its
//! uncompressed APK assets through an `AssetFileDescriptor` (descriptor + offset + length).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use delrec_runtime::{Engine, EngineConfig, Error, FileError, FileRange, KvType, OpenOptions, RankRequest, Ranking};
use delrec_tests::{catalog_ids, model, pack};

fn cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

/// A file like an APK: junk, the model at `model_at`, junk, the pack, junk. Returns the path
/// and both (offset, length).
fn bundle(dir: &Path, model: &Path, pack: &Path, model_at: u64) -> (PathBuf, (u64, u64), (u64, u64)) {
    let (m, p) = (std::fs::read(model).unwrap(), std::fs::read(pack).unwrap());
    let path = dir.join(format!("app-{model_at}.apk"));
    let mut f = File::create(&path).unwrap();
    f.write_all(&vec![0x5a; model_at as usize]).unwrap();
    f.write_all(&m).unwrap();
    f.write_all(&[0xa5; 13]).unwrap();
    let pack_at = model_at + m.len() as u64 + 13;
    f.write_all(&p).unwrap();
    f.write_all(&[0x11; 1000]).unwrap();
    (path, (model_at, m.len() as u64), (pack_at, p.len() as u64))
}

fn ranked(e: &Engine) -> Ranking {
    let ids = catalog_ids();
    e.rank(&RankRequest { history: vec![ids[0].clone(), ids[3].clone()], ..Default::default() }).unwrap()
}

fn tiny() -> (PathBuf, PathBuf) {
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    (m, p)
}

#[test]
fn a_model_and_pack_inside_a_larger_file_rank_as_the_files_do() {
    let (m, p) = tiny();
    let want = ranked(&Engine::open(&m, &p, cfg()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    // Aligned (mapped in place) and misaligned (llama.cpp cannot map it: read into memory).
    for at in [65536, 4096 + 7] {
        let (apk, (mo, ml), (po, pl)) = bundle(dir.path(), &m, &p, at);
        let f = File::open(&apk).unwrap();
        let model = FileRange::new(f.try_clone().unwrap(), mo, ml, "apk:model.gguf");
        let pack = FileRange::new(f, po, pl, "apk:pack.gguf");
        // The pack pins the model's sha256: the digest of the range is the file's.
        let e = Engine::open_ranges(&model, &pack, cfg(), &OpenOptions::default()).unwrap();
        let got = ranked(&e);
        assert_eq!(got.items.len(), want.items.len());
        for (a, b) in got.items.iter().zip(&want.items) {
            assert_eq!((&a.id, a.score), (&b.id, b.score), "model at offset {at}");
        }
    }
}

#[cfg(unix)]
#[test]
fn a_borrowed_descriptor_is_duplicated_and_bad_ones_are_typed_errors() {
    use std::os::fd::AsRawFd;
    let (m, p) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let (apk, (mo, ml), (po, pl)) = bundle(dir.path(), &m, &p, 8192);
    let f = File::open(&apk).unwrap();
    let model = FileRange::from_fd(f.as_raw_fd(), mo, ml, "apk:model.gguf").unwrap();
    let pack = FileRange::from_fd(f.as_raw_fd(), po, pl, "apk:pack.gguf").unwrap();
    drop(f); // the app closes its descriptor: ours are copies
    let e = Engine::open_ranges(&model, &pack, cfg(), &OpenOptions::default()).unwrap();
    assert!(!ranked(&e).items.is_empty());

    let io = |r: Result<FileRange, Error>| matches!(r, Err(Error::BadFile(FileError::Io { .. })));
    assert!(io(FileRange::from_fd(-1, 0, 10, "x")));
    assert!(io(FileRange::from_fd(1 << 29, 0, 10, "x")), "a descriptor that is not open");

    let f = File::open(&apk).unwrap();
    let open = |mo: u64, ml: u64| {
        let model = FileRange::new(f.try_clone().unwrap(), mo, ml, "apk:model.gguf");
        let pack = FileRange::new(f.try_clone().unwrap(), po, pl, "apk:pack.gguf");
        Engine::open_ranges(&model, &pack, cfg(), &OpenOptions::default())
    };
    let invalid = |r: Result<Engine, Error>| matches!(r, Err(Error::BadFile(FileError::Invalid { .. })));
    let size = std::fs::metadata(&apk).unwrap().len();
    assert!(invalid(open(mo, size)), "a range past the end of the file");
    assert!(invalid(open(mo, ml - 100)), "a range that cuts the model short");
    assert!(invalid(open(mo - 16, ml)), "a range that starts before the model (junk, not GGUF)");
    assert!(invalid(open(u64::MAX - 4, 8)), "an offset that overflows");
    // A pack range that is really the model: not a pack.
    let model = FileRange::new(f.try_clone().unwrap(), mo, ml, "apk:model.gguf");
    let wrong = FileRange::new(f.try_clone().unwrap(), mo, ml, "apk:pack.gguf");
    assert!(matches!(
        Engine::open_ranges(&model, &wrong, cfg(), &OpenOptions::default()),
        Err(Error::BadFile(FileError::Invalid { .. }))
    ));
    // Still usable after all that.
    assert!(open(mo, ml).is_ok());
}
