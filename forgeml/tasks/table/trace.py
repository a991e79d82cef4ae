"""Export-only stand-ins for what trace-based capture gets wrong (used by export.py here).

Trace-based capture (torch.jit.trace, and the TorchScript-based ONNX exporter built on it)
records one run of the Python code. Two of our modules trip it up; the stand-ins compute the
same numbers in a form it records correctly, and every export is still compared with the eager
model (which runs the originals), so a stand-in can never ship a different model.

- `FinalStateFromOutputs`: an RNN with pooling "last", for the TorchScript-based ONNX exporter.
- `traceable_encoder_inputs`: a pretrained text classifier's input ids, for any trace.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# --------------------------------------------------------------------------- rnn for ONNX


class FinalStateFromOutputs(nn.Module):
    """An `RNNEncoder` with pooling "last", computing its h_n from the per-step outputs.

    The TorchScript-based ONNX exporter crashes (vector::_M_range_check in its peephole pass) on
    a packed single-layer RNN whose per-step output is unused, which is what pooling "last"
    does; with the output used it exports packing correctly. The top layer's final states are
    in its outputs: the forward direction's at each row's last real step, the backward one's at
    step 0 (it reads the row from its last real step down to 0). The export check compares the
    result with the eager RNNEncoder, so this can never ship a different model.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.rnn = encoder.rnn
        self.directions = encoder.directions
        self.out_dim = encoder.out_dim

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        from forgeml.models.sequence import pool_last

        lengths = mask.sum(dim=1).cpu()  # (B,)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.rnn(packed)
        # (B, L, directions * H), zeros at padded steps
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=mask.shape[1])
        last = pool_last(output, mask)  # (B, directions * H): the forward final state first
        if self.directions == 1:
            return last
        hidden = self.rnn.hidden_size
        return torch.cat([last[:, :hidden], output[:, 0, hidden:]], dim=1)  # (B, 2H)


def for_torchscript_onnx(model: nn.Module) -> nn.Module:
    """`model` as `for_tracing` gives it, or a copy with every pooling-"last" RNNEncoder as
    `FinalStateFromOutputs`."""
    from forgeml.models.rnn import RNNEncoder

    model = for_tracing(model)

    def swapped(m: nn.Module) -> bool:
        return isinstance(m, RNNEncoder) and m.pooling is None

    if not any(swapped(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if swapped(child):
                setattr(parent, name, FinalStateFromOutputs(child))
    return model


# --------------------------------------------------------------------------- pretrained, traced


def traceable_encoder_inputs(self: Any, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """`Pretrained.encoder_inputs` (forgeml/models/pretrained.py) without writes into slices.

    torch.jit.trace records its `out[:, :p] = self.prefix` as a copy of the prefix expanded to
    the example's batch size, so the traced model fails on any other batch size ("The size of
    tensor a (24) must match the size of tensor b (8)"). torch.cat and an out-of-place scatter
    keep the batch size symbolic. The same ids and mask: the export check compares the traced
    model with the eager one, which still runs the original.
    """
    ids = inputs[f"text:{self.column}"]  # (B, L), checkpoint id + 1; 0 = padding
    mask = inputs[f"mask:{self.column}"]  # (B, L) bool, left-aligned
    batch = ids.shape[0]
    p, s = self.prefix.shape[0], self.suffix.shape[0]
    lengths = mask.sum(dim=1)  # (B,) real tokens per row
    body = (ids - 1).masked_fill(~mask, self.pad_id)  # (B, L)
    tail = body.new_full((batch, s), self.pad_id)  # (B, S): room for the suffix of a full row
    out = torch.cat([self.prefix.expand(batch, p), body, tail], dim=1)  # (B, P + L + S)
    if s:  # the suffix right after each row's last real token
        where = p + lengths[:, None] + torch.arange(s, device=ids.device)  # (B, S)
        out = out.scatter(1, where, self.suffix.expand(batch, s))
    positions = torch.arange(out.shape[1], device=ids.device)
    attention = (positions[None, :] < (p + lengths + s)[:, None]).long()  # (B, P + L + S)
    return out, attention


def for_tracing(model: nn.Module) -> nn.Module:
    """`model`, or, for a pretrained text classifier, a shallow copy of it whose
    `encoder_inputs` is `traceable_encoder_inputs` (the copy shares every weight)."""
    from forgeml.models.pretrained import Pretrained

    if not isinstance(model, Pretrained) or model.head != "sequence_classification":
        return model
    model = copy.copy(model)
    # An instance attribute wins over the class's method, so forward() calls this one.
    model.encoder_inputs = types.MethodType(traceable_encoder_inputs, model)
    return model
