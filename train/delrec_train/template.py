"""The prompt template of docs/format.md and the token ids of its pieces.

A template holds literal text and the placeholders ``{soft:NAME}``, ``{history}``, ``{candidate}``,
``{candidates}``, ``{mask}`` (``{{``/``}}`` are literal braces), of one of two kinds:

- **title** (``{candidate}``): the model input is BOS (optional) + each piece in order, text
  pieces tokenized on their own (no special tokens), soft prompts as input-embedding rows, the
  history as ``item_prefix + title`` token runs joined by the separator's tokens, then the
  candidate's ``item_prefix + title`` tokens; the text after ``{candidate}`` is the terminator. A
  candidate's score is the sum of ln p over its title tokens and the terminator tokens.
- **mask** (``{mask}``, last; DELRec as published): the same rows up to ``{mask}``, with
  ``{candidates}`` listing the request's candidates joined by the candidates separator's tokens;
  the verbalizer (:class:`delrec_train.llm.VerbalizerScorer`) reads the prediction after them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TEMPLATE = "{soft:default}A user watched:{history}.\nThe user will next watch:{candidate}\n"
DEFAULT_ITEM_PREFIX = " "
DEFAULT_HISTORY_SEP = ","
DEFAULT_CANDIDATES_SEP = ", "
# DELRec's prompt (prompt_construction/LSR.txt) cut to what fits SmolLM2's CPU budget: the soft
# tokens mid-prompt, after the history, and the mask last (a causal LM predicts at the end).
DEFAULT_MASK_TEMPLATE = ("A user watched:{history}.\nThe pattern of the SASRec model is:{soft:default}.\n"
                         "The user will next watch:{mask}")

_SOFT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def parse_template(template: str) -> list[tuple[str, str]]:
    """-> [(kind, value)], kind in text/soft/history/candidate; adjacent text merged."""
    parts: list[tuple[str, str]] = []
    buf: list[str] = []
    i, n = 0, len(template)

    def flush():
        if buf:
            parts.append(("text", "".join(buf)))
            buf.clear()

    while i < n:
        c = template[i]
        if template.startswith("{{", i):
            buf.append("{")
            i += 2
        elif template.startswith("}}", i):
            buf.append("}")
            i += 2
        elif c == "{":
            j = template.find("}", i)
            if j < 0:
                raise ValueError(f"template: unclosed '{{' at offset {i}")
            body = template[i + 1:j]
            flush()
            if body == "history":
                parts.append(("history", ""))
            elif body in ("candidate", "candidates", "mask"):
                parts.append((body, ""))
            elif body.startswith("soft:") and _SOFT_NAME.fullmatch(body[5:]):
                parts.append(("soft", body[5:]))
            else:
                raise ValueError(f"template: unknown placeholder {{{body}}} (use {{{{ and }}}} for literal braces)")
            i = j + 1
        elif c == "}":
            raise ValueError(f"template: unpaired '}}' at offset {i}")
        else:
            buf.append(c)
            i += 1
    flush()
    kinds = [k for k, _ in parts]
    if kinds.count("history") != 1:
        raise ValueError("template must contain {history} exactly once")
    if "mask" in kinds:  # a mask template (docs/format.md), on a decoder-only model
        if kinds.count("mask") != 1 or "candidate" in kinds or kinds.count("candidates") > 1:
            raise ValueError("a mask template has {mask} once, at most one {candidates} and no {candidate}")
        if kinds[-1] != "mask":
            raise ValueError("{mask} must be the last piece: a causal LM predicts at the end of its input")
        return parts
    if "candidates" in kinds:
        raise ValueError("{candidates} belongs in a mask template (one with {mask})")
    if kinds.count("candidate") != 1:
        raise ValueError("template must contain {candidate} exactly once")
    ci = kinds.index("candidate")
    if kinds.index("history") > ci:
        raise ValueError("{history} must come before {candidate}")
    if any(k != "text" for k in kinds[ci + 1:]):
        raise ValueError("only literal text may follow {candidate}")
    return parts


def without_soft(template: str) -> str:
    """The same template with every ``{soft:NAME}`` piece removed (zero-shot baseline)."""
    out = []
    for kind, val in parse_template(template):
        if kind == "text":
            out.append(val.replace("{", "{{").replace("}", "}}"))
        elif kind == "soft":
            continue
        else:
            out.append("{" + kind + "}")
    return "".join(out)


def is_mask_template(template: str) -> bool:
    return any(k == "mask" for k, _ in parse_template(template))


def soft_names(template: str) -> list[str]:
    return [v for k, v in parse_template(template) if k == "soft"]


@dataclass
class Segment:
    """One run of prefix rows: token ids, or a soft prompt by name."""
    kind: str  # "tokens" | "soft"
    tokens: list[int] | None = None
    soft: str | None = None


class PromptTokens:
    """Token ids of every template piece and catalog item, from one tokenizer call.

    ``tokenizer.encode_many(list[str]) -> list[list[int]]`` (no special tokens)."""

    def __init__(self, template: str, titles: dict[str, str], tokenizer, item_prefix: str = DEFAULT_ITEM_PREFIX,
                 history_sep: str = DEFAULT_HISTORY_SEP, bos: int | None = None,
                 candidates_sep: str = DEFAULT_CANDIDATES_SEP, label_words=None, label_prefix: str = " "):
        """``label_words`` (mask templates): title -> the item's label words before ``label_prefix``
        (e.g. :func:`label_words_title_no_year`); their tokens are ``label_tokens[item]``."""
        self.template = template
        self.parts = parse_template(template)
        self.item_prefix, self.history_sep, self.bos = item_prefix, history_sep, bos
        self.candidates_sep = candidates_sep
        self.is_mask = any(k == "mask" for k, _ in self.parts)
        texts = [v for k, v in self.parts if k == "text"]
        ids = list(titles)
        words = {i: label_words(titles[i]) for i in ids} if self.is_mask and label_words else {}
        word_strings = [label_prefix + w for i in ids for w in words.get(i, [])]
        strings = texts + [history_sep, candidates_sep] + [item_prefix + titles[i] for i in ids] + word_strings
        enc = tokenizer.encode_many(strings)
        if len(enc) != len(strings):
            raise RuntimeError(f"tokenizer returned {len(enc)} results for {len(strings)} strings")
        enc = [[int(t) for t in e] if s != "" else [] for s, e in zip(strings, enc)]
        self.text_tokens = enc[:len(texts)]
        self.sep_tokens = enc[len(texts)]
        self.candidates_sep_tokens = enc[len(texts) + 1]
        base = len(texts) + 2
        self.item_tokens = {i: e for i, e in zip(ids, enc[base:base + len(ids)])}
        empty = [i for i, e in self.item_tokens.items() if not e]
        if empty:
            raise ValueError(f"items tokenize to nothing: {empty[:5]}")
        it = iter(enc[base + len(ids):])
        self.label_tokens = {i: [next(it) for _ in words[i]] for i in ids} if words else {}
        if any(not t for ws in self.label_tokens.values() for t in ws):
            raise ValueError("a label word tokenizes to nothing")
        # map text piece index -> tokens
        ti = iter(self.text_tokens)
        self._piece_tokens = [next(ti) if k == "text" else None for k, _ in self.parts]
        if self.is_mask:
            self.terminator = []
        else:
            ci = [k for k, _ in self.parts].index("candidate")
            self.terminator = [t for j in range(ci + 1, len(self.parts)) for t in self._piece_tokens[j]]

    def prefix(self, history: list[str], candidates: list[str] | None = None) -> list[Segment]:
        """Segments of all rows before the candidate (title template) or the mask (mask template;
        ``candidates`` fill ``{candidates}``)."""
        segs: list[Segment] = []
        toks: list[int] = [] if self.bos is None or self.bos < 0 else [self.bos]
        for j, (kind, val) in enumerate(self.parts):
            if kind in ("candidate", "mask"):
                break
            if kind == "candidates":
                if not candidates:
                    raise ValueError("the template lists {candidates}: a request needs at least one")
                for n, c in enumerate(candidates):
                    if n > 0:
                        toks.extend(self.candidates_sep_tokens)
                    toks.extend(self.item_tokens[c])
                continue
            if kind == "text":
                toks.extend(self._piece_tokens[j])
            elif kind == "soft":
                if toks:
                    segs.append(Segment("tokens", toks))
                    toks = []
                segs.append(Segment("soft", soft=val))
            elif kind == "history":
                for n, h in enumerate(history):
                    if n > 0:
                        toks.extend(self.sep_tokens)
                    toks.extend(self.item_tokens[h])
        if toks:
            segs.append(Segment("tokens", toks))
        return segs

    def lists_candidates(self) -> bool:
        return any(k == "candidates" for k, _ in self.parts)

    def continuation(self, item: str) -> list[int]:
        """Scored tokens of a candidate: its title tokens + the terminator."""
        return self.item_tokens[item] + self.terminator


def strip_year(title: str) -> str:
    """``title`` without a trailing ``" (YYYY)"`` (the runtime's ``format::verbalizer::strip_year``)."""
    return title[:-7] if re.fullmatch(r" \([0-9]{4}\)", title[-7:]) else title


def label_words_title_no_year(title: str) -> list[str]:
    """The pack's ``title+no-year`` rule: the title and the title without its year, both kept when equal."""
    return [title, strip_year(title)]


def label_words_title(title: str) -> list[str]:
    return [title]


LABEL_RULES = {"title+no-year": label_words_title_no_year, "title": label_words_title}
