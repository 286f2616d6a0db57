"""pytest fixtures for the delrec parity suite.

Environment:
  DELREC_BIN_DIR     directory with `delrec` and `delrec-convert` (default <repo>/target/release)
  DELREC_FIXTURES    fixture directory (default <repo>/target/fixtures); generated with
                     tests/fixtures/make_fixtures.py when missing or stale
  DELREC_REPORT_DIR  where quantization metrics are written (default <repo>/target/reports)

Tests marked `requires_binaries` FAIL (they are never skipped) when a binary is missing.
Deselect them explicitly for reference-only runs:  pytest tests/parity -m "not requires_binaries"
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_util as pu  # noqa: E402
from parity_util import ref  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "requires_binaries: runs the project's delrec/delrec-convert binaries; fails if they are missing",
    )


def _fixtures_stale(manifest_path: Path) -> bool:
    """Stale when missing, from another fixtures version, or made by a different generator."""
    spec = importlib.util.spec_from_file_location("make_fixtures", pu.FIXTURE_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not manifest_path.exists():
        return True
    with open(manifest_path, encoding="utf-8") as f:
        m = json.load(f)
    return (m.get("version") != mod.FIXTURES_VERSION
            or m.get("generator_sha256") != mod.sha256_file(str(pu.FIXTURE_SCRIPT)))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    d = pu.FIXTURES_DIR
    if _fixtures_stale(d / "MANIFEST.json"):
        p = subprocess.run([sys.executable, str(pu.FIXTURE_SCRIPT), str(d)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"make_fixtures.py failed (rc={p.returncode}):\n{p.stderr}", pytrace=False)
    return d


@pytest.fixture(scope="session")
def manifest(fixtures_dir) -> dict:
    with open(fixtures_dir / "MANIFEST.json", encoding="utf-8") as f:
        return json.load(f)


class Bins:
    def __init__(self, bin_dir: Path):
        self.dir = bin_dir
        self.delrec = bin_dir / "delrec"
        self.convert = bin_dir / "delrec-convert"

    def check(self):
        missing = [str(p) for p in (self.delrec, self.convert) if not (p.is_file() and os.access(p, os.X_OK))]
        if missing:
            pytest.fail(
                "required binaries missing: " + ", ".join(missing)
                + "\n(build them with `cargo build --release`, or point DELREC_BIN_DIR at them)",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def _bins_session() -> Bins:
    return Bins(pu.BIN_DIR)


@pytest.fixture
def bins(_bins_session) -> Bins:
    """The project's binaries (checked when a `requires_binaries` test runs, see below)."""
    return _bins_session


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    # Checked in the call phase so that a missing binary reports the test as FAILED (not as a
    # setup ERROR, and never as skipped).
    if item.get_closest_marker("requires_binaries"):
        Bins(pu.BIN_DIR).check()


@pytest.fixture(scope="session")
def _work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("delrec-parity")


@pytest.fixture
def gguf(bins, fixtures_dir, _work_dir, _gguf_cache):
    """gguf(model, outtype, lora=None) -> path of the converted model (cached per session)."""

    def get(model: str, outtype: str, lora: str | None = None) -> Path:
        key = (model, outtype, lora)
        if key not in _gguf_cache:
            out = _work_dir / f"{model}.{outtype}{'.' + lora if lora else ''}.gguf"
            argv = [bins.convert, "model", "--hf", fixtures_dir / model, "--out", out, "--outtype", outtype]
            if lora:
                argv += ["--lora", fixtures_dir / lora]
            pu.run_cli(argv, "delrec-convert model")
            if not out.is_file():
                pytest.fail(f"delrec-convert model exited 0 but did not write {out}", pytrace=False)
            _gguf_cache[key] = out
        return _gguf_cache[key]

    return get


@pytest.fixture(scope="session")
def _gguf_cache() -> dict:
    return {}


@pytest.fixture(scope="session")
def _pack_cache() -> dict:
    return {}


@pytest.fixture
def pack(bins, fixtures_dir, _work_dir, _pack_cache):
    """pack(model_gguf, tokenizer_dir, soft_name, peft_dir, template) -> pack path (cached)."""

    def get(model_gguf: Path, tokenizer_dir: str, soft_name: str, peft_dir: str, template: str) -> Path:
        key = (str(model_gguf), tokenizer_dir, soft_name, peft_dir, template)
        if key not in _pack_cache:
            out = _work_dir / f"pack-{len(_pack_cache)}-{Path(model_gguf).stem}.gguf"
            argv = [bins.convert, "pack", "--model", model_gguf,
                    "--tokenizer", fixtures_dir / tokenizer_dir / "tokenizer.json",
                    "--catalog", fixtures_dir / "catalog.csv",
                    "--soft-prompt", f"{soft_name}={fixtures_dir / peft_dir}",
                    "--template", template, "--out", out]
            pu.run_cli(argv, "delrec-convert pack")
            if not out.is_file():
                pytest.fail(f"delrec-convert pack exited 0 but did not write {out}", pytrace=False)
            _pack_cache[key] = out
        return _pack_cache[key]

    return get


@pytest.fixture(scope="session")
def ref_model(fixtures_dir):
    """ref_model(model, lora=None) -> reference.Model (cached)."""

    @functools.lru_cache(maxsize=None)
    def get(model: str, lora: str | None = None):
        return ref.Model(str(fixtures_dir / model), str(fixtures_dir / lora) if lora else None)

    return get


@pytest.fixture(scope="session")
def ref_tokenizer(fixtures_dir):
    @functools.lru_cache(maxsize=None)
    def get(tokenizer_dir: str):
        return ref.load_tokenizer(str(fixtures_dir / tokenizer_dir / "tokenizer.json"))

    return get


@pytest.fixture(scope="session")
def catalog(fixtures_dir) -> dict:
    return ref.load_catalog(str(fixtures_dir / "catalog.csv"))
