"""Stages 1 and 2 under PyTorch's own launcher: `torchrun --nproc_per_node=2` (DDP, gloo, CPU) with
the same global batch gives the single-process result, and only rank 0 writes.

What may differ is the order of the float additions only: each example's forward and backward is
the same computation in both runs, but one process accumulates the step's 4 example gradients in
order, ((g1 + g2) + g3) + g4, while under DDP rank 0 accumulates g1 + g3, rank 1 g2 + g4, and the
all-reduce adds the two (the x2 of the loss rescaling and DDP's /2 are exact); AdamW then carries
the rounding differences on. Measured after 3 steps: 3.7e-7 (stage 1) and 8.3e-7 (stage 2) of the
largest trained value, against a tolerance of 1e-5. Per-step stats (loss, grad norm) are compared too.
"""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from safetensors.numpy import load_file  # noqa: E402

from delrec_train import stage1, stage2  # noqa: E402
from delrec_train.data import load_dataset  # noqa: E402
from delrec_train.peft_io import load_prompt  # noqa: E402
from test_evaluate_report import synth  # noqa: E402
from test_stage1_e2e import STUB  # noqa: E402

TRAIN = Path(__file__).resolve().parent.parent
TOL = 1e-5  # max |one - two| / max |one|


def torchrun(module: str, args: list[str], assets: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DELREC_ASSETS=str(assets), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(TRAIN)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    if sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # containers whose hostname does not resolve locally
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", module, *args]
    r = subprocess.run(cmd, cwd=TRAIN, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a) / max(float(np.abs(a[k]).max()) for k in a)


def close_logs(l1: list[dict], l2: list[dict]) -> None:
    assert [r["step"] for r in l1] == [r["step"] for r in l2]
    for r1, r2 in zip(l1, l2):  # the logged stats are the whole batch's on rank 0 (summed over the ranks)
        assert r2["loss"] == pytest.approx(r1["loss"], rel=TOL) and r2["lr"] == r1["lr"]
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-4)


def test_torchrun_two_processes_equal_one(tmp_path, monkeypatch):
    synth(tmp_path, n_users=6)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                   tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    binary = tmp_path / "delrec"
    binary.write_text(STUB.format(py=sys.executable))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    ds = load_dataset(tmp_path, "syn")
    unseen = {u: next(i for i in ds.items if i not in ds.seqs[u]) for u in ds.users()}
    top = {u: [{"target": ds.seqs[u][len(ds.seqs[u]) - 3 - j], "top1": unseen[u]} for j in range(2)]
           for u in ds.users()}  # the last 2 training positions (as in test_stage2_e2e)
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        (d / "teacher").mkdir(parents=True)
        (d / "teacher" / "train_top1.json").write_text(json.dumps({"seed": 0, "history": 10, "n_neg": 19,
                                                                   "users": top}))
    # global batch 4: 2 examples per process and step under torchrun
    data = ["--data-dir", str(tmp_path), "--name", "syn", "--model", str(tmp_path / "tiny"),
            "--delrec-bin", str(binary), "--threads", "1", "--device", "cpu", "--no-progress",
            "--autocast", "none", "--users", "0", "--batch-size", "4", "--save-every", "1"]

    # stage 1: 3 steps in this process, then 3 steps under torchrun (own token cache: rank 0 fills it)
    s1 = data + ["--n-virtual", "4", "--max-steps", "3"]
    monkeypatch.setenv("DELREC_ASSETS", str(tmp_path / "assets1"))
    assert stage1.main(s1 + ["--out", str(one)]) == 0
    r = torchrun("delrec_train.stage1", s1 + ["--out", str(two)], tmp_path / "assets2")
    e1, _, m1 = load_prompt(one / "soft_prompt")
    e2, _, m2 = load_prompt(two / "soft_prompt")
    d1 = rel_diff({"p": e1}, {"p": e2})
    print(f"stage 1: max |1 proc - 2 procs| / max |1 proc| = {d1:.2e}")
    assert d1 < TOL
    close_logs(m1["log"], m2["log"])
    assert m2["summary"]["world_size"] == 2 and "world_size" not in m1["summary"]
    # one set of outputs: rank 0 alone prints the summary and writes the files
    assert r.stdout.count('"steps": 3') == 1 and r.stderr.count("soft prompt written to") == 1
    assert files(one) == files(two) and not any(f.endswith(".part") for f in files(two))
    assert files(tmp_path / "assets2") == files(tmp_path / "assets1")

    # stage 2 (LoRA, stage-1 prompt frozen): 3 steps in one process vs 1 step here + --resume under
    # torchrun for steps 2-3 (the checkpoint is read by rank 0 and broadcast)
    s2 = data + ["--per-user", "2", "--lora-r", "2", "--lr", "0.05", "--targets", "q_proj,v_proj,down_proj",
                 "--soft", str(one / "soft_prompt")]
    assert stage2.main(s2 + ["--out", str(one), "--max-steps", "3"]) == 0
    assert stage2.main(s2 + ["--out", str(two), "--max-steps", "1"]) == 0
    r = torchrun("delrec_train.stage2", s2 + ["--out", str(two), "--max-steps", "3", "--resume"], tmp_path / "assets1")
    assert r.stderr.count("resumed from") == 1 and r.stderr.count("LoRA adapter written to") == 1
    l1, l2 = (load_file(str(d / "lora" / "adapter_model.safetensors")) for d in (one, two))
    d2 = rel_diff(l1, l2)
    print(f"stage 2: max |1 proc - 2 procs| / max |1 proc| = {d2:.2e}")
    assert d2 < TOL
    assert max(float(np.abs(v).max()) for k, v in l2.items() if "lora_B" in k) > 0  # B moved off zero
    close_logs(json.loads((one / "lora" / "delrec_train.json").read_text())["log"],
               json.loads((two / "lora" / "delrec_train.json").read_text())["log"])
    assert files(one) == files(two)
