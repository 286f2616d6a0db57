"""Stage 2 (LoRA) end to end on a tiny random Llama: train, resume, PEFT output, evaluation row."""
import json
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from delrec_train import evaluate, stage1, stage2  # noqa: E402
from delrec_train.data import load_dataset  # noqa: E402
from delrec_train.lora import load_lora  # noqa: E402
from test_evaluate_report import synth  # noqa: E402
from test_stage1_e2e import stub_delrec, tiny_llama  # noqa: E402


def stage_setup(tmp_path, monkeypatch):
    """Synthetic data, the tiny Llama, the stub tokenizer and a teacher top-1 file (2 examples per
    user) -> (work dir, the stages' common arguments)."""
    monkeypatch.setenv("DELREC_ASSETS", str(tmp_path / "assets"))
    synth(tmp_path, n_users=6)
    tiny_llama().save_pretrained(tmp_path / "tiny")
    binary = stub_delrec(tmp_path)
    out = tmp_path / "w"
    ds = load_dataset(tmp_path, "syn")
    top = {}
    for u in ds.users():
        n = len(ds.seqs[u]) - 2
        top[u] = [{"target": ds.seqs[u][n - 1 - j], "top1": next(i for i in ds.items if i not in ds.seqs[u])}
                  for j in range(2)]
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "train_top1.json").write_text(json.dumps({"seed": 0, "history": 10, "n_neg": 19, "users": top}))
    data = ["--data-dir", str(tmp_path), "--name", "syn", "--out", str(out), "--model", str(tmp_path / "tiny"),
            "--delrec-bin", str(binary), "--threads", "1", "--device", "cpu", "--no-progress", "--autocast", "none"]
    return out, data


def test_stage2_train_resume_and_evaluate(tmp_path, monkeypatch):
    out, data = stage_setup(tmp_path, monkeypatch)
    binary = data[data.index("--delrec-bin") + 1]
    assert stage1.main(data + ["--users", "0", "--batch-size", "2", "--n-virtual", "4", "--max-steps", "1"]) == 0
    common = data + ["--users", "0", "--per-user", "2", "--batch-size", "2", "--lora-r", "2", "--lr", "0.05",
                     "--targets", "q_proj,v_proj,down_proj", "--save-every", "1"]
    assert stage2.main(common + ["--max-steps", "2"]) == 0
    cfg2, d2 = load_lora(out / "lora")
    assert cfg2["r"] == 2 and cfg2["target_modules"] == ["q_proj", "v_proj", "down_proj"] and len(d2) == 6
    assert max(abs(v).max() for v in d2.values()) > 0  # B moved off zero
    meta = json.loads((out / "lora" / "delrec_train.json").read_text())
    assert meta["soft_prompt"] == str((out / "soft_prompt").resolve()) and len(meta["log"]) == 2
    assert stage2.main(common + ["--max-steps", "3", "--resume"]) == 0
    _, d3 = load_lora(out / "lora")
    out2 = tmp_path / "w2"  # a fresh 3-step run equals 2 steps + resume
    (out2 / "teacher").mkdir(parents=True)
    (out2 / "teacher" / "train_top1.json").write_text((out / "teacher" / "train_top1.json").read_text())
    common2 = [str(out2) if a == str(out) else a for a in common]
    assert stage2.main(common2 + ["--max-steps", "3", "--soft", str(out / "soft_prompt")]) == 0
    _, d3b = load_lora(out2 / "lora")
    assert max(abs(d3[k] - d3b[k]).max() for k in d3) < 1e-5
    with pytest.raises(SystemExit, match="settings differ"):
        stage2.main(common + ["--max-steps", "4", "--resume", "--lora-r", "4"])
    # another base (e.g. a re-quantized one): its own state dir and LoRA; resuming over the wrong base is refused
    shutil.copytree(tmp_path / "tiny", tmp_path / "tiny_b")
    other = [str(tmp_path / "tiny_b") if a == str(tmp_path / "tiny") else a for a in common]
    ckpt_before = (out / "stage2" / "checkpoint.pt").read_bytes()
    alt = ["--state-dir", str(tmp_path / "alt"), "--lora-out", str(tmp_path / "alt_lora")]
    assert stage2.main(other + alt + ["--max-steps", "1"]) == 0
    assert (tmp_path / "alt" / "checkpoint.pt").is_file() and (tmp_path / "alt_lora" / "adapter_config.json").is_file()
    assert (out / "stage2" / "checkpoint.pt").read_bytes() == ckpt_before
    with pytest.raises(SystemExit, match="settings differ.*model"):
        stage2.main(common + ["--max-steps", "2", "--resume"] + alt)
    # the llm_lora evaluation row uses the merged LoRA and differs from llm_soft
    ev = ["--data-dir", str(tmp_path), "--name", "syn", "--out", str(out), "--model", str(tmp_path / "tiny"),
          "--delrec-bin", str(binary), "--threads", "1", "--device", "cpu", "--no-progress", "--users", "4",
          "--rows", "random,pop,llm_zeroshot,llm_soft,llm_lora"]
    assert evaluate.main(ev) == 0
    m = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(m["rows"]) == {"random", "pop", "llm_zeroshot", "llm_soft", "llm_lora"}
    scores = [json.loads(x) for x in (out / "eval" / "scores.jsonl").read_text().splitlines()]
    assert any(s["rows"]["llm_lora"]["scores"] != s["rows"]["llm_soft"]["scores"] for s in scores)
