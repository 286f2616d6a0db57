#!/usr/bin/env python3
"""Vulkan (all layers offloaded) vs the CPU path of the same binary, on the parity fixtures.

Run by `scripts/vulkan.sh compare` (which sets GGML_VK_VISIBLE_DEVICES to lavapipe's index).
The CPU runs drop GGML_VK_VISIBLE_DEVICES (ggml-vulkan then skips lavapipe, a CPU-type device,
and finds no device) and pass --gpu-layers 0; their log is checked to name no device. The
Vulkan runs pass --gpu-layers 999 and their log must show every layer and the model buffers on
the device (parity_util.check_offload).

Checked: `delrec rank --json` with the F32 engine settings of test_rank_parity (F32 KV, classic
attention) and the logits of test_logits_parity agree within those tests' tolerance (1e-3).
Measured only (printed and written to the report, not asserted beyond finiteness and the same
candidates): the engine defaults (F16 KV cache, flash attention) and Q8_0 weights, whose
CPU path is itself compared with the reference through Kendall tau, not a tolerance.
Usage: vulkan_compare.py BIN_DIR LOGITS_BIN FIXTURES WORK_DIR REPORT_PATH
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "parity"))
import parity_util as pu  # noqa: E402

TOL = 1e-3  # test_rank_parity.TOL and test_logits_parity.TOL
F32_ENGINE_ARGS = ["--kv", "f32", "--no-flash-attn"]
HISTORY = ["m001", "m006", "m011", "m009"]
CANDIDATES = ["m002", "m003", "m004", "m007", "m008", "m010", "m012", "m024", "m027",
              "m028", "m031", "m032", "m036", "m040", "m042"]
CASES = {  # model, tokenizer, soft prompt, template (as test_rank_parity's F32_CASES)
    "llama-tiny": ("llama-tiny", "tokenizer-gpt2", "prompt-llama", pu.DEFAULT_TEMPLATE),
    "qwen2-tiny": ("qwen2-tiny", "tokenizer-qwen2", "prompt-qwen2",
                   "Recently watched:{history}.\n{soft:default}Next:{candidate}\n"),
    "llama-wide": ("llama-wide", "tokenizer-gpt2", "prompt-llama-wide", pu.DEFAULT_TEMPLATE),
}


class Fail(Exception):
    pass


def run(argv, vulkan: bool):
    env = dict(os.environ, DELREC_LLAMA_LOG="1")
    if not vulkan:
        env.pop("GGML_VK_VISIBLE_DEVICES", None)
    argv = [str(a) for a in argv] + ["--gpu-layers", "999" if vulkan else "0"]
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, timeout=pu.CLI_TIMEOUT_S, env=env)
    dt = time.monotonic() - t0
    err = p.stderr.decode("utf-8", errors="replace")
    if p.returncode != 0:
        raise Fail(f"rc={p.returncode}: {argv}\n{err[-3000:]}")
    if vulkan:
        try:
            pu.check_offload(err, "llvmpipe", argv[1])
        except BaseException as e:  # pytest.fail raises an Exception subclass of BaseException
            raise Fail(str(e)) from None
    elif "using device" in err or "offloaded" in err:
        raise Fail(f"the CPU run used a device:\n{err[-3000:]}")
    return json.loads(p.stdout), dt


def convert(bin_dir: Path, fixtures: Path, work: Path, model: str, outtype: str) -> Path:
    out = work / f"{model}.{outtype}.gguf"
    if not out.is_file() or out.stat().st_mtime < (fixtures / "MANIFEST.json").stat().st_mtime:
        subprocess.run([str(bin_dir / "delrec-convert"), "model", "--hf", str(fixtures / model), "--out", str(out),
                        "--outtype", outtype], check=True, capture_output=True)
    return out


def make_pack(bin_dir, fixtures, work, mg: Path, tok, peft, template) -> Path:
    out = work / f"{mg.stem}.pack.gguf"
    if not out.is_file() or out.stat().st_mtime < mg.stat().st_mtime:
        subprocess.run([str(bin_dir / "delrec-convert"), "pack", "--model", str(mg),
                        "--tokenizer", str(fixtures / tok / "tokenizer.json"), "--catalog", str(fixtures / "catalog.csv"),
                        "--soft-prompt", f"default={fixtures / peft}", "--template", template, "--out", str(out)],
                       check=True, capture_output=True)
    return out


def main() -> int:
    bin_dir, logits_bin, fixtures, work, report_path = map(Path, sys.argv[1:6])
    work.mkdir(parents=True, exist_ok=True)
    delrec = bin_dir / "delrec"
    catalog = pu.ref.load_catalog(str(fixtures / "catalog.csv"))
    results, failures = [], []

    def rank_case(name, outtype, extra, candidates, checked):
        model, tok, peft, template = CASES[name]
        mg = convert(bin_dir, fixtures, work, model, outtype)
        pk = make_pack(bin_dir, fixtures, work, mg, tok, peft, template)
        argv = [delrec, "rank", "--model", mg, "--pack", pk, "--history", ",".join(HISTORY),
                "--candidates", ",".join(candidates), "--top-k", str(len(candidates)), *extra, "--json"]
        cpu, t_cpu = run(argv, vulkan=False)
        vk, t_vk = run(argv, vulkan=True)
        c = {it["id"]: it for it in cpu["items"]}
        v = {it["id"]: it for it in vk["items"]}
        if set(c) != set(candidates) or set(v) != set(candidates):
            raise Fail(f"{name}: candidate sets differ")
        if any(c[i]["n_tokens"] != v[i]["n_tokens"] for i in candidates):
            raise Fail(f"{name}: token counts differ")
        d_lp = max(abs(pu.item_logprob(c[i]) - pu.item_logprob(v[i])) for i in candidates)
        d_mean = max(abs(float(c[i]["mean"]) - float(v[i]["mean"])) for i in candidates)
        vals = [pu.item_logprob(v[i]) for i in candidates]
        if not np.all(np.isfinite(vals)):
            raise Fail(f"{name}: non-finite Vulkan scores")
        tau = pu.kendall_tau_b([pu.item_logprob(c[i]) for i in candidates], vals)
        same_order = [it["id"] for it in cpu["items"]] == [it["id"] for it in vk["items"]]
        r = {"what": "rank", "model": name, "outtype": outtype, "engine_args": extra, "n_candidates": len(candidates),
             "max_abs_logprob_diff": d_lp, "max_abs_mean_diff": d_mean, "kendall_tau_cpu_vs_vulkan": tau,
             "same_order": same_order, "cpu_s": round(t_cpu, 3), "vulkan_s": round(t_vk, 3),
             "checked_against": TOL if checked else None}
        results.append(r)
        print(f"  rank   {name:10s} {outtype:5s} {' '.join(extra) or '(engine defaults)':28s} "
              f"n={len(candidates):2d} max|dlogprob|={d_lp:.3e} max|dmean|={d_mean:.3e} tau={tau:.4f} "
              f"same order={same_order} cpu {t_cpu:.2f}s vulkan {t_vk:.2f}s")
        if checked and (d_lp >= TOL or d_mean >= TOL):
            failures.append(f"rank {name} {outtype}: max |d| {max(d_lp, d_mean):.3e} >= {TOL}")

    def logits_case(name):
        model, tok, _, _ = CASES[name]
        mg = convert(bin_dir, fixtures, work, model, "f32")
        tokens = pu.probe_tokens(pu.ref.load_tokenizer(str(fixtures / tok / "tokenizer.json")),
                                 pu.ref.Model(str(fixtures / model)).vocab)
        argv_tail = ["logits", "--model", mg, "--tokens", ",".join(map(str, tokens)), "--json"]
        # Both runs through LOGITS_BIN (`delrec logits` takes no --gpu-layers): only offload differs.
        cpu, t_cpu = run([logits_bin, *argv_tail], vulkan=False)
        vk, t_vk = run([logits_bin, *argv_tail], vulkan=True)
        a = np.asarray(cpu["logits"], dtype=np.float64)
        b = np.asarray(vk["logits"], dtype=np.float64)
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            raise Fail(f"logits {name}: shapes {a.shape} vs {b.shape} or non-finite")
        d = float(np.abs(a - b).max())
        results.append({"what": "logits", "model": name, "outtype": "f32", "shape": list(a.shape),
                        "max_abs_logit_diff": d, "cpu_s": round(t_cpu, 3), "vulkan_s": round(t_vk, 3),
                        "checked_against": TOL})
        print(f"  logits {name:10s} f32   {a.shape[0]} positions x {a.shape[1]} vocab: max|dlogit|={d:.3e} "
              f"cpu {t_cpu:.2f}s vulkan {t_vk:.2f}s")
        if d >= TOL:
            failures.append(f"logits {name}: max |d| {d:.3e} >= {TOL}")

    try:
        for name in ("llama-tiny", "qwen2-tiny"):
            rank_case(name, "f32", F32_ENGINE_ARGS, CANDIDATES, checked=True)
            logits_case(name)
        for name in ("llama-tiny", "qwen2-tiny"):
            rank_case(name, "f32", [], CANDIDATES, checked=False)
        whole = [c for c in catalog if c not in HISTORY]
        rank_case("llama-wide", "f32", F32_ENGINE_ARGS, whole, checked=True)
        rank_case("llama-wide", "q8_0", [], whole, checked=False)
    except Fail as e:
        failures.append(str(e))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({"tolerance": TOL, "results": results, "failures": failures}, indent=2) + "\n")
    print(f"  report: {report_path}")
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
