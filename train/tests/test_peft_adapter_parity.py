"""``delrec-convert adapter`` + ``delrec logits --adapter`` against the real ``peft`` package.

PEFT itself builds, trains-by-hand and saves the adapters here (LoRA, rsLoRA with rank/alpha
patterns, AdaLoRA pruned the way its RankAllocator prunes), and PEFT's own forward of the adapter
reloaded with ``PeftModel.from_pretrained`` (what a user serving the saved adapter gets) is the
reference for llama.cpp running the converted adapter GGUF over the F32 base GGUF.

Needs the built binaries (``cargo build --release``; ``$DELREC_BIN`` / ``$DELREC_CONVERT_BIN``
override them): without them the tests fail, they do not skip. They skip only when ``peft`` cannot
be imported (it is pinned in train/requirements.txt).

What PEFT (0.17-0.21) does with a pruned AdaLoRA, as the converter assumes (convert/src/lora.rs):
the RankAllocator only zeroes E entries, ``save_pretrained`` writes each module's True rows of its
``rank_pattern`` (keys ``model.layers.0.self_attn.q_proj.lora_E``, the adapter name stripped) and
no ``ranknum``; the reload builds every module at ``init_r`` and resizes it, copying ranknum back,
so the scale stays ``lora_alpha / (init_r + 1e-5)``. With ``lora_alpha = 0`` the reload's scaling
is the *pruned* rank (``update_layer(rank)``) while the unsaved model used ``init_r``: there the
reloaded model is not the one that was saved, and the reload is the reference.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

peft = pytest.importorskip("peft", reason="the real `peft` package is not importable (see train/requirements.txt)")

import torch  # noqa: E402  (peft imports both; they are there when peft is)
import transformers  # noqa: E402
from packaging.version import Version  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from delrec_train.export import convert_bin  # noqa: E402
from delrec_train.paths import REPO_ROOT, delrec_bin  # noqa: E402

# PEFT's own warnings on these saves are false alarms: a rank-0 AdaLoRA module's (r, 0) / (0, in)
# tensors look to 0.21's ZeRO-3 check like unsharded shards, and on reload LoRA's generic pattern
# check does not recognize AdaLoRA's `<module>.lora_E` rank_pattern keys (AdaLoRA resizes by them).
pytestmark = [pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape"),
              pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match")]

TOL_F32 = 1e-3
TOL_F16 = 2e-2
TOKENS = [1, 17, 42, 99, 123, 256, 300, 411, 512, 600, 650, 699]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
INIT_R = 6
ADA_TARGETS = ["q_proj", "v_proj", "down_proj"]
# AdaLoRA rank_pattern flags (init_r = 6) per module; 1.v_proj is pruned to rank 0, 0.v_proj kept whole.
KEEP = {
    "model.layers.0.self_attn.q_proj": [True, False, False, True, False, False],
    "model.layers.0.self_attn.v_proj": [True] * 6,
    "model.layers.0.mlp.down_proj": [False, True, False, False, False, True],
    "model.layers.1.self_attn.q_proj": [False, True, True, False, True, False],
    "model.layers.1.self_attn.v_proj": [False] * 6,
    "model.layers.1.mlp.down_proj": [True, True, False, True, True, False],
}


def run(*args, ok=True):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if ok:
        assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}"
    return p


@pytest.fixture(scope="module")
def bins():
    if Version(peft.__version__) < Version("0.17"):
        pytest.fail(f"peft {peft.__version__} is older than 0.17 (the pattern/AdaLoRA semantics checked here)")
    exes = {"delrec": delrec_bin(), "convert": convert_bin()}
    missing = [str(p) for p in exes.values() if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail("missing binaries: " + ", ".join(missing) + " (build them with `cargo build --release`, "
                    "or set DELREC_BIN / DELREC_CONVERT_BIN)", pytrace=False)
    return exes


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """The llama-tiny fixture checkpoint (hidden 64, 2 layers, 4 heads / 2 kv heads, vocab 700)."""
    root = os.environ.get("DELREC_FIXTURES")
    d = (Path(root) if root else REPO_ROOT / "target" / "fixtures") / "llama-tiny"
    if not (d / "config.json").is_file():
        out = tmp_path_factory.mktemp("fixtures") / "fx"
        p = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "fixtures" / "make_fixtures.py"), str(out)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"make_fixtures.py failed (rc={p.returncode}):\n{p.stderr}", pytrace=False)
        d = out / "llama-tiny"
    assert max(TOKENS) < json.loads((d / "config.json").read_text())["vocab_size"]
    return d


@pytest.fixture(scope="module")
def base_gguf(bins, hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base.f32.gguf"
    run(bins["convert"], "model", "--hf", hf_dir, "--out", out, "--outtype", "f32")
    return out


def load_base(hf_dir):
    return transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def torch_logits(model) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([TOKENS])).logits[0].float().numpy()


def delrec_logits(bins, base, adapter=None) -> np.ndarray:
    extra = ["--adapter", adapter] if adapter else []
    p = run(bins["delrec"], "logits", "--model", base, *extra, "--tokens", ",".join(map(str, TOKENS)), "--json")
    got = np.asarray(json.loads(p.stdout)["logits"], dtype=np.float32)
    assert got.shape[0] == len(TOKENS), got.shape
    return got


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


def reload(hf_dir, adapter_dir):
    return peft.PeftModel.from_pretrained(load_base(hf_dir), str(adapter_dir)).eval()


def check_parity(case, bins, base, adapter_dir, want, tmp_path):
    """Converts ``adapter_dir`` at f32 and f16 and compares llama.cpp's logits with ``want``."""
    diffs = {}
    for outtype, tol in [("f32", TOL_F32), ("f16", TOL_F16)]:
        out = tmp_path / f"adapter.{outtype}.gguf"
        run(bins["convert"], "adapter", "--base", base, "--lora", adapter_dir, "--out", out, "--outtype", outtype)
        assert out.is_file()
        got = delrec_logits(bins, base, out)
        assert got.shape == want.shape
        diffs[outtype] = float(np.abs(got - want).max())
        assert diffs[outtype] < tol, f"{case} {outtype}: max |Δ| {diffs[outtype]:.3e} vs PEFT (tolerance {tol})"
    diffs["base"] = float(np.abs(delrec_logits(bins, base) - want).max())
    print(f"\n[{case}] max |Δ| vs PEFT: f32 adapter {diffs['f32']:.2e}, f16 adapter {diffs['f16']:.2e}, "
          f"base alone {diffs['base']:.2e}")
    assert diffs["base"] > 10 * TOL_F32, f"{case}: the adapter barely changes the logits ({diffs['base']:.2e})"
    return diffs


# ---- LoRA ------------------------------------------------------------------------------------

LORA_CASES = {
    "lora": dict(),
    # rsLoRA: scale alpha/sqrt(r); q_proj at r 2, one layer's up_proj at r 6, down_proj / v_proj own alphas
    "rslora-patterns": dict(use_rslora=True, rank_pattern={"q_proj": 2, "model.layers.1.mlp.up_proj": 6},
                            alpha_pattern={"down_proj": 3.0, "v_proj": 2}),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_matches_peft(case, bins, hf_dir, base_gguf, tmp_path):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=ALL, init_lora_weights=False, task_type="CAUSAL_LM",
                          **LORA_CASES[case])
    model = peft.get_peft_model(load_base(hf_dir), cfg)
    # std 0.1: the adapter moves the logits by ~7 (more than their own size); at 0.2 (moves of ~11)
    # F16 rounding of the factors and of llama.cpp's F16 activations alone exceeds TOL_F16.
    assert fill(model, seed=11, std=0.1) == 2 * 7 * 2
    if case == "rslora-patterns":  # PEFT applied the patterns (so the converter has something to fold)
        layers = model.base_model.model.model.layers
        q, up, down = layers[0].self_attn.q_proj, layers[1].mlp.up_proj, layers[0].mlp.down_proj
        assert q.r["default"] == 2 and q.scaling["default"] == pytest.approx(8 / 2 ** 0.5)
        assert up.r["default"] == 6 and layers[0].mlp.up_proj.r["default"] == 4
        assert down.scaling["default"] == pytest.approx(3.0 / 2.0)
    before = torch_logits(model)
    d = tmp_path / "peft"
    model.save_pretrained(d, safe_serialization=True)
    want = torch_logits(reload(hf_dir, d))
    assert np.abs(want - before).max() < 1e-4
    check_parity(case, bins, base_gguf, d, want, tmp_path)


# ---- AdaLoRA ---------------------------------------------------------------------------------


def save_pruned_adalora(hf_dir, out, lora_alpha=8, seed=5):
    """An AdaLoRA pruned like RankAllocator.mask_to_budget does (E zeroed, rank_pattern keyed by the
    inner model's parameter names), saved by PEFT; -> (logits before saving, the model)."""
    cfg = peft.AdaLoraConfig(init_r=INIT_R, target_r=3, lora_alpha=lora_alpha, target_modules=ADA_TARGETS,
                             total_step=10, tinit=0, tfinal=0, task_type="CAUSAL_LM")
    model = peft.get_peft_model(load_base(hf_dir), cfg)
    assert fill(model, seed, std=0.2) == 2 * 3 * 3
    rank_pattern = {}
    with torch.no_grad():
        for n, p in model.base_model.model.named_parameters():  # the model the RankAllocator is handed
            if ".lora_E.default" in n:
                keep = torch.tensor(KEEP[n.removesuffix(".lora_E.default")]).view(-1, 1)
                p.masked_fill_(~keep, 0.0)
                rank_pattern[n] = keep.view(-1).tolist()
    assert len(rank_pattern) == len(KEEP)
    model.peft_config["default"].rank_pattern = rank_pattern
    before = torch_logits(model)
    model.save_pretrained(out, safe_serialization=True)
    return before, model


def check_saved_is_pruned(d):
    saved = load_file(str(d / "adapter_model.safetensors"))
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "ADALORA" and cfg["init_r"] == INIT_R
    assert set(cfg["rank_pattern"]) == {f"{m}.lora_E" for m in KEEP}
    for m, flags in KEEP.items():
        k = sum(flags)
        p = f"base_model.model.{m}"
        assert saved[f"{p}.lora_A"].shape[0] == k and saved[f"{p}.lora_B"].shape[1] == k
        assert saved[f"{p}.lora_E"].shape == (k, 1)
        assert k == 0 or np.all(saved[f"{p}.lora_E"] != 0)  # only the kept (nonzero) singular values
    assert not any("ranknum" in k for k in saved)


@pytest.mark.parametrize("lora_alpha", [8, 0], ids=["alpha8", "alpha0"])
def test_pruned_adalora_matches_peft_reload(lora_alpha, bins, hf_dir, base_gguf, tmp_path):
    d = tmp_path / "peft"
    before, _ = save_pruned_adalora(hf_dir, d, lora_alpha)
    check_saved_is_pruned(d)
    ref = reload(hf_dir, d)
    seen = {}
    for name, mod in ref.base_model.model.named_modules():
        if name in KEEP:
            seen[name] = (mod.r["default"], float(mod.ranknum["default"]), float(mod.scaling["default"]))
    assert {m: r for m, (r, _, _) in seen.items()} == {m: sum(f) for m, f in KEEP.items()}
    print(f"\n[adalora alpha={lora_alpha}] reloaded (r, ranknum, scaling): {seen}")
    want = torch_logits(ref)
    drift = float(np.abs(want - before).max())
    print(f"[adalora alpha={lora_alpha}] PEFT reload vs the model before saving: max |Δ| {drift:.2e}")
    if lora_alpha > 0:  # the reload is the model that was saved (ranknum stays init_r)
        assert drift < 1e-4
    check_parity(f"adalora-alpha{lora_alpha}", bins, base_gguf, d, want, tmp_path)


@pytest.mark.parametrize("edit", ["flag-flipped", "list-too-short"])
def test_adalora_rank_pattern_inconsistent_with_tensors_is_refused(edit, bins, hf_dir, base_gguf, tmp_path):
    d = tmp_path / "peft"
    save_pruned_adalora(hf_dir, d)
    cfg_path = d / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    key = "model.layers.0.self_attn.q_proj.lora_E"  # 2 of 6 kept and saved
    flags = cfg["rank_pattern"][key]
    assert flags == KEEP["model.layers.0.self_attn.q_proj"]
    if edit == "flag-flipped":  # says 3 kept; the tensors hold 2
        flags[1] = True
    else:  # 5 flags for init_r 6
        flags.pop()
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "bad.gguf"
    p = run(bins["convert"], "adapter", "--base", base_gguf, "--lora", d, "--out", out, "--outtype", "f32", ok=False)
    print(f"\n[{edit}] rc={p.returncode}: {p.stderr.strip()}")
    assert p.returncode != 0
    assert p.stderr.strip(), "no message"
    assert "q_proj" in p.stderr or "rank_pattern" in p.stderr, p.stderr
    assert not out.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["peft"]
