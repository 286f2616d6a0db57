"""Stage-2 LoRA: injection, PEFT round trip, merging in PyTorch, and the merge into a GGUF."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from delrec_train.export import export, permute_rows  # noqa: E402
from delrec_train.llm import freeze  # noqa: E402
from delrec_train.lora import inject, load_lora, lora_parameters, merge_into_model, parse_targets, save_lora  # noqa: E402


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return freeze(transformers.LlamaForCausalLM(cfg))


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
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    for n_head, n_kv in [(9, 9), (9, 3), (4, 2)]:
        w = rng.normal(size=(n_kv * 8, 16)).astype(np.float32)
        back = LlamaTensorProcessor()._reverse_permute_weights(permute_rows(w, n_kv), n_head, n_kv)
        assert np.array_equal(back, w)
    with pytest.raises(ValueError, match="heads"):
        permute_rows(np.zeros((6, 4)), 4)


def write_gguf(path, arch="llama", q=None):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.attention.head_count", 4)
    w.add_uint32(f"{arch}.attention.head_count_kv", 2)
    w.add_uint32("general.file_type", 0)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_tensor("blk.0.attn_q.weight", q)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_merges_into_gguf(tmp_path, arch):
    model = tiny()
    mods = inject(model, ["q_proj"], r=2, alpha=4)
    with torch.no_grad():
        for p in lora_parameters(mods):
            p.normal_(0, 0.3)
    only0 = {k: v for k, v in mods.items() if ".0." in k}
    save_lora(tmp_path / "lora", only0, ["q_proj"], "tiny")
    _, deltas = load_lora(tmp_path / "lora")
    d = deltas["model.layers.0.self_attn.q_proj.weight"]
    q = np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32)
    write_gguf(tmp_path / "base.gguf", arch, q)
    rep = export(tmp_path / "base.gguf", tmp_path / "lora", tmp_path / "out.gguf", verify=False)
    assert rep["merged_weights"] == 1
    r = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    got = {t.name: t for t in r.tensors}
    assert got["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    want = q + (permute_rows(d, 4) if arch == "llama" else d)
    assert np.abs(np.asarray(got["blk.0.attn_q.weight"].data, dtype=np.float32) - want).max() < 5e-3
    assert r.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_F16)
    assert r.fields["tokenizer.ggml.tokens"].contents() == ["a", "b", "c"]
    # a LoRA for a weight the GGUF lacks: error, no output
    save_lora(tmp_path / "lora2", mods, ["q_proj"], "tiny")
    with pytest.raises(ValueError, match="does not have"):
        export(tmp_path / "base.gguf", tmp_path / "lora2", tmp_path / "bad.gguf", verify=False)
    assert not (tmp_path / "bad.gguf").exists() and not (tmp_path / "bad.gguf.part").exists()
