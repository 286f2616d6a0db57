"""`delrec embed` (F32 GGUF, exact path) == numpy reference: the final hidden states after the
final RMSNorm, pooled (mean over the input's tokens, or the last token's), within 1e-3.

Several inputs of different lengths go in one call, so they share decodes as separate
sequences; texts are tokenized by the runtime (tokenizer parity is its own test), token
sequences and catalog items go in as ids. Also: an input's embedding does not depend on the
batch it is in or on how the call is split into decodes, and bad input is a clean error.
Observed maxima go to $DELREC_REPORT_DIR/embed-parity-<case>-<pooling>.json.
"""

import json
import subprocess

import numpy as np
import pytest

import parity_util as pu

TOL = 1e-3
# Same inputs, other batch or decode split: only floating-point reassociation may differ.
BATCH_TOL = 1e-5

CASES = {
    # case: (model, tokenizer, prompt peft, template)
    "llama-tiny": ("llama-tiny", "tokenizer-gpt2", "prompt-llama", pu.DEFAULT_TEMPLATE),
    "qwen2-tiny": ("qwen2-tiny", "tokenizer-qwen2", "prompt-qwen2", pu.DEFAULT_TEMPLATE),
}
POOLINGS = ["mean", "last"]

TEXTS = [
    "Star Wars (1977)",
    "A",
    "Toy Story",
    "Recently watched: Star Wars (1977), Toy Story (1995), Amélie (2001). Next: something with more tokens "
    "than the others, to make the lengths differ a lot.",
    "千と千尋の神隠し (2001) 🎬",
    "It's 3.14159, they'LL say!",
]
ITEMS = ["m001", "m002", "m024", "m031", "m040"]
EXACT = ["--exact"]


def run_embed(bins, model_gguf, pack_path, pooling, texts=(), tokens=(), items=None, extra=()):
    argv = [bins.delrec, "embed", "--model", model_gguf, "--pack", pack_path, "--pooling", pooling, "--json"]
    for t in texts:
        argv += ["--text", t]
    for s in tokens:
        argv += ["--tokens", ",".join(map(str, s))]
    if items:
        argv += ["--items", ",".join(items)]
    out = pu.run_json([*argv, *extra], "delrec embed")
    for k in ("pooling", "dim", "embeddings"):
        assert k in out, f"`{k}` missing from delrec embed output: {list(out)}"
    assert out["pooling"] == pooling
    e = np.asarray(out["embeddings"], dtype=np.float64)
    n = len(texts) + len(tokens) + len(items or [])
    assert e.shape == (n, out["dim"]), f"embeddings shape {e.shape}, expected ({n}, {out['dim']})"
    assert np.all(np.isfinite(e)), "runtime embeddings contain NaN/inf"
    return e


def model_and_pack(case, gguf, pack):
    model, tok_dir, peft, template = CASES[case]
    mg = gguf(model, "f32")
    return mg, pack(mg, tok_dir, "default", peft, template)


def describe(expected, got, labels):
    d = np.abs(expected - got)
    per = d.max(axis=1)
    return "; ".join(f"{lab}: {v:.2e}" for lab, v in zip(labels, per))


@pytest.mark.requires_binaries
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_f32_embed_matches_reference(case, pooling, bins, gguf, pack, ref_model, ref_tokenizer, catalog):
    model, tok_dir, _, _ = CASES[case]
    m = ref_model(model)
    tok = ref_tokenizer(tok_dir)
    mg, pk = model_and_pack(case, gguf, pack)
    tokens = [pu.probe_tokens(tok, m.vocab, max_len=24), [7]]
    got = run_embed(bins, mg, pk, pooling, texts=TEXTS, tokens=tokens, items=ITEMS, extra=EXACT)
    assert got.shape[1] == m.hidden

    prefix = pu.DEFAULT_SETTINGS["item_prefix"]
    seqs = ([pu.ref.encode(tok, t) for t in TEXTS] + tokens
            + [pu.ref.encode(tok, prefix + catalog[i]["title"]) for i in ITEMS])
    lengths = sorted({len(s) for s in seqs})
    assert len(lengths) >= 5 and lengths[0] == 1, f"inputs should differ in length: {lengths}"
    expected = np.stack([m.embed_pooled(s, pooling) for s in seqs])
    labels = [repr(t[:16]) for t in TEXTS] + [f"tokens[{len(s)}]" for s in tokens] + ITEMS

    err = float(np.abs(got - expected).max())
    path = pu.write_report(f"embed-parity-{case}-{pooling}.json", {
        "case": case, "pooling": pooling, "n_inputs": len(seqs), "lengths": [len(s) for s in seqs],
        "max_abs_diff": err, "per_input_max_abs_diff": np.abs(got - expected).max(axis=1).tolist(),
        "tolerance": TOL,
    })
    print(f"\n[{case} {pooling}] {len(seqs)} inputs, lengths {lengths[0]}..{lengths[-1]}: "
          f"max |delta| = {err:.3e} -> {path}")
    assert err <= TOL, describe(expected, got, labels)


@pytest.mark.requires_binaries
@pytest.mark.parametrize("pooling", POOLINGS)
def test_embed_does_not_depend_on_batching(pooling, bins, gguf, pack):
    mg, pk = model_and_pack("llama-tiny", gguf, pack)
    together = run_embed(bins, mg, pk, pooling, texts=TEXTS, items=ITEMS, extra=EXACT)
    alone = np.concatenate([run_embed(bins, mg, pk, pooling, texts=[t], extra=EXACT) for t in TEXTS]
                           + [run_embed(bins, mg, pk, pooling, items=[i], extra=EXACT) for i in ITEMS])
    d_alone = float(np.abs(together - alone).max())
    # Many small decodes: two sequences and at most 64 rows per decode (the longest input is 62).
    split = run_embed(bins, mg, pk, pooling, texts=TEXTS, items=ITEMS,
                      extra=[*EXACT, "--max-seqs", "2", "--batch", "64"])
    d_split = float(np.abs(together - split).max())
    print(f"\n[{pooling}] batch vs alone: {d_alone:.2e}; one decode vs split decodes: {d_split:.2e}")
    assert d_alone <= BATCH_TOL, f"an input embedded alone differs from the same input in a batch by {d_alone:.3e}"
    assert d_split <= BATCH_TOL, f"splitting the call into more decodes changed embeddings by {d_split:.3e}"


def run_failing(argv):
    p = subprocess.run([str(a) for a in argv], capture_output=True, timeout=pu.CLI_TIMEOUT_S)
    err = p.stderr.decode("utf-8", errors="replace")
    # rc > 0: an error exit, not a signal (abort, crash).
    assert p.returncode > 0, f"expected an error exit, got rc={p.returncode}\nstderr: {err}"
    assert "panicked" not in err, f"panic instead of an error:\n{err}"
    assert err.strip(), "no error message on stderr"
    assert not p.stdout.strip(), f"unexpected output: {p.stdout[:300]!r}"
    return err


@pytest.mark.requires_binaries
@pytest.mark.parametrize("what, args, message", [
    ("empty list", [], "empty list"),
    ("empty text", ["--text", ""], "texts[0]: empty text"),
    ("empty text in a batch", ["--text", "Star Wars", "--text", ""], "texts[1]: empty text"),
    ("empty token sequence", ["--tokens", ""], "seqs[0]"),
    ("token outside the vocabulary", ["--tokens", "1,2,99999999"], "outside the vocabulary"),
    ("unknown item", ["--items", "no-such-item"], "unknown item"),
    ("bad pooling", ["--text", "x", "--pooling", "cls"], "pooling"),
    ("text longer than a decode", ["--text", TEXTS[3], "--batch", "16", "--ctx", "16"], "too small"),
])
def test_embed_bad_input_is_a_clean_error(what, args, message, bins, gguf, pack):
    mg, pk = model_and_pack("llama-tiny", gguf, pack)
    err = run_failing([bins.delrec, "embed", "--model", mg, "--pack", pk, *EXACT, "--json", *args])
    assert message in err, f"{what}: error does not mention {message!r}:\n{err}"


def test_reference_embed_cli(fixtures_dir, ref_model):
    """reference.py embed (the CLI) == the API it wraps."""
    import sys
    m = ref_model("llama-tiny")
    argv = [sys.executable, str(pu.REFERENCE_DIR / "reference.py"), "embed", "--model-dir",
            str(fixtures_dir / "llama-tiny"), "--tokens", "1,2,3", "--tokens", "5", "--pooling", "last"]
    out = json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=300).stdout)
    assert out["dim"] == m.hidden and out["pooling"] == "last"
    e = np.asarray(out["embeddings"])
    assert np.allclose(e[0], m.embed_pooled([1, 2, 3], "last"), atol=0, rtol=0)
    assert np.allclose(e[1], m.final_hidden_embeds(m.embed_tokens([5]))[0], atol=0, rtol=0)
    # mean of a causal model's states: the first position sees only itself
    mean = m.embed_pooled([1, 2, 3], "mean")
    assert np.allclose(mean, m.final_hidden_embeds(m.embed_tokens([1, 2, 3])).mean(axis=0))
