"""DELRec as published on an encoder-decoder model: the engine ranking with the T5 fixture against
transformers' T5 + the OpenPrompt reference.

t5-tiny (HF T5ForConditionalGeneration, T5 v1.1 layout, a real SentencePiece Unigram tokenizer)
is converted to an F32 GGUF; a pack puts a soft segment from an OpenPrompt ``MixedTemplate``
checkpoint (real ``torch.save``) in the middle of the template, the mask before more text, and
``delrec rank --json`` ranks the whole catalog:

- **verbalizer**: the encoder gets the template as OpenPrompt's T5 wrapper builds it (``{mask}``
  as ``<extra_id_0>``, ``</s>`` last), the decoder ``<pad> <extra_id_0>``, and the logits after
  ``<extra_id_0>`` are read by OpenPrompt's ``ManualVerbalizer`` (one encoder pass, reported);
- **title log-likelihood** (``--scoring sum``): each title + ``</s>`` scored by the decoder after
  ``<pad> <extra_id_0>`` — the tie-free mode.

The reference is transformers' forward on ``inputs_embeds`` (built with
:func:`delrec_train.openprompt_ref.mixed_template_embeds`) and
:func:`delrec_train.openprompt_ref.verbalizer_scores`. The prompt's pieces are tokenized one by
one, as OpenPrompt does and as the pack stores them. llama.cpp's CPU GELU reads an F16 table
(``GGML_GELU_FP16``), which moves T5 logits by ~2.5e-3 at F32 (train/tests/test_t5_parity.py): the
bound is 1e-2 against plain transformers and 1e-3 against transformers with that GELU emulated
(``ggml_t5.py``).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ggml_t5 import use_ggml_gelu  # noqa: E402

TOL = 1e-2
TOL_GGML = 1e-3
N_SOFT = 6
# DELRec's LSR.txt shape: instructions, soft tokens mid-prompt, history, candidates, mask, and
# (unlike LSR.txt) text after the mask, which an encoder reads.
TEMPLATE = "Predict from the pattern:{soft:p}. History:{history}. The next movie might be:{mask} (a title)."
LISTED = "Pattern:{soft:p}. History:{history}. The candidate set is:{candidates}. Next:{mask}"


def run(*args):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    root = os.environ.get("DELREC_FIXTURES")
    fx = Path(root) if root else REPO_ROOT / "target" / "fixtures"
    if not (fx / "t5-tiny" / "config.json").is_file():
        fx = tmp_path_factory.mktemp("fixtures") / "fx"
        subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "fixtures" / "make_fixtures.py"), str(fx)], check=True)
    for exe in (delrec_bin(), convert_bin()):
        if not exe.is_file():
            pytest.fail(f"{exe} is missing: cargo build --release --workspace --bins", pytrace=False)
    work = tmp_path_factory.mktemp("t5rank")
    hf = fx / "t5-tiny"
    gguf = work / "t5-tiny.f32.gguf"
    run(convert_bin(), "model", "--hf", hf, "--out", gguf, "--outtype", "f32")
    model = transformers.T5ForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    model_ggml = transformers.T5ForConditionalGeneration.from_pretrained(hf, dtype=torch.float32).eval()
    assert use_ggml_gelu(model_ggml) > 0
    g = torch.Generator().manual_seed(11)
    soft_w = torch.randn(1 + N_SOFT, model.config.d_model, generator=g) * 0.5
    ckpt = work / "openprompt-t5.ckpt"
    torch.save({"plm.shared.weight": model.shared.weight.detach().clone(),
                "template.raw_embedding.weight": model.shared.weight.detach().clone(),
                "template.soft_embedding.weight": soft_w}, ckpt)
    titles = {r["id"]: r["title"] for r in csv.DictReader(open(fx / "catalog.csv", encoding="utf-8"))}
    return dict(work=work, gguf=gguf, model=model, model_ggml=model_ggml, soft_w=soft_w, ckpt=ckpt, titles=titles, fx=fx,
                tok=Tokenizer.from_file(str(hf / "tokenizer.json")))


def build_pack(s, template, scoring, tag, also=()):
    out = s["work"] / f"{tag}.pack.gguf"
    more = [a for m in also for a in ("--model", m)]
    extra = ["--verbalizer-handler", "first"] if scoring == "verbalizer" else []
    run(convert_bin(), "pack", "--model", s["gguf"], *more, "--tokenizer", s["fx"] / "t5-tiny",
        "--catalog", s["fx"] / "catalog.csv", "--template", template, "--soft-prompt", f"p={s['ckpt']}",
        "--scoring", scoring, *extra, "--out", out)
    return out


def enc(s, text):
    return s["tok"].encode(text, add_special_tokens=False).ids


def encoder_input(s, template, history, candidates):
    """Token ids and soft ids of the encoder input, piece by piece (OpenPrompt's T5 wrapper):
    titles as ``" " + title`` joined by the separators' tokens, ``<extra_id_0>`` at the mask,
    ``</s>`` last."""
    ids, soft = [], []
    mask = s["tok"].token_to_id("<extra_id_0>")

    def items(xs, sep):
        out = []
        for i, x in enumerate(xs):
            out += (enc(s, sep) if i else []) + enc(s, " " + s["titles"][x])
        return out

    for piece in re.split(r"(\{[a-z:]+\})", template):
        if not piece:
            continue
        if piece == "{mask}":
            t = [mask]
        elif piece.startswith("{soft:"):
            ids += [0] * N_SOFT
            soft += list(range(1, N_SOFT + 1))
            continue
        elif piece == "{history}":
            t = items(history, ",")
        elif piece == "{candidates}":
            t = items(candidates, ", ")
        else:
            t = enc(s, piece)
        ids += t
        soft += [0] * len(t)
    eos = s["model"].config.eos_token_id
    return ids + [eos], soft + [0]


def decoder_logits(s, template, history, candidates, decoder, which="model"):
    ids, soft = encoder_input(s, template, history, candidates)
    emb = ref.mixed_template_embeds(s["model"].shared.weight, ids, soft, s["soft_w"])
    with torch.no_grad():
        return s[which](inputs_embeds=torch.as_tensor(emb)[None],
                          decoder_input_ids=torch.tensor([decoder])).logits[0]


def runtime(s, pack, history, candidates=None, model=None):
    args = ["rank", "--model", model or s["gguf"], "--pack", pack, "--history", ",".join(history), "--json",
            "--kv", "f32", "--no-flash-attn", "--threads", "2"]
    if candidates:
        args += ["--candidates", ",".join(candidates)]
    out = json.loads(run(delrec_bin(), *args))
    return out, {i["id"]: i["score"] for i in out["items"]}


def strip_year(t):
    return re.sub(r" \(\d{4}\)$", "", t)


def test_verbalizer_whole_catalog_one_encoder_pass(s):
    pack = build_pack(s, TEMPLATE, "verbalizer", "verb")
    order = list(s["titles"])
    history = [order[0], order[6], order[13]]
    out, got = runtime(s, pack, history)
    st = out["stats"]
    assert st["encoder_passes"] == 1, st
    assert st["decoded_rows"] == st["prefix_rows"] == 2, "the decoder reads <pad> <extra_id_0> only"
    mask = s["tok"].token_to_id("<extra_id_0>")
    words = [[s["titles"][i], strip_year(s["titles"][i])] for i in order]
    tw = [[enc(s, " " + w) for w in ws] for ws in words]
    worst = {}
    for which in ["model", "model_ggml"]:
        logits = decoder_logits(s, TEMPLATE, history, None, [s["model"].config.decoder_start_token_id, mask], which)[1]
        want = dict(zip(order, ref.verbalizer_scores(logits.numpy(), tw, "first")))
        worst[which] = max(abs(got[i] - float(want[i])) for i in order)
    print(f"T5 verbalizer (first), whole catalog ({len(order)}), one encoder pass: max |Δ| = {worst['model']:.2e} "
          f"(transformers), {worst['model_ggml']:.2e} (ggml's GELU emulated)")
    assert worst["model"] < TOL and worst["model_ggml"] < TOL_GGML
    assert st["tied"] > 0, "first-token ties are reported"


def test_verbalizer_with_listed_candidates(s):
    pack = build_pack(s, LISTED, "verbalizer", "verb-listed")
    order = list(s["titles"])
    history, cands = [order[2], order[8]], order[10:30]
    out, got = runtime(s, pack, history, cands)
    assert out["stats"]["encoder_passes"] == 1
    mask = s["tok"].token_to_id("<extra_id_0>")
    tw = [[enc(s, " " + w) for w in (s["titles"][i], strip_year(s["titles"][i]))] for i in order]
    worst = {}
    for which in ["model", "model_ggml"]:
        logits = decoder_logits(s, LISTED, history, cands, [0, mask], which)[1]
        want = dict(zip(order, ref.verbalizer_scores(logits.numpy(), tw, "first")))
        worst[which] = max(abs(got[i] - float(want[i])) for i in cands)
    print(f"T5 verbalizer, 20 listed candidates: max |Δ| = {worst['model']:.2e} (transformers), "
          f"{worst['model_ggml']:.2e} (ggml's GELU)")
    assert set(got) == set(cands) and worst["model"] < TOL and worst["model_ggml"] < TOL_GGML


def test_title_likelihood_on_the_decoder(s):
    pack = build_pack(s, TEMPLATE, "sum", "title")
    order = list(s["titles"])
    history, cands = [order[1], order[4]], order[15:27]
    out, got = runtime(s, pack, history, cands)
    assert out["stats"]["encoder_passes"] == 1
    mask = s["tok"].token_to_id("<extra_id_0>")
    eos = s["model"].config.eos_token_id
    worst = {"model": 0.0, "model_ggml": 0.0}
    for c in cands:
        t = enc(s, " " + s["titles"][c]) + [eos]
        for which in worst:
            logits = decoder_logits(s, TEMPLATE, history, None, [0, mask] + t[:-1], which)
            lp = torch.log_softmax(logits, -1)
            want = float(sum(lp[1 + j, tok] for j, tok in enumerate(t)))
            worst[which] = max(worst[which], abs(got[c] - want))
    print(f"T5 title log-likelihood, {len(cands)} candidates (trie over one encoder pass): max |Δ| = "
          f"{worst['model']:.2e} (transformers), {worst['model_ggml']:.2e} (ggml's GELU) over sums of ~10 tokens")
    assert worst["model"] < 5 * TOL and worst["model_ggml"] < 5 * TOL_GGML


def test_quantized_t5_keeps_the_order(s):
    from scipy.stats import kendalltau

    q = s["work"] / "t5-tiny.q8_0.gguf"
    run(convert_bin(), "model", "--hf", s["fx"] / "t5-tiny", "--out", q, "--outtype", "q8_0")
    pack = build_pack(s, TEMPLATE, "sum", "title-q", also=[q])
    order = list(s["titles"])
    history = [order[3], order[9]]
    _, f32 = runtime(s, pack, history, order[:20])
    _, q8 = runtime(s, pack, history, order[:20], model=q)
    tau = kendalltau([f32[i] for i in order[:20]], [q8[i] for i in order[:20]]).statistic
    print(f"T5 title log-likelihood, Kendall τ Q8_0 vs F32: {tau:.3f}")
    assert tau > 0.8


def test_peft_seq2seq_prompt_tuning_equals_peft_forward(s):
    """A PEFT ``PromptTuningConfig(task_type="SEQ_2_SEQ_LM")`` adapter as ``save_pretrained``
    writes it (``num_transformer_submodules`` 2, ``2 × num_virtual_tokens`` rows) goes into the
    pack as is; PEFT's own forward is the reference: its virtual tokens before the encoder input,
    the decoder ``<pad> <extra_id_0>``, the verbalizer over the whole catalog."""
    peft = pytest.importorskip("peft")
    base = transformers.T5ForConditionalGeneration.from_pretrained(s["fx"] / "t5-tiny", dtype=torch.float32).eval()
    cfg = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N_SOFT)
    pm = peft.get_peft_model(base, cfg).eval()
    emb = pm.prompt_encoder["default"].embedding.weight
    assert emb.shape[0] == 2 * N_SOFT, "PEFT keeps rows for both transformer submodules"
    with torch.no_grad():
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(5)) * 0.5)
    d = s["work"] / "peft-t5-prompt"
    pm.save_pretrained(d)
    assert json.loads((d / "adapter_config.json").read_text())["num_transformer_submodules"] == 2
    template = "{soft:p}History:{history}. The next movie might be:{mask} (a title)."
    pack = s["work"] / "peft-t5.pack.gguf"
    run(convert_bin(), "pack", "--model", s["gguf"], "--tokenizer", s["fx"] / "t5-tiny", "--catalog",
        s["fx"] / "catalog.csv", "--template", template, "--soft-prompt", f"p={d}", "--scoring", "verbalizer",
        "--verbalizer-handler", "first", "--out", pack)
    order = list(s["titles"])
    history = [order[5], order[11]]
    out, got = runtime(s, pack, history)
    assert out["stats"]["encoder_passes"] == 1
    ids, soft = encoder_input(s, template, history, None)
    assert soft[:N_SOFT] == list(range(1, N_SOFT + 1)) and not any(soft[N_SOFT:])
    mask = s["tok"].token_to_id("<extra_id_0>")
    with torch.no_grad():
        logits = pm(input_ids=torch.tensor([ids[N_SOFT:]]), decoder_input_ids=torch.tensor([[0, mask]])).logits[0, 1]
    tw = [[enc(s, " " + w) for w in (s["titles"][i], strip_year(s["titles"][i]))] for i in order]
    want = dict(zip(order, ref.verbalizer_scores(logits.numpy(), tw, "first")))
    worst = max(abs(got[i] - float(want[i])) for i in order)
    # The decoder's PEFT rows are not used: changing them changes nothing in PEFT either.
    with torch.no_grad():
        emb[N_SOFT:] += 3.0
        again = pm(input_ids=torch.tensor([ids[N_SOFT:]]), decoder_input_ids=torch.tensor([[0, mask]])).logits[0, 1]
    assert torch.equal(again, logits)
    # And with ggml's F16-table GELU emulated in the same PEFT model.
    assert use_ggml_gelu(base) > 0
    with torch.no_grad():
        lg = pm(input_ids=torch.tensor([ids[N_SOFT:]]), decoder_input_ids=torch.tensor([[0, mask]])).logits[0, 1]
    want_g = dict(zip(order, ref.verbalizer_scores(lg.numpy(), tw, "first")))
    worst_g = max(abs(got[i] - float(want_g[i])) for i in order)
    print(f"T5 + PEFT seq2seq prompt tuning, verbalizer over the whole catalog: max |Δ| = {worst:.2e} vs PEFT, "
          f"{worst_g:.2e} with ggml's GELU emulated")
    assert worst < TOL and worst_g < TOL_GGML
