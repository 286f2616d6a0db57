"""Stage 1 end to end on a tiny random Llama (HF directory) with a stub `delrec tokenize`."""
import json
import stat
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from delrec_train import stage1  # noqa: E402
from delrec_train.data import load_dataset  # noqa: E402
from delrec_train.peft_io import load_prompt  # noqa: E402
from test_evaluate_report import synth  # noqa: E402

STUB = """#!{py}
import json, sys
a = sys.argv[1:]
strings = json.load(open(a[a.index("--strings") + 1], encoding="utf-8"))
print(json.dumps({{"ids": [[ord(ch) % 62 + 2 for ch in s] for s in strings]}}))
"""


def tiny_llama(seed: int = 0):
    """The stages' tiny random Llama (64 tokens, width 32, 2 blocks, tied embeddings)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                   tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def stub_delrec(tmp_path):
    """A `delrec` stand-in whose `tokenize` gives one id per character (ord % 62 + 2)."""
    binary = tmp_path / "delrec"
    binary.write_text(STUB.format(py=sys.executable))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    return binary


def test_stage1_train_resume_and_peft_output(tmp_path, monkeypatch):
    monkeypatch.setenv("DELREC_ASSETS", str(tmp_path / "assets"))  # token cache goes here
    synth(tmp_path, n_users=6)
    tiny_llama().save_pretrained(tmp_path / "tiny")
    binary = stub_delrec(tmp_path)
    out = tmp_path / "w"
    ds = load_dataset(tmp_path, "syn")
    top = {}
    for u in ds.users():
        n = len(ds.seqs[u]) - 2
        prefix = ds.seqs[u][:n - 1]
        other = next(i for i in ds.items if i not in prefix)
        top[u] = [{"target": ds.seqs[u][n - 1], "top1": other}]
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "train_top1.json").write_text(json.dumps({"seed": 0, "history": 10, "n_neg": 19, "users": top}))
    common = ["--data-dir", str(tmp_path), "--name", "syn", "--out", str(out), "--model", str(tmp_path / "tiny"),
              "--delrec-bin", str(binary), "--users", "0", "--batch-size", "2", "--threads", "1", "--device", "cpu",
              "--n-virtual", "4", "--save-every", "1", "--no-progress", "--autocast", "none"]
    assert stage1.main(common + ["--max-steps", "2"]) == 0
    emb2, cfg2, meta2 = load_prompt(out / "soft_prompt")
    assert emb2.shape == (4, 32) and cfg2["num_virtual_tokens"] == 4 and cfg2["token_dim"] == 32
    assert meta2["template"] == stage1.DEFAULT_TEMPLATE and meta2["bos"] == -1 and len(meta2["log"]) == 2
    assert (out / "catalog.csv").is_file()
    assert stage1.main(common + ["--max-steps", "3", "--resume"]) == 0
    emb3, _, meta3 = load_prompt(out / "soft_prompt")
    assert [r["step"] for r in meta3["log"]] == [1, 2, 3] and meta3["log"][:2] == meta2["log"]
    # a fresh 3-step run gives the same soft prompt as 2 steps + resume
    out2 = tmp_path / "w2"
    (out2 / "teacher").mkdir(parents=True)
    (out2 / "teacher" / "train_top1.json").write_text((out / "teacher" / "train_top1.json").read_text())
    common[common.index(str(out))] = str(out2)
    assert stage1.main(common + ["--max-steps", "3"]) == 0
    emb3b, _, _ = load_prompt(out2 / "soft_prompt")
    assert abs(emb3b - emb3).max() < 1e-5
    with pytest.raises(SystemExit, match="settings differ"):
        stage1.main(common + ["--max-steps", "4", "--resume", "--lr", "0.5"])
