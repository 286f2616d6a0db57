"""F32 logits of the converted GGUF (llama.cpp) == numpy reference of the HF checkpoint."""

import numpy as np
import pytest

import parity_util as pu

pytestmark = pytest.mark.requires_binaries

TOL = 1e-3

CASES = [
    # id,                 model,        tokenizer,         lora
    ("llama-tiny",        "llama-tiny", "tokenizer-gpt2",  None),
    ("qwen2-tiny-bf16",   "qwen2-tiny", "tokenizer-qwen2", None),
    ("llama-tiny+lora",   "llama-tiny", "tokenizer-gpt2",  "lora-llama"),
    ("llama-wide-f16in",  "llama-wide", "tokenizer-gpt2",  None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_f32_logits_parity(case, bins, gguf, ref_model, ref_tokenizer):
    _, model, tok_dir, lora = case
    m = ref_model(model, lora)
    tokens = pu.probe_tokens(ref_tokenizer(tok_dir), m.vocab)
    expected = m.forward_tokens(tokens)
    got = pu.runtime_logits(bins, gguf(model, "f32", lora), tokens)
    assert got.shape == expected.shape, f"runtime logits shape {got.shape}, expected {expected.shape}"
    assert np.all(np.isfinite(got)), "runtime logits contain NaN/inf"
    err = np.abs(got - expected).max()
    assert err < TOL, pu.describe_max_diff(expected, got)


@pytest.mark.parametrize("outtype,tol", [("f32", TOL), ("f16", 2e-2)])
def test_lora_adapter_at_run_time_parity(outtype, tol, bins, gguf, ref_model, ref_tokenizer, fixtures_dir, tmp_path):
    """The PEFT LoRA as a llama.cpp adapter over the unmerged F32 base (`delrec-convert adapter`,
    applied by llama.cpp at run time) == the numpy reference of the PEFT forward."""
    m = ref_model("llama-tiny", "lora-llama")
    tokens = pu.probe_tokens(ref_tokenizer("tokenizer-gpt2"), m.vocab)
    expected = m.forward_tokens(tokens)
    base = gguf("llama-tiny", "f32")
    adapter = tmp_path / f"lora-llama.{outtype}.gguf"
    pu.run_cli([bins.convert, "adapter", "--base", base, "--lora", fixtures_dir / "lora-llama",
                "--out", adapter, "--outtype", outtype], "delrec-convert adapter")
    got = pu.runtime_logits(bins, base, tokens, adapter=adapter)
    assert got.shape == expected.shape
    assert np.all(np.isfinite(got))
    err = np.abs(got - expected).max()
    assert err < tol, pu.describe_max_diff(expected, got)
    # Without the adapter the base is far from the fine-tuned reference: the adapter is what closes it.
    plain = pu.runtime_logits(bins, base, tokens)
    assert np.abs(plain - expected).max() > 10 * tol
