import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from delrec_train.peft_io import load_prompt, save_prompt

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "reference" / "reference.py"


def test_round_trip(tmp_path):
    emb = np.random.default_rng(0).standard_normal((16, 576)).astype(np.float32)
    d = save_prompt(tmp_path / "sp", emb, meta={"template": "{soft:default}{history}{candidate}"})
    cfg = json.loads((d / "adapter_config.json").read_text())
    for k, v in {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 16, "token_dim": 576,
                 "num_transformer_submodules": 1, "base_model_name_or_path": "SmolLM2-135M-Instruct.Q4_1.gguf"}.items():
        assert cfg[k] == v
    from safetensors.numpy import load_file
    t = load_file(str(d / "adapter_model.safetensors"))
    assert list(t) == ["prompt_embeddings"] and t["prompt_embeddings"].dtype == np.float32
    back, cfg2, meta = load_prompt(d)
    assert np.array_equal(back, emb) and cfg2 == cfg and meta["template"].startswith("{soft:default}")


def test_load_errors(tmp_path):
    d = save_prompt(tmp_path / "sp", np.zeros((4, 8), np.float32))
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["num_virtual_tokens"] = 5
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        load_prompt(d)
    cfg["peft_type"] = "LORA"
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="PROMPT_TUNING"):
        load_prompt(d)
    with pytest.raises(ValueError, match="NaN"):
        save_prompt(tmp_path / "nan", np.full((2, 3), np.nan, np.float32))


def test_torch_tensor_input(tmp_path):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.randn(3, 5))
    back, _, _ = load_prompt(save_prompt(tmp_path / "t", p))
    assert np.allclose(back, p.detach().numpy())


@pytest.mark.skipif(not REFERENCE.is_file(), reason="repository reference implementation not present")
def test_reference_reader_accepts_it(tmp_path):
    spec = importlib.util.spec_from_file_location("delrec_reference", REFERENCE)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = ref.load_soft_prompt(str(save_prompt(tmp_path / "sp", emb)))
    assert np.array_equal(got, emb.astype(np.float64))
