"""Frozen causal LM + the delrec scoring contract in PyTorch.

``Scorer.score(history, candidates, soft)`` (title templates) returns, for each candidate c,
``logprob(c) = sum_i ln p(t_i | prefix rows, t_1..t_{i-1})`` over c's ``item_prefix + title``
tokens followed by the terminator tokens, exactly as docs/format.md defines it, with the soft
prompt rows given as input embeddings (gradients flow into them).

Efficiency: the prefix and all candidates go through the model in ONE packed sequence
``[prefix | cand_1 tokens | cand_2 tokens | ...]`` with a block attention mask (each candidate
token sees the whole prefix and the earlier tokens of its own candidate, nothing else) and
position ids that restart at ``len(prefix)`` for every candidate. This is the shared-prefix plan of
the runtime without a KV cache copy and without padding; the last token of a candidate's scored
run is never fed (nothing is predicted from it). The LM head runs only on the rows whose next
token is scored.

:class:`VerbalizerScorer` is the same contract for mask templates (DELRec as published): one
forward of the prompt, the verbalizer at its last row.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .template import PromptTokens


def pick_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def load_gguf_model(path: Path, device: torch.device | str = "cpu", dtype=torch.float32):
    """transformers' GGUF loader (dequantizes, undoes llama.cpp's q/k row permutation); frozen, eval.
    A directory is loaded as a Hugging Face checkpoint instead (tests, unquantized models)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    model.to(device)
    return freeze(model)


def freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _base_and_head(model):
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return base, model.get_output_embeddings()


class Scorer:
    def __init__(self, model, tokens: PromptTokens, autocast: str = "none"):
        """autocast: "none" (float32 throughout) or "bf16" (transformer trunk under bfloat16
        autocast, ~2.5x faster on CPUs with AMX/AVX512-BF16; the LM head and log-softmax stay
        float32). Evaluation defaults to float32."""
        if autocast not in ("none", "bf16"):
            raise ValueError(f"autocast {autocast!r}: none or bf16")
        self.autocast = autocast
        self.model = model
        self.tokens = tokens
        self.base, self.head = _base_and_head(model)
        self.embed = model.get_input_embeddings()
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype

    def hidden_size(self) -> int:
        return self.embed.weight.shape[1]

    def prefix_embeds(self, history: list[str], soft: dict[str, torch.Tensor] | None,
                      candidates: list[str] | None = None) -> torch.Tensor:
        rows = []
        for seg in self.tokens.prefix(history, candidates):
            if seg.kind == "tokens":
                rows.append(self.embed(torch.tensor(seg.tokens, dtype=torch.long, device=self.device)))
            else:
                if not soft or seg.soft not in soft:
                    raise KeyError(f"template uses {{soft:{seg.soft}}} but no such soft prompt was given")
                sp = soft[seg.soft]
                if sp.dim() != 2 or sp.shape[1] != self.hidden_size():
                    raise ValueError(f"soft prompt {seg.soft}: shape {tuple(sp.shape)}, width must be {self.hidden_size()}")
                rows.append(sp.to(device=self.device, dtype=self.dtype))
        if not rows:
            raise ValueError("nothing precedes the candidate: its first token has no previous position")
        return torch.cat(rows, 0)

    def score(self, history: list[str], candidates: list[str], soft: dict[str, torch.Tensor] | None = None):
        """-> (logprob [C] tensor, n_tokens [C] list). Differentiable w.r.t. ``soft``."""
        if self.tokens.is_mask:
            raise ValueError("a mask template is scored by VerbalizerScorer")
        pre = self.prefix_embeds(history, soft)
        P = pre.shape[0]
        conts = [self.tokens.continuation(c) for c in candidates]
        if any(len(t) == 0 for t in conts):
            raise ValueError("a candidate and the terminator tokenize to nothing")
        # packed inputs: every candidate's tokens except its last
        feed, pos, owner, local = [], [], [], []
        for ci, t in enumerate(conts):
            for j, tok in enumerate(t[:-1]):
                feed.append(tok)
                pos.append(P + j)
                owner.append(ci)
                local.append(j)
        F = len(feed)
        L = P + F
        dev = self.device
        if F:
            x = torch.cat([pre, self.embed(torch.tensor(feed, dtype=torch.long, device=dev))], 0)
        else:
            x = pre
        position_ids = torch.cat([torch.arange(P, device=dev), torch.tensor(pos, dtype=torch.long, device=dev)])
        # block mask: True = may attend
        allow = torch.zeros(L, L, dtype=torch.bool, device=dev)
        allow[:P, :P] = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
        if F:
            allow[P:, :P] = True
            ow = torch.tensor(owner, device=dev)
            lo = torch.tensor(local, device=dev)
            allow[P:, P:] = (ow[:, None] == ow[None, :]) & (lo[None, :] <= lo[:, None])
        mask = torch.zeros(L, L, dtype=self.dtype, device=dev)
        mask.masked_fill_(~allow, torch.finfo(self.dtype).min)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast == "bf16"):
            out = self.base(inputs_embeds=x[None], attention_mask=mask[None, None], position_ids=position_ids[None],
                            use_cache=False)
        h = out.last_hidden_state[0] if hasattr(out, "last_hidden_state") else out[0][0]
        h = h.to(self.dtype)
        # row P-1 predicts every candidate's first token; packed row P+k predicts the next token of its candidate
        rows = torch.cat([h[P - 1:P], h[P:]], 0)
        logp = torch.log_softmax(self.head(rows).float(), dim=-1)
        tgt_row, tgt_tok, seg = [], [], []
        k = 0
        for ci, t in enumerate(conts):
            tgt_row.append(0)
            tgt_tok.append(t[0])
            seg.append(ci)
            for j in range(1, len(t)):
                tgt_row.append(1 + k)
                tgt_tok.append(t[j])
                seg.append(ci)
                k += 1
        lp = logp[torch.tensor(tgt_row, device=dev), torch.tensor(tgt_tok, device=dev)]
        total = torch.zeros(len(conts), dtype=lp.dtype, device=dev).index_add(0, torch.tensor(seg, device=dev), lp)
        return total, [len(t) for t in conts]

    def score_naive(self, history: list[str], candidates: list[str], soft: dict[str, torch.Tensor] | None = None):
        """One full forward per candidate (reference for tests)."""
        pre = self.prefix_embeds(history, soft)
        P = pre.shape[0]
        res = []
        for c in candidates:
            t = self.tokens.continuation(c)
            x = torch.cat([pre, self.embed(torch.tensor(t, dtype=torch.long, device=self.device))], 0)
            logits = self.model(inputs_embeds=x[None], use_cache=False).logits[0]
            lp = torch.log_softmax(logits.float(), -1)
            res.append(sum(lp[P - 1 + j, tok] for j, tok in enumerate(t)))
        return torch.stack(res), [len(self.tokens.continuation(c)) for c in candidates]


HANDLERS = ("first", "mean", "max")


class VerbalizerScorer(Scorer):
    """OpenPrompt's ``ManualVerbalizer`` on a causal LM, as the runtime's ``verbalizer`` mode
    computes it (docs/format.md, "Scoring"): one forward of the prompt up to ``{mask}`` (the
    request's candidates listed where the template has ``{candidates}``), the vocabulary logits
    ``z`` at its last row; every label word ``w`` of every catalog item gets ``h(w) = z[w_1]``
    (``first``), the mean or the max of ``z`` over its tokens; ``p`` = softmax over all label words
    of the catalog; an item scores ``mean_w ln(p(w) + 1e-15)`` over its words. Scores are
    normalized over the whole catalog, so ``score(history, every item)`` ranks the catalog in one
    pass. ``n_tokens`` is the number of label words, as the runtime reports it."""

    def __init__(self, model, tokens, handler: str = "first", autocast: str = "none"):
        super().__init__(model, tokens, autocast)
        if not tokens.is_mask or not tokens.label_tokens:
            raise ValueError("VerbalizerScorer needs a mask template and label words (PromptTokens(label_words=...))")
        if handler not in HANDLERS:
            raise ValueError(f"verbalizer handler {handler!r}: one of {', '.join(HANDLERS)}")
        self.handler = handler
        self.items = list(tokens.label_tokens)
        self.index = {i: k for k, i in enumerate(self.items)}
        words = [(k, t) for k, i in enumerate(self.items) for t in tokens.label_tokens[i]]
        width = max(len(t) for _, t in words)
        dev = self.device
        self._ids = torch.tensor([t + [0] * (width - len(t)) for _, t in words], dtype=torch.long, device=dev)
        self._tmask = torch.tensor([[1.0] * len(t) + [0.0] * (width - len(t)) for _, t in words], device=dev)
        self._owner = torch.tensor([k for k, _ in words], dtype=torch.long, device=dev)
        self._n_words = torch.bincount(self._owner, minlength=len(self.items)).float()
        self._n_words_list = self._n_words.long().tolist()

    def catalog_scores(self, history: list[str], candidates: list[str] | None,
                       soft: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """-> [n_items] scores in catalog order (``candidates`` only fill ``{candidates}``)."""
        pre = self.prefix_embeds(history, soft, candidates if self.tokens.lists_candidates() else None)
        P = pre.shape[0]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast == "bf16"):
            out = self.base(inputs_embeds=pre[None], position_ids=torch.arange(P, device=self.device)[None],
                            use_cache=False)
        h = out.last_hidden_state[0] if hasattr(out, "last_hidden_state") else out[0][0]
        z = self.head(h[P - 1:P].to(self.dtype)).float()[0]
        tok = z[self._ids]  # [n_words, width]
        if self.handler == "first":
            hw = tok[:, 0]
        elif self.handler == "mean":
            hw = (tok * self._tmask).sum(-1) / self._tmask.sum(-1)
        else:
            hw = tok.masked_fill(self._tmask == 0, float("-inf")).max(-1).values
        lp = torch.log(torch.softmax(hw, 0) + 1e-15)
        total = torch.zeros(len(self.items), dtype=lp.dtype, device=lp.device).index_add(0, self._owner, lp)
        return total / self._n_words

    def score(self, history: list[str], candidates: list[str], soft: dict[str, torch.Tensor] | None = None):
        """-> (scores [C] tensor, label words [C] list). Differentiable w.r.t. ``soft`` (and LoRA)."""
        try:
            idx = [self.index[c] for c in candidates]
        except KeyError as e:
            raise KeyError(f"candidate {e.args[0]} is not in the catalog") from None
        s = self.catalog_scores(history, candidates, soft)
        return s[torch.tensor(idx, device=s.device)], [self._n_words_list[k] for k in idx]

    def score_naive(self, history: list[str], candidates: list[str], soft: dict[str, torch.Tensor] | None = None):
        """The model's own forward (default positions, full logits) and the verbalizer written as
        the formula: the reference for tests."""
        pre = self.prefix_embeds(history, soft, candidates if self.tokens.lists_candidates() else None)
        z = self.model(inputs_embeds=pre[None], use_cache=False).logits[0, -1].float()
        hs, owners = [], []
        for i in self.items:
            for t in self.tokens.label_tokens[i]:
                v = z[torch.tensor(t, device=z.device)]
                hs.append(v[0] if self.handler == "first" else v.mean() if self.handler == "mean" else v.max())
                owners.append(i)
        p = torch.softmax(torch.stack(hs), 0)
        per = {}
        for i, pw in zip(owners, p):
            per.setdefault(i, []).append(torch.log(pw + 1e-15))
        return (torch.stack([torch.stack(per[c]).mean() for c in candidates]),
                [len(per[c]) for c in candidates])


def make_scorer(model, tokens, scoring: str = "sum", handler: str = "first", autocast: str = "none"):
    """The scorer a pack's scoring mode names: ``sum`` (title log-likelihood) or ``verbalizer``."""
    if scoring == "verbalizer":
        return VerbalizerScorer(model, tokens, handler, autocast)
    if scoring != "sum":
        raise ValueError(f"scoring {scoring!r}: sum or verbalizer")
    return Scorer(model, tokens, autocast)
