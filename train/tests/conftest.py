import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write_items(path: Path, n: int = 40, extra: str = "") -> Path:
    lines = [ITEM_HEADER]
    for i in range(1, n + 1):
        lines.append(f"{i}\tMovie  {i}, The\t{1990 + i % 10}\tDrama\n")
    path.write_text("".join(lines) + extra, encoding="utf-8")
    return path


@pytest.fixture
def tiny_data(tmp_path):
    """40 items; user 1: 6 interactions with a timestamp tie; user 2: 5; user 3: 2 (too short);
    user 9 watched items 12..40 (so that every item occurs in the interactions)."""
    write_items(tmp_path / "toy.item")
    rows = [
        ("1", "5", 100), ("2", "1", 50), ("1", "3", 90), ("1", "7", 100),  # 5 before 7 at t=100 (file order)
        ("1", "2", 80), ("2", "4", 60), ("1", "9", 120), ("1", "11", 130),
        ("2", "6", 70), ("2", "8", 80), ("2", "10", 90), ("3", "1", 10), ("3", "2", 20),
    ] + [("9", str(i), 1000 + i) for i in range(12, 41)]
    with open(tmp_path / "toy.inter", "w", encoding="utf-8") as f:
        f.write(INTER_HEADER)
        for u, i, t in rows:
            f.write(f"{u}\t{i}\t4\t{t}\n")
    return tmp_path
