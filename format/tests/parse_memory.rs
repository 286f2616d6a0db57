//! Memory while a pack is parsed stays within a small multiple of the file's size, for valid
//! packs and for hostile ones rejected late (issue #22: a hostile 108 MB pack once peaked at
//! 1.35 GB before it was refused). Heap bytes are counted by this test binary's allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use delrec_format::gguf::{Array, GgufFile, GgufWriter, TensorData, Value};
use delrec_format::pack::{CatalogItem, PackBuilder};
use delrec_format::{BaseIdentity, Pack};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// What an allocation costs in a glibc-like malloc: a header word, 16-byte granules, 32 at least.
fn cost(l: Layout) -> usize {
    (l.size() + 8).next_multiple_of(16).max(32)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(cost(l), Ordering::Relaxed) + cost(l);
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(cost(l), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Tests in this binary measure one at a time.
static ONE: Mutex<()> = Mutex::new(());

/// Heap bytes above what was live before, at the peak of `f`.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

/// The bound the format promises (`docs/format.md`, "Limits"): heap while parsing ≤ 7 × the
/// file's size + 1 MiB, counting each allocation as malloc spends it (`cost`). The worst case is
/// an array of one-byte strings: 9 bytes in the file, 24 (the `String`) + 32 (its allocation) in
/// memory.
fn bound(file_len: u64) -> usize {
    7 * file_len as usize + (1 << 20)
}

fn base() -> BaseIdentity {
    BaseIdentity { architecture: "llama".into(), n_embd: 4, n_vocab: 300, tokenizer_fingerprint: "ab".into() }
}

fn bytes_tok(s: &str) -> delrec_format::Result<Vec<i32>> {
    Ok(s.bytes().map(|b| b as i32).collect())
}

/// A valid pack of `n` items with short ids and titles.
fn valid_pack(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let mut b = PackBuilder::new(base(), "{soft:u}Seen:{history}\nNext:{candidate}\n");
    b.add_soft_prompt("u", 2, vec![0.5; 8], false).unwrap();
    for i in 0..n {
        b.add_item(CatalogItem { id: format!("{i:x}"), title: format!("t{}", i % 7), text: None });
    }
    let p = dir.join(format!("valid-{n}.gguf"));
    b.write(&p, &mut bytes_tok).unwrap();
    p
}

/// `path` rewritten with `edit` applied to its keys.
fn rewrite(path: &std::path::Path, out: &std::path::Path, edit: impl FnOnce(&mut Vec<(String, Value)>)) {
    let f = GgufFile::open(path).unwrap();
    let mut kv: Vec<(String, Value)> = f.kv().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    edit(&mut kv);
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.set(&k, v);
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, TensorData::Owned(f.tensor_bytes(t).unwrap().to_vec())).unwrap();
    }
    w.write_atomic(out, &mut |_, _| {}).unwrap();
}

fn set(kv: &mut [(String, Value)], key: &str, v: Value) {
    kv.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

#[test]
fn a_valid_large_catalog_parses_within_the_bound() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = valid_pack(dir.path(), 200_000);
    let len = std::fs::metadata(&p).unwrap().len();
    let (pack, peak) = peak_of(|| Pack::open(&p).unwrap());
    assert_eq!(pack.n_items(), 200_000);
    assert_eq!(pack.item_index("1f"), Some(31));
    eprintln!("valid: peak {peak} B for a {len} B pack ({:.1}x)", peak as f64 / len as f64);
    assert!(peak <= bound(len), "peak {peak} B for a {len} B pack");
}

/// A change to a pack's keys.
type Edit = Box<dyn Fn(&mut Vec<(String, Value)>)>;

#[test]
fn hostile_string_arrays_are_refused_within_the_bound() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = valid_pack(dir.path(), 2);
    let n = 2_000_000;
    let cases: Vec<(&str, Edit)> = vec![
        // Millions of empty ids: 8 file bytes each.
        (
            "empty ids",
            Box::new(move |kv| set(kv, "delrec.catalog.ids", Value::Array(Array::Str(vec![String::new(); n])))),
        ),
        // Millions of distinct one-byte-ish ids, titles that do not match in count.
        (
            "ids without titles",
            Box::new(move |kv| {
                set(kv, "delrec.catalog.ids", Value::Array(Array::Str((0..n).map(|i| format!("{i:x}")).collect())))
            }),
        ),
        // Repeated ids, refused only when the index is built.
        (
            "repeated ids",
            Box::new(move |kv| {
                let ids: Vec<String> = (0..n).map(|i| format!("{:x}", i.min(n - 2))).collect();
                set(kv, "delrec.catalog.ids", Value::Array(Array::Str(ids)));
                set(kv, "delrec.catalog.titles", Value::Array(Array::Str(vec!["t".into(); n])));
            }),
        ),
        // A huge unknown array of strings.
        ("unknown key", Box::new(move |kv| kv.push(("x.junk".into(), Value::Array(Array::Str(vec!["a".into(); n])))))),
    ];
    for (what, edit) in cases {
        let out = dir.path().join("hostile.gguf");
        rewrite(&p, &out, edit);
        let len = std::fs::metadata(&out).unwrap().len();
        let (res, peak) = peak_of(|| Pack::open(&out));
        if what != "unknown key" {
            assert!(res.is_err(), "{what}: opened");
        }
        eprintln!("{what}: peak {peak} B for a {len} B pack ({:.1}x)", peak as f64 / len as f64);
        assert!(peak <= bound(len), "{what}: peak {peak} B for a {len} B pack ({:.1}x)", peak as f64 / len as f64);
    }
}
