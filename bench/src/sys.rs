//! Process and machine facts: RSS from /proc/self/status, CPU time from getrusage, page-cache
//! eviction for cold starts, load average.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Memory counters of this process, in bytes (Linux; zeros elsewhere).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Mem {
    /// Resident set now.
    pub rss: u64,
    /// Peak resident set (VmHWM).
    pub hwm: u64,
    /// Anonymous resident memory (heap, KV cache, compute buffers).
    pub anon: u64,
    /// File-backed resident memory (mapped model and pack pages, libraries).
    pub file: u64,
}

pub fn mem() -> Mem {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return Mem::default();
    };
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Mem { rss: field("VmRSS:"), hwm: field("VmHWM:"), anon: field("RssAnon:"), file: field("RssFile:") }
}

/// User + system CPU seconds of this process (all threads).
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Wall and CPU seconds of one call.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timing {
    pub wall: f64,
    pub cpu: f64,
}

pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Timing) {
    let c0 = cpu_seconds();
    let t0 = Instant::now();
    let r = f();
    let wall = t0.elapsed().as_secs_f64();
    (r, Timing { wall, cpu: cpu_seconds() - c0 })
}

/// Fraction of a file's pages in the page cache (mincore), or None when it cannot be told.
pub fn cached_fraction(path: &Path) -> Option<f64> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len() as usize;
    if len == 0 {
        return Some(1.0);
    }
    // SAFETY: a read-only private mapping of a file we opened, unmapped before returning; mincore
    // writes one byte per page into a vector of that size.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0);
        if p == libc::MAP_FAILED {
            return None;
        }
        let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
        let n = len.div_ceil(page);
        let mut v = vec![0u8; n];
        let rc = libc::mincore(p, len, v.as_mut_ptr());
        libc::munmap(p, len);
        if rc != 0 {
            return None;
        }
        Some(v.iter().filter(|&&b| b & 1 == 1).count() as f64 / n as f64)
    }
}

/// Asks the kernel to drop a file's pages from the page cache (a cold start without root).
pub fn evict(path: &Path) -> bool {
    let Ok(f) = File::open(path) else { return false };
    let _ = f.sync_all();
    // SAFETY: plain syscall on an fd we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
}

pub fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

pub fn n_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Median and 95th percentile (nearest rank) of samples; zeros for none.
pub fn p50_p95(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    let med = if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
    (med, q(0.95))
}

/// What the build targets and which CPU kernels ggml uses: compiled in (llama-cpp-sys-2 builds
/// ggml with this crate's `-C target-cpu` / target features) or, in a `cpu-variants` build
/// (scripts/build-variants.sh), the variant loaded at run time for this CPU.
pub fn build() -> String {
    let kernels = delrec_runtime::llm::Backend::get().cpu_kernels();
    if delrec_runtime::llm::backend::DYNAMIC_CPU_BACKENDS {
        format!("{} Rust code; ggml CPU kernels chosen at run time: {}", simd_level(), kernels.summary())
    } else {
        format!("{}; ggml CPU kernels {}", simd_level(), kernels.summary())
    }
}

/// What the Rust code targets (`-C target-cpu` / target features); without `cpu-variants` also
/// ggml's kernels.
pub fn simd_level() -> &'static str {
    if cfg!(all(target_arch = "x86_64", target_feature = "avx512vnni")) {
        "x86-64 AVX-512 + VNNI"
    } else if cfg!(all(target_arch = "x86_64", target_feature = "avx512f")) {
        "x86-64 AVX-512"
    } else if cfg!(all(target_arch = "x86_64", target_feature = "avx2")) {
        "x86-64 AVX2 (x86-64-v3)"
    } else if cfg!(target_arch = "x86_64") {
        "x86-64 baseline"
    } else if cfg!(all(target_arch = "aarch64", target_feature = "dotprod")) {
        "aarch64 + dotprod"
    } else if cfg!(target_arch = "aarch64") {
        "aarch64"
    } else {
        std::env::consts::ARCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(p50_p95(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(p50_p95(&[1.0, 2.0, 3.0, 4.0]).0, 2.5);
        assert_eq!(p50_p95(&[]), (0.0, 0.0));
    }

    #[test]
    fn names_the_kernels() {
        let b = build();
        assert!(b.contains("ggml CPU kernels"), "{b}");
        assert!(!b.contains("no CPU backend"), "{b}");
    }

    #[test]
    fn reads_proc() {
        let m = mem();
        if cfg!(target_os = "linux") {
            assert!(m.rss > 0 && m.hwm >= m.rss);
        }
        assert!(cpu_seconds() >= 0.0);
    }
}
