"""Self-checks of the fixtures and of the numpy reference (no project binaries needed)."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import parity_util as pu

ref = pu.ref
REF_SCRIPT = pu.REFERENCE_DIR / "reference.py"

MODELS = [("llama-tiny", None), ("qwen2-tiny", None), ("llama-tiny", "lora-llama"), ("llama-wide", None)]


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


def test_fixtures_are_deterministic(fixtures_dir, manifest, tmp_path):
    out = tmp_path / "fx"
    subprocess.run([sys.executable, str(pu.FIXTURE_SCRIPT), str(out)], check=True, capture_output=True)
    with open(out / "MANIFEST.json", encoding="utf-8") as f:
        again = json.load(f)
    assert again["sha256"] == manifest["sha256"]


def test_manifest_and_configs(fixtures_dir, manifest):
    assert manifest["version"]
    for name, info in manifest["models"].items():
        with open(fixtures_dir / name / "config.json", encoding="utf-8") as f:
            cfg = json.load(f)
        if cfg["model_type"] == "t5":
            # The committed SentencePiece vocabulary, its embedding rows padded as HF pads them.
            assert cfg["vocab_size"] >= info["tokenizer_size"] > 0
        else:
            kind = "qwen2" if cfg["model_type"] == "qwen2" else "gpt2"
            assert cfg["vocab_size"] == manifest["tokenizers"][kind]["vocab_size"]
        w = ref.load_hf_weights(str(fixtures_dir / name))
        assert {k: list(v.shape) for k, v in w.items()} == {k: v["shape"] for k, v in info["tensors"].items()}
        assert ("lm_head.weight" in w) == (not cfg["tie_word_embeddings"])
    assert manifest["tokenizers"]["gpt2"]["vocab_size"] == 700
    assert manifest["tokenizers"]["qwen2"]["vocab_size"] == 800


def test_safetensors_roundtrip_with_library(fixtures_dir):
    import safetensors.numpy as st
    from safetensors import safe_open

    for rel in ["llama-tiny/model.safetensors", "llama-wide/model.safetensors",
                "lora-llama/adapter_model.safetensors", "prompt-llama/adapter_model.safetensors"]:
        lib = st.load_file(str(fixtures_dir / rel))
        mine = ref.read_safetensors(str(fixtures_dir / rel))
        assert set(lib) == set(mine)
        for k in lib:
            np.testing.assert_array_equal(lib[k].astype(np.float32), mine[k])
    assert {v.dtype for v in st.load_file(str(fixtures_dir / "llama-wide/model.safetensors")).values()} == {np.dtype(np.float16)}
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]:
        with safe_open(str(fixtures_dir / "qwen2-tiny" / shard), "np") as f:
            for k in f.keys():
                assert f.get_slice(k).get_dtype() == "BF16"
    w = ref.load_hf_weights(str(fixtures_dir / "qwen2-tiny"))
    for k, v in w.items():
        assert not np.any(v.view(np.uint32) & 0xFFFF), f"{k} is not bf16-exact"
    with open(fixtures_dir / "qwen2-tiny" / "model.safetensors.index.json", encoding="utf-8") as f:
        idx = json.load(f)
    assert set(idx["weight_map"]) == set(w)
    assert len(set(idx["weight_map"].values())) == 2


def test_catalog_csv_equals_jsonl(fixtures_dir):
    a = ref.load_catalog(str(fixtures_dir / "catalog.csv"))
    b = ref.load_catalog(str(fixtures_dir / "catalog.jsonl"))
    assert a == b and len(a) >= 40
    with open(fixtures_dir / "catalog.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "title", "text"]
    assert any("," in r[1] for r in rows[1:]) and any('"' in r[1] for r in rows[1:])


@pytest.mark.parametrize("tok_dir", ["tokenizer-gpt2", "tokenizer-qwen2"])
def test_tokenizer_fixture_sanity(fixtures_dir, ref_tokenizer, tok_dir):
    tok = ref_tokenizer(tok_dir)
    with open(fixtures_dir / "tokenize-strings.json", encoding="utf-8") as f:
        strings = json.load(f)
    assert len(strings) >= 300 and len(set(strings)) == len(strings)
    for i, s in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]):
        assert tok.token_to_id(s) == i
    n_multi = 0
    for s in strings:
        ids = ref.encode(tok, s)
        assert tok.decode(ids, skip_special_tokens=False) == s, f"byte-level BPE not lossless for {s!r}"
        n_multi += any(len(tok.id_to_token(i)) > 1 for i in ids)
    assert n_multi > 200  # merges are really used
    with open(fixtures_dir / tok_dir / "tokenizer.json", encoding="utf-8") as f:
        tj = json.load(f)
    assert tj["normalizer"] is None
    assert tj["decoder"]["type"] == "ByteLevel"
    assert all(t["special"] for t in tj["added_tokens"])


# --------------------------------------------------------------------------------------
# reference forward: an independent slow implementation
# --------------------------------------------------------------------------------------


def slow_forward(m, ids):
    """Loop-based re-implementation: per-head/per-position attention, complex-number RoPE
    (pairs (i, i+d/2) rotated by pos*theta^(-2i/d)), explicit GQA head mapping."""
    w = m.w
    cfg = m.cfg
    nh, nkv, hd = m.n_heads, m.n_kv, m.head_dim
    eps = m.eps
    x = np.array([m.embed[t] for t in ids], dtype=np.float64)
    n = len(ids)

    def norm(v, g):
        return g * v / math.sqrt(float(np.dot(v, v)) / len(v) + eps)

    def lin(v, name):
        y = w[name + ".weight"] @ v
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def rot(vec, pos):
        half = hd // 2
        z = vec[:half] + 1j * vec[half:]
        ang = np.array([pos * cfg.get("rope_theta", 10000.0) ** (-2.0 * i / hd) for i in range(half)])
        z = z * np.exp(1j * ang)
        return np.concatenate([z.real, z.imag])

    for L in range(m.n_layers):
        p = f"model.layers.{L}."
        hs = [norm(x[t], w[p + "input_layernorm.weight"]) for t in range(n)]
        q = [lin(h, p + "self_attn.q_proj") for h in hs]
        k = [lin(h, p + "self_attn.k_proj") for h in hs]
        v = [lin(h, p + "self_attn.v_proj") for h in hs]
        attn_out = np.zeros((n, nh * hd))
        for head in range(nh):
            kvh = head // (nh // nkv)
            for t in range(n):
                qt = rot(q[t][head * hd:(head + 1) * hd], t)
                logits = []
                for s in range(t + 1):
                    ks = rot(k[s][kvh * hd:(kvh + 1) * hd], s)
                    logits.append(float(np.dot(qt, ks)) / math.sqrt(hd))
                mx = max(logits)
                e = [math.exp(a - mx) for a in logits]
                tot = sum(e)
                acc = np.zeros(hd)
                for s in range(t + 1):
                    acc += (e[s] / tot) * v[s][kvh * hd:(kvh + 1) * hd]
                attn_out[t, head * hd:(head + 1) * hd] = acc
        for t in range(n):
            x[t] = x[t] + lin(attn_out[t], p + "self_attn.o_proj")
        for t in range(n):
            h = norm(x[t], w[p + "post_attention_layernorm.weight"])
            g = lin(h, p + "mlp.gate_proj")
            u = lin(h, p + "mlp.up_proj")
            act = np.array([gi / (1.0 + math.exp(-gi)) for gi in g]) * u
            x[t] = x[t] + lin(act, p + "mlp.down_proj")
    out = np.array([m.lm_head @ norm(x[t], w["model.norm.weight"]) for t in range(n)])
    return out


@pytest.mark.parametrize("model,lora", MODELS[:3], ids=["llama", "qwen2", "llama+lora"])
def test_reference_matches_slow_implementation(ref_model, ref_tokenizer, model, lora):
    m = ref_model(model, lora)
    tok = ref_tokenizer("tokenizer-qwen2" if model.startswith("qwen2") else "tokenizer-gpt2")
    ids = pu.probe_tokens(tok, m.vocab, max_len=20)
    fast = m.forward_tokens(ids)
    slow = slow_forward(m, ids)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)


@pytest.mark.parametrize("model,lora", MODELS, ids=["llama", "qwen2", "llama+lora", "wide"])
def test_reference_is_causal_and_has_spread(ref_model, ref_tokenizer, model, lora):
    m = ref_model(model, lora)
    tok = ref_tokenizer("tokenizer-qwen2" if model.startswith("qwen2") else "tokenizer-gpt2")
    ids = pu.probe_tokens(tok, m.vocab)
    full = m.forward_tokens(ids)
    part = m.forward_tokens(ids[:9])
    np.testing.assert_allclose(full[:9], part, rtol=0, atol=1e-10)
    assert np.all(np.isfinite(full))
    assert full.std(axis=1).min() > 0.5, "logits are nearly uniform"
    assert len(set(full.argmax(axis=1).tolist())) > 3


def test_lora_merge(fixtures_dir, ref_model, ref_tokenizer):
    base, merged = ref_model("llama-tiny"), ref_model("llama-tiny", "lora-llama")
    ad = ref.read_safetensors(str(fixtures_dir / "lora-llama" / "adapter_model.safetensors"))
    a = ad["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"].astype(np.float64)
    b = ad["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].astype(np.float64)
    name = "model.layers.1.self_attn.v_proj.weight"
    np.testing.assert_allclose(merged.w[name] - base.w[name], (8 / 4) * b @ a, atol=1e-12)
    untouched = "model.layers.1.self_attn.k_proj.weight"
    np.testing.assert_array_equal(merged.w[untouched], base.w[untouched])
    ids = pu.probe_tokens(ref_tokenizer("tokenizer-gpt2"), base.vocab)
    d = np.abs(merged.forward_tokens(ids) - base.forward_tokens(ids)).max()
    assert d > 0.1, f"LoRA barely changes the logits ({d})"


# --------------------------------------------------------------------------------------
# template contract and scoring
# --------------------------------------------------------------------------------------


def test_template_parsing():
    parts = ref.parse_template(pu.DEFAULT_TEMPLATE)
    assert parts == [("soft", "default"), ("text", "Recently watched:"), ("history", ""),
                     ("text", ".\nNext:"), ("candidate", ""), ("text", "\n")]
    assert ref.parse_template("{history}{candidate}") == [("history", ""), ("candidate", "")]
    assert ref.parse_template("a{{x}}{history}b}}{soft:s_1.v-2}{candidate}{{") == [
        ("text", "a{x}"), ("history", ""), ("text", "b}"), ("soft", "s_1.v-2"), ("candidate", ""), ("text", "{")]
    for bad in ["{candidate}{history}", "{history}", "{candidate}", "{history}{history}{candidate}",
                "{history}{candidate}{candidate}", "{history}{candidate}{soft:a}", "a{x}{history}{candidate}",
                "{history}{candidate}}", "{history{candidate}", "{soft:a b}{history}{candidate}",
                "{soft:}{history}{candidate}", "{history}{candidate}{"]:
        with pytest.raises(ValueError):
            ref.parse_template(bad)


def manual_score(m, tok, prefix_rows, prefix_text_pieces, cand_pieces):
    """Independent scorer: explicit concatenation, forward once, sum log-probs."""
    rows = list(prefix_rows)
    for piece in prefix_text_pieces:
        rows.extend(m.embed[i] for i in ref.encode(tok, piece))
    cand_ids = [i for piece in cand_pieces for i in ref.encode(tok, piece)]
    start = len(rows)
    rows.extend(m.embed[i] for i in cand_ids)
    logits = m.forward_embeds(np.array(rows))
    total = 0.0
    for j, tid in enumerate(cand_ids):
        z = logits[start + j - 1]
        total += z[tid] - (z.max() + math.log(np.exp(z - z.max()).sum()))
    return total, len(cand_ids)


@pytest.mark.parametrize("add_bos", [False, True])
def test_score_equals_manual_sum(fixtures_dir, ref_model, ref_tokenizer, catalog, add_bos):
    m = ref_model("llama-tiny")
    tok = ref_tokenizer("tokenizer-gpt2")
    soft = ref.load_soft_prompt(str(fixtures_dir / "prompt-llama"))
    hist, cands = ["m001", "m011", "m010"], ["m002", "m032", "m036", "m040"]
    tpl = "User:{history}\n{soft:p}Next:{candidate}<end>"
    got = ref.score_candidates(m, tok, catalog, tpl, {"p": soft}, hist, cands, item_prefix=" ",
                               history_sep=";", add_bos=add_bos)
    for g, c in zip(got, cands):
        pre_rows = [m.embed[m.bos_token_id]] if add_bos else []
        pieces = ["User:", " " + catalog["m001"]["title"], ";", " " + catalog["m011"]["title"], ";",
                  " " + catalog["m010"]["title"], "\n"]
        pre_ids = [i for p in pieces for i in ref.encode(tok, p)]
        rows = pre_rows + [m.embed[i] for i in pre_ids] + list(soft) + [m.embed[i] for i in ref.encode(tok, "Next:")]
        s, n = manual_score(m, tok, rows, [], [" " + catalog[c]["title"], "<end>"])
        assert g["id"] == c and g["n_tokens"] == n
        assert abs(g["score"] - s) < 1e-9 and abs(g["mean"] - s / n) < 1e-9


def test_score_cli_equals_sum_over_logits_cli(fixtures_dir, ref_tokenizer, catalog):
    """CLI-level self check: `score` (no soft prompt) == sum over `logits` of the same sequence."""
    tok = ref_tokenizer("tokenizer-qwen2")
    tpl = "Watched:{history}.\nNext:{candidate}\n"
    hist, cand = ["m006", "m027"], "m009"
    out = subprocess.run(
        [sys.executable, str(REF_SCRIPT), "score", "--model-dir", str(fixtures_dir / "qwen2-tiny"),
         "--tokenizer", str(fixtures_dir / "tokenizer-qwen2" / "tokenizer.json"),
         "--catalog", str(fixtures_dir / "catalog.jsonl"), "--template", tpl,
         "--history", ",".join(hist), "--candidates", cand],
        check=True, capture_output=True, text=True).stdout
    sc = json.loads(out)["scores"][0]
    prefix = (ref.encode(tok, "Watched:") + ref.encode(tok, " " + catalog["m006"]["title"]) + ref.encode(tok, ",")
              + ref.encode(tok, " " + catalog["m027"]["title"]) + ref.encode(tok, ".\nNext:"))
    tail = ref.encode(tok, " " + catalog[cand]["title"]) + ref.encode(tok, "\n")
    ids = prefix + tail
    out = subprocess.run(
        [sys.executable, str(REF_SCRIPT), "logits", "--model-dir", str(fixtures_dir / "qwen2-tiny"),
         "--tokens", ",".join(map(str, ids))], check=True, capture_output=True, text=True).stdout
    logits = np.array(json.loads(out)["logits"])
    assert logits.shape == (len(ids), 800)
    lp = ref.log_softmax(logits)
    s = sum(lp[len(prefix) + j - 1, t] for j, t in enumerate(tail))
    assert sc["id"] == cand and sc["n_tokens"] == len(tail)
    assert abs(sc["score"] - s) < 1e-9


def test_tokenize_cli(fixtures_dir, ref_tokenizer):
    out = subprocess.run(
        [sys.executable, str(REF_SCRIPT), "tokenize", "--tokenizer",
         str(fixtures_dir / "tokenizer-gpt2" / "tokenizer.json"),
         "--strings", str(fixtures_dir / "tokenize-strings.json")], check=True, capture_output=True, text=True).stdout
    ids = json.loads(out)["ids"]
    with open(fixtures_dir / "tokenize-strings.json", encoding="utf-8") as f:
        strings = json.load(f)
    assert len(ids) == len(strings) and ids[0] == [] and strings[0] == ""


# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------


def test_stats():
    np.testing.assert_array_equal(pu.rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    assert pu.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert pu.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pu.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert pu.kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert pu.kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with ties (value cross-checked against scipy.stats.kendalltau)
    assert pu.kendall_tau_b([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)
