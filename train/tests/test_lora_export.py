"""Stage-2 LoRA: injection, PEFT round trip, merging in PyTorch, and the merge into a GGUF
(``delrec-convert merge-lora``, run by ``delrec_train.export``) checked against PyTorch and the
``gguf`` package.

The merge tests need the built binary: ``cargo build --release -p delrec-convert --bins``
(or ``DELREC_CONVERT_BIN``); without it they fail, they do not skip.
"""
import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

from conftest import write_hf  # noqa: E402
from delrec_train import export as export_mod  # noqa: E402
from delrec_train.export import ConvertError, convert_bin, export, verify_export  # noqa: E402
from delrec_train.llm import freeze, load_gguf_model  # noqa: E402
from delrec_train.lora import (PREFIX, TARGETS, inject, load_lora, lora_parameters, merge_into_model,  # noqa: E402
                               parse_targets, save_lora)

ALL = list(TARGETS)


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return freeze(transformers.LlamaForCausalLM(cfg))


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF row order of a q/k projection (llama.cpp's rope layout), as ``convert_hf_to_gguf`` does."""
    if w.shape[0] % (2 * n_head):
        raise ValueError(f"{w.shape[0]} rows do not split into {n_head} heads of even size")
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_lora_starts_at_base_and_merge_equals_adapter(tmp_path):
    x = torch.randint(0, 64, (1, 9))
    base = tiny()
    ref = base(x).logits
    targets = parse_targets("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    model = tiny()
    mods = inject(model, targets, r=4, alpha=8)
    assert len(mods) == 2 * 7
    assert torch.allclose(model(x).logits, ref)  # B = 0
    with torch.no_grad():
        for p in lora_parameters(mods):
            p.normal_(0, 0.2)
    adapted = model(x).logits
    assert (adapted - ref).abs().max() > 1e-2
    save_lora(tmp_path / "lora", mods, targets, "tiny", {"soft_prompt": None})
    cfg, deltas = load_lora(tmp_path / "lora")
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert set(deltas) == {f"{n}.weight" for n in mods}
    merged = tiny()
    merge_into_model(merged, deltas)
    assert torch.allclose(merged(x).logits, adapted, atol=1e-4)


def test_lora_errors(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        parse_targets("q_proj,lm_head")
    model = tiny()
    mods = inject(model, ["v_proj"], r=2, alpha=2)
    save_lora(tmp_path / "l", mods, ["v_proj"], "tiny")
    cfg = json.loads((tmp_path / "l" / "adapter_config.json").read_text())
    (tmp_path / "l" / "adapter_config.json").write_text(json.dumps(cfg | {"peft_type": "PROMPT_TUNING"}))
    with pytest.raises(ValueError, match="not LORA"):
        load_lora(tmp_path / "l")
    (tmp_path / "l" / "adapter_config.json").write_text(json.dumps(cfg | {"r": 3}))
    with pytest.raises(ValueError, match="rank 3"):
        load_lora(tmp_path / "l")
    deltas = {"model.layers.9.mlp.up_proj.weight": np.zeros((64, 32), dtype=np.float32)}
    with pytest.raises(KeyError, match="does not have"):
        merge_into_model(tiny(), deltas)


def test_permutation_is_inverted_by_transformers_gguf_loader():
    # The reference permutation of these tests is the one transformers' GGUF loader undoes.
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    for n_head, n_kv in [(9, 9), (9, 3), (4, 2)]:
        w = rng.normal(size=(n_kv * 8, 16)).astype(np.float32)
        back = LlamaTensorProcessor()._reverse_permute_weights(permute_rows(w, n_kv), n_head, n_kv)
        assert np.array_equal(back, w)
        assert np.array_equal(unpermute_rows(permute_rows(w, n_kv), n_kv), w)
    with pytest.raises(ValueError, match="heads"):
        permute_rows(np.zeros((6, 4)), 4)


# ---- the merge into a GGUF (delrec-convert merge-lora) ----------------------------------------


@pytest.fixture(scope="module")
def binary():
    exe = convert_bin()
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: run `cargo build --release -p delrec-convert --bins` first "
                    f"(or set DELREC_CONVERT_BIN)")
    return exe


def run(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module", params=[("llama", "q8_0"), ("qwen2", "q4_1")], ids=lambda p: "-".join(p))
def base(request, binary, tmp_path_factory):
    """A quantized base GGUF (HF checkpoint -> F32 GGUF -> llama.cpp's quantizer), like the shipped Q4_1."""
    arch, qtype = request.param
    d = tmp_path_factory.mktemp(f"{arch}-{qtype}")
    write_hf(d / "hf", arch)
    run(binary, "model", "--hf", d / "hf", "--out", d / "base.f32.gguf", "--outtype", "f32")
    q = d / f"base.{qtype}.gguf"
    run(binary, "quantize", "--in", d / "base.f32.gguf", "--out", q, "--type", qtype)
    return arch, q


def random_lora(base_gguf, out_dir, targets=ALL, seed=0):
    model = load_gguf_model(base_gguf)
    mods = inject(model, targets, r=4, alpha=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(mods):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_lora(out_dir, mods, targets, str(base_gguf))
    return out_dir


def test_export_scores_like_the_pytorch_merge(base, tmp_path):
    arch, q = base
    lora = random_lora(q, tmp_path / "lora")
    out = tmp_path / "merged.f16.gguf"
    rep = export(q, lora, out)  # verify=True: every adapted weight vs the PyTorch merge
    assert rep["merged_weights"] == 2 * 7
    assert rep["max_abs_diff_vs_pytorch"] < 5e-3
    assert set(rep["types"]) == {"F16", "F32"} and rep["base_types"].get(q.name.split(".")[1].upper())
    # The merged GGUF scores like base + LoRA in PyTorch (and the LoRA matters).
    _, deltas = load_lora(lora)
    ref = load_gguf_model(q)
    x = torch.randint(0, 257, (1, 12), generator=torch.Generator().manual_seed(3))
    before = ref(x).logits
    merge_into_model(ref, deltas)
    want = ref(x).logits
    got = load_gguf_model(out)(x).logits
    assert (got - want).abs().max() < 2e-2 * want.abs().max()
    assert (before - want).abs().max() > 10 * (got - want).abs().max()
    # Metadata and tokenizer copied; only the file type changed.
    rb, ro = gguf.GGUFReader(str(q)), gguf.GGUFReader(str(out))
    assert ro.fields["tokenizer.ggml.tokens"].contents() == rb.fields["tokenizer.ggml.tokens"].contents()
    assert ro.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_F16)
    assert sorted(ro.fields) == sorted(rb.fields)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora", "merged.f16.gguf"]


def test_f32_merge_equals_gguf_package_dequantization_plus_delta(base, tmp_path):
    """Checked with the ``gguf`` package: base dequantized by it + (alpha/r)·B·A, q/k rows permuted for llama."""
    arch, q = base
    lora = random_lora(q, tmp_path / "lora", seed=1)
    out = tmp_path / "merged.f32.gguf"
    rep = export(q, lora, out, outtype="f32")  # verified at float32 rounding
    assert rep["max_abs_diff_vs_pytorch"] < 1e-4
    _, deltas = load_lora(lora)
    rb = {t.name: t for t in gguf.GGUFReader(str(q)).tensors}
    ro = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert rb.keys() == ro.keys()
    heads = {"q_proj": 4, "k_proj": 2}
    stems = {stem: (block, name) for name, (block, stem) in TARGETS.items()}
    merged = 0
    for name, t in rb.items():
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        parts = name.split(".")
        if parts[0] == "blk" and parts[2] in stems and parts[3] == "weight":
            block, module = stems[parts[2]]
            d = deltas[f"model.layers.{parts[1]}.{block}.{module}.weight"]
            if arch == "llama" and module in heads:
                d = permute_rows(d, heads[module])
            want = want + d
            merged += 1
        o = ro[name]
        assert o.tensor_type == gguf.GGMLQuantizationType.F32, name
        got = np.asarray(o.data, dtype=np.float32).reshape(want.shape)
        assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max()), name
    assert merged == 14


def test_unpermuted_merge_fails_verification(base, tmp_path):
    """verify_export catches q/k deltas added in HF row order (what a merge without llama.cpp's
    rope permutation would write) for llama; for qwen2 (unpermuted layout) there is nothing to catch."""
    arch, q = base
    if arch != "llama":
        pytest.skip("qwen2 stores q/k unpermuted")
    lora = random_lora(q, tmp_path / "lora", targets=["q_proj", "k_proj"], seed=2)
    from safetensors.numpy import load_file, save_file

    # B with rows un-permuted: merge-lora permutes them back to HF order, i.e. writes W + B·A unpermuted.
    t = load_file(str(lora / "adapter_model.safetensors"))
    for k in t:
        if k.endswith("lora_B.weight"):
            t[k] = np.ascontiguousarray(unpermute_rows(t[k], 4 if ".q_proj." in k else 2))
    bad = tmp_path / "bad-lora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((lora / "adapter_config.json").read_text())
    save_file(t, str(bad / "adapter_model.safetensors"))
    export(q, bad, tmp_path / "unpermuted.gguf", verify=False)
    with pytest.raises(ValueError, match="differs from the PyTorch merge"):
        verify_export(q, lora, tmp_path / "unpermuted.gguf")
    export(q, lora, tmp_path / "good.gguf", verify=False)
    assert verify_export(q, lora, tmp_path / "good.gguf") < 5e-3


def test_export_errors_leave_nothing(base, tmp_path, monkeypatch):
    arch, q = base
    deeper = transformers.LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2)
    mods = inject(freeze(transformers.LlamaForCausalLM(deeper)), ["v_proj"], r=2, alpha=4)
    save_lora(tmp_path / "lora3", mods, ["v_proj"], "tiny")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError, match="has no tensor \"blk.2.attn_v.weight\""):
        export(q, tmp_path / "lora3", out / "bad.gguf", verify=False)
    with pytest.raises(ConvertError, match="no adapter_config.json"):
        export(q, tmp_path / "nothing", out / "bad.gguf", verify=False)
    assert list(out.iterdir()) == []
    monkeypatch.setenv("DELREC_CONVERT_BIN", str(tmp_path / "no-such-binary"))
    with pytest.raises(FileNotFoundError, match="cargo build --release -p delrec-convert"):
        export(q, tmp_path / "lora3", out / "bad.gguf", verify=False)


def test_cli_keeps_its_arguments(base, binary, tmp_path, monkeypatch, capsys):
    arch, q = base
    lora = random_lora(q, tmp_path / "lora", targets=["up_proj"])
    monkeypatch.setenv("DELREC_CONVERT_BIN", str(binary))
    assert export_mod.main(["--model", str(q), "--lora", str(lora), "--out", str(tmp_path / "m.gguf"),
                            "--no-verify"]) == 0
    assert "'merged_weights': 2" in capsys.readouterr().out
    assert gguf.GGUFReader(str(tmp_path / "m.gguf")).fields["general.file_type"].contents() == 1
