"""The generated Python bindings against a real model and pack, with the `delrec` CLI as the
reference (the checks of bindings/kotlin/tests/DelrecTest.kt, in Python)."""

import gc
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import delrec
from delrec import (BadFileKind, BadRequestKind, Backend, CancelToken, DelrecError, Engine, KvType, Plan,
                    RankRequest, RecommendRequest, Resource, ScoringMode)
from conftest import (ADAPTER_PACK, CATALOG, CATALOG_CSV, HISTORY, IDS, MODEL, OTHER_PACK, PACK, SEQ_PACK,
                      assert_matches, assert_sorted, cli_rank, cli_recommend, config)


# --- the package ---------------------------------------------------------------------------------


def test_the_package_loads_its_own_library():
    here = os.path.dirname(delrec.__file__)
    assert os.path.isfile(os.path.join(here, "libdelrec_ffi.so")), os.listdir(here)
    assert os.path.dirname(delrec.delrec_ffi.__file__) == here
    for name in ("Engine", "Base", "Session", "CancelToken", "RankRequest", "DelrecError", "devices",
                 "default_engine_config", "install_file", "ClosedError", "engine_config"):
        assert name in delrec.__all__ and hasattr(delrec, name), name


def test_default_engine_config_mirrors_the_runtime_defaults():
    c = delrec.default_engine_config()
    assert delrec.EngineConfig() == c, (delrec.EngineConfig(), c)
    assert (c.context_size, c.batch_size, c.max_sequences, c.threads) == (2048, 512, 32, 0), c
    # The two enums are None (= AUTO, F16) until an engine resolves them.
    assert c.kv_type is None and c.flash_attention and c.verify_checksum and c.digest_cache_dir is None, c
    assert c.backend is None and c.gpu_layers == -1, c
    with Engine.open(MODEL, PACK, delrec.EngineConfig(threads=2)) as e:
        assert e.config() == delrec.engine_config(threads=2, backend=Backend.AUTO, kv_type=KvType.F16), e.config()
    with pytest.raises(DelrecError.BadRequest) as neg:
        Engine.open(MODEL, PACK, delrec.EngineConfig(max_contexts=-1))
    assert neg.value.kind == BadRequestKind.INVALID_ARGUMENT and neg.value.field == "max_contexts", neg.value


def test_engine_config_changes_fields_and_refuses_unknown_names():
    c = delrec.engine_config(threads=3, kv_type=KvType.F32)
    assert c.threads == 3 and c.kv_type == KvType.F32
    d = delrec.default_engine_config()
    assert c.context_size == d.context_size and c.batch_size == d.batch_size
    with pytest.raises(TypeError, match="no_such_field"):
        delrec.engine_config(no_such_field=1)


# --- devices and backends ------------------------------------------------------------------------


def test_devices_and_the_backend_that_ran():
    found = delrec.devices()
    assert any(d.backend == Backend.CPU and not d.offloads for d in found), found
    with Engine.open(MODEL, PACK, config(backend=Backend.CPU)) as cpu:
        info = cpu.backend()
        assert (info.kind, info.requested, info.device, info.gpu_layers, info.fell_back) == \
            (Backend.CPU, Backend.CPU, None, 0, False), info
        assert cpu.rank(RankRequest(history=HISTORY, top_k=3)).stats.backend == Backend.CPU


def test_a_missing_gpu_backend_is_an_error_unless_the_cpu_may_run_instead():
    if any(d.backend == Backend.METAL for d in delrec.devices()):
        pytest.skip("this build has Metal")
    with pytest.raises(DelrecError.BadRequest) as e:
        Engine.open(MODEL, PACK, config(backend=Backend.METAL))
    assert e.value.kind == BadRequestKind.BACKEND_UNAVAILABLE and e.value.field == "backend", e.value
    with Engine.open(MODEL, PACK, config(backend=Backend.METAL, cpu_fallback=True)) as fb:
        info = fb.backend()
        assert info.kind == Backend.CPU and info.requested == Backend.METAL and info.fell_back, info


# --- the catalog ---------------------------------------------------------------------------------


def test_catalog_lookups(engine):
    assert engine.catalog_size() == len(IDS)
    for item_id, title in CATALOG:
        assert engine.item_title(item_id) == title
    item = engine.item(CATALOG[0][0])
    assert (item.id, item.index, item.title) == (CATALOG[0][0], 0, CATALOG[0][1]), item
    assert engine.item_at(0) == item
    with pytest.raises(DelrecError.BadRequest) as e:
        engine.item_at(len(IDS))
    assert e.value.kind == BadRequestKind.INVALID_ARGUMENT and e.value.field == "index", e.value
    assert "out of range" in e.value.reason
    with pytest.raises(DelrecError.BadRequest) as u:
        engine.item_title("no-such-item")
    assert u.value.kind == BadRequestKind.UNKNOWN_ITEM and u.value.item_id == "no-such-item", u.value
    assert engine.soft_prompts() == ["default"]
    assert engine.config() == config(backend=Backend.AUTO, kv_type=KvType.F16)


# --- ranking equals the CLI ----------------------------------------------------------------------


def test_whole_catalog_is_sorted_and_equal_to_the_cli(engine):
    r = engine.rank(RankRequest(history=HISTORY))
    assert len(r.items) == len(IDS)
    assert_sorted(r)
    assert_matches(r, cli_rank(HISTORY))
    assert r.stats.candidates == len(IDS) and r.stats.decode_calls > 0, r.stats
    mode = engine.scoring_mode()
    for it in r.items:
        assert abs(it.mean_logprob - it.logprob / it.n_tokens) < 1e-9, it
        assert it.score == (it.logprob if mode == ScoringMode.SUM else it.mean_logprob), (it, mode)


def test_candidates_and_top_k_equal_the_cli(engine):
    history = ["m005", "m001", "m009"]
    cands = ["m010", "m003", "m020", "m007", "m030"]
    r = engine.rank(RankRequest(history=history, candidates=cands, top_k=3))
    assert len(r.items) == 3
    assert_sorted(r)
    assert_matches(r, cli_rank(history, cands, 3))


def test_naive_plan_equals_the_cli_naive_plan(engine):
    cands = IDS[:6]
    r = engine.rank(RankRequest(history=HISTORY, candidates=cands, plan=Plan.NAIVE))
    assert_matches(r, cli_rank(HISTORY, cands, naive=True))


def test_exhaustive_top_k_equals_pruned_top_k(exact):
    pruned = exact.rank(RankRequest(history=HISTORY, top_k=5))
    full = exact.rank(RankRequest(history=HISTORY, top_k=5, exhaustive=True))
    assert len(pruned.items) == 5
    assert_matches(pruned, [(i.id, i.score) for i in full.items])


def test_naive_plan_equals_the_shared_prefix_plan(exact):
    shared = exact.rank(RankRequest(history=HISTORY, candidates=IDS[:8]))
    naive = exact.rank(RankRequest(history=HISTORY, candidates=IDS[:8], plan=Plan.NAIVE))
    assert_matches(naive, [(i.id, i.score) for i in shared.items])


def test_exclude_history_leaves_the_history_out(engine):
    r = engine.rank(RankRequest(history=HISTORY, exclude_history=True))
    ids = [i.id for i in r.items]
    assert len(ids) == len(IDS) - len(HISTORY) and not set(ids) & set(HISTORY), ids


# --- sessions ------------------------------------------------------------------------------------


def test_a_session_ranks_like_the_engine_and_reuses_its_prefix(engine):
    with engine.session(None) as s:
        for h in HISTORY:
            s.push(h)
        assert s.history() == HISTORY
        first = s.rank(RankRequest(top_k=10))
        assert_matches(first, [(i.id, i.score) for i in engine.rank(RankRequest(history=HISTORY, top_k=10)).items])
        s.push("m003")
        second = s.rank(RankRequest())
        assert second.stats.prefix_reused > 0, second.stats
        assert_matches(second, cli_rank(HISTORY + ["m003"]))
        s.set_history(["m004"])
        assert s.history() == ["m004"]
        assert_matches(s.rank(RankRequest()), cli_rank(["m004"]))
        with pytest.raises(DelrecError.BadRequest) as e:
            s.push("m999")
        assert e.value.kind == BadRequestKind.UNKNOWN_ITEM and e.value.item_id == "m999", e.value
        assert s.history() == ["m004"], "a rejected push changed the history"


def test_a_session_with_an_unknown_soft_prompt_is_refused(engine):
    with pytest.raises(DelrecError.BadRequest) as e:
        engine.session("nope")
    assert e.value.kind == BadRequestKind.UNKNOWN_SOFT_PROMPT and e.value.field == "nope", e.value
    assert "nope" in e.value.reason and "default" in e.value.reason, e.value.reason


# --- threads -------------------------------------------------------------------------------------


def test_concurrent_ranks_on_one_engine_agree(engine):
    want = [(i.id, i.score) for i in engine.rank(RankRequest(history=HISTORY)).items]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: engine.rank(RankRequest(history=HISTORY)), range(4)))
    for r in results:
        assert_matches(r, want, tol=1e-9)


def test_concurrent_sessions_each_rank_their_own_history():
    histories = [["m001"], ["m002", "m003"], ["m004", "m005", "m006"], ["m007"]]
    # One context per session, so that none waits for another's.
    with Engine.open(MODEL, PACK, config(max_contexts=len(histories))) as e:
        want = {tuple(h): [(i.id, i.score) for i in e.rank(RankRequest(history=h, top_k=5)).items]
                for h in histories}
        barrier = threading.Barrier(len(histories))

        def run(h):
            with e.session(None) as s:
                barrier.wait(60)  # every session open at once
                s.set_history(h)
                return h, s.rank(RankRequest(top_k=5))

        with ThreadPoolExecutor(len(histories)) as pool:
            for h, r in pool.map(run, histories):
                assert_matches(r, want[tuple(h)])


# --- bad input: the right error class with its fields --------------------------------------------


def test_unknown_history_id_is_bad_request_unknown_item(engine):
    with pytest.raises(DelrecError.BadRequest) as e:
        engine.rank(RankRequest(history=["m001", "m999"]))
    assert e.value.kind == BadRequestKind.UNKNOWN_ITEM and e.value.item_id == "m999", e.value
    assert "m999" in e.value.reason and "m999" in str(e.value)


def test_unknown_candidate_id_is_bad_request_unknown_item(engine):
    with pytest.raises(DelrecError.BadRequest) as e:
        engine.rank(RankRequest(history=HISTORY, candidates=["m003", "zzz"]))
    assert e.value.kind == BadRequestKind.UNKNOWN_ITEM and e.value.item_id == "zzz", e.value


def test_empty_history_is_bad_request_empty_history(engine):
    with pytest.raises(DelrecError.BadRequest) as e:
        engine.rank(RankRequest())
    assert e.value.kind == BadRequestKind.EMPTY_HISTORY and "history" in e.value.reason, e.value


def test_empty_duplicate_candidates_and_top_k_0_are_bad_requests_of_each_kind(engine):
    with pytest.raises(DelrecError.BadRequest) as c:
        engine.rank(RankRequest(history=HISTORY, candidates=[]))
    assert c.value.kind == BadRequestKind.EMPTY_CANDIDATES, c.value
    with pytest.raises(DelrecError.BadRequest) as d:
        engine.rank(RankRequest(history=HISTORY, candidates=["m003", "m004", "m003"]))
    assert d.value.kind == BadRequestKind.DUPLICATE_CANDIDATE and d.value.item_id == "m003", d.value
    with pytest.raises(DelrecError.BadRequest) as k:
        engine.rank(RankRequest(history=HISTORY, top_k=0))
    assert k.value.kind == BadRequestKind.INVALID_ARGUMENT and k.value.field == "top_k", k.value


def test_unknown_soft_prompt_in_a_request_is_bad_request(engine):
    with pytest.raises(DelrecError.BadRequest) as e:
        engine.rank(RankRequest(history=HISTORY, soft_prompt="x"))
    assert e.value.kind == BadRequestKind.UNKNOWN_SOFT_PROMPT and e.value.field == "x", e.value


def test_errors_are_one_exception_hierarchy(engine):
    with pytest.raises(DelrecError) as e:
        engine.rank(RankRequest())
    assert isinstance(e.value, Exception) and isinstance(e.value, DelrecError.BadRequest)
    assert not isinstance(e.value, DelrecError.BadFile)


def test_a_missing_model_file_is_bad_file_io_naming_the_path():
    with pytest.raises(DelrecError.BadFile) as e:
        Engine.open("/nonexistent/model.gguf", PACK, config())
    assert e.value.kind == BadFileKind.IO and e.value.path == "/nonexistent/model.gguf", e.value


def test_a_missing_pack_file_is_bad_file_io_naming_the_path():
    with pytest.raises(DelrecError.BadFile) as e:
        Engine.open(MODEL, "/nonexistent/pack.gguf", config())
    assert e.value.kind == BadFileKind.IO and e.value.path == "/nonexistent/pack.gguf", e.value


def test_a_file_that_is_not_gguf_is_bad_file_invalid():
    with pytest.raises(DelrecError.BadFile) as e:
        Engine.open(CATALOG_CSV, PACK, config())
    assert e.value.kind == BadFileKind.INVALID and e.value.path.endswith("catalog.csv"), e.value


def test_a_pack_of_another_model_is_bad_file_mismatch_with_both_values():
    with pytest.raises(DelrecError.BadFile) as e:
        Engine.open(MODEL, OTHER_PACK, config())
    assert e.value.kind == BadFileKind.MISMATCH and e.value.field == "architecture", e.value
    assert (e.value.pack_value, e.value.model_value) == ("qwen2", "llama"), e.value


def test_a_bad_config_is_bad_request_invalid_argument_naming_the_setting():
    with pytest.raises(DelrecError.BadRequest) as e:
        Engine.open(MODEL, PACK, config(max_sequences=1))
    assert e.value.kind == BadRequestKind.INVALID_ARGUMENT and e.value.field == "max_sequences", e.value


def test_a_tiny_context_is_capacity_with_needed_over_available():
    # llama.cpp rounds small contexts up (to 256 cells); a 40-item history needs more.
    with Engine.open(MODEL, PACK, config(context_size=16)) as small:
        with pytest.raises(DelrecError.Capacity) as e:
            small.rank(RankRequest(history=IDS[:40]))
    c = e.value
    assert c.resource == Resource.CONTEXT_CELLS and c.needed > c.available >= 16, c
    assert "context" in c.reason


def test_a_memory_limit_below_the_budget_is_capacity_memory_at_open():
    with pytest.raises(DelrecError.Capacity) as e:
        Engine.open(MODEL, PACK, config(memory_limit_bytes=1 << 20))
    c = e.value
    assert c.resource == Resource.MEMORY and c.needed > c.available == 1 << 20, c


def test_a_hostile_model_is_bad_file_invalid_and_the_library_stays_usable(tmp_path):
    # block_count 0 aborts llama.cpp; patch the u32 value of `llama.block_count` in a copy: key
    # bytes, value type (u32 = 4), value.
    data = bytearray(open(MODEL, "rb").read())
    key = b"llama.block_count"
    at = data.find(key)
    assert at >= 0, f"no {key!r} in {MODEL}"
    assert int.from_bytes(data[at + len(key):at + len(key) + 4], "little") == 4, "llama.block_count is not a u32"
    value = at + len(key) + 4
    data[value:value + 4] = bytes(4)
    hostile = tmp_path / "hostile.gguf"
    hostile.write_bytes(bytes(data))
    with pytest.raises(DelrecError.BadFile) as e:
        Engine.open(str(hostile), PACK, config())
    assert e.value.kind == BadFileKind.INVALID and "block_count" in e.value.reason, e.value
    with Engine.open(MODEL, PACK, config()) as ok:
        assert len(ok.rank(RankRequest(history=HISTORY, top_k=3)).items) == 3


# --- cancellation and deadlines ------------------------------------------------------------------


def test_a_cancelled_token_is_cancelled(engine):
    token = CancelToken()
    assert not token.is_cancelled()
    token.cancel()
    assert token.is_cancelled()
    with pytest.raises(DelrecError.Cancelled) as e:
        engine.rank(RankRequest(history=HISTORY, cancel=token))
    assert e.value.reason == "cancelled", e.value
    assert len(engine.rank(RankRequest(history=HISTORY, top_k=1)).items) == 1, "engine broken after cancel"


def test_cancel_from_another_thread_stops_a_running_rank(engine):
    long_history = IDS[:40]
    t0 = time.monotonic()
    four = engine.rank(RankRequest(history=long_history, plan=Plan.NAIVE, candidates=IDS[:4]))
    four_s = time.monotonic() - t0
    assert len(four.items) == 4
    token = CancelToken()
    outcome = {}

    def run():
        try:
            outcome["ranking"] = engine.rank(RankRequest(history=long_history, plan=Plan.NAIVE, cancel=token))
        except BaseException as e:  # noqa: B902 (the test reports whatever came out)
            outcome["error"] = e

    t1 = time.monotonic()
    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.05)
    token.cancel()
    worker.join(120)
    took = time.monotonic() - t1
    assert not worker.is_alive(), "the cancelled rank did not return"
    assert isinstance(outcome.get("error"), DelrecError.Cancelled), outcome
    # The whole catalog takes ~10x the 4-candidate run; the cancelled call stopped early.
    assert took < four_s * 10, f"cancel took {took:.3f} s; 4 candidates took {four_s:.3f} s"


def test_timeout_0_is_deadline_exceeded(engine):
    with pytest.raises(DelrecError.DeadlineExceeded) as e:
        engine.rank(RankRequest(history=HISTORY, timeout_ms=0))
    assert "deadline" in e.value.reason, e.value


def test_a_generous_timeout_ranks_like_none(engine):
    r = engine.rank(RankRequest(history=HISTORY, top_k=5, timeout_ms=600_000))
    assert_matches(r, [(i.id, i.score) for i in engine.rank(RankRequest(history=HISTORY, top_k=5)).items])


# --- the live catalog and the cascade ------------------------------------------------------------


def test_add_item_ranks_a_new_title_and_refuses_a_taken_id():
    with Engine.open(MODEL, PACK, config()) as e:
        before = e.catalog_size()
        a = e.add_item("new-1", "Neon Harbor (2031)")
        assert a.index == before and not a.retrievable and a.n_tokens > 0 and e.catalog_size() == before + 1, a
        assert e.item("new-1").title == "Neon Harbor (2031)"
        r = e.rank(RankRequest(history=HISTORY, candidates=["new-1", "m003"]))
        assert sorted(i.id for i in r.items) == ["m003", "new-1"]
        whole = e.rank(RankRequest(history=HISTORY))
        assert len(whole.items) == before + 1 and any(i.id == "new-1" for i in whole.items)
        with pytest.raises(DelrecError.BadRequest) as d:
            e.add_item("m001", "Again")
        assert d.value.kind == BadRequestKind.DUPLICATE_ITEM and d.value.item_id == "m001", d.value


def test_recommend_equals_the_cli_and_carries_both_scores(engine, seq_engine):
    assert seq_engine.has_sequential_model() and not engine.has_sequential_model()
    r = seq_engine.recommend(RecommendRequest(history=HISTORY, n=5, retrieve=8))
    ref = cli_recommend(HISTORY, 5, 8)
    assert [i.id for i in r.items] == [i for i, _ in ref]
    for it, (_, want) in zip(r.items, ref):
        assert abs(it.score - want) < 1e-4 and it.llm_score is not None, (it, want)
    assert r.stats.retrieved == 8 and r.stats.rank is not None and r.stats.rank.candidates == 8, r.stats
    assert not {i.id for i in r.items} & set(HISTORY), "history items recommended"
    off = seq_engine.recommend(RecommendRequest(history=HISTORY, n=10, llm_off=True))
    assert all(i.llm_score is None and i.score == i.seq_score for i in off.items), off.items
    seq = [i.seq_score for i in off.items]
    assert all(a >= b for a, b in zip(seq, seq[1:])), seq
    with seq_engine.session(None) as s:
        s.set_history(HISTORY)
        via_session = s.recommend(RecommendRequest(n=5, retrieve=8))
    assert [i.id for i in via_session.items] == [i.id for i in r.items]


def test_recommend_refuses_bad_arguments_and_a_pack_without_a_sequential_model(engine, seq_engine):
    with pytest.raises(DelrecError.BadRequest) as bad:
        seq_engine.recommend(RecommendRequest(history=HISTORY, n=0))
    assert bad.value.kind == BadRequestKind.INVALID_ARGUMENT and bad.value.field == "n", bad.value
    with pytest.raises(DelrecError.BadRequest) as w:
        seq_engine.recommend(RecommendRequest(history=HISTORY, llm_weight=2.0))
    assert w.value.field == "llm_weight", w.value
    with pytest.raises(DelrecError.BadRequest) as none:
        engine.recommend(RecommendRequest(history=HISTORY))
    assert none.value.kind == BadRequestKind.NO_SEQUENTIAL_MODEL, none.value


# --- object lifetimes ----------------------------------------------------------------------------


def test_a_closed_engine_refuses_calls_and_its_open_session_keeps_working():
    e2 = Engine.open(MODEL, PACK, config())
    s = e2.session(None)
    e2.close()
    with pytest.raises(delrec.ClosedError):
        e2.catalog_size()
    with pytest.raises(delrec.ClosedError):
        e2.rank(RankRequest(history=HISTORY))
    e2.close()  # twice is fine
    with s:
        s.push("m001")
        assert len(s.rank(RankRequest(top_k=3)).items) == 3, "the session of a closed engine failed"
    with pytest.raises(delrec.ClosedError):
        s.history()


def test_a_closed_cancel_token_cannot_be_used_or_passed(engine):
    token = CancelToken()
    token.close()
    with pytest.raises(delrec.ClosedError):
        token.cancel()
    with pytest.raises(delrec.ClosedError):
        engine.rank(RankRequest(history=HISTORY, cancel=token))


def test_busy_when_a_session_holds_every_context_and_a_closed_session_frees_it():
    with Engine.open(MODEL, PACK, config(max_contexts=1, context_wait_ms=100)) as e:
        s = e.session(None)
        t0 = time.monotonic()
        with pytest.raises(DelrecError.Busy) as busy:
            e.rank(RankRequest(history=HISTORY, top_k=3))
        took = time.monotonic() - t0
        assert busy.value.contexts == 1 and busy.value.waited_ms >= 100 and took < 5, (busy.value, took)
        with pytest.raises(DelrecError.Busy):
            e.session(None)
        s.close()
        assert len(e.rank(RankRequest(history=HISTORY, top_k=3)).items) == 3, "the context was not returned"


def test_a_dropped_session_gives_its_context_back():
    with Engine.open(MODEL, PACK, config(max_contexts=1, context_wait_ms=100)) as e:
        s = e.session(None)
        with pytest.raises(DelrecError.Busy):
            e.session(None)
        del s
        gc.collect()
        with e.session(None) as again:
            again.push("m001")
            assert len(again.rank(RankRequest(top_k=2)).items) == 2


def test_closing_an_engine_while_other_threads_rank_is_safe():
    e = Engine.open(MODEL, PACK, config())
    outcomes = []

    def rank():
        try:
            outcomes.append(len(e.rank(RankRequest(history=HISTORY, top_k=3)).items))
        except delrec.ClosedError:
            outcomes.append("closed")

    threads = [threading.Thread(target=rank) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.01)
    e.close()
    for t in threads:
        t.join(120)
    assert len(outcomes) == 4 and all(o in (3, "closed") for o in outcomes), outcomes


# --- files and many packs ------------------------------------------------------------------------


def test_install_file_replaces_a_model_atomically_and_refuses_a_bad_download(tmp_path):
    dest = tmp_path / "model.gguf"
    delrec.install_file(MODEL, str(dest))
    assert dest.read_bytes() == open(MODEL, "rb").read()
    with Engine.open(str(dest), PACK, config()) as e:
        before = [i.id for i in e.rank(RankRequest(history=HISTORY, top_k=3)).items]
        bad = tmp_path / "download.gguf"
        bad.write_text("not a model")
        with pytest.raises(DelrecError.BadFile) as err:
            delrec.install_file(str(bad), str(dest))
        assert err.value.kind == BadFileKind.INVALID, err.value
        delrec.install_file(MODEL, str(dest))
        assert [i.id for i in e.rank(RankRequest(history=HISTORY, top_k=3)).items] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download.gguf", "model.gguf"]


def test_base_serves_packs_over_one_model_each_equal_to_the_cli():
    cands = IDS[:10]
    with delrec.Base.open(MODEL, config()) as base:
        with base.open_pack(PACK) as plain, base.open_pack(ADAPTER_PACK) as adapted:
            assert plain.adapter() is None
            a = adapted.adapter()
            assert a is not None and a.weights > 0 and a.max_rank > 0 and a.scale == 1.0 and "attn_q" in a.targets, a
            assert base.adapters_loaded() == 1
            rp = plain.rank(RankRequest(history=HISTORY, candidates=cands))
            ra = adapted.rank(RankRequest(history=HISTORY, candidates=cands))
            assert_matches(rp, cli_rank(HISTORY, cands))
            assert_matches(ra, cli_rank(HISTORY, cands, pack=ADAPTER_PACK))
            plain_scores = {i.id: i.score for i in rp.items}
            moved = max(abs(i.score - plain_scores[i.id]) for i in ra.items)
            assert moved > 0.05, f"the adapter changed scores by only {moved}"


def test_base_refuses_another_models_pack_and_a_wrong_adapter_file(tmp_path):
    with delrec.Base.open(MODEL, config()) as base:
        with pytest.raises(DelrecError.BadFile) as e:
            base.open_pack(OTHER_PACK)
        assert e.value.kind == BadFileKind.MISMATCH, e.value
        wrong = tmp_path / "wrong.gguf"
        shutil.copyfile(MODEL, wrong)
        with pytest.raises(DelrecError.BadFile) as m:
            base.open_pack_with_adapter(ADAPTER_PACK, str(wrong))
        assert m.value.kind == BadFileKind.MISMATCH and "adapter file sha256" in m.value.reason, m.value



# --- the documentation ---------------------------------------------------------------------------

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))


def python_snippets(readme):
    with open(os.path.join(REPO, readme), encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), re.S | re.M)


@pytest.mark.parametrize("readme", ["README.md", "bindings/README.md"])
def test_the_readme_python_snippets_run(readme, tmp_path):
    snippets = python_snippets(readme)
    assert snippets, f"no python snippet in {readme}"
    # The snippets' file names, pointing at the fixture model and pack.
    os.symlink(MODEL, tmp_path / "model.q8_0.gguf")
    os.symlink(PACK, tmp_path / "recs.pack.gguf")
    for k, code in enumerate(snippets):
        script = tmp_path / f"snippet{k}.py"
        script.write_text(code)
        p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{readme} snippet {k} failed:\n{code}\n{p.stderr}"
        # A printed value the snippet shows in a comment (`print(...)  # value`) is what it prints.
        for shown in re.findall(r"print\(.*\)\s+#\s*(.+)$", code, re.M):
            assert shown.strip() in p.stdout, f"{readme} snippet {k} does not print {shown!r}:\n{p.stdout}"


# --- progress and logs ---------------------------------------------------------------------------


class _Progress(delrec.ProgressListener):
    def __init__(self, on=None):
        self.seen, self.on = [], on

    def on_progress(self, progress):
        self.seen.append(progress)
        if self.on:
            self.on(progress)


def test_rank_progress_reports_every_decode_and_ends_at_the_counters(engine):
    listener = _Progress()
    r = engine.rank(RankRequest(history=HISTORY, progress=listener))
    seen = listener.seen
    assert len(seen) == r.stats.decode_calls, (len(seen), r.stats)
    assert all(b.decoded_rows > a.decoded_rows and b.planned_rows >= a.planned_rows for a, b in zip(seen, seen[1:]))
    assert seen[-1].decoded_rows == r.stats.decoded_rows and all(p.decoded_rows <= p.planned_rows for p in seen)

    def boom(_):
        raise RuntimeError("the app's listener threw")

    again = engine.rank(RankRequest(history=HISTORY, progress=_Progress(boom)))
    assert [(i.id, i.score) for i in again.items] == [(i.id, i.score) for i in r.items]
    token = CancelToken()
    with pytest.raises(DelrecError.Cancelled):
        engine.rank(RankRequest(history=IDS[:40], plan=Plan.NAIVE, cancel=token, progress=_Progress(lambda _: token.cancel())))


class _Load(delrec.LoadListener):
    def __init__(self, on=None):
        self.seen, self.on = [], on

    def on_load_progress(self, stage, fraction):
        self.seen.append((stage, fraction))
        if self.on:
            self.on(stage, fraction)


def test_open_with_progress_reports_the_load_and_stops_when_cancelled():
    listener = _Load()
    with Engine.open_with_progress(MODEL, PACK, config(), listener, None) as e:
        assert e.rank(RankRequest(history=HISTORY, top_k=3)).items
    load = [f for s, f in listener.seen if s == delrec.LoadStage.LOAD]
    assert load and load[-1] == 1.0 and load == sorted(load), listener.seen
    token = CancelToken()
    with pytest.raises(DelrecError.Cancelled):
        Engine.open_with_progress(MODEL, PACK, config(), _Load(lambda s, f: token.cancel()), token)


class _Sink(delrec.LogSink):
    def __init__(self, fail=False):
        self.lines, self.fail = [], fail

    def log(self, level, message):
        if self.fail:
            raise RuntimeError("the app's logger threw")
        self.lines.append((level, message))


def test_a_log_sink_gets_llama_cpp_lines_and_no_error_for_a_normal_cancel():
    sink = _Sink()
    delrec.set_log_sink(sink, delrec.LogLevel.DEBUG)
    try:
        with Engine.open(MODEL, PACK, config()) as e:
            assert any("llama_model_load" in m or "print_info" in m for _, m in sink.lines), sink.lines[:5]
            before = len(sink.lines)
            token = CancelToken()
            with pytest.raises(DelrecError.Cancelled):
                e.rank(RankRequest(history=IDS[:40], plan=Plan.NAIVE, cancel=token,
                                   progress=_Progress(lambda _: token.cancel())))
            bad = [(l, m) for l, m in sink.lines[before:] if l in (delrec.LogLevel.WARN, delrec.LogLevel.ERROR)]
            assert not bad, bad
        delrec.set_log_sink(_Sink(fail=True), delrec.LogLevel.DEBUG)
        with Engine.open(MODEL, PACK, config()) as e:
            assert len(e.rank(RankRequest(history=HISTORY, top_k=3)).items) == 3
    finally:
        delrec.set_log_sink(None, delrec.LogLevel.DEBUG)


def test_live_catalog_inline_replace_remove():
    with Engine.open(MODEL, PACK, config(kv_type=KvType.F32, flash_attention=False)) as e:
        title3 = e.item_at(3).title
        r = e.rank(RankRequest(history=HISTORY, candidates=[IDS[3], IDS[7]],
                               inline=[delrec.InlineItem(id="x-copy", title=title3)]))
        s = {i.id: i.score for i in r.items}
        assert len(s) == 3 and abs(s["x-copy"] - s[IDS[3]]) < 1e-6, s
        with pytest.raises(DelrecError.BadRequest) as dup:
            e.rank(RankRequest(history=HISTORY, inline=[delrec.InlineItem(id=IDS[1], title="Taken")]))
        assert dup.value.kind == BadRequestKind.DUPLICATE_ITEM and dup.value.item_id == IDS[1]
        before = {i.id: i.score for i in e.rank(RankRequest(history=HISTORY, candidates=[IDS[2], IDS[9]])).items}
        e.replace_item(IDS[2], e.item_at(9).title)
        after = e.rank(RankRequest(history=HISTORY, candidates=[IDS[2]])).items[0].score
        assert abs(after - before[IDS[9]]) < 1e-6
        top = e.rank(RankRequest(history=HISTORY, top_k=1)).items[0].id
        assert e.remove_item(top) and not e.remove_item(top)
        assert e.live_catalog_size() == len(IDS) - 1
        assert all(i.id != top for i in e.rank(RankRequest(history=HISTORY)).items)
        with pytest.raises(DelrecError.BadRequest) as named:
            e.rank(RankRequest(history=HISTORY, candidates=[top]))
        assert named.value.kind == BadRequestKind.INVALID_ARGUMENT and named.value.field == "candidates"


def test_open_fd_reads_a_model_and_pack_inside_a_larger_file(tmp_path, engine):
    m, p = open(MODEL, "rb").read(), open(PACK, "rb").read()
    apk = tmp_path / "app.apk"
    model_at = 65536  # aligned: mapped in place
    apk.write_bytes(b"\x5a" * model_at + m + b"\0" * 13 + p + b"\1" * 100)
    pack_at = model_at + len(m) + 13
    fd = os.open(apk, os.O_RDONLY)
    try:
        e = Engine.open_fd(fd, model_at, len(m), fd, pack_at, len(p), config(), None, None)
    finally:
        os.close(fd)  # the engine keeps its own copies
    with e:
        got = e.rank(RankRequest(history=HISTORY))
    want = engine.rank(RankRequest(history=HISTORY))
    assert [(i.id, i.score) for i in got.items] == [(i.id, i.score) for i in want.items]
    with pytest.raises(DelrecError.BadFile) as bad:
        Engine.open_fd(-1, model_at, len(m), -1, pack_at, len(p), config(), None, None)
    assert bad.value.kind == BadFileKind.IO
