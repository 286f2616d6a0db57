"""PEFT AdaLoRA / LoRA merged into a T5 by ``delrec-convert`` == the real ``peft`` package's forward.

DELRec fine-tunes Flan-T5 with ``AdaLoraConfig(init_r=320, lora_alpha=32, target_modules=["q", "v"])``:
"q" and "v" match the encoder's and the decoder's self-attention and the decoder's cross attention.
Here PEFT builds such an adapter at init_r 6 on the t5-tiny fixture, every factor random and
nonzero, some ranks pruned the way its RankAllocator prunes (E zeroed, ``rank_pattern`` set; see
test_peft_adapter_parity.py), saves it, and its reload with ``PeftModel.from_pretrained`` is the
reference. The converter merges it at conversion (``model --hf --lora``) and into the converted
GGUF (``merge-lora``); ``delrec logits`` on the result must equal the reference within 1e-3 at F32.
The reference runs with ggml's F16-table GELU emulated (``ggml_t5.py``), so the bound measures the
merge, not ggml's activation (plain transformers is reported beside it).
Plain LoRA on every linear layer (q, k, v, o, wi_0, wi_1, wo), with and without rank/alpha
patterns, is checked the same way.

Needs the built binaries (``cargo build --release``; ``$DELREC_BIN`` / ``$DELREC_CONVERT_BIN``);
skips only when ``peft`` cannot be imported.
"""
import json
import os
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

peft = pytest.importorskip("peft", reason="the real `peft` package is not importable (see train/requirements.txt)")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from delrec_train.export import convert_bin  # noqa: E402
from delrec_train.paths import REPO_ROOT, delrec_bin  # noqa: E402
from ggml_t5 import use_ggml_gelu  # noqa: E402

# PEFT's false alarms on these saves (see test_peft_adapter_parity.py).
pytestmark = [pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape"),
              pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match")]

TOL_F32 = 1e-3
ENC = [22, 26, 25, 19, 7, 6, 33, 10, 34, 48, 1]
DECODERS = [[0, 33, 10, 34], [0, 7, 121, 3, 5, 64]]
INIT_R = 6
N_LAYERS = 2
ATTNS = [("encoder", "0.SelfAttention"), ("decoder", "0.SelfAttention"), ("decoder", "1.EncDecAttention")]
LORA_ALL = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]


def keep_flags():
    """rank_pattern flags per adapted module: one pruned to rank 0, one kept whole, the rest 1-5 kept."""
    keep, i = {}, 0
    for side, attn in ATTNS:
        for n in range(N_LAYERS):
            for m in ["q", "v"]:
                name = f"{side}.block.{n}.layer.{attn}.{m}"
                k = [2, 0, 6, 3, 1, 5, 4, 2, 3, 5, 1, 4][i]
                flags = [False] * INIT_R
                for j in range(k):
                    flags[(5 * i + j) % INIT_R] = True
                assert sum(flags) == k
                keep[name] = flags
                i += 1
    return keep


KEEP = keep_flags()


def run(*args, ok=True):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if ok:
        assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def bins():
    exes = {"delrec": delrec_bin(), "convert": convert_bin()}
    missing = [str(p) for p in exes.values() if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail("missing binaries: " + ", ".join(missing) + " (build them with `cargo build --release`)",
                    pytrace=False)
    return exes


@pytest.fixture(scope="module")
def hf_dir():
    root = os.environ.get("DELREC_FIXTURES")
    d = (Path(root) if root else REPO_ROOT / "target" / "fixtures") / "t5-tiny"
    if not (d / "config.json").is_file():
        pytest.fail(f"no t5-tiny fixture at {d} (tests/fixtures/make_fixtures.py writes it)", pytrace=False)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["num_layers"] == N_LAYERS and cfg["feed_forward_proj"] == "gated-gelu"
    return d


@pytest.fixture(scope="module")
def base_gguf(bins, hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "t5.f32.gguf"
    run(bins["convert"], "model", "--hf", hf_dir, "--out", out, "--outtype", "f32")
    return out


def load_base(hf_dir):
    return transformers.T5ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()


def torch_logits(model):
    model.eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([ENC]), decoder_input_ids=torch.tensor([d])).logits[0].double().numpy()
                for d in DECODERS]


def delrec_logits(bins, gguf):
    args = [bins["delrec"], "logits", "--model", gguf, "--encoder", "tokens:" + ",".join(map(str, ENC)),
            "--tokens", ",".join(map(str, DECODERS[0]))]
    for d in DECODERS[1:]:
        args += ["--decoder", ",".join(map(str, d))]
    out = json.loads(run(*args, "--json").stdout)
    assert out["encoder_passes"] == 1
    return [np.asarray(s, dtype=np.float64) for s in out["sequences"]]


def max_diff(a, b):
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def fill(model, seed, std):
    """Every adapter tensor random and nonzero (AdaLoRA's E in [0.2, 1))."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_E." in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.8 + 0.2)
            elif ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            else:
                continue
            n += 1
    return n


def references(hf_dir, adapter_dir):
    """PEFT's reload of the saved adapter: (plain transformers, with ggml's GELU) logits."""
    ref = peft.PeftModel.from_pretrained(load_base(hf_dir), str(adapter_dir)).eval()
    plain = torch_logits(ref)
    assert use_ggml_gelu(ref) == 2 * N_LAYERS
    return plain, torch_logits(ref), ref


# HF module -> the GGUF tensor stem (llama.cpp's t5 names, written out here independently of the converter)
STEMS = {"0.SelfAttention": "attn_", "1.EncDecAttention": "cross_attn_", "DenseReluDense": "ffn_"}
FFN = {"wi_0": "gate", "wi_1": "up", "wo": "down"}


def gguf_name(hf):
    side, _, n, _, sub, group, m, _ = hf.split(".")
    stem = STEMS["DenseReluDense" if group == "DenseReluDense" else f"{sub}.{group}"]
    return f"{side[:3]}.blk.{n}.{stem}{FFN.get(m, m)}.weight"


def check_weights(hf_dir, adapter_dir, merged_gguf, adapted):
    """Every adapted weight of the merged GGUF == PEFT's merge_and_unload(); the others untouched."""
    merged = peft.PeftModel.from_pretrained(load_base(hf_dir), str(adapter_dir)).merge_and_unload()
    base = load_base(hf_dir).state_dict()
    tensors = {t.name: t for t in gguf.GGUFReader(str(merged_gguf)).tensors}
    worst, moved = 0.0, 0
    for name, w in merged.state_dict().items():
        if not name.endswith(".weight") or ".block." not in name or "layer_norm" in name or "relative" in name:
            continue
        t = tensors[gguf_name(name)]
        got = np.asarray(t.data, dtype=np.float32).reshape(w.shape)
        want = w.detach().numpy()
        d = float(np.abs(got - want).max())
        changed = float(np.abs(want - base[name].numpy()).max()) > 1e-3
        assert changed == (name.removesuffix(".weight") in adapted), name
        moved += changed
        worst = max(worst, d)
    assert moved == len(adapted)
    assert use_ggml_gelu(merged) == 2 * N_LAYERS
    return worst, torch_logits(merged)


def check_merges(case, bins, hf_dir, base_gguf, adapter_dir, plain, emulated, tmp_path, adapted):
    """Both merge paths at F32 against the references; returns the report."""
    merged = tmp_path / "merged.f32.gguf"
    r = run(bins["convert"], "model", "--hf", hf_dir, "--lora", adapter_dir, "--out", merged, "--outtype", "f32")
    assert merged.is_file(), r.stderr
    into = tmp_path / "merged-gguf.f32.gguf"
    run(bins["convert"], "merge-lora", "--base", base_gguf, "--lora", adapter_dir, "--out", into, "--outtype", "f32")
    got, got_gguf = delrec_logits(bins, merged), delrec_logits(bins, into)
    rep = {"model --lora": max_diff(got, emulated), "merge-lora": max_diff(got_gguf, emulated),
           "model --lora vs plain transformers": max_diff(got, plain),
           "base alone": max_diff(delrec_logits(bins, base_gguf), emulated),
           "model --lora vs merge-lora": max_diff(got, got_gguf),
           }
    rep["weights vs merge_and_unload"], torch_merged = check_weights(hf_dir, adapter_dir, merged, adapted)
    # The table's noise floor in torch alone: PEFT's merged model vs its unmerged one.
    rep["torch merged vs unmerged"] = max_diff(torch_merged, emulated)
    print(f"\n[{case}] max |Δ| vs PEFT (ggml GELU emulated unless said): "
          + ", ".join(f"{k} {v:.2e}" for k, v in rep.items()))
    assert rep["base alone"] > 10 * TOL_F32, f"{case}: the adapter barely changes the logits ({rep})"
    for k in ["model --lora", "merge-lora"]:
        assert rep[k] < TOL_F32, f"{case} {k}: max |Δ| {rep[k]:.3e} vs PEFT (tolerance {TOL_F32}); {rep}"
    # F32 rounding of W + s·B·A (weights ~0.3, deltas ~0.1): a few ulps.
    assert rep["weights vs merge_and_unload"] < 1e-6, rep
    return rep


# ---- AdaLoRA (DELRec's configuration, small) -------------------------------------------------


def save_pruned_adalora(hf_dir, out, seed=3):
    cfg = peft.AdaLoraConfig(init_r=INIT_R, target_r=3, lora_alpha=32, target_modules=["q", "v"], total_step=10,
                             tinit=0, tfinal=0, task_type="SEQ_2_SEQ_LM")
    model = peft.get_peft_model(load_base(hf_dir), cfg)
    assert fill(model, seed, std=0.05) == 3 * len(KEEP)
    rank_pattern = {}
    with torch.no_grad():
        for n, p in model.base_model.model.named_parameters():  # what the RankAllocator is handed
            if ".lora_E.default" in n:
                keep = torch.tensor(KEEP[n.removesuffix(".lora_E.default")]).view(-1, 1)
                p.masked_fill_(~keep, 0.0)
                rank_pattern[n] = keep.view(-1).tolist()
    assert len(rank_pattern) == len(KEEP)
    model.peft_config["default"].rank_pattern = rank_pattern
    before = torch_logits(model)
    model.save_pretrained(out, safe_serialization=True)
    return before


def test_pruned_adalora_on_q_v_merges_like_peft(bins, hf_dir, base_gguf, tmp_path):
    d = tmp_path / "peft"
    before = save_pruned_adalora(hf_dir, d)
    saved = load_file(str(d / "adapter_model.safetensors"))
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "ADALORA" and cfg["init_r"] == INIT_R and cfg["lora_alpha"] == 32
    assert set(cfg["rank_pattern"]) == {f"{m}.lora_E" for m in KEEP}
    for m, flags in KEEP.items():
        assert saved[f"base_model.model.{m}.lora_A"].shape[0] == sum(flags)
    assert not any("ranknum" in k for k in saved)
    plain, emulated, ref = references(hf_dir, d)
    seen = {n: mod.r["default"] for n, mod in ref.base_model.model.named_modules() if n in KEEP}
    assert seen == {m: sum(f) for m, f in KEEP.items()}
    assert max_diff(plain, before) < 1e-4, "PEFT's reload is not the model that was saved"
    kept = {m for m, f in KEEP.items() if any(f)}
    check_merges("adalora q,v", bins, hf_dir, base_gguf, d, plain, emulated, tmp_path, kept)


# ---- LoRA on every linear layer --------------------------------------------------------------

LORA_CASES = {
    "lora": dict(),
    # rsLoRA (std 0.04 below: its scale 8/√4 doubles LoRA's 8/4, and moves like the other
    # cases keep the table-noise residual comparable), the cross attention's q at rank 2, one decoder FFN at rank 6, own alphas for wo and v
    "rslora-patterns": dict(use_rslora=True, rank_pattern={"EncDecAttention.q": 2,
                                                           "decoder.block.1.layer.2.DenseReluDense.wi_0": 6},
                            alpha_pattern={"wo": 3.0, "v": 2}),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_on_every_linear_layer_merges_like_peft(case, bins, hf_dir, base_gguf, tmp_path):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_ALL, init_lora_weights=False,
                          task_type="SEQ_2_SEQ_LM", **LORA_CASES[case])
    model = peft.get_peft_model(load_base(hf_dir), cfg)
    # per layer: 4 encoder self-attention, 4 decoder self, 4 cross, 3 + 3 FFN weights
    assert fill(model, seed=11, std=0.04 if case == "rslora-patterns" else 0.05) == 2 * N_LAYERS * 18
    if case == "rslora-patterns":
        dec = model.base_model.model.decoder.block
        assert dec[0].layer[1].EncDecAttention.q.r["default"] == 2
        assert dec[0].layer[0].SelfAttention.q.r["default"] == 4
        assert dec[1].layer[2].DenseReluDense.wi_0.r["default"] == 6
        assert dec[0].layer[2].DenseReluDense.wo.scaling["default"] == pytest.approx(3.0 / 2.0)
    before = torch_logits(model)
    d = tmp_path / "peft"
    model.save_pretrained(d, safe_serialization=True)
    plain, emulated, _ = references(hf_dir, d)
    assert max_diff(plain, before) < 1e-4
    adapted = {n for n, _ in model.base_model.model.named_modules() if n.split(".")[-1] in LORA_ALL}
    assert len(adapted) == 2 * N_LAYERS * 18 // 2
    check_merges(case, bins, hf_dir, base_gguf, d, plain, emulated, tmp_path, adapted)
