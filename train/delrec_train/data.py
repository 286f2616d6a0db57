"""MovieLens (RecBole atomic files) loading, chronological leave-one-out split and candidates.

File format (RecBole "atomic files"): UTF-8, tab-separated, a header line whose fields are
``name:type`` (``user_id:token``, ``timestamp:float``, ``movie_title:token_seq`` ...). Required
columns: ``.inter`` -> user_id, item_id, timestamp (rating is read when present, not needed);
``.item`` -> item_id, movie_title (release_year optional). A final newline is fine; any other empty
line, a line with the wrong number of fields, a non-numeric timestamp, an item id of ``.inter``
missing from ``.item``, or a duplicate ``.item`` id is an error naming file and line.

**Ordering (tie rule)**: each user's interactions are sorted by (timestamp, line number in the
``.inter`` file); interactions with the same timestamp keep their file order. MovieLens-100k has
many same-second ratings (about a quarter of all lines share a (user, timestamp) with another), so
this rule decides a lot and every consumer (RecBole teacher included) must use it.

**Split**: chronological leave-one-out per user: last item = test target, second last =
validation target, the rest = training split. A user needs at least 3 interactions. An example's
history is the ``H`` (default 10) items immediately before its target, oldest first.

**Candidates**: the target plus ``n_neg`` (default 19) items the user never interacted with (in
any split), drawn without replacement from the catalog items that occur in ``.inter`` (catalog
order) with ``numpy.random.default_rng([seed, crc32(user id), purpose])`` where purpose is 0 for
test, 1 for validation and 2 + j for the j-th training example; the list of 20 is then shuffled
with the same generator (so the target's position carries no information and ties broken by
candidate order are fair). For training examples (stage 1) the teacher's top-1 item, when it is not
the target, replaces one negative (see :func:`candidates_with`).

**Titles**: ``movie_title`` with RecBole's token_seq escaping undone (a token_seq is a
space-separated token list: runs of whitespace collapse to one space, ends are stripped), plus
``" (year)"`` when ``release_year`` is a number (MovieLens item 267 has the placeholder
"unkonwn" and gets no year).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .paths import ml100k_dir


class DataError(ValueError):
    """A malformed or inconsistent input file."""


PURPOSE_TEST = 0
PURPOSE_VALID = 1
PURPOSE_TRAIN = 2  # + j for the j-th training example of a user


def _read_atomic(path: Path, required: list[str]) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """-> ({column name: index}, [(line number, fields)]). Line numbers are 1-based (header = 1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # final newline
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty file or empty header line")
    header = lines[0].split("\t")
    cols: dict[str, int] = {}
    for i, h in enumerate(header):
        name = h.split(":", 1)[0].strip()
        if not name:
            raise DataError(f"{path}:1: empty column name in header")
        if name in cols:
            raise DataError(f"{path}:1: duplicate column {name!r}")
        cols[name] = i
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header has: {', '.join(cols) or 'nothing'}; "
                        f"expected RecBole atomic header fields like 'user_id:token')")
    rows = []
    for n, ln in enumerate(lines[1:], start=2):
        if not ln.strip():
            raise DataError(f"{path}:{n}: empty line")
        parts = ln.split("\t")
        if len(parts) != len(header):
            raise DataError(f"{path}:{n}: {len(parts)} fields, header has {len(header)}")
        rows.append((n, parts))
    if not rows:
        raise DataError(f"{path}: no data lines")
    return cols, rows


def clean_token_seq(s: str) -> str:
    return " ".join(s.split())


def item_title(title: str, year: str | None) -> str:
    t = clean_token_seq(title)
    y = (year or "").strip()
    return f"{t} ({y})" if y.isdigit() else t


@dataclass
class Item:
    id: str
    title: str  # as given to the LLM (with year)
    raw_title: str
    year: str | None


def load_items(path: Path) -> dict[str, Item]:
    """item id -> Item, in file order."""
    cols, rows = _read_atomic(path, ["item_id", "movie_title"])
    yi = cols.get("release_year")
    items: dict[str, Item] = {}
    for n, p in rows:
        iid = p[cols["item_id"]].strip()
        if not iid:
            raise DataError(f"{path}:{n}: empty item_id")
        if iid in items:
            raise DataError(f"{path}:{n}: duplicate item_id {iid!r}")
        year = p[yi] if yi is not None else None
        title = item_title(p[cols["movie_title"]], year)
        if not title:
            raise DataError(f"{path}:{n}: empty movie_title for item {iid!r}")
        items[iid] = Item(iid, title, p[cols["movie_title"]], year)
    return items


@dataclass
class Inter:
    user: str
    item: str
    timestamp: float
    line: int
    rating: float | None = None


def load_inter(path: Path, items: dict[str, Item] | None = None) -> list[Inter]:
    cols, rows = _read_atomic(path, ["user_id", "item_id", "timestamp"])
    ri = cols.get("rating")
    out = []
    unknown: list[str] = []
    for n, p in rows:
        u, i = p[cols["user_id"]].strip(), p[cols["item_id"]].strip()
        if not u or not i:
            raise DataError(f"{path}:{n}: empty user_id or item_id")
        try:
            ts = float(p[cols["timestamp"]])
            r = float(p[ri]) if ri is not None and p[ri].strip() else None
        except ValueError as e:
            raise DataError(f"{path}:{n}: not a number ({e})") from None
        if items is not None and i not in items:
            unknown.append(f"{i!r} (line {n})")
        out.append(Inter(u, i, ts, n, r))
    if unknown:
        raise DataError(f"{path}: {len(unknown)} interaction(s) with item ids missing from the item file, "
                        f"first: {', '.join(unknown[:5])}")
    return out


def user_sequences(inters: list[Inter]) -> dict[str, list[str]]:
    """user -> item ids sorted by (timestamp, line number). Users in order of first appearance."""
    by_user: dict[str, list[Inter]] = {}
    for x in inters:
        by_user.setdefault(x.user, []).append(x)
    return {u: [x.item for x in sorted(v, key=lambda x: (x.timestamp, x.line))] for u, v in by_user.items()}


def user_sort_key(u: str):
    return (0, int(u), "") if u.isdigit() else (1, 0, u)


@dataclass
class Example:
    user: str
    history: list[str]  # oldest first, at most H items
    target: str
    candidates: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    items: dict[str, Item]
    seqs: dict[str, list[str]]  # full chronological sequence per user
    history_len: int = 10
    n_neg: int = 19
    seed: int = 0

    # ---- split -------------------------------------------------------------------------------
    def users(self) -> list[str]:
        """Users with at least 3 interactions, numeric ids in numeric order."""
        return sorted((u for u, s in self.seqs.items() if len(s) >= 3), key=user_sort_key)

    def train_seq(self, user: str) -> list[str]:
        return self.seqs[user][:-2]

    def valid_target(self, user: str) -> str:
        return self.seqs[user][-2]

    def test_target(self, user: str) -> str:
        return self.seqs[user][-1]

    def _check(self, user: str):
        if len(self.seqs[user]) < 3:
            raise DataError(f"user {user!r} has {len(self.seqs[user])} interactions; leave-one-out needs 3")

    def example_at(self, user: str, t: int) -> tuple[list[str], str]:
        """History (H items before position t, oldest first) and target seqs[user][t]."""
        s = self.seqs[user]
        return s[max(0, t - self.history_len):t], s[t]

    def test_example(self, user: str) -> Example:
        self._check(user)
        h, tgt = self.example_at(user, len(self.seqs[user]) - 1)
        return Example(user, h, tgt, self.candidates(user, tgt, PURPOSE_TEST))

    def valid_example(self, user: str) -> Example:
        self._check(user)
        h, tgt = self.example_at(user, len(self.seqs[user]) - 2)
        return Example(user, h, tgt, self.candidates(user, tgt, PURPOSE_VALID))

    def train_examples(self, user: str, per_user: int = 1) -> list[Example]:
        """The last ``per_user`` positions of the training split (each with >= 1 history item);
        candidates are filled in by the caller (they depend on the teacher's top-1)."""
        self._check(user)
        n = len(self.seqs[user]) - 2
        out = []
        for j in range(per_user):
            t = n - 1 - j
            if t < 1:
                break
            h, tgt = self.example_at(user, t)
            out.append(Example(user, h, tgt))
        return out

    # ---- candidates --------------------------------------------------------------------------
    def item_pool(self) -> list[str]:
        if not hasattr(self, "_pool"):
            seen = {i for s in self.seqs.values() for i in s}
            self._pool = [i for i in self.items if i in seen]
        return self._pool

    def rng(self, user: str, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(user.encode("utf-8")), purpose])

    def candidates(self, user: str, target: str, purpose: int, include: list[str] = ()) -> list[str]:
        """target + ``include`` + random never-interacted items, n_neg + 1 in all, shuffled."""
        rng = self.rng(user, purpose)
        interacted = set(self.seqs[user])
        pool = [i for i in self.item_pool() if i not in interacted]
        fixed = [target] + [i for i in dict.fromkeys(include) if i != target]
        k = self.n_neg + 1 - len(fixed)
        if k < 0:
            raise ValueError("more fixed candidates than n_neg + 1")
        pool = [i for i in pool if i not in fixed]
        if len(pool) < k:
            raise DataError(f"user {user!r}: only {len(pool)} never-interacted items, {k} negatives needed")
        neg = [pool[j] for j in rng.choice(len(pool), size=k, replace=False)]
        cands = fixed + neg
        return [cands[j] for j in rng.permutation(len(cands))]

    def candidates_with(self, ex: Example, purpose: int, teacher_top1: str | None) -> list[str]:
        inc = [teacher_top1] if teacher_top1 else []
        return self.candidates(ex.user, ex.target, purpose, inc)

    # ---- statistics ----------------------------------------------------------------------------
    def train_popularity(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for u in self.users():
            for i in self.train_seq(u):
                c[i] = c.get(i, 0) + 1
        return c

    def title(self, item: str) -> str:
        return self.items[item].title


def load_dataset(data_dir: Path | None = None, name: str = "ml-100k", history_len: int = 10,
                 n_neg: int = 19, seed: int = 0) -> Dataset:
    d = Path(data_dir) if data_dir else ml100k_dir()
    items = load_items(d / f"{name}.item")
    inters = load_inter(d / f"{name}.inter", items)
    return Dataset(items, user_sequences(inters), history_len, n_neg, seed)


def write_catalog(ds: Dataset, path: Path) -> None:
    """``id,title`` CSV (csv module quoting) in item-file order, for ``delrec-convert``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "title"])
        for it in ds.items.values():
            w.writerow([it.id, it.title])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m delrec_train.data",
                                 description="Load MovieLens, write catalog.csv and print split statistics.")
    ap.add_argument("--data-dir", type=Path, default=None, help="folder with NAME.inter/NAME.item (default: asset cache)")
    ap.add_argument("--name", default="ml-100k")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default <repo>/target/delrec-train)")
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from .paths import work_dir
    out = args.out or work_dir()
    ds = load_dataset(args.data_dir, args.name, args.history, seed=args.seed)
    write_catalog(ds, out / "catalog.csv")
    users = ds.users()
    n_int = sum(len(s) for s in ds.seqs.values())
    lens = [len(ds.example_at(u, len(ds.seqs[u]) - 1)[0]) for u in users]
    stats = {"users": len(users), "items": len(ds.items), "interactions": n_int,
             "train_interactions": sum(len(ds.train_seq(u)) for u in users),
             "mean_test_history": float(np.mean(lens)), "catalog": str(out / "catalog.csv")}
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
