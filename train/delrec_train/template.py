"""The prompt template of docs/format.md and the token ids of its pieces.

A template holds literal text and the placeholders ``{soft:NAME}``, ``{history}``, ``{candidate}``
(``{{``/``}}`` are literal braces). The model input is: BOS (optional) + each piece in order, text
pieces tokenized on their own (no special tokens), soft prompts as input-embedding rows, the history
as ``item_prefix + title`` token runs joined by the separator's tokens, then the candidate's
``item_prefix + title`` tokens; the text after ``{candidate}`` is the terminator. A candidate's
score is the sum of ln p over its title tokens and the terminator tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TEMPLATE = "{soft:default}A user watched:{history}.\nThe user will next watch:{candidate}\n"
DEFAULT_ITEM_PREFIX = " "
DEFAULT_HISTORY_SEP = ","

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
            elif body == "candidate":
                parts.append(("candidate", ""))
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
                 history_sep: str = DEFAULT_HISTORY_SEP, bos: int | None = None):
        self.template = template
        self.parts = parse_template(template)
        self.item_prefix, self.history_sep, self.bos = item_prefix, history_sep, bos
        texts = [v for k, v in self.parts if k == "text"]
        ids = list(titles)
        strings = texts + [history_sep] + [item_prefix + titles[i] for i in ids]
        enc = tokenizer.encode_many(strings)
        if len(enc) != len(strings):
            raise RuntimeError(f"tokenizer returned {len(enc)} results for {len(strings)} strings")
        enc = [[int(t) for t in e] if s != "" else [] for s, e in zip(strings, enc)]
        self.text_tokens = enc[:len(texts)]
        self.sep_tokens = enc[len(texts)]
        self.item_tokens = {i: e for i, e in zip(ids, enc[len(texts) + 1:])}
        empty = [i for i, e in self.item_tokens.items() if not e]
        if empty:
            raise ValueError(f"items tokenize to nothing: {empty[:5]}")
        ci = [k for k, _ in self.parts].index("candidate")
        # map text piece index -> tokens
        ti = iter(self.text_tokens)
        self._piece_tokens = [next(ti) if k == "text" else None for k, _ in self.parts]
        self.terminator = [t for j in range(ci + 1, len(self.parts)) for t in self._piece_tokens[j]]

    def prefix(self, history: list[str]) -> list[Segment]:
        """Segments of all rows before the candidate."""
        segs: list[Segment] = []
        toks: list[int] = [] if self.bos is None or self.bos < 0 else [self.bos]
        for j, (kind, val) in enumerate(self.parts):
            if kind == "candidate":
                break
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

    def continuation(self, item: str) -> list[int]:
        """Scored tokens of a candidate: its title tokens + the terminator."""
        return self.item_tokens[item] + self.terminator
