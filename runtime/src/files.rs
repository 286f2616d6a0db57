//! Installing a new model or pack file where an engine may have the old one open.
//!
//! llama.cpp maps the model's weights; a mapped file that is truncated or rewritten in place
//! faults the process (SIGBUS) at the next read of a changed page. A rename over the old path
//! does not: open engines keep the old inode, new engines open the new file. [`install_file`]
//! is that update, done safely: copy beside the destination, check, flush, rename.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use delrec_format::gguf::GgufFile;

use crate::error::{FileError, Result};

/// Installs `source` (e.g. a finished download) at `dest`, replacing what is there atomically:
/// readers see the old file or the new one, never a mix, and an engine with the old file open
/// keeps working. The copy must parse as GGUF (a truncated download never replaces a good
/// file); the full checks run when an engine opens it. `source` is left in place.
///
/// ```no_run
/// delrec_runtime::install_file("downloads/model.gguf", "models/model.gguf")?;
/// # Ok::<(), delrec_runtime::Error>(())
/// ```
pub fn install_file(source: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<()> {
    let (source, dest) = (source.as_ref(), dest.as_ref());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileError::Io { path, source }
    };
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.installing-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut from = File::open(source).map_err(io(source))?;
        let mut to = File::create(&tmp).map_err(io(&tmp))?;
        std::io::copy(&mut from, &mut to).map_err(io(&tmp))?;
        to.flush().map_err(io(&tmp))?;
        to.sync_all().map_err(io(&tmp))?;
        drop(to);
        GgufFile::open(&tmp)?;
        std::fs::rename(&tmp, dest).map_err(io(dest))?;
        // The rename itself is durable once the directory is flushed (best effort: not every
        // platform lets a directory be opened for that).
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn a_bad_download_never_replaces_a_good_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        std::fs::write(&dest, b"the old file").unwrap();
        let bad = dir.path().join("download");
        std::fs::write(&bad, b"GGUF but cut").unwrap();
        assert!(matches!(install_file(&bad, &dest), Err(Error::BadFile(FileError::Invalid { .. }))));
        assert!(matches!(install_file(dir.path().join("absent"), &dest), Err(Error::BadFile(FileError::Io { .. }))));
        assert_eq!(std::fs::read(&dest).unwrap(), b"the old file");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "a temporary file was left behind: {names:?}");
    }
}
