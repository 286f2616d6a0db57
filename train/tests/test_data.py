import csv

import pytest

from delrec_train.data import (PURPOSE_VALID, DataError, item_title, load_dataset, load_inter,
                               load_items, write_catalog)
from delrec_train.teacher import write_recbole_inter


def ds_of(d, **kw):
    return load_dataset(d, name="toy", **kw)


def test_tie_rule_timestamp_then_file_order(tiny_data):
    ds = ds_of(tiny_data)
    # user 1: t=80:2, t=90:3, t=100: 5 (line 2) then 7 (line 5), t=120:9, t=130:11
    assert ds.seqs["1"] == ["2", "3", "5", "7", "9", "11"]
    assert ds.seqs["2"] == ["1", "4", "6", "8", "10"]


def test_leave_one_out_split(tiny_data):
    ds = ds_of(tiny_data, history_len=3)
    assert ds.users() == ["1", "2", "9"]  # user 3 has 2 interactions only
    assert ds.train_seq("1") == ["2", "3", "5", "7"]
    assert ds.valid_target("1") == "9" and ds.test_target("1") == "11"
    t = ds.test_example("1")
    assert t.target == "11" and t.history == ["5", "7", "9"]  # H=3 most recent, oldest first
    v = ds.valid_example("1")
    assert v.target == "9" and v.history == ["3", "5", "7"]
    tr = ds.train_examples("1", per_user=10)
    assert [(e.history, e.target) for e in tr] == [(["2", "3", "5"], "7"), (["2", "3"], "5"), (["2"], "3")]
    with pytest.raises(DataError, match="needs 3"):
        ds.test_example("3")


def test_history_shorter_than_h(tiny_data):
    ds = ds_of(tiny_data, history_len=10)
    assert ds.test_example("2").history == ["1", "4", "6", "8"]


def test_candidates(tiny_data):
    ds = ds_of(tiny_data, n_neg=19, seed=3)
    e = ds.test_example("1")
    c = e.candidates
    assert len(c) == 20 and len(set(c)) == 20
    assert "11" in c
    assert not (set(c) - {"11"}) & set(ds.seqs["1"])  # negatives never interacted
    assert all(x in ds.items for x in c)
    # deterministic for the same seed, different for another seed / purpose
    assert ds_of(tiny_data, n_neg=19, seed=3).test_example("1").candidates == c
    assert ds_of(tiny_data, n_neg=19, seed=4).test_example("1").candidates != c
    assert ds.candidates("1", "11", PURPOSE_VALID) != c
    # the target is not always first (shuffled)
    positions = {ds_of(tiny_data, n_neg=19, seed=s).test_example("1").candidates.index("11") for s in range(10)}
    assert len(positions) > 1


def test_candidates_include_teacher_top1(tiny_data):
    ds = ds_of(tiny_data, n_neg=5)
    c = ds.candidates("1", "7", 2, include=["30"])
    assert len(c) == 6 and "7" in c and "30" in c
    c2 = ds.candidates("1", "7", 2, include=["7"])  # top-1 == target: no duplicate
    assert len(c2) == 6 and c2.count("7") == 1


def test_not_enough_negatives(tiny_data):
    ds = ds_of(tiny_data, n_neg=50)
    with pytest.raises(DataError, match="never-interacted"):
        ds.test_example("1")


def test_titles_and_catalog(tiny_data, tmp_path):
    assert item_title("Usual   Suspects, The ", "1995") == "Usual Suspects, The (1995)"
    assert item_title("unkonwn", "unkonwn") == "unkonwn"
    assert item_title("X", "") == "X"
    ds = ds_of(tiny_data)
    assert ds.title("3") == "Movie 3, The (1993)"
    write_catalog(ds, tmp_path / "out" / "catalog.csv")
    with open(tmp_path / "out" / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0] == {"id": "1", "title": "Movie 1, The (1991)"} and len(rows) == 40


def test_popularity_uses_training_split_only(tiny_data):
    pop = ds_of(tiny_data).train_popularity()
    assert pop.get("11", 0) == 0 and pop.get("9", 0) == 0  # test / valid targets of user 1
    assert pop["1"] == 1  # user 2's first item; user 3 (too short) not counted


def test_unknown_item_ids(tiny_data):
    with open(tiny_data / "toy.inter", "a", encoding="utf-8") as f:
        f.write("1\t999\t4\t200\n")
    with pytest.raises(DataError, match=r"missing from the item file.*'999' \(line 44\)"):
        ds_of(tiny_data)


def test_missing_columns(tmp_path):
    (tmp_path / "a.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    with pytest.raises(DataError, match="missing column.*timestamp"):
        load_inter(tmp_path / "a.inter")
    (tmp_path / "a.item").write_text("item_id:token\ttitle:token_seq\n1\tX\n")
    with pytest.raises(DataError, match="missing column.*movie_title"):
        load_items(tmp_path / "a.item")


def test_malformed_lines(tmp_path):
    items = load_items(__import__("conftest").write_items(tmp_path / "x.item", 5))
    h = "user_id:token\titem_id:token\ttimestamp:float\n"
    (tmp_path / "e.inter").write_text(h + "1\t2\t3\n\n1\t3\t4\n")
    with pytest.raises(DataError, match=r"e.inter:3: empty line"):
        load_inter(tmp_path / "e.inter", items)
    (tmp_path / "f.inter").write_text(h + "1\t2\n")
    with pytest.raises(DataError, match=r"f.inter:2: 2 fields, header has 3"):
        load_inter(tmp_path / "f.inter", items)
    (tmp_path / "g.inter").write_text(h + "1\t2\tyesterday\n")
    with pytest.raises(DataError, match=r"g.inter:2: not a number"):
        load_inter(tmp_path / "g.inter", items)
    (tmp_path / "h.inter").write_text(h)
    with pytest.raises(DataError, match="no data lines"):
        load_inter(tmp_path / "h.inter", items)
    (tmp_path / "ok.inter").write_text(h + "1\t2\t3\r\n1\t3\t4\r\n")  # CRLF + final newline are fine
    assert len(load_inter(tmp_path / "ok.inter", items)) == 2
    (tmp_path / "d.item").write_text("item_id:token\tmovie_title:token_seq\n1\tA\n1\tB\n")
    with pytest.raises(DataError, match="duplicate item_id"):
        load_items(tmp_path / "d.item")
    with pytest.raises(DataError, match="no such file"):
        load_items(tmp_path / "nope.item")


def test_recbole_export_preserves_order(tiny_data, tmp_path):
    ds = ds_of(tiny_data)
    p = write_recbole_inter(ds, tmp_path / "rb")
    lines = p.read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    u1 = [ln.split("\t") for ln in lines[1:] if ln.startswith("1\t")]
    assert [r[1] for r in u1] == ds.seqs["1"] and [r[2] for r in u1] == [str(k) for k in range(6)]
    assert not any(ln.startswith("3\t") for ln in lines[1:])  # too-short users left out
