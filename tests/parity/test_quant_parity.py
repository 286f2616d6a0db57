"""Quantized llama-wide (q8_0, q4_k_m) vs the exact F16 reference: rank agreement of logits.

Metrics are printed and written to $DELREC_REPORT_DIR/quant-logits-<outtype>.json before the
floors are asserted (so a failing run still leaves its numbers behind).
"""

import platform

import numpy as np
import pytest

import parity_util as pu

pytestmark = pytest.mark.requires_binaries

# outtype: (min top-1 agreement, min mean Spearman over positions)
FLOORS = {
    "q8_0": (0.90, 0.95),
    "q4_k_m": (0.50, 0.90),
}

MODEL = "llama-wide"


@pytest.mark.parametrize("outtype", sorted(FLOORS))
def test_quantized_logits_agreement(outtype, bins, gguf, ref_model, ref_tokenizer):
    m = ref_model(MODEL)
    tokens = pu.probe_tokens(ref_tokenizer("tokenizer-gpt2"), m.vocab, max_len=96)
    expected = m.forward_tokens(tokens)
    got = pu.runtime_logits(bins, gguf(MODEL, outtype), tokens)
    assert got.shape == expected.shape, f"runtime logits shape {got.shape}, expected {expected.shape}"
    assert np.all(np.isfinite(got)), "runtime logits contain NaN/inf"

    top1 = float(np.mean(expected.argmax(axis=1) == got.argmax(axis=1)))
    rho = np.array([pu.spearman(e, g) for e, g in zip(expected, got)])
    report = {
        "model": MODEL,
        "outtype": outtype,
        "n_positions": len(tokens),
        "vocab": m.vocab,
        "top1_agreement": top1,
        "spearman_mean": float(rho.mean()),
        "spearman_min": float(rho.min()),
        "max_abs_logit_diff": float(np.abs(got - expected).max()),
        "mean_abs_logit_diff": float(np.abs(got - expected).mean()),
        "floors": {"top1_agreement": FLOORS[outtype][0], "spearman_mean": FLOORS[outtype][1]},
        "host": platform.machine(),
    }
    path = pu.write_report(f"quant-logits-{outtype}.json", report)
    print(f"\n[{MODEL} {outtype}] top1={top1:.4f} spearman_mean={rho.mean():.5f} "
          f"spearman_min={rho.min():.5f} max|d|={report['max_abs_logit_diff']:.4f} -> {path}")

    min_top1, min_rho = FLOORS[outtype]
    assert top1 >= min_top1, f"{outtype}: top-1 agreement {top1:.3f} < {min_top1}"
    assert rho.mean() >= min_rho, f"{outtype}: mean Spearman {rho.mean():.4f} < {min_rho}"
