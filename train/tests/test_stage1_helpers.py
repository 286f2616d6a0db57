import pytest

from delrec_train.data import load_dataset
from delrec_train.stage1 import build_examples, example_order


def test_example_order_is_a_permutation_per_epoch_and_resumable():
    n, bs = 7, 3
    seq = [i for step in range(7) for i in example_order(n, step, bs, seed=1)]  # 21 = 3 epochs
    for e in range(3):
        assert sorted(seq[e * n:(e + 1) * n]) == list(range(n))
    assert example_order(n, 4, bs, 1) == seq[12:15]  # step 4 alone = same as in the full run
    assert example_order(n, 0, bs, 2) != example_order(n, 0, bs, 1)


def test_build_examples_uses_teacher_top1(tiny_data):
    ds = load_dataset(tiny_data, name="toy", n_neg=5)
    top = {"users": {"1": [{"target": "7", "top1": "30"}, {"target": "5", "top1": "5"}]}}
    ex = build_examples(ds, top, ["1"], per_user=2)
    (e0, t0), (e1, t1) = ex
    assert e0.target == "7" and t0 == "30" and "30" in e0.candidates and "7" in e0.candidates
    assert len(e0.candidates) == 6 and e1.candidates.count("5") == 1
    with pytest.raises(ValueError, match="teacher target"):
        build_examples(ds, {"users": {"1": [{"target": "9", "top1": "30"}]}}, ["1"], 1)
    with pytest.raises(ValueError, match="train-per-user"):
        build_examples(ds, top, ["1"], per_user=3)
    with pytest.raises(KeyError):
        build_examples(ds, top, ["2"], per_user=1)
