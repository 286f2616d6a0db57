//! The `delrec-convert` binary: exit codes, messages, and a model → pack → inspect round trip.

use std::path::Path;
use std::process::{Command, Output};

use delrec_convert::testing::{write_prompt_adapter, TinySpec};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_delrec-convert")).args(args).output().expect("run delrec-convert")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn model_pack_inspect_round_trip() {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    TinySpec::llama().write(&hf);
    let model = root.path().join("m.gguf");
    let o = run(&["model", "--hf", s(&hf), "--out", s(&model), "--outtype", "q8_0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Q8_0"));
    let soft = root.path().join("soft");
    write_prompt_adapter(&soft, 2, 32, 1);
    let cat = root.path().join("c.jsonl");
    std::fs::write(&cat, "{\"id\":1,\"title\":\"Heat (1995)\"}\n{\"id\":2,\"title\":\"Up (2009)\"}\n").unwrap();
    let pack = root.path().join("p.gguf");
    let soft_arg = format!("u={}", s(&soft));
    let o = run(&[
        "pack",
        "--model",
        s(&model),
        "--catalog",
        s(&cat),
        "--template",
        "{soft:u}Seen:{history}\nNext:{candidate}\n",
        "--soft-prompt",
        &soft_arg,
        "--history-sep",
        ";",
        "--scoring",
        "mean",
        "--out",
        s(&pack),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["inspect", s(&pack)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains("catalog: 2 items") && text.contains("Heat (1995)") && text.contains("scoring: mean"),
        "{text}"
    );
    let o = run(&["inspect", "--json", s(&pack)]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["pack"]["n_items"], 2);
    assert_eq!(j["pack"]["soft_prompts"][0]["n_virtual"], 2);
    let o = run(&["inspect", "--json", s(&model)]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["metadata"]["general.architecture"], "llama");
    assert_eq!(j["base_identity"]["n_embd"], 32);
}

#[test]
fn errors_exit_non_zero_with_a_message_and_no_output() {
    let root = tempfile::tempdir().unwrap();
    let hf = root.path().join("hf");
    TinySpec::llama().write(&hf);
    std::fs::remove_file(hf.join("tokenizer.json")).unwrap();
    let out = root.path().join("m.gguf");
    let o = run(&["model", "--hf", s(&hf), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: ") && err.contains("tokenizer.json"), "{err}");
    assert!(!out.exists());
    // Usage errors are clap's (exit 2).
    let o = run(&["model", "--hf", s(&hf), "--out", s(&out), "--outtype", "q3"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["inspect", s(&hf.join("config.json"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a GGUF"));
}
