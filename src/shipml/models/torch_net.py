"""The PyTorch pieces of shipml's networks: the MLP module with seeded initialisation and
dropout, thread control, tensors from arrays, mini-batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Network(nn.Module):
    """Per hidden layer: linear, [batch norm], activation, dropout; then a linear output."""

    def __init__(
        self,
        n_inputs: int,
        hidden: Sequence[int],
        n_outputs: int,
        activation: str,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        blocks = []
        for width in hidden:
            # skip_init: no draw from torch's global generator; `initialise` fills the weights.
            layers: list[nn.Module] = [nn.utils.skip_init(nn.Linear, n_inputs, width)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(ACTIVATIONS[activation]())
            blocks.append(nn.Sequential(*layers))
            n_inputs = width
        self.hidden = nn.ModuleList(blocks)
        self.output = nn.utils.skip_init(nn.Linear, n_inputs, n_outputs)
        self.dropout = dropout

    def initialise(self, generator: torch.Generator) -> None:
        """PyTorch's default Linear initialisation, U(±1/√fan_in), drawn from ``generator``."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    bound = 1.0 / math.sqrt(module.in_features)
                    module.weight.uniform_(-bound, bound, generator=generator)
                    module.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for block in self.hidden:
            x = block(x)
            if self.training and self.dropout > 0:
                # Our own dropout: nn.Dropout can only draw from torch's global generator.
                keep = 1.0 - self.dropout
                mask = torch.rand(x.shape, generator=generator) < keep
                x = x * mask.to(x.dtype) / keep
        return self.output(x)


@contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set for the block (None: left alone), then restored (it
    is process-wide). More threads than one rarely help small networks on two busy cores."""
    if n_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def as_tensor(X: np.ndarray) -> torch.Tensor:
    # torch.from_numpy shares memory but warns on read-only arrays (memmaps): copy only then.
    return torch.from_numpy(np.require(X, dtype=np.float32, requirements=["C", "W"]))


def batches(order: torch.Tensor, batch_size: int, batch_norm: bool) -> list[torch.Tensor]:
    batches = list(order.split(batch_size))
    if batch_norm and len(batches) > 1 and len(batches[-1]) == 1:
        # Batch norm cannot train on one row: fold a lone last row into the batch before it.
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches
