"""transformers' T5 with its gated-GELU computed the way ggml's CPU backend computes it.

ggml-cpu builds with ``GGML_GELU_FP16`` (``ggml-cpu/vec.h``): ``ggml_vec_geglu_f32`` returns 0 for
``x <= -10``, ``x * g`` for ``x >= 10``, and otherwise ``f32(table[f16(x)]) * g``, the table holding
``f16(ggml_gelu_f32(f32(h)))`` for every F16 value ``h`` (``ggml-cpu.c``), with ``ggml_gelu_f32`` the
tanh form (HF's ``gelu_new``) in F32. So each activation is the tanh GELU of the input rounded to
F16, itself rounded to F16: about 1e-3 relative, the part of llama.cpp's F32 deviation from
transformers that is not the conversion. With this activation in place, what is left between
the two is the conversion itself plus F32 summation order.
"""
import torch

GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.79788456080286535587989211986876


def ggml_gelu(x: torch.Tensor) -> torch.Tensor:
    """ggml's table GELU on an F32 tensor, F32 arithmetic in ggml's order of operations."""
    x = x.float()
    h = x.half().float()
    a = torch.tensor(SQRT_2_OVER_PI, dtype=torch.float32) * h
    b = 1.0 + torch.tensor(GELU_COEF_A, dtype=torch.float32) * h * h
    table = (0.5 * h * (1.0 + torch.tanh(a * b))).half().float()
    return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, table))


class GgmlGelu(torch.nn.Module):
    def forward(self, x):
        return ggml_gelu(x)


def use_ggml_gelu(model) -> int:
    """Replaces the activation of every gated-GELU T5 FFN in ``model`` (a T5 or a PEFT model over
    one); returns how many were replaced."""
    from transformers.models.t5.modeling_t5 import T5DenseGatedActDense

    n = 0
    for m in model.modules():
        if isinstance(m, T5DenseGatedActDense):
            m.act = GgmlGelu()
            n += 1
    return n
