#!/usr/bin/env python3
"""Matmul throughput of this machine, for delrec-bench's compute floor.

    python3 bench/gemm.py --threads 1,2 --out gemm.json

Times float32 GEMMs through numpy (its BLAS, usually OpenBLAS) at each thread count and reports the
best GFLOP/s over a few shapes: square 2048 and the shapes of a transformer prefill (rows x hidden
times hidden x intermediate). Thread counts are set before numpy loads its BLAS, one process per
count.
"""
import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np
shapes = [(2048, 2048, 2048), (512, 896, 4864), (512, 4864, 896), (512, 576, 1536)]
best = {}
for m, k, n in shapes:
    a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        dt = time.perf_counter() - t0
        if dt > 0.6 and reps >= 3:
            break
    best[f"{m}x{k}x{n}"] = 2.0 * m * k * n * reps / dt / 1e9
info = {}
try:
    from threadpoolctl import threadpool_info
    info = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")} for d in threadpool_info()]
except Exception as e:  # threadpoolctl is optional
    info = f"threadpoolctl not available ({type(e).__name__})"
cfg = {}
try:
    c = np.show_config(mode="dicts")
    cfg = c.get("Build Dependencies", {}).get("blas", {})
except Exception:
    pass
print(json.dumps({"gflops_by_shape": best, "gflops": max(best.values()), "numpy": np.__version__,
                  "blas": {"name": cfg.get("name"), "version": cfg.get("version")}, "threadpool": info}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = {"method": "float32 GEMM through numpy's BLAS (best of several shapes)", "by_threads": {}}
    for t in [int(x) for x in a.threads.split(",") if x]:
        env = dict(os.environ)
        for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            env.pop(k, None)
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(t)
        p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            res["by_threads"][str(t)] = {"error": p.stderr[-2000:]}
            continue
        res["by_threads"][str(t)] = json.loads(p.stdout)
        print(f"@step GEMM {t} thread(s): {res['by_threads'][str(t)]['gflops']:.1f} GFLOP/s", flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
