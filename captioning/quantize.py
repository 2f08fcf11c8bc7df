"""Int8 weights for decoding on CPUs: every linear layer of the decoder, and its output head.

At batch 1 a decoding step is a chain of matrix-vector products whose cost is reading
the weights; fbgemm's dynamic int8 kernels (int8 weights per output channel, activations
quantized on the fly) read a quarter of what fp32 reads and measured 2x faster per step
than bf16 on this CPU, with the 50k-token output head 6x faster. This is for inference
only: the saved and trained weights stay in full precision, and a quantized copy is made
when a captioner first decodes.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def int8_available(device: torch.device) -> bool:
    return (device.type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines
            and hasattr(torch.ops.quantized, "linear_dynamic"))


def _pack(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(out, in) float weight -> fbgemm packed int8 weight, one scale per output channel."""
    w = weight.detach().float().contiguous()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    with warnings.catch_warnings():  # torch marks quantized tensors deprecated; callers fall back if they go
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(w, scales.double(), torch.zeros(len(w), dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


class Int8Linear(nn.Module):
    """y = x W^T + b with int8 W; takes and returns the input's dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features = weight.shape[0]
        self.packed = _pack(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]).float().contiguous(), self.packed)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


def quantized_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` with every nn.Linear and GPT-2 Conv1D replaced by Int8Linear."""
    clone = copy.deepcopy(module).float().eval()
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):  # GPT-2 stores (in, out)
                setattr(parent, name, Int8Linear(child.weight.t(), child.bias))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child.weight, child.bias))
    return clone
