"""Fixtures of the Python binding tests: the files run-tests.sh made, the reference CLI, engines.

Environment (set by run-tests.sh): DELREC_MODEL, DELREC_PACK (a pack for DELREC_MODEL),
DELREC_OTHER_PACK (a pack built for another model), DELREC_SEQ_PACK (with a SASRec),
DELREC_ADAPTER_PACK (with a LoRA adapter), DELREC_CLI (the `delrec` binary, the reference),
DELREC_CATALOG (the catalog.csv the packs were built from).
"""

import csv
import json
import os
import subprocess

import pytest

import delrec


def env(name):
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"set {name} (bindings/python/run-tests.sh does)", returncode=2)
    return value


MODEL = env("DELREC_MODEL")
PACK = env("DELREC_PACK")
OTHER_PACK = env("DELREC_OTHER_PACK")
SEQ_PACK = env("DELREC_SEQ_PACK")
ADAPTER_PACK = env("DELREC_ADAPTER_PACK")
CLI = env("DELREC_CLI")
CATALOG_CSV = env("DELREC_CATALOG")

with open(CATALOG_CSV, newline="", encoding="utf-8") as f:
    CATALOG = [(row[0], row[1]) for row in list(csv.reader(f))[1:] if row]
IDS = [i for i, _ in CATALOG]
HISTORY = ["m001", "m002"]


def config(**changes):
    """The tests' engine settings: the defaults on 2 threads (as the CLI runs), plus changes."""
    return delrec.engine_config(threads=2, **changes)


def _run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}"
    return json.loads(p.stdout)


def cli_rank(history, candidates=None, top_k=None, naive=False, pack=PACK):
    """`delrec rank --json` for the same request: [(id, score)] in its order."""
    cmd = [CLI, "rank", "--model", MODEL, "--pack", pack, "--threads", "2", "--json", "--history", ",".join(history)]
    if candidates is not None:
        cmd += ["--candidates", ",".join(candidates)]
    if top_k is not None:
        cmd += ["--top-k", str(top_k)]
    if naive:
        cmd.append("--naive")
    out = _run(cmd)
    assert out["items"], out
    return [(i["id"], i["score"]) for i in out["items"]]


def cli_recommend(history, n, retrieve):
    """`delrec recommend --json` on the seq pack: [(id, fused score)] in its order."""
    out = _run([CLI, "recommend", "--model", MODEL, "--pack", SEQ_PACK, "--threads", "2", "--json",
                "--history", ",".join(history), "--n", str(n), "--retrieve", str(retrieve)])
    assert len(out["items"]) == n, out
    return [(i["id"], i["score"]) for i in out["items"]]


def assert_sorted(ranking):
    scores = [i.score for i in ranking.items]
    assert all(a >= b for a, b in zip(scores, scores[1:])), scores


def assert_matches(ranking, reference, tol=1e-4):
    """Every score within `tol` of the reference's, in its order except where scores tie."""
    assert len(ranking.items) == len(reference), (len(ranking.items), len(reference))
    ref = dict(reference)
    for item in ranking.items:
        assert item.id in ref, f"{item.id} not in the reference"
        assert abs(item.score - ref[item.id]) <= tol, f"{item.id}: score {item.score}, reference {ref[item.id]}"
    for k, (item, (want_id, want_score)) in enumerate(zip(ranking.items, reference)):
        assert item.id == want_id or abs(item.score - want_score) <= tol, f"rank {k}: {item.id}, reference {want_id}"


@pytest.fixture(scope="session")
def engine():
    with delrec.Engine.open(MODEL, PACK, config()) as e:
        yield e


@pytest.fixture(scope="session")
def exact():
    """The exact path (F32 cache, classic attention), for comparing plans with each other: flash
    attention accumulates in F16, so different batchings differ by ~1e-3."""
    with delrec.Engine.open(MODEL, PACK, config(kv_type=delrec.KvType.F32, flash_attention=False)) as e:
        yield e


@pytest.fixture(scope="session")
def seq_engine():
    with delrec.Engine.open(MODEL, SEQ_PACK, config()) as e:
        yield e
