//! Shared by the targets: the readers take files (they map them), so each input is written to a
//! per-process file in memory-backed storage first.

use std::path::PathBuf;

pub fn input_file(data: &[u8]) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let d = base.join(format!("delrec-fuzz-target-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("a scratch directory");
        d
    });
    let p = dir.join("input.gguf");
    std::fs::write(&p, data).expect("write the input");
    p
}
