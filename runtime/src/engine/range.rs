//! A model or pack stored in part of an open file: an Android app's uncompressed APK assets,
//! opened through `AssetFileDescriptor` (descriptor, start offset, length) and read in place
//! instead of copied out (which would double their storage).

use std::fs::File;
use std::path::{Path, PathBuf};

use delrec_format::Pack;

use crate::error::{FileError, Result};

/// A GGUF (model or pack) inside an open file: the whole file, or `len` bytes at `offset`.
/// Offsets inside the GGUF count from its first byte, as in a file of its own.
#[derive(Debug)]
pub struct FileRange {
    pub(crate) file: File,
    pub(crate) offset: u64,
    /// `None`: to the end of the file (a whole file).
    pub(crate) len: Option<u64>,
    /// What errors and reports call it (the asset's name).
    pub(crate) name: PathBuf,
}

impl FileRange {
    /// `len` bytes at `offset` of `file` (its descriptor is used as is: the range is read
    /// through it, never through a path).
    pub fn new(file: File, offset: u64, len: u64, name: impl Into<PathBuf>) -> Self {
        FileRange { file, offset, len: Some(len), name: name.into() }
    }

    pub(crate) fn whole(file: File, path: &Path) -> Self {
        FileRange { file, offset: 0, len: None, name: path.to_path_buf() }
    }

    /// A range of a descriptor the caller owns and keeps (an Android `ParcelFileDescriptor`'s
    /// `fd`): it is duplicated, so the caller may close its own copy at any time. A descriptor
    /// that is not open is `BadFile` (`Io`).
    #[cfg(unix)]
    pub fn from_fd(fd: std::os::fd::RawFd, offset: u64, len: u64, name: impl Into<PathBuf>) -> Result<Self> {
        use std::os::fd::FromRawFd as _;
        let name = name.into();
        if fd < 0 {
            let source = std::io::Error::from_raw_os_error(libc::EBADF);
            return Err(FileError::Io { path: name, source }.into());
        }
        // SAFETY: fcntl only reads the descriptor number: F_DUPFD_CLOEXEC fails with EBADF when it
        // is not open, and the new descriptor is ours alone.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(FileError::Io { path: name, source: std::io::Error::last_os_error() }.into());
        }
        // SAFETY: `dup` is a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(dup) };
        Ok(FileRange::new(file, offset, len, name))
    }

    pub(crate) fn open_pack(&self) -> Result<Pack> {
        Ok(match self.len {
            None => Pack::open_range(&self.file, &self.name, 0, self.file_len()?)?,
            Some(len) => Pack::open_range(&self.file, &self.name, self.offset, len)?,
        })
    }

    fn file_len(&self) -> Result<u64> {
        let io = |source| FileError::Io { path: self.name.clone(), source };
        Ok(self.file.metadata().map_err(io)?.len())
    }
}
