"""DELRec as published in the training recipe: the verbalizer at a mask as the training and
evaluation scorer (:class:`delrec_train.llm.VerbalizerScorer`).

- its scores equal the model's own forward with the verbalizer written out as the formula, and
  OpenPrompt's ``ManualVerbalizer`` (:mod:`delrec_train.openprompt_ref`) on the same logits, for
  every handler; gradients reach a mid-template soft prompt;
- stage 1 and stage 2 train with it (over the candidates and over the whole catalog), write what
  the pack needs, resume, and the evaluation rows score with it;
- bad settings are refused.
The runtime's side (the same scores from ``delrec rank`` on a verbalizer pack) is
``test_verbalizer_parity.py::test_the_recipes_scorer_equals_the_runtime``.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from delrec_train import evaluate, stage1, stage2  # noqa: E402
from delrec_train import openprompt_ref as ref  # noqa: E402
from delrec_train.data import load_dataset  # noqa: E402
from delrec_train.llm import VerbalizerScorer, make_scorer  # noqa: E402
from delrec_train.peft_io import load_prompt  # noqa: E402
from delrec_train.template import LABEL_RULES, PromptTokens  # noqa: E402
from test_stage1_e2e import tiny_llama  # noqa: E402
from test_stage2_e2e import stage_setup  # noqa: E402

TEMPLATE = "W:{history}{soft:default}. L:{candidates}. N:{mask}"
WHOLE = "W:{history}. P:{soft:default}. N:{mask}"


class CharTok:
    """One id per character, a space folded into the next character's id (as BPE's "Ġx"), so
    label words do not all start with the same token."""

    def encode_many(self, strings):
        out = []
        for s in strings:
            ids, space = [], False
            for ch in s:
                if ch == " " and not space:
                    space = True
                    continue
                ids.append((ord(ch) + (29 if space else 0)) % 62 + 2)
                space = False
            out.append(ids + ([34] if space else []))
        return out


TITLES = {"1": "Heat (1995)", "2": "Heavy (1996)", "3": "Up", "4": "Toy Story (1995)", "5": "Toy (2001)",
          "6": "Babe (1995)"}


@pytest.mark.parametrize("handler", ["first", "mean", "max"])
@pytest.mark.parametrize("template", [TEMPLATE, WHOLE])
def test_scores_equal_the_formula_and_openprompts_verbalizer(handler, template):
    model = tiny_llama()
    pt = PromptTokens(template, TITLES, CharTok(), label_words=LABEL_RULES["title+no-year"])
    sc = VerbalizerScorer(model, pt, handler)
    soft = {"default": torch.randn(3, 32) * 0.1}
    hist, cands = ["3", "1"], ["4", "2", "6"]
    with torch.no_grad():
        got, n = sc.score(hist, cands, soft)
        naive, n2 = sc.score_naive(hist, cands, soft)
        # OpenPrompt's ManualVerbalizer on the logits at the mask, every catalog title a class
        pre = sc.prefix_embeds(hist, soft, cands if pt.lists_candidates() else None)
        z = model(inputs_embeds=pre[None]).logits[0, -1]
    words = [[t, t[:-7]] if t.endswith(")") else [t, t] for t in TITLES.values()]
    ids = ref.tokenize_label_words(type("T", (), {"encode": lambda self, w, add_special_tokens=False:
                                                  CharTok().encode_many([w])[0]})(), words, " ")
    want = dict(zip(TITLES, ref.verbalizer_scores(z.numpy(), ids, handler)))
    assert n == n2 == [2, 2, 2]
    assert np.abs(got.numpy() - naive.numpy()).max() < 1e-5
    assert max(abs(float(g) - float(want[c])) for g, c in zip(got, cands)) < 1e-5
    if handler == "first":  # "Heat" and "Heavy" share their first token: they tie exactly
        with torch.no_grad():
            s, _ = sc.score(hist, ["1", "2"], soft)
        assert float(s[0]) == float(s[1])
    # normalized over the whole catalog: with one label word per item the probabilities sum to 1
    one = VerbalizerScorer(model, PromptTokens(template, TITLES, CharTok(), label_words=LABEL_RULES["title"]), handler)
    with torch.no_grad():
        allp = one.catalog_scores(hist, cands, soft)
    assert abs(float(torch.exp(allp).sum()) - 1.0) < 1e-5
    # gradients reach the soft prompt, placed mid-template
    p = torch.nn.Parameter(soft["default"].clone())
    sc.score(hist, cands, {"default": p})[0].sum().backward()
    assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_bad_settings_are_refused():
    model = tiny_llama()
    title = PromptTokens("{history}:{candidate}", TITLES, CharTok())
    with pytest.raises(ValueError, match="mask template"):
        VerbalizerScorer(model, title)
    mask = PromptTokens(WHOLE, TITLES, CharTok(), label_words=LABEL_RULES["title"])
    with pytest.raises(ValueError, match="handler"):
        VerbalizerScorer(model, mask, "last")
    with pytest.raises(ValueError, match="scoring"):
        make_scorer(model, mask, "mean-ish")
    with pytest.raises(KeyError, match="not in the catalog"):
        VerbalizerScorer(model, mask).score(["1"], ["99"], {"default": torch.zeros(2, 32)})
    with pytest.raises(SystemExit, match="mask template"):
        stage1.resolve_template("{history}:{candidate}", "verbalizer", "candidates")
    with pytest.raises(SystemExit, match="title template"):
        stage1.resolve_template(WHOLE, "sum", "candidates")
    with pytest.raises(SystemExit, match="does not list"):
        stage1.resolve_template(TEMPLATE, "verbalizer", "catalog")


@pytest.mark.parametrize("template,loss_over", [(TEMPLATE, "candidates"), (WHOLE, "catalog")])
def test_stages_train_with_the_verbalizer_and_evaluate_with_it(tmp_path, monkeypatch, template, loss_over):
    out, data = stage_setup(tmp_path, monkeypatch)
    s1 = data + ["--users", "0", "--batch-size", "2", "--n-virtual", "4", "--save-every", "1", "--scoring",
                 "verbalizer", "--template", template, "--verbalizer-handler", "mean", "--loss-over", loss_over]
    assert stage1.main(s1 + ["--max-steps", "2"]) == 0
    emb, _, meta = load_prompt(out / "soft_prompt")
    assert meta["scoring"] == "verbalizer" and meta["template"] == template
    assert meta["verbalizer"] == {"handler": "mean", "label_words": "title+no-year", "prefix": " "}
    assert meta["candidates_separator"] == ", " and len(meta["log"]) == 2
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in meta["log"])
    assert stage1.main(s1 + ["--max-steps", "3", "--resume"]) == 0
    emb3, _, _ = load_prompt(out / "soft_prompt")
    assert np.abs(emb3 - emb).max() > 0
    with pytest.raises(SystemExit, match="settings differ"):
        stage1.main(s1[:-2] + ["--verbalizer-handler", "first", "--max-steps", "4", "--resume"])
    s2 = data + ["--users", "0", "--per-user", "2", "--batch-size", "2", "--lora-r", "2", "--lr", "0.05",
                 "--targets", "q_proj,v_proj", "--save-every", "1", "--loss-over", loss_over, "--max-steps", "2"]
    assert stage2.main(s2) == 0
    lmeta = json.loads((out / "lora" / "delrec_train.json").read_text())
    assert lmeta["scoring"] == "verbalizer" and lmeta["verbalizer"]["handler"] == "mean"
    assert lmeta["template"] == template and len(lmeta["log"]) == 2
    ev = ["--data-dir", str(tmp_path), "--name", "syn", "--out", str(out), "--model", str(tmp_path / "tiny"),
          "--delrec-bin", str(data[data.index("--delrec-bin") + 1]), "--threads", "1", "--device", "cpu",
          "--no-progress", "--users", "4", "--rows", "llm_soft,llm_lora"]
    assert evaluate.main(ev) == 0
    scores = [json.loads(x) for x in (out / "eval" / "scores.jsonl").read_text().splitlines()]
    # the rows are verbalizer scores: log-probabilities over the whole catalog, one per label word pair
    r0 = scores[0]["rows"]["llm_soft"]
    assert r0["n_tokens"] == [2] * len(r0["scores"]) and all(s < 0 for s in r0["scores"])
    assert any(s["rows"]["llm_lora"]["scores"] != s["rows"]["llm_soft"]["scores"] for s in scores)
    # the llm_soft row is the scorer's own output with the trained soft prompt
    ds = load_dataset(tmp_path, "syn")
    stub = type("Stub", (), {"encode_many": lambda self, xs: [[ord(ch) % 62 + 2 for ch in x] for x in xs]})()
    pt = PromptTokens(template, {i: it.title for i, it in ds.items.items()}, stub,
                      label_words=LABEL_RULES["title+no-year"])
    sc = VerbalizerScorer(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "tiny").eval(), pt, "mean")
    with torch.no_grad():
        again, _ = sc.score(scores[0]["history"], scores[0]["candidates"], {"default": torch.tensor(emb3)})
    assert np.abs(again.numpy() - np.array(r0["scores"])).max() < 1e-5
