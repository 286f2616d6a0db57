"""Shared helpers for the parity tests: paths, CLI runner, statistics (numpy only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE_SCRIPT = REPO / "tests" / "fixtures" / "make_fixtures.py"
REFERENCE_DIR = REPO / "tests" / "reference"

if str(REFERENCE_DIR) not in sys.path:
    sys.path.insert(0, str(REFERENCE_DIR))
import reference as ref  # noqa: E402


def env_path(var: str, default: Path) -> Path:
    v = os.environ.get(var)
    return Path(v).resolve() if v else default


BIN_DIR = env_path("DELREC_BIN_DIR", REPO / "target" / "release")
FIXTURES_DIR = env_path("DELREC_FIXTURES", REPO / "target" / "fixtures")
REPORT_DIR = env_path("DELREC_REPORT_DIR", REPO / "target" / "reports")

CLI_TIMEOUT_S = int(os.environ.get("DELREC_CLI_TIMEOUT", "600"))

# GPU offload (scripts/vulkan.sh). Unset, nothing changes.
#   DELREC_GPU_LAYERS=N         appends `--gpu-layers N` to every `delrec` command run through
#                               run_cli that runs a model (rank, rank-batch, recommend, embed, logits)
#   DELREC_LOGITS_BIN=PATH      runs `logits` calls with PATH instead of `delrec` (same arguments;
#                               `delrec logits` has no --gpu-layers flag yet)
#   DELREC_REQUIRE_OFFLOAD=STR  those commands run with DELREC_LLAMA_LOG=1 and FAIL unless
#                               llama.cpp logged every layer offloaded to a device whose
#                               description contains STR (so a silent CPU fallback cannot pass)
GPU_LAYERS = os.environ.get("DELREC_GPU_LAYERS") or None
LOGITS_BIN = os.environ.get("DELREC_LOGITS_BIN") or None
REQUIRE_OFFLOAD = os.environ.get("DELREC_REQUIRE_OFFLOAD") or None
OFFLOAD_COMMANDS = ("rank", "rank-batch", "recommend", "embed", "logits")

# Default template of the contract (real newlines, no escapes).
DEFAULT_TEMPLATE = "{soft:default}Recently watched:{history}.\nNext:{candidate}\n"
# Engine defaults assumed when `delrec rank --json` does not report its settings.
DEFAULT_SETTINGS = {"item_prefix": " ", "history_sep": ",", "add_bos": False}


# --------------------------------------------------------------------------------------
# running the project's binaries
# --------------------------------------------------------------------------------------


def _tail(b: bytes, n: int = 4000) -> str:
    s = b.decode("utf-8", errors="replace")
    return s if len(s) <= n else "...\n" + s[-n:]


def _offload(argv: list[str]) -> tuple[list[str], bool]:
    """argv with the GPU offload settings applied, and whether it is an offloaded model run."""
    if GPU_LAYERS is None or len(argv) < 2 or Path(argv[0]).name != "delrec" or argv[1] not in OFFLOAD_COMMANDS:
        return argv, False
    if argv[1] == "logits" and LOGITS_BIN:
        argv = [LOGITS_BIN, *argv[1:]]
    return [*argv, "--gpu-layers", GPU_LAYERS], True


_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_DEVICE = re.compile(r"using device (\S+) \((.*)\) - \d+ MiB free")
_BUFFER = re.compile(r"(\S+) model buffer size = +([0-9.]+) MiB")


def check_offload(stderr: str, device: str, what: str) -> None:
    """FAILS unless llama.cpp's log says: every layer offloaded, the model placed on a device
    whose description contains `device`, and a non-empty model buffer on that device."""
    layers = _OFFLOADED.findall(stderr)
    devices = {name: desc for name, desc in _DEVICE.findall(stderr)}
    buffers = {name: float(mib) for name, mib in _BUFFER.findall(stderr)}
    log = _tail(stderr.encode(), 2500)
    if not layers or any(a != b or int(a) == 0 for a, b in layers):
        pytest.fail(f"{what}: llama.cpp did not offload all layers ({layers or 'no offload line'})\n{log}",
                    pytrace=False)
    used = [n for n, d in devices.items() if device in d]
    if not used or len(used) != len(devices):
        pytest.fail(f"{what}: the model is not (only) on a {device!r} device: {devices}\n{log}", pytrace=False)
    if not any(b.startswith(n) and mib > 0 for n in used for b, mib in buffers.items()):
        pytest.fail(f"{what}: no model buffer on {used} (buffers: {buffers})\n{log}", pytrace=False)


def run_cli(argv: list, what: str = "") -> subprocess.CompletedProcess:
    argv, offloaded = _offload([str(a) for a in argv])
    env = None
    if offloaded and REQUIRE_OFFLOAD:
        env = {**os.environ, "DELREC_LLAMA_LOG": "1"}
    try:
        p = subprocess.run(argv, capture_output=True, timeout=CLI_TIMEOUT_S, env=env)
    except FileNotFoundError as e:
        pytest.fail(f"cannot execute {argv[0]}: {e}", pytrace=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what or argv[0]} timed out after {CLI_TIMEOUT_S}s: {argv!r}", pytrace=False)
    if p.returncode != 0:
        pytest.fail(
            f"{what or argv[0]} failed with rc={p.returncode}\ncmd: {argv!r}\n"
            f"--- stderr ---\n{_tail(p.stderr)}\n--- stdout ---\n{_tail(p.stdout, 1500)}",
            pytrace=False,
        )
    if env is not None:
        check_offload(p.stderr.decode("utf-8", errors="replace"), REQUIRE_OFFLOAD, what or argv[1])
    return p


def run_json(argv: list, what: str = "") -> dict:
    p = run_cli(argv, what)
    try:
        return json.loads(p.stdout.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        pytest.fail(f"{what or argv[0]}: stdout is not JSON ({e})\ncmd: {argv!r}\n"
                    f"--- stdout ---\n{_tail(p.stdout, 2000)}", pytrace=False)


def write_report(name: str, payload: dict) -> Path:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = REPORT_DIR / name
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return path


# --------------------------------------------------------------------------------------
# statistics (no scipy)
# --------------------------------------------------------------------------------------


def rankdata(a) -> np.ndarray:
    """Average ranks (1-based) with ties sharing the mean rank, like scipy.stats.rankdata."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    i = 0
    n = len(a)
    while i < n:
        j = i
        while j + 1 < n and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def kendall_tau_b(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = len(a)
    if n != len(b) or n < 2:
        raise ValueError("kendall_tau_b needs two equal-length sequences of >= 2 values")
    iu = np.triu_indices(n, k=1)
    da = np.sign(a[:, None] - a[None, :])[iu]
    db = np.sign(b[:, None] - b[None, :])[iu]
    s = float((da * db).sum())  # concordant - discordant
    n_a = float(np.count_nonzero(da))  # pairs not tied in a
    n_b = float(np.count_nonzero(db))
    return s / np.sqrt(n_a * n_b) if n_a > 0 and n_b > 0 else float("nan")


def describe_max_diff(expected: np.ndarray, got: np.ndarray) -> str:
    d = np.abs(expected - got)
    pos, tok = np.unravel_index(int(np.argmax(d)), d.shape)
    per_pos = d.max(axis=1)
    return (f"max |delta| = {d.max():.3e} at position {pos}, token {tok} "
            f"(reference {expected[pos, tok]:.6f}, runtime {got[pos, tok]:.6f}); "
            f"per-position max: {np.array2string(per_pos, formatter={'float_kind': lambda v: f'{v:.0e}'}, max_line_width=160)}")


PROBE_TEXT = ("Recently watched: Star Wars (1977), Toy Story (1995), Amélie (2001).\n"
              "Next: 千と千尋の神隠し (2001) 🎬 It's 3.14159, they'LL say!")


def probe_tokens(tokenizer, vocab_size: int, max_len: int = 64) -> list[int]:
    """A realistic token sequence plus edge ids (specials, last vocab rows)."""
    ids = ref.encode(tokenizer, PROBE_TEXT)
    ids = [0] + ids[: max_len - 6] + [1, 2, vocab_size - 1, vocab_size - 2, 5]
    return ids


def runtime_logits(bins, model_gguf, tokens, adapter=None) -> np.ndarray:
    extra = ["--adapter", adapter] if adapter else []
    out = run_json([bins.delrec, "logits", "--model", model_gguf, *extra,
                    "--tokens", ",".join(map(str, tokens)), "--json"], "delrec logits")
    if "logits" not in out:
        pytest.fail(f"`logits` missing from delrec logits output: {list(out)}", pytrace=False)
    try:
        return np.asarray(out["logits"], dtype=np.float64)
    except ValueError as e:
        pytest.fail(f"delrec logits: ragged/non-numeric logits ({e})", pytrace=False)


def runtime_rank(bins, model_gguf, pack_path, history, candidates, top_k, extra=()) -> dict:
    out = run_json([bins.delrec, "rank", "--model", model_gguf, "--pack", pack_path,
                    "--history", ",".join(history), "--candidates", ",".join(candidates),
                    "--top-k", str(top_k), *extra, "--json"], "delrec rank")
    if not isinstance(out.get("items"), list):
        pytest.fail(f"`items` missing from delrec rank output: {list(out)}", pytrace=False)
    return out


def engine_settings(rank_out: dict) -> dict:
    """item_prefix / history_sep / add_bos as reported by `delrec rank --json` (under
    "settings" or at top level); contract defaults for anything not reported."""
    src = rank_out.get("settings") if isinstance(rank_out.get("settings"), dict) else {}
    res = {}
    for k, dflt in DEFAULT_SETTINGS.items():
        if k in src:
            res[k] = src[k]
        elif k in rank_out:
            res[k] = rank_out[k]
        else:
            res[k] = dflt
    return res


def item_logprob(item: dict) -> float:
    """The summed log-probability of an item: `logprob` when the runtime reports it (its
    `score` then follows the pack's scoring mode), else `score`."""
    return float(item["logprob"] if "logprob" in item else item["score"])
