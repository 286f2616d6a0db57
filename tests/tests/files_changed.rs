//! Files changed under an open engine (issue #22): a pack truncated or rewritten in place, a
//! model replaced by an atomic rename. Each test runs in this process: a fault (SIGBUS from a
//! mapped page that vanished) kills the test binary, which fails the run.

use delrec_runtime::{Engine, EngineConfig, Error, FileError, KvType, RankRequest, RecommendRequest};
use delrec_tests::{catalog_ids, model, seq_pack};

fn cfg() -> EngineConfig {
    EngineConfig { kv_type: KvType::F32, flash_attention: false, threads: 2, ..Default::default() }
}

fn calls(e: &Engine) -> (Vec<String>, Vec<String>) {
    let ids = catalog_ids();
    let history = vec![ids[0].clone(), ids[3].clone()];
    let ranked = e.rank(&RankRequest { history: history.clone(), top_k: Some(5), ..Default::default() }).unwrap();
    let recs =
        e.recommend(&RecommendRequest { history: history.clone(), n: 5, retrieve: Some(8), ..Default::default() });
    let mut s = e.session(None).unwrap();
    s.set_history(&history).unwrap();
    let via_session = s.rank(&RankRequest { top_k: Some(5), ..Default::default() }).unwrap();
    assert_eq!(
        via_session.items.iter().map(|i| &i.id).collect::<Vec<_>>(),
        ranked.items.iter().map(|i| &i.id).collect::<Vec<_>>()
    );
    (ranked.items.into_iter().map(|i| i.id).collect(), recs.unwrap().items.into_iter().map(|i| i.id).collect())
}

#[test]
fn a_pack_truncated_or_rewritten_in_place_does_not_fault_an_open_engine() {
    let m = model("llama-tiny", "f32");
    let genuine = seq_pack(&m, "llama-tiny", "prompt-llama");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.gguf");
    std::fs::copy(&genuine, &p).unwrap();
    let e = Engine::open(&m, &p, cfg()).unwrap();
    let before = calls(&e);
    // Cut to nothing in place (the same inode): every page of a map of it would now fault.
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(0).unwrap();
    assert_eq!(calls(&e), before);
    // Refilled with garbage of the old length.
    std::fs::write(&p, vec![0xA5u8; std::fs::metadata(&genuine).unwrap().len() as usize]).unwrap();
    assert_eq!(calls(&e), before);
    e.add_item("new-1", "Neon Harbor (2031)").unwrap();
    assert!(e.rank(&RankRequest { history: before.0[..2].to_vec(), ..Default::default() }).is_ok());
}

#[test]
fn a_model_replaced_by_an_atomic_rename_leaves_the_open_engine_on_the_old_file() {
    let m = model("llama-tiny", "f32");
    let pack = seq_pack(&m, "llama-tiny", "prompt-llama");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::copy(&m, &path).unwrap();
    let e = Engine::open(&path, &pack, cfg()).unwrap();
    let before = calls(&e);
    // The documented update (`install_file`): copied beside the old file, checked, renamed over
    // its path. The open engine keeps the old inode mapped; a new engine opens the new file.
    let newer = model("llama-tiny", "q8_0");
    delrec_runtime::install_file(&newer, &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&newer).unwrap());
    assert_eq!(calls(&e), before);
    // The pack pins the F32 file: the digest check sees the replacement.
    let err = Engine::open(&path, &pack, cfg()).err().expect("the pack pins another file");
    assert!(matches!(err, Error::BadFile(FileError::Mismatch { .. })), "{err:?}");
    let unpinned = Engine::open(&path, &pack, EngineConfig { verify_checksum: false, ..cfg() }).unwrap();
    assert_eq!(calls(&unpinned).0.len(), 5);
    // A download that is not a GGUF file never replaces the installed one.
    let bad = dir.path().join("download.gguf");
    std::fs::write(&bad, b"not a model at all").unwrap();
    assert!(delrec_runtime::install_file(&bad, &path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&newer).unwrap());
    assert_eq!(calls(&e), before);
}
