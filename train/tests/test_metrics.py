import math

import pytest

from delrec_train.metrics import (evaluate_runtime, hr_at, metrics_from_ranks, mrr, ndcg_at, target_rank,
                                  top1_index)


def test_target_rank_and_ties():
    c = ["a", "b", "c", "d"]
    assert target_rank([0.1, 0.9, 0.5, 0.2], c, "b") == 1
    assert target_rank([0.1, 0.9, 0.5, 0.2], c, "a") == 4
    assert target_rank([0.5, 0.9, 0.5, 0.2], c, "c") == 3  # tie with "a", which comes first
    assert target_rank([0.5, 0.9, 0.5, 0.2], c, "a") == 2  # tie with "c", which comes later
    assert target_rank([float("nan"), 0.0, -1.0, -2.0], c, "a") == 4  # NaN = -inf
    with pytest.raises(ValueError):
        target_rank([1.0], c, "a")
    assert top1_index([0.5, 0.9, 0.9]) == 1


def test_metric_values_by_hand():
    assert hr_at(1, 1) == 1 and hr_at(2, 1) == 0 and hr_at(5, 5) == 1 and hr_at(6, 5) == 0
    assert ndcg_at(1, 5) == 1.0
    assert ndcg_at(3, 5) == pytest.approx(0.5)  # 1/log2(4)
    assert ndcg_at(7, 10) == pytest.approx(1 / 3)  # 1/log2(8)
    assert ndcg_at(7, 5) == 0.0
    assert mrr(4) == 0.25
    m = metrics_from_ranks([1, 3, 7, 20])
    assert m["HR@1"] == pytest.approx(0.25)
    assert m["HR@5"] == pytest.approx(0.5)
    assert m["HR@10"] == pytest.approx(0.75)
    assert m["NDCG@5"] == pytest.approx((1 + 0.5) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 7 + 1 / 20) / 4)
    assert m["users"] == 4
    assert math.isnan(metrics_from_ranks([])["HR@1"])


def test_runtime_results_join():
    reqs = [{"user": "1", "history": ["9"], "candidates": ["a", "b", "c"], "target": "b"},
            {"user": "2", "history": ["9"], "candidates": ["x", "y", "z"], "target": "z"},
            {"user": "3", "history": ["9"], "candidates": ["x", "y", "z"], "target": "z"}]
    res = [  # ranked, not in candidate order
        {"user": "1", "items": [{"id": "b", "score": -1.0, "logprob": -1.0, "n_tokens": 2},
                                {"id": "a", "score": -2.0, "logprob": -2.0, "n_tokens": 2},
                                {"id": "c", "score": -3.0, "logprob": -3.0, "n_tokens": 2}], "rank_ms": 10.0},
        {"user": "2", "items": [{"id": "x", "score": -1.0, "n_tokens": 1}, {"id": "y", "score": -2.0, "n_tokens": 1},
                                {"id": "z", "score": -3.0, "n_tokens": 1}], "rank_ms": 30.0},
    ]
    ref = {"1": {"candidates": ["a", "b", "c"], "rows": {"llm_soft": {"scores": [-2.1, -1.0, -3.0], "n_tokens": [2, 2, 2]}}},
           "2": {"candidates": ["x", "y", "z"], "rows": {"llm_soft": {"scores": [-3.0, -2.0, -1.0], "n_tokens": [1, 1, 2]}}}}
    m = evaluate_runtime(reqs, res, ref, "llm_soft")
    assert m["users"] == 2 and m["missing_users"] == 1
    assert m["HR@1"] == 0.5 and m["MRR"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["rank_ms_mean"] == 20.0
    assert m["top1_agreement_vs_llm_soft"] == 0.5
    assert m["score_absdiff_max"] == pytest.approx(2.0)
    assert m["users_with_token_count_mismatch"] == 1
    bad = [{"user": "1", "items": [{"id": "a", "score": 0.0}]}]
    with pytest.raises(ValueError, match="lacks candidates"):
        evaluate_runtime(reqs[:1], bad)
