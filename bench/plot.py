#!/usr/bin/env python3
"""Plots of a delrec-bench results.json.

    python3 bench/plot.py target/bench-results/results.json target/bench-results/plots

Per model: latency vs K (at the headline H) and vs H (at the headline K) for our plan and every
baseline measured (llama.cpp naive, llama.cpp raw prefill, PyTorch strong and naive, the compute
floor), for the first weight type; and latency by weight type at the headline cell.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def cell(r, h, k):
    for c in r["grid"]:
        if c["h"] == h and c["k"] == k and not c["whole_catalog"]:
            return c
    return None


def tcell(m, h, k):
    for c in (m.get("torch") or {}).get("cells", []):
        if c["h"] == h and c["k"] == k:
            return c
    return None


def p50(s):
    return s["p50"] * 1e3 if s else None


def gflops(res, threads):
    try:
        return res["floor"]["by_threads"][str(threads)]["gflops"]
    except (KeyError, TypeError):
        return None


def series(res, m, r, xs, key):
    """key(x) -> (h, k). Returns dict name -> (xs, ms)."""
    g = gflops(res, res["settings"]["threads"][0])
    out = {}

    def add(name, x, y):
        if y is not None and y > 0:
            out.setdefault(name, ([], []))
            out[name][0].append(x)
            out[name][1].append(y)

    for x in xs:
        h, k = key(x)
        c = cell(r, h, k)
        if c:
            add(f"ours ({r['weight_type']})", x, p50(c["ours"]))
            add("llama.cpp naive", x, p50(c.get("naive")))
            add("llama.cpp raw prefill", x, p50(c.get("raw")))
            if g:
                add("compute floor", x, c["flops"] / (g * 1e9) * 1e3)
        t = tcell(m, h, k)
        if t:
            add("PyTorch strong", x, p50(t.get("strong")))
            add("PyTorch naive", x, p50(t.get("naive")))
    return out


STYLE = {
    "llama.cpp naive": dict(color="tab:red", marker="s"),
    "llama.cpp raw prefill": dict(color="tab:gray", marker="^", linestyle="--"),
    "PyTorch strong": dict(color="tab:orange", marker="D"),
    "PyTorch naive": dict(color="tab:brown", marker="x"),
    "compute floor": dict(color="black", linestyle=":"),
}


def line_plot(path, title, xlabel, data):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in data.items():
        st = STYLE.get(name, dict(color="tab:blue", marker="o", linewidth=2.5))
        ax.plot(xs, ys, label=name, **st)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency, ms (p50)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    res_path, out = argv[0], argv[1]
    with open(res_path) as f:
        res = json.load(f)
    os.makedirs(out, exist_ok=True)
    st = res["settings"]
    hh, hk = st["headline"]
    written = []
    for m in res["models"]:
        if not m["types"]:
            continue
        r = m["types"][0]
        name = m["name"]
        if len(st["ks"]) > 1:
            d = series(res, m, r, st["ks"], lambda k: (hh, k))
            p = os.path.join(out, f"{name}-latency-vs-K.png")
            line_plot(p, f"{name}: latency vs candidates K (H = {hh}, {st['threads'][0]} threads)", "K", d)
            written.append(p)
        if len(st["hs"]) > 1:
            d = series(res, m, r, st["hs"], lambda h: (h, hk))
            p = os.path.join(out, f"{name}-latency-vs-H.png")
            line_plot(p, f"{name}: latency vs history length H (K = {hk}, {st['threads'][0]} threads)", "H", d)
            written.append(p)
        # by weight type
        types, ours, naive, raw = [], [], [], []
        for r in m["types"]:
            c = cell(r, hh, hk)
            if not c:
                continue
            types.append(r["weight_type"])
            ours.append(p50(c["ours"]) or 0)
            naive.append(p50(c.get("naive")) or 0)
            raw.append(p50(c.get("raw")) or 0)
        if types:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            x = range(len(types))
            w = 0.27
            ax.bar([i - w for i in x], ours, w, label="ours", color="tab:blue")
            ax.bar(list(x), raw, w, label="llama.cpp raw prefill", color="tab:gray")
            ax.bar([i + w for i in x], naive, w, label="llama.cpp naive", color="tab:red")
            t = tcell(m, hh, hk)
            if t and t.get("strong"):
                ax.axhline(p50(t["strong"]), color="tab:orange", linestyle="--", label="PyTorch strong (f32)")
            ax.set_xticks(list(x))
            ax.set_xticklabels(types)
            ax.set_yscale("log")
            ax.set_ylabel("latency, ms (p50)")
            ax.set_title(f"{name}: by weight type (H = {hh}, K = {hk})")
            ax.legend(fontsize=8)
            ax.grid(True, axis="y", which="both", alpha=0.3)
            fig.tight_layout()
            p = os.path.join(out, f"{name}-by-weight-type.png")
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(p)
    for p in written:
        print(f"wrote {p}")


if __name__ == "__main__":
    main(sys.argv[1:])
