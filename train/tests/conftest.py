import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write_items(path: Path, n: int = 40, extra: str = "") -> Path:
    lines = [ITEM_HEADER]
    for i in range(1, n + 1):
        lines.append(f"{i}\tMovie  {i}, The\t{1990 + i % 10}\tDrama\n")
    path.write_text("".join(lines) + extra, encoding="utf-8")
    return path


@pytest.fixture
def tiny_data(tmp_path):
    """40 items; user 1: 6 interactions with a timestamp tie; user 2: 5; user 3: 2 (too short);
    user 9 watched items 12..40 (so that every item occurs in the interactions)."""
    write_items(tmp_path / "toy.item")
    rows = [
        ("1", "5", 100), ("2", "1", 50), ("1", "3", 90), ("1", "7", 100),  # 5 before 7 at t=100 (file order)
        ("1", "2", 80), ("2", "4", 60), ("1", "9", 120), ("1", "11", 130),
        ("2", "6", 70), ("2", "8", 80), ("2", "10", 90), ("3", "1", 10), ("3", "2", 20),
    ] + [("9", str(i), 1000 + i) for i in range(12, 41)]
    with open(tmp_path / "toy.inter", "w", encoding="utf-8") as f:
        f.write(INTER_HEADER)
        for u, i, t in rows:
            f.write(f"{u}\t{i}\t4\t{t}\n")
    return tmp_path


def write_hf(d, arch):
    """A tiny random HF checkpoint with a byte-level BPE tokenizer (what ``delrec-convert model`` takes)."""
    import torch
    import transformers

    torch.manual_seed(1)
    kw = dict(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=0,
              eos_token_id=0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw, use_sliding_window=False))
    with torch.no_grad():  # norms away from 1, so a mix-up of norm tensors would show
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
    model.save_pretrained(d, safe_serialization=True)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0} | {c: i + 1 for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|endoftext|>",
                                                         "eos_token": "<|endoftext|>", "add_bos_token": False}))


@pytest.fixture
def synth(tmp_path):
    write_items(tmp_path / "syn.item", 60)
    rng = np.random.default_rng(0)
    with open(tmp_path / "syn.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u in range(1, 41):
            start = int(rng.integers(1, 30))
            for k in range(12):  # a learnable pattern: consecutive item ids
                f.write(f"{u}\t{start + k}\t5\t{1000 + k // 2}\n")  # pairs of equal timestamps
    return tmp_path
