//! Where the model runs: the backend a config selects, what the results say ran, the errors for
//! a backend that is missing, and — in a build with a GPU backend and a device for it (e.g.
//! `scripts/vulkan.sh` on lavapipe) — the same ranking on the GPU as on the CPU.

use std::process::Command;

use delrec_runtime::{
    devices, BackendKind, DeviceKind, Engine, EngineConfig, Error, KvType, RankRequest, Ranking, RequestError,
};
use delrec_tests::{bin, catalog_ids, model, pack};

fn cfg(backend: BackendKind) -> EngineConfig {
    EngineConfig { backend, threads: 2, kv_type: KvType::F32, flash_attention: false, ..Default::default() }
}

fn request() -> RankRequest {
    let ids = catalog_ids();
    RankRequest { history: vec![ids[0].clone(), ids[3].clone()], ..Default::default() }
}

/// A GPU backend of this build with a device found, if any.
fn gpu() -> Option<BackendKind> {
    devices().into_iter().find(|d| d.offloads()).and_then(|d| d.backend)
}

/// A backend this build was compiled without (there is always one: they exclude each other on
/// one platform).
fn missing() -> BackendKind {
    BackendKind::ALL.into_iter().find(|k| !k.compiled()).expect("some backend is not compiled in")
}

#[test]
fn the_cpu_is_always_listed_and_the_results_say_what_ran() {
    let all = devices();
    assert!(all.iter().any(|d| d.backend == Some(BackendKind::Cpu) && d.kind == DeviceKind::Cpu), "{all:?}");
    assert!(all.iter().filter(|d| d.offloads()).all(|d| d.backend.is_some_and(|b| b != BackendKind::Cpu)));
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    let cpu = Engine::open(&m, &p, cfg(BackendKind::Cpu)).unwrap();
    let b = cpu.backend();
    assert_eq!((b.kind, b.requested, b.gpu_layers, b.fell_back), (BackendKind::Cpu, BackendKind::Cpu, 0, false));
    assert!(b.device.is_none());
    assert_eq!(cpu.rank(&request()).unwrap().stats.backend, BackendKind::Cpu);
    // Auto takes a GPU when the build found one, else the CPU; either way it says which.
    let auto = Engine::open(&m, &p, cfg(BackendKind::Auto)).unwrap();
    let expected = gpu().unwrap_or(BackendKind::Cpu);
    assert_eq!(auto.backend().kind, expected, "{:?}", auto.backend());
    assert_eq!(auto.rank(&request()).unwrap().stats.backend, expected);
    if expected != BackendKind::Cpu {
        // All layers: the fixture's blocks + the output layer.
        assert_eq!(auto.backend().gpu_layers, auto.base().model().n_layer() as i32 + 1);
    }
}

#[test]
fn a_missing_backend_is_an_error_unless_the_cpu_is_allowed() {
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    let want = missing();
    match Engine::open(&m, &p, cfg(want)).map(|_| ()) {
        Err(Error::BadRequest(RequestError::BackendUnavailable { requested, compiled, .. })) => {
            assert_eq!((requested.as_str(), compiled), (want.to_string().as_str(), false));
        }
        other => panic!("{want}: {other:?}"),
    }
    let e = Engine::open(&m, &p, EngineConfig { cpu_fallback: true, ..cfg(want) }).unwrap();
    let b = e.backend();
    assert_eq!((b.kind, b.requested, b.fell_back), (BackendKind::Cpu, want, true));
    assert_eq!(e.rank(&request()).unwrap().stats.backend, BackendKind::Cpu);
    // Nonsense layer counts, and a GPU asked for with nothing to offload.
    for (backend, layers) in [(BackendKind::Auto, -2), (BackendKind::Vulkan, 0)] {
        let r = Engine::open(&m, &p, EngineConfig { gpu_layers: layers, ..cfg(backend) });
        assert!(
            matches!(&r, Err(Error::BadRequest(RequestError::Invalid { field, .. })) if field == "gpu_layers"),
            "{backend} {layers}: {:?}",
            r.map(|_| ())
        );
    }
}

fn scores(r: &Ranking) -> std::collections::BTreeMap<String, f64> {
    r.items.iter().map(|i| (i.id.clone(), i.logprob)).collect()
}

#[test]
fn a_gpu_ranks_like_the_cpu() {
    let Some(kind) = gpu() else {
        eprintln!("no GPU device in this build: CPU only (scripts/vulkan.sh runs this on lavapipe)");
        return;
    };
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    let cpu = Engine::open(&m, &p, cfg(BackendKind::Cpu)).unwrap().rank(&request()).unwrap();
    let on_gpu = Engine::open(&m, &p, cfg(kind)).unwrap();
    assert_eq!(on_gpu.backend().kind, kind);
    let g = on_gpu.rank(&request()).unwrap();
    assert_eq!(g.stats.backend, kind);
    let (a, b) = (scores(&cpu), scores(&g));
    assert_eq!(a.len(), b.len());
    let worst = a.iter().map(|(id, s)| (s - b[id]).abs()).fold(0.0, f64::max);
    eprintln!("{kind} vs cpu, whole catalog of {}: max |Δ logprob| = {worst:.2e}", a.len());
    // F32 weights and cache on both, but GPU backends multiply in F16 where the device has it
    // (ggml-vulkan on lavapipe: 1.4e-2 on this fixture, docs/platforms.md); the CPU path is
    // within 1e-5 of the numpy reference. Same order except where scores are that close.
    assert!(worst < 5e-2, "{kind} vs cpu: max |Δ| = {worst}");
    for (x, y) in cpu.items.iter().zip(&g.items) {
        assert!(x.id == y.id || (a[&x.id] - a[&y.id]).abs() < 2.0 * worst, "{} vs {}", x.id, y.id);
    }
}

#[test]
fn the_cli_lists_devices_and_reports_the_backend() {
    let out = Command::new(bin("delrec")).args(["devices", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backends = v["backends"].as_array().unwrap();
    assert_eq!(backends.len(), BackendKind::ALL.len());
    let cpu = backends.iter().find(|b| b["backend"] == "cpu").unwrap();
    assert_eq!(cpu["compiled"], true);
    assert!(!cpu["devices"].as_array().unwrap().is_empty());
    assert!(v["devices"].as_array().unwrap().iter().any(|d| d["backend"] == "CPU"));
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    let ids = catalog_ids();
    let rank = |backend: &str, extra: &[&str]| {
        Command::new(bin("delrec"))
            .args(["rank", "--threads", "2", "--json", "--top-k", "3", "--backend", backend, "--history", &ids[0]])
            .args(extra)
            .arg("--model")
            .arg(&m)
            .arg("--pack")
            .arg(&p)
            .output()
            .unwrap()
    };
    let out = rank("cpu", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"]["kind"], "cpu");
    assert_eq!(v["stats"]["backend"], "cpu");
    let want = missing().to_string();
    let out = rank(&want, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("backend {want} is unavailable")) && err.contains("not compiled"), "{err}");
    let out = rank(&want, &["--cpu-fallback"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&v["backend"]["kind"], &v["backend"]["fell_back"]), (&"cpu".into(), &true.into()));
    let out = rank("gpu", &[]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("expected auto, cpu"));
}
