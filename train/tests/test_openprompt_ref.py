"""delrec_train.openprompt_ref against the real OpenPrompt 1.0.1, plus hand-checkable unit cases.

OpenPrompt is not a dependency of delrec_train. The parity tests import it from
``$DELREC_OPENPROMPT_PATH`` (a ``pip install --no-deps --target DIR`` folder), default
``<repo>/target/op-site``, and skip with the reason when it is not importable:

    target/train-venv/bin/python -m pip install --no-deps --target target/op-site \
        openprompt==1.0.1 yacs==0.1.8 dill rouge==1.0.0 six tensorboardX sentencepiece==0.2.3

(``sentencepiece`` only for the T5 case: OpenPrompt needs a slow ``T5Tokenizer``.) OpenPrompt 1.0.1
does not import as is with transformers 4.57; ``_openprompt_shim`` below is the whole fix.
"""

import json
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from delrec_train import openprompt_ref as ref  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LLAMA_TINY = Path(os.environ.get("DELREC_FIXTURES", REPO / "target" / "fixtures")) / "llama-tiny"

TITLES = ["Toy Story (1995)", "Toy Story 2 (1999)", "GoldenEye (1995)", "Four Rooms (1995)",
          "Get Shorty (1995)", "Copycat (1995)", "Heat (1995)", "Sabrina (1995)", "Jumanji (1995)"]
# DELRec's LSR.txt line 0, with 6 soft tokens instead of 100 (same code path, ids 1..6)
TEMPLATE = ('Refer to the recommendation pattern of the {"meta":"model_name"} model to predict the next movie '
            "that the user might watch from candidate set based on user's movie viewing history. The "
            'recommendation pattern of the {"meta":"model_name"} model is:{"soft":None,"duplicate":6}. The movie '
            'viewing history of the user is:{"meta":"user_seq"}. The candidate set is:{"meta":"user_can"}. The '
            'next movie the user will watch might be:{"mask"}.')
META = {"model_name": "SASRec", "user_seq": "Heat (1995), Copycat (1995), Toy Story (1995)",
        "user_can": ", ".join(TITLES)}  # DELRec: ', '.join(data['user_can'])


# ------------------------------------------------------------------------------------------
# unit tests (no OpenPrompt)
# ------------------------------------------------------------------------------------------

def test_label_words_for_title_is_authors_slice():
    assert ref.label_words_for_title("Toy Story (1995)") == ["Toy Story (1995)", "Toy Story"]
    assert ref.label_words_for_title("Heat") == ["Heat", ""]  # t[:-7], unconditionally


def test_add_prefix_and_no_prefix_marker():
    assert ref.add_prefix([["a", "<!>b"], ["c"]], " ") == [[" a", "b"], [" c"]]
    assert ref.add_prefix(["a", "b"], " ") == [[" a"], [" b"]]


def test_padding_layout():
    ids = [[[5, 6, 7], [5]], [[9]]]  # class 0: two words (3 and 1 tokens), class 1: one word
    w, m, lm = ref.pad_label_word_ids(ids)
    assert w.tolist() == [[[5, 6, 7], [5, 0, 0]], [[9, 0, 0], [0, 0, 0]]]
    assert m.tolist() == [[[1, 1, 1], [1, 0, 0]], [[1, 0, 0], [0, 0, 0]]]
    assert lm.tolist() == [[1, 1], [1, 0]]


def _hand_scores(logits, ids, handler):
    """Straight from the definition, in float64: word logit by handler, softmax over all padded
    word slots (padded slots: logit of token 0 by the handler, minus 10000), log(p + 1e-15), mean over
    the real words of each class."""
    W = max(len(c) for c in ids)
    T = max(len(w) for c in ids for w in c)
    slots = []
    for c in ids:
        row = []
        for k in range(W):
            if k < len(c):
                toks = [logits[t] for t in c[k]]
                v = {"first": toks[0], "mean": sum(toks) / (len(toks) + 1e-15),
                     "max": max(toks + [logits[0] - 1000] * (T - len(toks)))}[handler]
            else:
                v = {"first": logits[0], "mean": 0.0, "max": logits[0] - 1000}[handler] - 10000
            row.append(v)
        slots.append(row)
    flat = [v for r in slots for v in r]
    mx = max(flat)
    z = sum(math.exp(v - mx) for v in flat)
    return [sum(math.log(math.exp(slots[i][k] - mx) / z + 1e-15) for k in range(len(c))) / len(c)
            for i, c in enumerate(ids)]


@pytest.mark.parametrize("handler", ["first", "mean", "max"])
def test_verbalizer_matches_hand_computation(handler):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=20).astype(np.float32) * 3
    ids = [[[4, 7, 2], [4]], [[9, 11]], [[13], [15, 16, 17], [3]]]
    got = ref.verbalizer_scores(logits, ids, handler)
    want = _hand_scores(logits.astype(np.float64).tolist(), ids, handler)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # batched input gives the same rows
    got2 = ref.verbalizer_scores(np.stack([logits, logits[::-1]]), ids, handler)
    np.testing.assert_allclose(got2[0], got, atol=1e-6)


def test_handlers_differ_and_first_ties():
    logits = np.zeros(10, np.float32)
    logits[[1, 2, 3]] = [5.0, -4.0, 9.0]
    ids = [[[1, 2]], [[1, 3]], [[2]]]  # classes 0 and 1 share their first token
    first = ref.verbalizer_scores(logits, ids, "first")
    assert first[0] == first[1]  # exact tie
    mean = ref.verbalizer_scores(logits, ids, "mean")
    mx = ref.verbalizer_scores(logits, ids, "max")
    assert mean[1] > mean[0] and mx[1] > mx[0]  # 9 breaks the tie


def test_first_ties_for_titles_sharing_first_subword():
    tok = _fast_gpt2()
    classes = [ref.label_words_for_title(t) for t in ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)"]]
    ids = ref.tokenize_label_words(tok, classes)
    assert ids[0][0][0] == ids[1][0][0] == ids[0][1][0] == ids[1][1][0]  # " Toy" first for all four
    logits = np.random.default_rng(0).normal(size=tok.vocab_size).astype(np.float32)
    s = ref.verbalizer_scores(logits, ids, "first")
    assert s[0] == s[1] and s[0] != s[2]
    assert ref.verbalizer_scores(logits, ids, "mean")[0] != ref.verbalizer_scores(logits, ids, "mean")[1]


def test_mixed_template_embeds_uses_rows_1_to_n():
    raw = np.arange(12, dtype=np.float32).reshape(6, 2)
    soft = np.full((3, 2), -1.0, np.float32)
    soft[0] = 1e6  # row 0: never used
    soft[1], soft[2] = [100, 101], [200, 201]
    out = ref.mixed_template_embeds(raw, [5, 0, 0, 3], [0, 1, 2, 0], soft)
    assert out.tolist() == [[10, 11], [100, 101], [200, 201], [6, 7]]


def test_segments_from_template():
    segs = ref.segments_from_template(TEMPLATE, META)
    assert segs[0] == ("text", "Refer to the recommendation pattern of the")
    assert segs[1] == ("text", " SASRec")
    assert segs[2] == ("text", " model to predict the next movie that the user might watch from candidate set based "
                               "on user's movie viewing history. The recommendation pattern of the")
    assert segs[3:6] == [("text", " SASRec"), ("text", " model is:"), ("soft", 6)]
    assert segs[6] == ("text", ". The movie viewing history of the user is:")  # no space after the soft block
    assert segs[7] == ("text", META["user_seq"])  # "is:{...}": no prefix space
    assert segs[-3:] == [("text", ". The next movie the user will watch might be:"), ("mask",), ("text", ".")]
    with pytest.raises(ValueError):
        ref.segments_from_template("a {mask}", {})  # DELRec TA.txt's unquoted {mask}


# ------------------------------------------------------------------------------------------
# tokenizers / models
# ------------------------------------------------------------------------------------------

def _need_llama():
    if not (LLAMA_TINY / "tokenizer.json").exists():
        pytest.skip(f"{LLAMA_TINY} missing: run python3 tests/fixtures/make_fixtures.py target/fixtures")


def _fast_gpt2():
    _need_llama()
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(LLAMA_TINY / "tokenizer.json"),
                                                eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _slow_gpt2(tmp):
    """The fixture's byte-level BPE as a slow GPT2Tokenizer (OpenPrompt needs a slow tokenizer)."""
    _need_llama()
    d = json.loads((LLAMA_TINY / "tokenizer.json").read_text())
    (tmp / "vocab.json").write_text(json.dumps(d["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in d["model"]["merges"]]
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = transformers.GPT2Tokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), unk_token="<|endoftext|>",
                                     bos_token="<|endoftext|>", eos_token="<|endoftext|>", add_prefix_space=False)
    tok.pad_token = tok.eos_token
    return tok


def _t5_tokenizer(tmp):
    try:
        _openprompt_path_on_syspath()
        import sentencepiece as spm
    except ImportError:
        pytest.skip("sentencepiece not importable (needed for a slow T5Tokenizer)")
    words = sorted({w for s in TITLES + [TEMPLATE, META["user_seq"]] for w in
                    s.replace("{", " ").replace("}", " ").replace('"', " ").split()})
    rng = np.random.default_rng(0)
    with open(tmp / "corpus.txt", "w") as f:
        for _ in range(600):
            f.write(" ".join(rng.choice(words, 10)) + "\n")
    spm.SentencePieceTrainer.train(input=str(tmp / "corpus.txt"), model_prefix=str(tmp / "sp"), model_type="unigram",
                                   vocab_size=200, hard_vocab_limit=False, character_coverage=1.0, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2)
    # transformers decides "sentencepiece available" once, at its import; it may have been imported
    # before the OpenPrompt folder (which holds sentencepiece) was put on sys.path
    import transformers.utils.import_utils as iu

    iu._sentencepiece_available = True
    from transformers.models.t5.tokenization_t5 import T5Tokenizer

    return T5Tokenizer(str(tmp / "sp.model"), extra_ids=10, legacy=True)


def _llama():
    _need_llama()
    m = transformers.LlamaForCausalLM.from_pretrained(str(LLAMA_TINY), dtype=torch.float32).eval()
    return m


def _t5(vocab):
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                                feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
                                eos_token_id=1, decoder_start_token_id=0)
    return transformers.T5ForConditionalGeneration(cfg).eval()


# ------------------------------------------------------------------------------------------
# real OpenPrompt
# ------------------------------------------------------------------------------------------

def _openprompt_path_on_syspath():
    p = os.environ.get("DELREC_OPENPROMPT_PATH", str(REPO / "target" / "op-site"))
    if os.path.isdir(p) and p not in sys.path:
        sys.path.append(p)


def _openprompt_shim():
    """What OpenPrompt 1.0.1 needs to import with transformers 4.57 / torch 2.8 (nothing else changed):

    * ``transformers.generation_utils`` is gone (pipeline_base.py:4): alias ``GenerationMixin`` from
      ``transformers.generation``;
    * ``transformers.AdamW`` is gone (pipeline_base.py:22, trainer.py:26): alias ``torch.optim.AdamW``
      (only used by OpenPrompt's trainers);
    * ``datasets`` (data_utils/huggingface_dataset.py:21-23, imported by data_utils/__init__): a stub,
      only the HF dataset processors use it.
    Importing ``transformers.processing_utils`` re-creates ``sys.modules['transformers']`` in 4.57, so it
    is imported first and the alias is set on the module in ``sys.modules``.
    """
    import transformers.processing_utils  # noqa: F401

    tf = sys.modules["transformers"]
    if "transformers.generation_utils" not in sys.modules:
        m = types.ModuleType("transformers.generation_utils")
        from transformers.generation import GenerationMixin

        m.GenerationMixin = GenerationMixin
        sys.modules["transformers.generation_utils"] = m
    if "AdamW" not in tf.__dict__:
        try:
            tf.AdamW  # noqa: B018
        except (AttributeError, ImportError):
            tf.AdamW = torch.optim.AdamW
    try:
        import datasets  # noqa: F401
    except ImportError:
        m = types.ModuleType("datasets")

        def _no(*a, **k):
            raise ImportError("datasets is stubbed for OpenPrompt")

        m.load_dataset = m.load_from_disk = _no
        sys.modules["datasets"] = m


@pytest.fixture(scope="module")
def op():
    _openprompt_path_on_syspath()
    try:
        _openprompt_shim()
        import openprompt
        from openprompt import PromptDataLoader, PromptForClassification
        from openprompt.data_utils import InputExample
        from openprompt.plms import LMTokenizerWrapper, T5TokenizerWrapper
        from openprompt.prompts import ManualVerbalizer, MixedTemplate
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"openprompt not importable ({type(e).__name__}: {e}); set DELREC_OPENPROMPT_PATH "
                    f"to a `pip install --no-deps --target` folder with openprompt==1.0.1 yacs dill rouge six tensorboardX")
    assert openprompt.__version__ == "1.0.1"
    return types.SimpleNamespace(PromptDataLoader=PromptDataLoader, PromptForClassification=PromptForClassification,
                                 InputExample=InputExample, LMTokenizerWrapper=LMTokenizerWrapper,
                                 T5TokenizerWrapper=T5TokenizerWrapper, ManualVerbalizer=ManualVerbalizer,
                                 MixedTemplate=MixedTemplate)


def _openprompt_scores(op, plm, tok, wrapper, template_text, handler, soft_scale=0.05, max_len=500):
    torch.manual_seed(7)
    tmpl = op.MixedTemplate(model=plm, tokenizer=tok, text=template_text)
    with torch.no_grad():  # trained-like soft rows; row 0 garbage (must not matter)
        w = tmpl.soft_embedding.weight
        w.mul_(soft_scale)
        w[0] = 1e4
    verb = op.ManualVerbalizer(tokenizer=tok, classes=TITLES,
                               label_words={t: ref.label_words_for_title(t) for t in TITLES},
                               multi_token_handler=handler)
    model = op.PromptForClassification(plm=plm, template=tmpl, verbalizer=verb, freeze_plm=True).eval()
    ex = op.InputExample(guid=0, label=0, meta=dict(META))
    dl = op.PromptDataLoader(dataset=[ex], template=tmpl, tokenizer=tok, tokenizer_wrapper_class=wrapper,
                             max_seq_length=max_len, decoder_max_length=20, batch_size=1)
    batch = next(iter(dl))
    snap = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}  # process_batch edits batch
    with torch.no_grad():
        scores = model(batch)[0].numpy()
    return scores, w.detach().clone(), snap, model


@pytest.mark.parametrize("handler", ["first", "mean", "max"])
def test_causal_matches_openprompt(op, tmp_path, handler):
    tok = _slow_gpt2(tmp_path)
    plm = _llama()
    want, w, batch, _ = _openprompt_scores(op, plm, tok, op.LMTokenizerWrapper, TEMPLATE, handler)
    segs = ref.segments_from_template(TEMPLATE, META)
    ids, soft, pos = ref.build_causal_inputs(tok, segs)
    n = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, :n].tolist() == ids
    assert torch.nonzero(batch["loss_ids"][0]).flatten().tolist() == [pos] == [n - 1]
    # OpenPrompt 1.0.1's LM wrapper drops empty-text pieces, i.e. every {"soft": None} token
    assert batch["soft_token_ids"].sum().item() == 0
    classes = [ref.label_words_for_title(t) for t in TITLES]
    got = ref.score_causal(plm, tok, segs, w, classes, handler)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the fast tokenizer (what the runtime's tokenizer.json is) gives the same ids here
    fast = _fast_gpt2()
    assert ref.build_causal_inputs(fast, segs) == (ids, soft, pos)
    assert ref.tokenize_label_words(fast, classes) == ref.tokenize_label_words(tok, classes)


@pytest.mark.parametrize("handler", ["first", "max"])
def test_causal_kept_soft_matches_openprompt_soft_words(op, tmp_path, handler):
    """drop_soft=False against OpenPrompt with soft tokens that do reach the LM: ``{"soft": "words"}``
    (one soft token per sub-word, non-empty surface text) in the middle of the template."""
    tok = _slow_gpt2(tmp_path)
    plm = _llama()
    text = TEMPLATE.replace('{"soft":None,"duplicate":6}', '{"soft":" recommendation pattern"}')
    want, w, batch, _ = _openprompt_scores(op, plm, tok, op.LMTokenizerWrapper, text, handler)
    n_soft = w.shape[0] - 1
    assert n_soft >= 2 and batch["soft_token_ids"].max().item() == n_soft
    segs = ref.segments_from_template(TEMPLATE.replace('"duplicate":6', f'"duplicate":{n_soft}'), META)
    got = ref.score_causal(plm, tok, segs, w, [ref.label_words_for_title(t) for t in TITLES], handler,
                           drop_soft=False)
    ids, soft, _ = ref.build_causal_inputs(tok, segs, drop_soft=False)
    assert soft == batch["soft_token_ids"][0, :len(soft)].tolist()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("handler", ["first", "mean", "max"])
def test_t5_matches_openprompt(op, tmp_path, handler):
    tok = _t5_tokenizer(tmp_path)
    plm = _t5(len(tok))
    want, w, batch, model = _openprompt_scores(op, plm, tok, op.T5TokenizerWrapper, TEMPLATE, handler)
    segs = ref.segments_from_template(TEMPLATE, META)
    ids, soft, dec, pos = ref.build_t5_inputs(tok, segs)
    n = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, :n].tolist() == ids
    assert ids[-1] == tok.eos_token_id  # OpenPrompt's T5 wrapper appends </s>
    assert tok.additional_special_tokens[0] == "<extra_id_0>" and tok.additional_special_tokens_ids[0] in ids
    assert batch["soft_token_ids"][0, :n].tolist() == soft and max(soft) == 6
    assert batch["decoder_input_ids"][0, :2].tolist() == dec == [tok.pad_token_id, tok.additional_special_tokens_ids[0]]
    assert torch.nonzero(batch["loss_ids"][0]).flatten().tolist() == [pos] == [1]
    got = ref.score_t5(plm, tok, segs, w, [ref.label_words_for_title(t) for t in TITLES], handler)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the soft rows matter (so the splice is really tested)
    w2 = w.clone()
    w2[1:] = 0
    assert np.abs(ref.score_t5(plm, tok, segs, w2, [ref.label_words_for_title(t) for t in TITLES], handler)
                  - got).max() > 1e-4
    if handler == "first":
        sd = model.state_dict()
        assert sd["prompt_model.template.soft_embedding.weight"].shape == (7, 32)
        assert "prompt_model.template.raw_embedding.weight" in sd
        assert {"verbalizer.label_words_ids", "verbalizer.words_ids_mask", "verbalizer.label_words_mask"} <= set(sd)
        assert any(k.startswith("prompt_model.plm.") for k in sd)
