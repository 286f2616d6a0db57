//! The model file's sha256, checked against the digests the pack pins, computed once per version
//! of the file: a verified digest is remembered against a stamp of the open descriptor (device,
//! inode, size, modification and change times), in this process and, when the app gives a cache
//! directory, across launches. Any write to the file changes its change time (which no unprivileged
//! process can set back), so a stale stamp never vouches for new bytes.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use delrec_format::identity::hex;
use sha2::{Digest, Sha256};

/// What identifies one version of a file's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    /// The bytes hashed: `len` at `offset` (the whole file, or a GGUF stored inside it).
    offset: u64,
    len: u64,
}

impl Stamp {
    /// The stamp of the whole file.
    #[cfg(test)]
    pub fn of(file: &File) -> std::io::Result<Stamp> {
        let len = file.metadata()?.len();
        Self::of_range(file, 0, len)
    }

    pub fn of_range(file: &File, offset: u64, len: u64) -> std::io::Result<Stamp> {
        let m = file.metadata()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
            Ok(Stamp {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime_ns: ns(m.mtime(), m.mtime_nsec()),
                ctime_ns: ns(m.ctime(), m.ctime_nsec()),
                offset,
                len,
            })
        }
        #[cfg(not(unix))]
        {
            let t = m.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
            Ok(Stamp { dev: 0, ino: 0, size: m.len(), mtime_ns: t, ctime_ns: t, offset, len })
        }
    }

    fn line(&self, digest: &str) -> String {
        format!(
            "delrec-digest-v2 {} {} {} {} {} {} {} {digest}\n",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns, self.offset, self.len
        )
    }

    /// The cache file of this inode in `dir`.
    fn cache_file(&self, dir: &Path) -> PathBuf {
        let key = Sha256::digest(format!("{} {}", self.dev, self.ino));
        dir.join(format!("model-{}.digest", &hex(&key)[..32]))
    }
}

/// Digests verified in this process (most recent last, a few kept).
static SEEN: Mutex<Vec<(Stamp, String)>> = Mutex::new(Vec::new());
const SEEN_MAX: usize = 8;

/// Where a digest came from, for the open's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestSource {
    /// Hashed now.
    Hashed,
    /// Remembered in this process for this version of the file.
    Process,
    /// Read from the app's cache directory for this version of the file.
    CacheDir,
}

/// The sha256 (hex) of `bytes`, the mapped content of `file` at `offset`, from a cache when this version of
/// the file was hashed before. Only digests that matched a pin are remembered ([`remember`]),
/// so a cache entry can only ever say "this version was verified".
/// A fresh hash reports its progress (0..=1) to `progress`, which stops it by returning false
/// (then `None`).
pub(crate) fn sha256(
    file: &File,
    offset: u64,
    bytes: &[u8],
    cache_dir: Option<&Path>,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Option<(String, DigestSource, Option<Stamp>)> {
    let len = bytes.len() as u64;
    let stamp =
        Stamp::of_range(file, offset, len).ok().filter(|s| offset.checked_add(len).is_some_and(|e| e <= s.size));
    if let Some(stamp) = &stamp {
        let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, d)) = seen.iter().find(|(s, _)| s == stamp) {
            return Some((d.clone(), DigestSource::Process, None));
        }
        drop(seen);
        if let Some(d) = cache_dir.and_then(|dir| read_cached(stamp, dir)) {
            remember_in_process(stamp, &d);
            return Some((d, DigestSource::CacheDir, None));
        }
    }
    // In slices, so that a phone's first open of a large model can show progress and be stopped.
    const SLICE: usize = 16 << 20;
    let mut h = Sha256::new();
    for (i, chunk) in bytes.chunks(SLICE).enumerate() {
        if !progress((i * SLICE) as f32 / bytes.len().max(1) as f32) {
            return None;
        }
        h.update(chunk);
    }
    progress(1.0);
    Some((hex(&h.finalize()), DigestSource::Hashed, stamp))
}

/// Remembers a digest that matched the pack's pin, in this process and in `cache_dir`
/// (best effort: a cache that cannot be written only costs a hash at the next launch).
pub(crate) fn remember(stamp: &Stamp, digest: &str, cache_dir: Option<&Path>) {
    remember_in_process(stamp, digest);
    if let Some(dir) = cache_dir {
        let _ = write_cached(stamp, digest, dir);
    }
}

fn remember_in_process(stamp: &Stamp, digest: &str) {
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.retain(|(s, _)| s != stamp);
    if seen.len() >= SEEN_MAX {
        seen.remove(0);
    }
    seen.push((stamp.clone(), digest.to_string()));
}

fn read_cached(stamp: &Stamp, dir: &Path) -> Option<String> {
    let mut text = String::new();
    // A cache entry is one short line; anything longer is not ours.
    File::open(stamp.cache_file(dir)).ok()?.take(512).read_to_string(&mut text).ok()?;
    let digest = text.trim_end().rsplit(' ').next()?;
    let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    (valid && text == stamp.line(digest)).then(|| digest.to_string())
}

fn write_cached(stamp: &Stamp, digest: &str, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = stamp.cache_file(dir);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(stamp.line(digest).as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use delrec_format::identity::bytes_sha256;

    /// Tests share the process cache: each forgets only its own files.
    fn forget(stamp: &Stamp) {
        SEEN.lock().unwrap().retain(|(s, _)| s != stamp);
    }

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, File) {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let f = File::open(&p).unwrap();
        (p, f)
    }

    #[test]
    fn a_remembered_digest_serves_the_same_version_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let (p, f) = file_with(dir.path(), "m.gguf", b"version one");
        let (d, src, stamp) = sha256(&f, 0, b"version one", Some(&cache), &mut |_| true).unwrap();
        assert_eq!((d.as_str(), src), (bytes_sha256(b"version one").as_str(), DigestSource::Hashed));
        remember(stamp.as_ref().unwrap(), &d, Some(&cache));
        assert_eq!(sha256(&f, 0, b"version one", Some(&cache), &mut |_| true).unwrap().1, DigestSource::Process);
        // Another launch: the process cache is empty, the directory remembers.
        forget(stamp.as_ref().unwrap());
        assert_eq!(sha256(&f, 0, b"version one", Some(&cache), &mut |_| true).unwrap().1, DigestSource::CacheDir);
        // Rewritten in place, same length: the change time moved, so it is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"version two").unwrap();
        let f2 = File::open(&p).unwrap();
        let (d2, src2, _) = sha256(&f2, 0, b"version two", Some(&cache), &mut |_| true).unwrap();
        assert_eq!((d2, src2), (bytes_sha256(b"version two"), DigestSource::Hashed));
    }

    #[test]
    fn a_forged_or_damaged_cache_entry_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let (_p, f) = file_with(dir.path(), "m.gguf", b"bytes");
        let stamp = Stamp::of(&f).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        for bad in [
            "garbage".to_string(),
            stamp.line("zz"),
            stamp.line(&"g".repeat(64)),
            stamp.line(&bytes_sha256(b"x")).replace("v2", "v9"),
            format!("{}{}", stamp.line(&bytes_sha256(b"x")), "x".repeat(1000)),
        ] {
            std::fs::write(stamp.cache_file(&cache), bad).unwrap();
            forget(&stamp);
            assert_eq!(sha256(&f, 0, b"bytes", Some(&cache), &mut |_| true).unwrap().1, DigestSource::Hashed);
        }
    }
}
