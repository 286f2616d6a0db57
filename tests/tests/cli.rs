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
