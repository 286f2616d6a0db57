"""The sequential model on the device == the numpy reference of RecBole's SASRec forward.

The fixture `sasrec-tiny.pth` (written in torch.save's zip format by make_fixtures.py, rows in
another order than the catalog, one item the catalog lacks) goes into a pack through
`delrec-convert pack --seq-model`; `delrec recommend --llm-off --include-history` then scores the
whole catalog, which must equal `reference.py sasrec` within 1e-4 for short histories and for
histories longer than the model's 6 positions. Also: `--seq-f16` stays within F16 rounding;
`--seq-q8-items` (a Q8_0 item table, on `sasrec-tiny-h32.pth`) equals the reference run on the
table ggml's Q8_0 round trip gives (quantized independently in numpy) within 1e-4; a hidden size
Q8_0 cannot hold and a checkpoint the catalog does not fit are clean errors that write nothing.
Observed maxima go to $DELREC_REPORT_DIR/seq-parity.json.
"""

import json

import pytest

import parity_util as pu
from parity_util import ref

TOL = 1e-4
HISTORIES = [["m003"], ["m003", "m010", "m005"], [f"m{i:03d}" for i in range(10, 20)]]


@pytest.fixture(scope="module")
def blob(fixtures_dir):
    return ref.load_torch_blob(str(fixtures_dir / "sasrec-tiny.pth"))


def build(bins, gguf, fixtures_dir, tmp_path, *extra, model="sasrec-tiny.pth"):
    out = tmp_path / "seq.pack.gguf"
    pu.run_cli([bins.convert, "pack", "--model", gguf("llama-tiny", "f32"), "--tokenizer",
                fixtures_dir / "tokenizer-gpt2" / "tokenizer.json", "--catalog", fixtures_dir / "catalog.csv",
                "--soft-prompt", f"default={fixtures_dir / 'prompt-llama'}", "--template", pu.DEFAULT_TEMPLATE,
                "--seq-model", fixtures_dir / model, "--out", out, *extra], "delrec-convert pack")
    return out


def device(bins, gguf, pack_path, tmp_path, n_items):
    reqs = tmp_path / "r.jsonl"
    reqs.write_text("".join(json.dumps({"user": i, "history": h}) + "\n" for i, h in enumerate(HISTORIES)))
    p = pu.run_cli([bins.delrec, "recommend", "--model", gguf("llama-tiny", "f32"), "--pack", pack_path,
                    "--requests", reqs, "--n", n_items, "--llm-off", "--include-history", "--threads", "1", "--json"])
    return [{i["id"]: i["seq_score"] for i in json.loads(line)["items"]} for line in p.stdout.decode().splitlines()]


@pytest.mark.requires_binaries
@pytest.mark.parametrize("storage", ["f32", "f16", "q8_0"])
def test_recommend_scores_equal_the_reference(bins, gguf, fixtures_dir, tmp_path, blob, catalog, storage):
    if storage == "q8_0":
        model = "sasrec-tiny-h32.pth"
        p = build(bins, gguf, fixtures_dir, tmp_path, "--seq-q8-items", model=model)
        blob = ref.load_torch_blob(str(fixtures_dir / model))
    else:
        p = build(bins, gguf, fixtures_dir, tmp_path, *(["--seq-f16"] if storage == "f16" else []))
    got = device(bins, gguf, p, tmp_path, len(catalog))
    worst, vs_f32 = 0.0, 0.0
    for h, dev in zip(HISTORIES, got):
        want = ref.sasrec_scores(blob, h, q8_items=storage == "q8_0")
        assert set(dev) == set(catalog), "every catalog item scored, the model's extra item dropped"
        worst = max(worst, max(abs(dev[i] - want[i]) for i in catalog))
        exact = ref.sasrec_scores(blob, h)
        vs_f32 = max(vs_f32, max(abs(dev[i] - exact[i]) for i in catalog))
    pu.write_report(f"seq-parity-{storage}.json",
                    {"max_abs_diff": worst, "max_abs_diff_vs_unquantized": vs_f32, "histories": len(HISTORIES)})
    # F16 storage rounds every weight by 2^-11 relative; scores are O(1) sums of O(100) terms.
    # Q8_0 is compared with the reference on the same quantized table: only f32 rounding is left.
    assert worst < (2e-2 if storage == "f16" else TOL), worst
    if storage == "q8_0":
        assert vs_f32 > 1e-6, "the table really was quantized"


@pytest.mark.requires_binaries
def test_a_q8_0_table_needs_whole_blocks(bins, gguf, fixtures_dir, tmp_path):
    import subprocess

    out = tmp_path / "x.pack.gguf"
    r = subprocess.run([str(bins.convert), "pack", "--model", str(gguf("llama-tiny", "f32")), "--catalog",
                        str(fixtures_dir / "catalog.csv"), "--template", "{history}{candidate}", "--seq-model",
                        str(fixtures_dir / "sasrec-tiny.pth"), "--seq-q8-items", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "divisible by 32" in r.stderr and "panicked" not in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.requires_binaries
def test_a_catalog_the_model_does_not_know_is_refused(bins, gguf, fixtures_dir, tmp_path):
    bad = tmp_path / "catalog.csv"
    bad.write_text((fixtures_dir / "catalog.csv").read_text() + "m999,An Item The Model Never Saw,x\n")
    out = tmp_path / "x.pack.gguf"
    import subprocess

    r = subprocess.run([str(bins.convert), "pack", "--model", str(gguf("llama-tiny", "f32")), "--catalog", str(bad),
                        "--template", "{history}{candidate}", "--seq-model", str(fixtures_dir / "sasrec-tiny.pth"),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and "m999" in r.stderr and "panicked" not in r.stderr, r.stderr
    assert not out.exists()
