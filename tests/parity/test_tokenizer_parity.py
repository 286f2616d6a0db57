"""llama.cpp tokenizer (via `delrec tokenize`) == Hugging Face `tokenizers`, exact ids."""

import json

import pytest

import parity_util as pu

pytestmark = pytest.mark.requires_binaries

CASES = {
    "gpt2": ("llama-tiny", "tokenizer-gpt2"),
    "qwen2": ("qwen2-tiny", "tokenizer-qwen2"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_tokenizer_parity(kind, bins, gguf, fixtures_dir, ref_tokenizer):
    model, tok_dir = CASES[kind]
    strings_file = fixtures_dir / "tokenize-strings.json"
    with open(strings_file, encoding="utf-8") as f:
        strings = json.load(f)
    tok = ref_tokenizer(tok_dir)
    expected = [pu.ref.encode(tok, s) for s in strings]

    out = pu.run_json([bins.delrec, "tokenize", "--model", gguf(model, "f32"),
                       "--strings", strings_file, "--json"], "delrec tokenize")
    got = out.get("ids")
    assert isinstance(got, list), f"`ids` missing from delrec tokenize output: {list(out)}"
    assert len(got) == len(strings), f"{len(got)} id lists for {len(strings)} strings"

    bad = [i for i, (e, g) in enumerate(zip(expected, got)) if list(e) != list(g)]
    if bad:
        lines = [f"{len(bad)}/{len(strings)} strings tokenize differently ({kind}); first ones:"]
        for i in bad[:8]:
            s = strings[i]
            lines.append(f"  [{i}] {s!r}")
            lines.append(f"      hf     : {expected[i]}  {tok.encode(s, add_special_tokens=False).tokens if s else []}")
            lines.append(f"      runtime: {got[i]}")
        pytest.fail("\n".join(lines), pytrace=False)
