//! The `delrec` CLI where the CLI itself is what is tested.

use std::process::Command;

use delrec_tests::{bin, catalog_ids, model, pack};

#[test]
fn rank_batch_reports_bad_lines_and_goes_on() {
    let m = model("llama-tiny", "f32");
    let p = pack(&m, "llama-tiny", "prompt-llama");
    let ids = catalog_ids();
    let dir = tempfile::tempdir().unwrap();
    let reqs = dir.path().join("requests.jsonl");
    let good = |user: &str| {
        serde_json::json!({"user": user, "history": [ids[0], ids[1]], "candidates": [ids[2], ids[3], ids[4]], "top_k": 2})
            .to_string()
    };
    let lines = [
        good("u1"),
        "{not json".to_string(),
        r#"{"user": "u3", "history": [1, 2]}"#.to_string(),
        r#"{"user": "u4", "history": ["no-such-item"]}"#.to_string(),
        r#"{"user": "u5", "history": ["x"], "top_k": -1}"#.to_string(),
        good("u6"),
    ];
    std::fs::write(&reqs, lines.join("\n") + "\n").unwrap();
    let out = Command::new(bin("delrec"))
        .args(["rank-batch", "--threads", "2", "--model"])
        .arg(&m)
        .arg("--pack")
        .arg(&p)
        .arg("--requests")
        .arg(&reqs)
        .output()
        .unwrap();
    assert!(!out.status.success(), "malformed lines must fail the batch's exit status");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), lines.len(), "one output line per request line:\n{stdout}");
    for (i, row) in rows.iter().enumerate() {
        let ok = row.get("items").is_some();
        assert_eq!(ok, i == 0 || i == 5, "line {}: {row}", i + 1);
    }
    assert_eq!(rows[0]["items"].as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["items"], rows[5]["items"], "the batch is unaffected by the bad lines between");
    assert_eq!(rows[1]["line"], 2);
    assert!(rows[2]["error"].as_str().unwrap().contains("non-string"), "{}", rows[2]);
    assert_eq!(rows[3]["user"], "u4");
    assert!(rows[3]["error"].as_str().unwrap().contains("no-such-item"), "{}", rows[3]);
    assert!(rows[4]["error"].as_str().unwrap().contains("top_k"), "{}", rows[4]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 malformed"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `rank-batch --pack A --pack B`: both packs over one model, each request routed by its "pack"
/// (name or index), each result the one its pack alone gives; an unknown pack is a bad line.
#[test]
fn rank_batch_serves_many_packs_over_one_model() {
    let m = model("llama-tiny", "f32");
    let plain = pack(&m, "llama-tiny", "prompt-llama");
    let a = delrec_tests::adapter(&m, "lora-llama", "f32");
    let with = delrec_tests::adapter_pack(&m, "llama-tiny", "prompt-llama", &a, 1.0);
    let ids = catalog_ids();
    let dir = tempfile::tempdir().unwrap();
    let reqs = dir.path().join("requests.jsonl");
    let line = |user: &str, pack: serde_json::Value| {
        let mut v =
            serde_json::json!({"user": user, "history": [ids[0], ids[1]], "candidates": [ids[2], ids[3], ids[4]]});
        if !pack.is_null() {
            v["pack"] = pack;
        }
        v.to_string()
    };
    let name =
        |p: &std::path::Path| p.file_name().unwrap().to_str().unwrap().trim_end_matches(".pack.gguf").to_string();
    let lines = [
        line("u1", serde_json::Value::Null),
        line("u2", name(&with).into()),
        line("u3", 0.into()),
        line("u4", 1.into()),
        line("u5", "no-such-pack".into()),
    ];
    std::fs::write(&reqs, lines.join("\n") + "\n").unwrap();
    let run = |packs: &[&std::path::Path], reqs: &std::path::Path| {
        let mut c = Command::new(bin("delrec"));
        c.args(["rank-batch", "--threads", "2", "--model"]).arg(&m);
        for p in packs {
            c.arg("--pack").arg(p);
        }
        let out = c.arg("--requests").arg(reqs).output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        (
            out.status.success(),
            stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<serde_json::Value>>(),
        )
    };
    let (ok, rows) = run(&[&plain, &with], &reqs);
    assert!(!ok, "the unknown pack is a malformed line");
    assert_eq!(rows.len(), 5);
    assert!(rows[4]["error"].as_str().unwrap().contains("no pack named"), "{}", rows[4]);
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, line("u", serde_json::Value::Null) + "\n").unwrap();
    let (_, alone_plain) = run(&[&plain], &one);
    let (_, alone_with) = run(&[&with], &one);
    for (row, want) in [
        (&rows[0], &alone_plain[0]),
        (&rows[1], &alone_with[0]),
        (&rows[2], &alone_plain[0]),
        (&rows[3], &alone_with[0]),
    ] {
        assert_eq!(row["items"], want["items"], "{row} vs {want}");
    }
    assert_ne!(rows[0]["items"], rows[1]["items"], "the adapter changes the scores");
    assert_eq!(rows[1]["pack"], name(&with));
}
