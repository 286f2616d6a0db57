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
