"""The PyTorch scorer equals sum of per-token log-probs (docs/format.md), on a tiny random Llama."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from delrec_train.llm import Scorer, freeze  # noqa: E402
from delrec_train.template import PromptTokens  # noqa: E402

VOCAB = 64


class CharTok:
    def encode_many(self, strings):
        return [[ord(ch) % (VOCAB - 2) + 2 for ch in s] for s in strings]


TITLES = {"1": "Toy Story (1995)", "2": "Heat", "3": "Toy Story 2 (1999)", "4": "Up", "5": "Alien (1979)"}


def tiny_model(attn="sdpa"):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=True, attn_implementation=attn)
    return freeze(transformers.LlamaForCausalLM(cfg))


def manual_scores(model, pt, history, cands, soft=None):
    """Full sequence per candidate, log-probs read off the model's logits by hand."""
    out = []
    for c in cands:
        rows, ids = [], []
        for seg in pt.prefix(history):
            if seg.kind == "tokens":
                rows.append(model.get_input_embeddings()(torch.tensor(seg.tokens)))
                ids += seg.tokens
            else:
                rows.append(soft[seg.soft])
                ids += [None] * soft[seg.soft].shape[0]
        P = len(ids)
        cont = pt.continuation(c)
        rows.append(model.get_input_embeddings()(torch.tensor(cont)))
        x = torch.cat(rows)[None]
        logp = torch.log_softmax(model(inputs_embeds=x).logits[0].double(), -1)
        out.append(sum(float(logp[P - 1 + j, t]) for j, t in enumerate(cont)))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_score_equals_sum_of_token_logprobs(attn):
    model = tiny_model(attn)
    pt = PromptTokens("{soft:default}A user watched:{history}.\nNext:{candidate}\n", TITLES, CharTok())
    soft = {"default": torch.randn(3, 32)}
    hist, cands = ["1", "2"], ["3", "4", "5", "1"]
    with torch.no_grad():
        packed, n = Scorer(model, pt).score(hist, cands, soft)
        naive, _ = Scorer(model, pt).score_naive(hist, cands, soft)
    want = manual_scores(model, pt, hist, cands, soft)
    assert n == [len(pt.item_tokens[c]) + 1 for c in cands]
    assert packed.tolist() == pytest.approx(want, abs=1e-4)
    assert naive.tolist() == pytest.approx(want, abs=1e-4)


def test_token_template_matches_input_ids_path():
    """Without soft rows: same as feeding input_ids (with BOS), one candidate per forward."""
    model = tiny_model()
    pt = PromptTokens("Seen:{history} next:{candidate}.", TITLES, CharTok(), item_prefix=" ", history_sep=";", bos=1)
    hist, cands = ["5"], ["1", "3", "2"]
    with torch.no_grad():
        got, _ = Scorer(model, pt).score(hist, cands)
        for c, g in zip(cands, got.tolist()):
            prefix = [t for s in pt.prefix(hist) for t in s.tokens]
            assert prefix[0] == 1
            cont = pt.continuation(c)
            logp = torch.log_softmax(model(input_ids=torch.tensor([prefix + cont])).logits[0].double(), -1)
            want = sum(float(logp[len(prefix) - 1 + j, t]) for j, t in enumerate(cont))
            assert g == pytest.approx(want, abs=1e-4)


def test_gradient_reaches_soft_prompt_only():
    model = tiny_model()
    pt = PromptTokens("{soft:default}{history}:{candidate}\n", TITLES, CharTok())
    soft = torch.nn.Parameter(torch.randn(2, 32))
    s, _ = Scorer(model, pt).score(["1"], ["2", "3", "4"], {"default": soft})
    torch.nn.functional.cross_entropy(s[None], torch.tensor([1])).backward()
    assert soft.grad is not None and float(soft.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters())


def test_missing_soft_prompt_is_an_error():
    model = tiny_model()
    pt = PromptTokens("{soft:default}{history}:{candidate}", TITLES, CharTok())
    with pytest.raises(KeyError, match="soft:default"):
        Scorer(model, pt).score(["1"], ["2"])
    with pytest.raises(ValueError, match="width"):
        Scorer(model, pt).score(["1"], ["2"], {"default": torch.zeros(2, 7)})


def test_bf16_autocast_is_close():
    model = tiny_model()
    pt = PromptTokens("{history}:{candidate}\n", TITLES, CharTok())
    with torch.no_grad():
        a, _ = Scorer(model, pt).score(["1"], ["2", "3"])
        b, _ = Scorer(model, pt, "bf16").score(["1"], ["2", "3"])
    assert b.dtype == torch.float32
    assert b.tolist() == pytest.approx(a.tolist(), rel=0.05, abs=0.5)
