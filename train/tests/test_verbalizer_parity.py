"""The runtime's verbalizer scoring against PyTorch + the OpenPrompt reference (decoder-only).

The llama-tiny fixture is converted to an F32 GGUF; two soft segments come from one OpenPrompt
``MixedTemplate`` checkpoint written by real ``torch.save`` (``template.soft_embedding.weight``,
row 0 unused, plus the PLM and verbalizer buffers such a state dict holds), split with
``@A..B``, one of them mid-template; ``delrec rank --json`` scores every catalog item from one
prediction at ``{mask}``. The reference is transformers' forward on ``inputs_embeds`` built by
:func:`delrec_train.openprompt_ref.mixed_template_embeds` and scored by
:func:`delrec_train.openprompt_ref.verbalizer_scores` (OpenPrompt's ``ManualVerbalizer``).

Two deliberate differences from OpenPrompt on causal LMs, so the test feeds the reference the
same ids: OpenPrompt's causal wrapper drops ``{"soft": None}`` pieces (empty text,
``plms/lm.py:56-57``), so no soft row would reach the model — the runtime feeds them, as a causal
LM trained with soft tokens needs; and the prompt's history is tokenized item by item (the
pack's pre-tokenized titles joined by the separator's tokens), not as one string. Label words
are the title and the title without a trailing " (YYYY)" (DELRec's ``t[:-7]``, equal on every
title that ends in a year).
"""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer  # noqa: E402

from delrec_train import openprompt_ref as ref  # noqa: E402
from delrec_train.export import convert_bin  # noqa: E402
from delrec_train.paths import REPO_ROOT, delrec_bin  # noqa: E402

TOL = 1e-3
N_SOFT = 5
TEMPLATE = "Watched:{history}{soft:a}.\nNext:{mask}"
LISTED = "{soft:a}Watched:{history}.\nPick one of: {candidates}{soft:b}.\nNext:{mask}"


def run(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = os.environ.get("DELREC_FIXTURES")
    d = Path(root) if root else REPO_ROOT / "target" / "fixtures"
    if not (d / "llama-tiny" / "config.json").is_file():
        d = tmp_path_factory.mktemp("fixtures") / "fx"
        subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "fixtures" / "make_fixtures.py"), str(d)], check=True)
    for exe in (delrec_bin(), convert_bin()):
        if not exe.is_file():
            pytest.fail(f"{exe} is missing: cargo build --release --workspace --bins", pytrace=False)
    return d


@pytest.fixture(scope="module")
def setup(fx, tmp_path_factory):
    work = tmp_path_factory.mktemp("verbalizer")
    hf = fx / "llama-tiny"
    gguf = work / "llama-tiny.f32.gguf"
    run(convert_bin(), "model", "--hf", hf, "--out", gguf, "--outtype", "f32")
    model = transformers.LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(7)
    # What torch.save(prompt_model.state_dict()) holds for a MixedTemplate: the PLM, the template's
    # raw and soft embeddings (row 0 unused), the verbalizer's int64 buffers.
    soft_w = torch.randn(1 + 2 * N_SOFT, d, generator=g) * 0.05
    sd = {"plm.model.embed_tokens.weight": model.model.embed_tokens.weight.detach().clone(),
          "template.raw_embedding.weight": model.model.embed_tokens.weight.detach().clone(),
          "template.soft_embedding.weight": soft_w,
          "verbalizer.label_words_ids": torch.zeros(3, 2, 4, dtype=torch.int64),
          "verbalizer.label_words_mask": torch.ones(3, 2, dtype=torch.int64)}
    ckpt = work / "openprompt.ckpt"
    torch.save(sd, ckpt)
    titles = {r["id"]: r["title"] for r in csv.DictReader(open(fx / "catalog.csv", encoding="utf-8"))}
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    return dict(work=work, gguf=gguf, model=model, soft_w=soft_w, ckpt=ckpt, titles=titles, tok=tok, fx=fx)


def build_pack(s, template, handler, tag, also=()):
    out = s["work"] / f"{tag}.pack.gguf"
    more = [a for m in also for a in ("--model", m)]
    run(convert_bin(), "pack", "--model", s["gguf"], *more, "--tokenizer", s["fx"] / "llama-tiny",
        "--catalog", s["fx"] / "catalog.csv", "--template", template,
        "--soft-prompt", f"a={s['ckpt']}@0..{N_SOFT}", "--soft-prompt", f"b={s['ckpt']}@{N_SOFT}..{2 * N_SOFT}",
        "--scoring", "verbalizer", "--verbalizer-handler", handler, "--out", out)
    info = json.loads(run(convert_bin(), "inspect", out, "--json"))["pack"]
    return out, info


def strip_year(t):
    return re.sub(r" \(\d{4}\)$", "", t)


def prompt_ids(s, template, info, history, candidates):
    """The prompt as the pack builds it: BOS, template text pieces, ``" " + title`` per item joined
    by the separators' tokens; soft slots as soft ids (OpenPrompt numbering, 1..)."""
    enc = lambda x: s["tok"].encode(x, add_special_tokens=False).ids  # noqa: E731
    ids, soft = ([info["bos"]], [0]) if info["bos"] is not None and info["bos"] >= 0 else ([], [])
    offsets = {"a": 0, "b": N_SOFT}

    def items(xs, sep):
        out = []
        for i, x in enumerate(xs):
            out += (enc(sep) if i else []) + enc(" " + s["titles"][x])
        return out

    for piece in re.split(r"(\{[a-z:]+\})", template):
        if not piece:
            continue
        if piece == "{mask}":
            break
        if piece.startswith("{soft:"):
            name = piece[6:-1]
            ids += [0] * N_SOFT
            soft += [offsets[name] + 1 + k for k in range(N_SOFT)]
            continue
        t = {"{history}": lambda: items(history, ","), "{candidates}": lambda: items(candidates, ", ")}.get(
            piece, lambda: enc(piece))()
        ids += t
        soft += [0] * len(t)
    return ids, soft


def reference(s, template, info, history, candidates, handler, order):
    ids, soft = prompt_ids(s, template, info, history, candidates)
    emb = ref.mixed_template_embeds(s["model"].model.embed_tokens.weight, ids, soft, s["soft_w"])
    with torch.no_grad():
        logits = s["model"](inputs_embeds=torch.as_tensor(emb)[None]).logits[0, -1]
    words = [[s["titles"][i], strip_year(s["titles"][i])] for i in order]
    tw = ref.tokenize_label_words(type("T", (), {"encode": lambda self, w, add_special_tokens=False:
                                                 s["tok"].encode(w, add_special_tokens=False).ids})(), words, " ")
    return dict(zip(order, ref.verbalizer_scores(logits.numpy(), tw, handler)))


def runtime(s, pack, history, candidates):
    args = ["rank", "--model", s["gguf"], "--pack", pack, "--history", ",".join(history), "--json",
            "--kv", "f32", "--no-flash-attn", "--threads", "2"]
    if candidates:
        args += ["--candidates", ",".join(candidates)]
    out = json.loads(run(delrec_bin(), *args))
    return out, {i["id"]: i["score"] for i in out["items"]}


@pytest.mark.parametrize("handler", ["first", "mean", "max"])
def test_whole_catalog_in_one_pass_equals_the_reference(setup, handler):
    s = setup
    pack, info = build_pack(s, TEMPLATE, handler, f"whole-{handler}")
    assert info["verbalizer"]["handler"] == handler and info["scoring"] == "verbalizer"
    order = list(s["titles"])
    history = [order[0], order[5], order[11]]
    out, got = runtime(s, pack, history, None)
    want = reference(s, TEMPLATE, info, history, None, handler, order)
    assert set(got) == set(want)
    worst = max(abs(got[i] - float(want[i])) for i in order)
    print(f"verbalizer {handler}: whole catalog ({len(order)} items), max |Δ| = {worst:.2e}")
    assert worst < TOL
    st = out["stats"]
    assert st["decoded_rows"] == st["prefix_rows"], "one pass: only the prompt is decoded"
    if handler == "first":
        assert st["tied"] > 0, "titles sharing a first token tie, and the result says so"


def test_listed_candidates_and_a_mid_template_soft_segment(setup):
    s = setup
    pack, info = build_pack(s, LISTED, "mean", "listed")
    order = list(s["titles"])
    history, cands = [order[1], order[7]], order[12:32]
    _, got = runtime(s, pack, history, cands)
    # The class set is the whole catalog: the reference scores every class, the runtime returns the
    # 20 asked for.
    want = reference(s, LISTED, info, history, cands, "mean", order)
    worst = max(abs(got[i] - float(want[i])) for i in cands)
    print(f"verbalizer mean, 20 listed candidates, two soft segments: max |Δ| = {worst:.2e}")
    assert set(got) == set(cands) and worst < TOL


def test_quantized_models_keep_the_order(setup):
    """Kendall τ of the whole-catalog verbalizer scores, quantized against F32 (reported; Q8_0
    must keep the order almost exactly, Q4_K_M is reported only: on a 64-wide random model most
    rows fall back to other types)."""
    from scipy.stats import kendalltau

    s = setup
    order = list(s["titles"])
    history = [order[2], order[9], order[20]]
    quant = {ty: s["work"] / f"llama-tiny.{ty}.gguf" for ty in ["q8_0", "q4_k_m"]}
    for ty, q in quant.items():
        run(convert_bin(), "quantize", "--in", s["gguf"], "--out", q, "--type", ty)
    pack, _ = build_pack(s, TEMPLATE, "mean", "quant", also=quant.values())
    _, f32 = runtime(s, pack, history, None)
    taus = {}
    for ty, q in quant.items():
        out = json.loads(run(delrec_bin(), "rank", "--model", q, "--pack", pack, "--history", ",".join(history),
                             "--json", "--threads", "2"))
        got = {i["id"]: i["score"] for i in out["items"]}
        taus[ty] = kendalltau([f32[i] for i in order], [got[i] for i in order]).statistic
    print("verbalizer Kendall τ vs F32: " + ", ".join(f"{k} {v:.3f}" for k, v in taus.items()))
    assert taus["q8_0"] > 0.9, taus


@pytest.mark.parametrize("template,handler,listed", [(TEMPLATE, "first", False), (LISTED, "mean", True)])
def test_the_recipes_scorer_equals_the_runtime(setup, template, handler, listed):
    """What the training recipe optimizes and evaluates (:class:`delrec_train.llm.VerbalizerScorer`
    over :class:`delrec_train.template.PromptTokens`) is what the device computes from the pack."""
    from delrec_train.llm import VerbalizerScorer
    from delrec_train.template import LABEL_RULES, PromptTokens

    s = setup
    pack, info = build_pack(s, template, handler, f"recipe-{handler}")
    order = list(s["titles"])
    history, cands = [order[3], order[8]], (order[10:30] if listed else None)
    _, got = runtime(s, pack, history, cands)
    tok = type("T", (), {"encode_many": lambda self, xs: [s["tok"].encode(x, add_special_tokens=False).ids
                                                          for x in xs]})()
    bos = info["bos"] if info["bos"] is not None and info["bos"] >= 0 else None
    pt = PromptTokens(template, s["titles"], tok, " ", ",", bos, ", ", LABEL_RULES["title+no-year"])
    sc = VerbalizerScorer(s["model"], pt, handler)
    soft = {"a": s["soft_w"][1:1 + N_SOFT], "b": s["soft_w"][1 + N_SOFT:1 + 2 * N_SOFT]}
    asked = cands or order
    with torch.no_grad():
        want, n = sc.score(history, asked, soft)
    worst = max(abs(got[i] - float(w)) for i, w in zip(asked, want))
    print(f"recipe scorer vs runtime, {handler}, {len(asked)} items: max |Δ| = {worst:.2e}")
    assert set(got) == set(asked) and worst < TOL and n == [2] * len(asked)
