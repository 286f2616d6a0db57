//! Load and misuse stress (`delrec-stress`, tests/src/bin/delrec-stress.rs): 16 threads of mixed
//! calls on one engine and its FFI twin, each success checked against the serial result of its
//! shape. Here a short run; the binary takes `--calls`/`--seconds` for longer ones.

use std::process::Command;
use std::time::{Duration, Instant};

use delrec_tests::{bin, model, seq_pack};

#[test]
fn sixteen_threads_of_mixed_calls_agree_with_serial_results() {
    // Built here, not in the child: the fixtures are shared with other tests of this run.
    let m = model("llama-tiny", "f32");
    seq_pack(&m, "llama-tiny", "prompt-llama");
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let (threads, calls) = (16u64, 40u64);
    let t0 = Instant::now();
    let out = Command::new(bin("delrec-stress"))
        .args(["--threads", &threads.to_string(), "--calls", &calls.to_string()])
        .args(["--seconds", "60", "--watchdog-s", "60", "--seed", "22"])
        .arg("--out")
        .arg(&report_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&report_path).unwrap_or_default();
    assert!(out.status.success(), "delrec-stress failed ({:?}):\n{text}\n{stderr}", out.status);
    assert!(t0.elapsed() < Duration::from_secs(150), "took {:?}", t0.elapsed());
    let r: serde_json::Value = serde_json::from_str(&text).expect("a JSON report");

    assert_eq!(r["ok"], true, "{text}");
    for field in ["mismatches", "panics", "unexpected_errors"] {
        assert_eq!(r[field], 0, "{field}:\n{text}");
    }
    assert_eq!(r["hung"].as_array().map(Vec::len), Some(0), "{text}");
    assert!(r["final_check"].is_null(), "{text}");
    // Every call accounted for: the per-kind counts add up to the calls made, and unless the
    // time bound stopped the mix, to all of them.
    let calls_done = r["calls"].as_u64().unwrap();
    let by_kind = r["by_kind"].as_object().unwrap();
    let counted: u64 =
        by_kind.values().flat_map(|m| m.as_object().unwrap().values()).map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(counted, calls_done, "{text}");
    if r["stopped_by_seconds"] == false {
        assert_eq!(calls_done, threads * calls, "{text}");
    }
    assert!(calls_done >= 200, "too few calls to mean anything: {calls_done}\n{text}");
    // The mix really mixed: every kind ran, the plain calls all succeeded, and the interrupted
    // ones ended only as allowed.
    let kind = |k: &str| by_kind.get(k).and_then(|m| m.as_object()).cloned().unwrap_or_default();
    let n = |k: &str, o: &str| kind(k).get(o).and_then(|v| v.as_u64()).unwrap_or(0);
    for k in [
        "rank",
        "recommend",
        "session",
        "session_cancel",
        "cancel",
        "timeout",
        "clone_drop",
        "bad_request",
        "hold_and_wait",
        "ffi_rank",
        "ffi_cancel",
        "ffi_bad_request",
        "ffi_session_close_busy",
        "ffi_engine_close_busy",
    ] {
        assert!(!kind(k).is_empty(), "kind {k} never ran:\n{text}");
    }
    for k in ["rank", "recommend", "session", "clone_drop", "bad_request", "ffi_rank", "ffi_bad_request"] {
        let total: u64 = kind(k).values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(n(k, "ok") + n(k, "busy"), total, "{k}:\n{text}");
    }
    for (k, allowed) in [
        ("cancel", "cancelled"),
        ("ffi_cancel", "cancelled"),
        ("session_cancel", "cancelled"),
        ("timeout", "deadline_exceeded"),
        ("hold_and_wait", "deadline_exceeded"),
    ] {
        for o in kind(k).keys() {
            assert!(["ok", "busy", allowed].contains(&o.as_str()), "{k} ended {o}:\n{text}");
        }
    }
    // Cancels and deadlines really cut calls short somewhere in the run.
    assert!(n("cancel", "cancelled") + n("ffi_cancel", "cancelled") > 0, "{text}");
    assert!(n("timeout", "deadline_exceeded") + n("hold_and_wait", "deadline_exceeded") > 0, "{text}");
    assert!(r["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{text}");
    assert!(r["calls_per_s"].as_f64().unwrap() > 0.0, "{text}");
}

#[test]
fn a_mismatch_or_a_bad_option_fails_the_run() {
    let m = model("llama-tiny", "f32");
    seq_pack(&m, "llama-tiny", "prompt-llama");
    // Serial results moved by 1e-3 (ten times the tolerance): every plain rank is a mismatch.
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let out = Command::new(bin("delrec-stress"))
        .args(["--threads", "2", "--calls", "15", "--seed", "3", "--perturb-reference", "1e-3", "--out"])
        .arg(&report_path)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&report_path).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(&text).expect("a JSON report");
    assert_eq!(r["ok"], false);
    assert!(r["mismatches"].as_u64().unwrap() > 0, "{text}");
    assert!(r["failures"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("mismatch")), "{text}");
    // An unknown option is refused with status 2, not ignored.
    let out = Command::new(bin("delrec-stress")).args(["--threads", "2", "--no-such-option", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-option"));
}
