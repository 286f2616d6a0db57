"""Independent PyTorch reference of DELRec's scoring "as published" (OpenPrompt 1.0.1).

DELRec (github.com/haoge6660101/DELRec_hao) ranks with OpenPrompt::

    template   = MixedTemplate(model=plm, tokenizer=tok).from_file("LSR.txt", choice=id)  # utils.py create_prompt
    verbalizer = ManualVerbalizer(tokenizer=tok, classes=titles,
                                  label_words={t: [t, t[:-7]] for t in titles})       # utils.py creat_Verbalizer
    PromptForClassification(plm=plm, template=template, verbalizer=verbalizer)(batch)  # -> (batch, n_classes)

This module recomputes that without importing OpenPrompt, following its source line by line.
Line references ``file:N`` are to the ``openprompt==1.0.1`` wheel (PyPI); ``openprompt-updated==1.0.1``
has the same code for every line cited here (it differs in ``mixed_template.py:79``, the
``"same": True`` branch, which DELRec does not use).

Inputs are numpy arrays or torch tensors, outputs numpy. Tokenizers are HF tokenizers; OpenPrompt
itself needs *slow* ones (``TokenizerWrapper.add_special_tokens`` calls ``get_special_tokens_mask``,
which fast tokenizers refuse), this module accepts both.
"""

from __future__ import annotations

import ast
from typing import List, Sequence, Tuple, Union

import numpy as np

try:  # torch is only needed for the model-running functions
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None

Segment = Tuple  # ("text", str) | ("soft", n_rows) | ("mask",)


def _t(x, dtype=None):
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


# --------------------------------------------------------------------------------------------
# Label words (DELRec utils.py creat_Verbalizer) and their tokenization (ManualVerbalizer)
# --------------------------------------------------------------------------------------------

def label_words_for_title(title: str) -> List[str]:
    """DELRec ``utils.py`` ``creat_Verbalizer``: ``saspre_label = {item: [item, item[:-7]] ...}``.

    The second word drops the last 7 characters unconditionally (meant to be ``" (1995)"``); a title
    without a ``" (yyyy)"`` suffix loses 7 real characters. Titles come from ``../title_set.txt``,
    ``line.strip()``. (``check_seq_spell``'s "X, The (1995)" -> "The X (1995)" rewrite is applied to
    the history / candidate strings only, not to these classes.)
    """
    return [title, title[:-7]]


def add_prefix(label_words, prefix: str = " ") -> List[List[str]]:
    """``ManualVerbalizer.add_prefix`` (manual_verbalizer.py:51-75): a word starting with ``<!>`` is
    taken as the text after ``<!>`` without prefix, every other word gets ``prefix`` prepended."""
    if isinstance(label_words[0], str):  # :64-65
        label_words = [[w] for w in label_words]
    out = []
    for words in label_words:
        out.append([w.split("<!>")[1] if w.startswith("<!>") else prefix + w for w in words])  # :70-73
    return out


def tokenize_label_words(tokenizer, label_words, prefix: str = " ") -> List[List[List[int]]]:
    """Token ids per class per label word as ``ManualVerbalizer.generate_parameters`` builds them
    (manual_verbalizer.py:81-87): ``tokenizer.encode(prefix + word, add_special_tokens=False)``."""
    return [[list(tokenizer.encode(w, add_special_tokens=False)) for w in words]
            for words in add_prefix(label_words, prefix)]


def pad_label_word_ids(label_word_token_ids):
    """The three verbalizer buffers, padded as manual_verbalizer.py:89-103 pads them.

    Returns ``label_words_ids`` (C, W, T) int64 (padding id 0), ``words_ids_mask`` (C, W, T) and
    ``label_words_mask`` (C, W) (1 for a real label word), W = most label words of any class,
    T = most tokens of any label word. A class with fewer words gets all-zero rows (ids 0, mask 0).
    """
    all_ids = label_word_token_ids
    max_len = max(max(len(ids) for ids in per) for per in all_ids)  # :89
    max_num = max(len(per) for per in all_ids)  # :90
    mask = [[[1] * len(ids) + [0] * (max_len - len(ids)) for ids in per]  # :92-94
            + [[0] * max_len] * (max_num - len(per)) for per in all_ids]
    words = [[ids + [0] * (max_len - len(ids)) for ids in per]  # :95-97
             + [[0] * max_len] * (max_num - len(per)) for per in all_ids]
    words = np.asarray(words, dtype=np.int64)
    mask = np.asarray(mask, dtype=np.int64)
    return words, mask, np.clip(mask.sum(-1), None, 1)  # :103


# --------------------------------------------------------------------------------------------
# Verbalizer
# --------------------------------------------------------------------------------------------

def verbalizer_scores(logits_at_mask, label_word_token_ids, handler: str = "first") -> np.ndarray:
    """``ManualVerbalizer.process_logits`` (manual_verbalizer.py:124-160), no calibration.

    ``logits_at_mask``: (V,) or (B, V) vocabulary logits at the mask position.
    ``label_word_token_ids``: per class, per label word, a token-id list (``tokenize_label_words``).
    Returns (C,) or (B, C): per class, the mean over its label words of ``log(p + 1e-15)``, ``p`` the
    softmax over *all* (padded) label-word slots of all classes. Computed in float32 like the model.
    """
    x = _t(logits_at_mask, torch.float32)
    squeeze = x.dim() == 1
    if squeeze:
        x = x.unsqueeze(0)
    words, wmask, lmask = (torch.as_tensor(a) for a in pad_label_word_ids(label_word_token_ids))
    wmask = wmask.to(x.dtype)  # torch.tensor of python ints is int64; arithmetic promotes to float
    lmask = lmask.to(x.dtype)
    # project (:119-122)
    lw = x[:, words]  # (B, C, W, T)
    # Verbalizer.handle_multi_token (prompt_base.py:556-565)
    if handler == "first":
        lw = lw.select(dim=-1, index=0)
    elif handler == "max":
        lw = lw - 1000 * (1 - wmask.unsqueeze(0))
        lw = lw.max(dim=-1).values
    elif handler == "mean":
        lw = (lw * wmask.unsqueeze(0)).sum(dim=-1) / (wmask.unsqueeze(0).sum(dim=-1) + 1e-15)
    else:
        raise ValueError(f"multi_token_handler {handler} not configured")
    lw = lw - 10000 * (1 - lmask)  # :121 (padded label-word slots)
    # normalize (:162-174): softmax over every label-word slot of every class at once
    b = lw.shape[0]
    probs = F.softmax(lw.reshape(b, -1), dim=-1).reshape(*lw.shape)
    lw = torch.log(probs + 1e-15)  # :156
    # aggregate (:177-187): mean over the real label words
    out = (lw * lmask).sum(-1) / lmask.sum(-1)
    out = out.detach().cpu().numpy()
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------
# MixedTemplate
# --------------------------------------------------------------------------------------------

def mixed_template_embeds(raw_embedding, input_ids, soft_token_ids, soft_embedding_weight) -> np.ndarray:
    """``MixedTemplate.process_batch`` (mixed_template.py:208-210).

    ``raw_embedding``: the PLM input-embedding matrix (V, d) (``model.get_input_embeddings().weight``,
    for T5 ``shared``); ``input_ids``, ``soft_token_ids``: (L,) or (B, L); ``soft_embedding_weight``:
    ``template.soft_embedding.weight`` (n+1, d). Position i takes ``soft_embedding_weight[s]`` when its
    soft id s > 0, else ``raw_embedding[input_ids[i]]``. ``{"soft": None, "duplicate": n}`` gets ids
    1..n in order (:81-82, after the soft tokens already defined earlier in the template), so rows
    1..n are the trained prompt; row 0 is looked up for every non-soft position and then discarded by
    the ``torch.where`` — it is the untrained ``nn.Embedding`` init (N(0, 1), :108) and unused.
    (``{"soft": "some words"}`` would instead initialise its rows from those words' embeddings, :88-110.)
    """
    return _mixed_embeds_t(_t(raw_embedding), _t(input_ids, torch.long), _t(soft_token_ids, torch.long),
                           _t(soft_embedding_weight)).detach().cpu().numpy()


def _mixed_embeds_t(raw_w, input_ids, soft_ids, soft_w):
    raw = F.embedding(input_ids, raw_w)
    soft = F.embedding(soft_ids, soft_w)
    return torch.where((soft_ids > 0).unsqueeze(-1), soft, raw)


def segments_from_template(text: str, meta: dict) -> List[Segment]:
    """The pieces a MixedTemplate line yields for one example, as ``("text", s)`` / ``("soft", n)`` /
    ``("mask",)``: ``Template.parse_text`` (prompt_base.py:136-182, = mixed_template.py:118-164) then
    ``MixedTemplate.incorporate_text_example`` (mixed_template.py:180-199). Text and meta pieces carry
    ``add_prefix_space`` (a ``" "`` when the piece is preceded by a space in the line; text is
    ``rstrip(' ')``-ed). Supports text, ``{"meta": k}``, ``{"placeholder": k}`` (looked up in meta),
    ``{"soft": None[, "duplicate": n]}`` and ``{"mask"}``, which is all DELRec's LSR/RPS lines use.
    OpenPrompt ``eval``s each ``{...}``; a bare ``{mask}`` (as in DELRec's TA.txt) is a NameError
    there (it prints "syntax error" and calls ``exit()``); here it is a ValueError.
    """
    parsed, i = [], 0
    while i < len(text):  # parse_text, line for line
        d = {"add_prefix_space": " " if (i > 0 and text[i - 1] == " ") else ""}
        while i < len(text) and text[i] == " ":
            d["add_prefix_space"] = " "
            i += 1
        if i == len(text):
            break
        if text[i] != "{":
            j = i + 1
            while j < len(text) and text[j] != "{":
                j += 1
            d["text"] = text[i:j].rstrip(" ")
            i = j
        else:
            j, cnt = i + 1, 1
            while j < len(text):
                if text[j] == "}":
                    cnt -= 1
                    if cnt == 0:
                        break
                elif text[j] == "{":
                    cnt += 1
                j += 1
            if j == len(text):
                raise ValueError(f"mixed_token_start at position {i} has no end")
            try:
                val = ast.literal_eval("{" + text[i + 1:j] + "}")
            except Exception as e:
                raise ValueError(f"syntax error in {{{text[i + 1:j]}}}") from e
            if isinstance(val, set):
                val = {k: None for k in val}
            d.update(val)
            i = j + 1
        parsed.append(d)
    segs: List[Segment] = []
    for d in parsed:
        if "soft_id" in d or ("soft" in d and d["soft"] is not None) or "post_processing" in d:
            raise NotImplementedError(f"template piece {d} is not supported by this reference")
        if "soft" in d:  # prepare(), :75-86: one piece (text "") per soft token
            segs.append(("soft", int(d.get("duplicate", 1))))
        elif "placeholder" in d or "meta" in d:
            segs.append(("text", d["add_prefix_space"] + meta[d.get("placeholder") or d["meta"]]))
        elif "mask" in d:
            segs.append(("mask",))
        elif "special" in d:
            segs.append(("text", d["special"]))
        elif "text" in d:
            segs.append(("text", d["add_prefix_space"] + d["text"]))
        else:
            raise ValueError(f"can not parse {d}")
    return segs


# --------------------------------------------------------------------------------------------
# Tokenizer wrappers (plms/lm.py LMTokenizerWrapper, plms/seq2seq.py T5TokenizerWrapper)
# --------------------------------------------------------------------------------------------

_TEMPLATE_SPECIALS = {"<eos>": "eos_token", "<bos>": "bos_token", "<sep>": "sep_token",
                      "<cls>": "cls_token", "<pad>": "pad_token", "<mask>": "mask_token"}  # utils.py:35-50


def _encode_text_piece(tokenizer, s: str) -> List[int]:
    if s in _TEMPLATE_SPECIALS:  # lm.py:69-74 / seq2seq.py:84-89
        s = getattr(tokenizer, _TEMPLATE_SPECIALS[s], None) or ""
    return list(tokenizer.encode(s, add_special_tokens=False))  # lm.py:79 / seq2seq.py:94


def _add_special_tokens(tokenizer, input_ids, soft_ids):
    """``TokenizerWrapper.add_special_tokens`` (utils.py:168-183): ``build_inputs_with_special_tokens``
    on the ids; soft ids of the added positions are 0. Fast tokenizers have no
    ``get_special_tokens_mask`` for raw ids, so the added positions are found with sentinel ids."""
    full = list(tokenizer.build_inputs_with_special_tokens(list(input_ids)))
    marks = list(tokenizer.build_inputs_with_special_tokens([-1] * len(input_ids)))
    if len(marks) != len(full):  # pragma: no cover (e.g. T5 not adding </s> after a final </s>)
        raise NotImplementedError("special-token layout depends on the ids")
    it = iter(soft_ids)
    soft_full = [next(it) if m == -1 else 0 for m in marks]
    return full, soft_full


def _soft_ids(prompt_segments):
    """Soft ids 1..N in template order (mixed_template.py:84-86 / :81-82)."""
    out, n = [], 0
    for seg in prompt_segments:
        if seg[0] == "soft":
            out.append(list(range(n + 1, n + seg[1] + 1)))
            n += seg[1]
        else:
            out.append(None)
    return out, n


def build_causal_inputs(tokenizer, prompt_segments: Sequence[Segment], drop_soft: bool = True):
    """``LMTokenizerWrapper.tokenize_one_example`` (lm.py:36-106), teacher_forcing=False, no EOS.

    Returns ``(input_ids, soft_token_ids, mask_pos)``: ``mask_pos`` is the index of the *last token
    before* ``{"mask"}`` (:62-67 sets ``loss_ids`` of the previous piece's last token and stops; every
    piece after the mask is dropped). ``drop_soft=True`` is OpenPrompt 1.0.1 as is: a
    ``{"soft": None}`` token's piece text is ``""`` (mixed_template.py:86, :189-190) and lm.py:56-57
    skips empty pieces, so **MixedTemplate soft tokens never reach a causal LM**.
    ``drop_soft=False`` keeps one position per soft token (input id 0, lm.py:76-77) — what OpenPrompt
    does for soft tokens with a non-empty surface text (``{"soft": "word"}``).
    """
    soft_lists, _ = _soft_ids(prompt_segments)
    ids, soft, mask_pos = [], [], None
    for seg, sl in zip(prompt_segments, soft_lists):
        if seg[0] == "mask":
            if not ids:
                raise ValueError("mask before any token")
            mask_pos = len(ids) - 1
            break
        if seg[0] == "soft":
            if drop_soft:
                continue
            ids += [0] * len(sl)
            soft += sl
        else:
            if len(seg[1]) == 0:  # :56-57
                continue
            t = _encode_text_piece(tokenizer, seg[1])
            ids += t
            soft += [0] * len(t)
    if mask_pos is None:
        raise ValueError("no mask in the template")
    n_before = len(ids)
    ids, soft = _add_special_tokens(tokenizer, ids, soft)  # :93
    # positions shift by the number of specials prepended (e.g. a BOS)
    marks = tokenizer.build_inputs_with_special_tokens([-1] * n_before)
    mask_pos = [k for k, m in enumerate(marks) if m == -1][mask_pos]
    return ids, soft, mask_pos


def build_t5_inputs(tokenizer, prompt_segments: Sequence[Segment], decode_from_pad: bool = True):
    """``T5TokenizerWrapper.tokenize_one_example`` (seq2seq.py:46-120), teacher_forcing=False.

    Encoder: every piece encoded on its own and concatenated; ``{"mask"}`` becomes
    ``tokenizer.additional_special_tokens_ids[0]`` (``<extra_id_0>``, :79-80), pieces after the mask
    are kept, each soft token is id 0 with its soft id (:91-92), then
    ``build_inputs_with_special_tokens`` appends ``</s>`` (:112, T5's tokenizer adds EOS).
    Decoder: ``[pad, <extra_id_0>]`` (:79, :123-125); the logits used are at decoder position 1
    (``loss_ids`` = [0, 1]), i.e. the prediction after ``<extra_id_0>``.
    Returns ``(encoder_ids, encoder_soft_ids, decoder_ids, decoder_pos)``.
    """
    soft_lists, _ = _soft_ids(prompt_segments)
    ids, soft, dec, loss, n_mask = [], [], [], [], 0
    for seg, sl in zip(prompt_segments, soft_lists):
        if seg[0] == "mask":
            m = tokenizer.additional_special_tokens_ids[n_mask]
            dec.append(m)
            loss.append(1)
            ids.append(m)
            soft.append(0)
            n_mask += 1
        elif seg[0] == "soft":
            ids += [0] * len(sl)
            soft += sl
        else:
            t = _encode_text_piece(tokenizer, seg[1])
            ids += t
            soft += [0] * len(t)
    if decode_from_pad:  # :123-125
        dec.insert(0, tokenizer.pad_token_id)
        loss.insert(0, 0)
    ids, soft = _add_special_tokens(tokenizer, ids, soft)
    if sum(loss) != 1:
        raise ValueError("exactly one mask expected")
    return ids, soft, dec, loss.index(1)


# --------------------------------------------------------------------------------------------
# End to end: PromptForClassification(plm, MixedTemplate, ManualVerbalizer)(batch)[0]
# --------------------------------------------------------------------------------------------

def _check_soft_rows(soft_rows, prompt_segments, d):
    _, n = _soft_ids(prompt_segments)
    w = _t(soft_rows, torch.float32)
    if w.shape != (n + 1, d):
        raise ValueError(f"soft_rows must be template.soft_embedding.weight, shape ({n + 1}, {d}) "
                         f"(row 0 unused), got {tuple(w.shape)}")
    return w


@torch.no_grad()
def score_causal(model, tokenizer, prompt_segments, soft_rows, classes_label_words, handler="first",
                 prefix=" ", drop_soft=True) -> np.ndarray:
    """One score per class for a causal LM (pipeline_base.py:285-302, :279-283 extract_at_mask):
    the vocabulary logits at ``mask_pos`` (the last token before the mask) through the verbalizer.
    ``classes_label_words``: per class its label words (``label_words_for_title``), before the prefix.
    See ``build_causal_inputs`` for ``drop_soft`` (True = OpenPrompt 1.0.1, soft tokens dropped)."""
    ids, soft, pos = build_causal_inputs(tokenizer, prompt_segments, drop_soft=drop_soft)
    emb = model.get_input_embeddings()
    w = _check_soft_rows(soft_rows, prompt_segments, emb.weight.shape[1]).to(emb.weight)
    x = _mixed_embeds_t(emb.weight, torch.tensor([ids]), torch.tensor([soft]), w)
    logits = model(inputs_embeds=x, attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0, pos]
    return verbalizer_scores(logits, tokenize_label_words(tokenizer, classes_label_words, prefix), handler)


@torch.no_grad()
def score_t5(model, tokenizer, prompt_segments, soft_rows, classes_label_words, handler="first",
             prefix=" ") -> np.ndarray:
    """One score per class for T5 (``T5ForConditionalGeneration``, e.g. Flan-T5): encoder input from
    ``build_t5_inputs`` (``... <extra_id_0> ... </s>``, soft rows spliced in), decoder
    ``<pad> <extra_id_0>``, logits at decoder position 1 through the verbalizer."""
    ids, soft, dec, pos = build_t5_inputs(tokenizer, prompt_segments)
    emb = model.get_input_embeddings()
    w = _check_soft_rows(soft_rows, prompt_segments, emb.weight.shape[1]).to(emb.weight)
    x = _mixed_embeds_t(emb.weight, torch.tensor([ids]), torch.tensor([soft]), w)
    out = model(inputs_embeds=x, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                decoder_input_ids=torch.tensor([dec]))
    return verbalizer_scores(out.logits[0, pos], tokenize_label_words(tokenizer, classes_label_words, prefix),
                             handler)
