//! How many threads a decode should use when the app does not say: the fast cores.
//!
//! Phones mix core types (one or two prime cores, a few big ones, several little ones). A
//! llama.cpp decode splits every matmul evenly over its threads and waits for the slowest, so a
//! thread on a little core makes the whole decode slower than leaving that core out. Linux
//! describes the cores in sysfs: `cpu_capacity` (ARM's relative performance, the largest is
//! 1024) or, failing that, `cpufreq/cpuinfo_max_freq`. The fast cores are those within a
//! fixed fraction of the fastest (see [`FAST_CAPACITY`], [`FAST_FREQUENCY`]); the count is
//! capped by the CPUs this process may run on. Where sysfs says nothing (other systems,
//! sandboxes), every available CPU is used.

use std::path::Path;

/// A core is fast when its `cpu_capacity` is at least this fraction of the largest: big and
/// prime cores are 0.7–1.0 of the prime, little cores 0.2–0.4.
pub const FAST_CAPACITY: f64 = 0.5;

/// With only frequencies to go on, a stricter bound: little cores often reach 0.6–0.7 of the
/// prime core's frequency while doing far less per cycle.
pub const FAST_FREQUENCY: f64 = 0.8;

/// The default thread count: the fast cores of this machine, at most the CPUs available to
/// this process, at least one.
pub fn default_threads() -> usize {
    let available = std::thread::available_parallelism().map_or(2, |n| n.get());
    fast_cores(Path::new("/sys/devices/system/cpu")).map_or(available, |n| n.min(available)).max(1)
}

/// The fast cores of the CPU tree at `root` (a sysfs `devices/system/cpu`), or `None` when it
/// cannot tell (no online list, or a core without capacity or frequency).
pub fn fast_cores(root: &Path) -> Option<usize> {
    let online = parse_cpu_list(std::fs::read_to_string(root.join("online")).ok()?.trim())?;
    let read = |cpu: u32, file: &str| -> Option<f64> {
        let v: f64 = std::fs::read_to_string(root.join(format!("cpu{cpu}")).join(file)).ok()?.trim().parse().ok()?;
        (v.is_finite() && v > 0.0).then_some(v)
    };
    let by = |file: &str, fraction: f64| -> Option<usize> {
        let values = online.iter().map(|&c| read(c, file)).collect::<Option<Vec<f64>>>()?;
        let max = values.iter().copied().fold(0.0, f64::max);
        Some(values.iter().filter(|&&v| v >= fraction * max).count())
    };
    by("cpu_capacity", FAST_CAPACITY).or_else(|| by("cpufreq/cpuinfo_max_freq", FAST_FREQUENCY)).filter(|&n| n > 0)
}

/// A kernel CPU list (`0-3,6,8-9`); `None` when malformed or implausibly large.
fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    const MAX_CPUS: u32 = 4096;
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let c = part.trim().parse::<u32>().ok()?;
                (c, c)
            }
        };
        if lo > hi || hi >= MAX_CPUS {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    (!cpus.is_empty()).then_some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs CPU tree: `online`, and per CPU an optional capacity and max frequency.
    fn tree(online: &str, cpus: &[(Option<u32>, Option<u32>)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("online"), format!("{online}\n")).unwrap();
        for (i, (cap, freq)) in cpus.iter().enumerate() {
            let c = d.path().join(format!("cpu{i}"));
            std::fs::create_dir_all(c.join("cpufreq")).unwrap();
            if let Some(cap) = cap {
                std::fs::write(c.join("cpu_capacity"), format!("{cap}\n")).unwrap();
            }
            if let Some(f) = freq {
                std::fs::write(c.join("cpufreq/cpuinfo_max_freq"), format!("{f}\n")).unwrap();
            }
        }
        d
    }

    #[test]
    fn phone_with_little_big_and_prime_cores() {
        // Snapdragon 8 Gen 2-like: 3 little (A510), 4 big (A715/A710), 1 prime (X3).
        let mut cpus = vec![(Some(325), Some(2_016_000)); 3];
        cpus.extend([(Some(870), Some(2_803_200)); 4]);
        cpus.push((Some(1024), Some(3_187_200)));
        assert_eq!(fast_cores(tree("0-7", &cpus).path()), Some(5));
        // Frequencies alone give the same answer.
        let freq_only: Vec<_> = cpus.iter().map(|&(_, f)| (None, f)).collect();
        assert_eq!(fast_cores(tree("0-7", &freq_only).path()), Some(5));
    }

    #[test]
    fn offline_cores_are_not_counted() {
        let mut cpus = vec![(Some(400), None); 4];
        cpus.extend([(Some(1024), None); 4]);
        // Two of the big cores offline (thermal or power saving).
        assert_eq!(fast_cores(tree("0-5", &cpus).path()), Some(2));
        assert_eq!(fast_cores(tree("0,1,6-7", &cpus).path()), Some(2));
    }

    #[test]
    fn uniform_cores_all_count() {
        assert_eq!(fast_cores(tree("0-1", &[(Some(1024), None); 2]).path()), Some(2));
        assert_eq!(fast_cores(tree("0-3", &[(None, Some(2_400_000)); 4]).path()), Some(4));
    }

    #[test]
    fn unknown_when_sysfs_does_not_say() {
        // A core without either file: no guess from the others.
        let cpus = [(Some(1024), Some(1)), (None, None)];
        assert_eq!(fast_cores(tree("0-1", &cpus).path()), None);
        assert_eq!(fast_cores(Path::new("/nonexistent/cpu")), None);
        for bad in ["", "x", "3-1", "0-99999", "1,,-2"] {
            assert_eq!(fast_cores(tree(bad, &[(Some(1024), None); 2]).path()), None, "{bad:?}");
        }
        // Zero or garbage capacities fall through to frequencies.
        let cpus = [(Some(0), Some(1_000_000)), (Some(0), Some(2_000_000))];
        assert_eq!(fast_cores(tree("0-1", &cpus).path()), Some(1));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn default_is_within_what_this_process_may_use() {
        let n = default_threads();
        assert!(n >= 1 && n <= std::thread::available_parallelism().map_or(2, |n| n.get()));
    }
}
