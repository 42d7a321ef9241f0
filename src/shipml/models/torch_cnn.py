"""A small convolutional network for images stored as table rows, as a scikit-learn classifier.

Each row of X holds one image's pixels flattened in row-major (height, width, channels) order;
``image_shape`` says how to fold them back. The network: a learned input normalisation
(BatchNorm2d over each channel's pixels: raw 0-255 or 0-16 values, pixels scaled as a whole
and per-column standardised pixels all train), then per entry of ``conv_channels`` a block
Conv2d 3×3 (padding 1) → ReLU → [BatchNorm2d] → MaxPool 2×2 (along each axis still at least 2
pixels long), then a dense ReLU layer with dropout and a linear output per class.

Training is the loop every shipml network shares (``shipml.models.torch_net``: AdamW, a
stratified validation split, early stopping restoring the best weights, ReduceLROnPlateau),
with light augmentation of the training batches: random whole-pixel shifts and optional small
rotations, drawn from the estimator's own generator so training stays bit-reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shipml.models.torch_net import TorchNetClassifier, is_int_at_least, seeded_dropout

__all__ = ["ConvNetwork", "TorchCNNClassifier", "infer_image_shape", "shift_and_rotate"]

ImageShape = tuple[int, int, int]  # (height, width, channels)
# The share of training images augmented: shifting every image of centred digits costs accuracy
# (measured on scikit-learn's digits), shifting half of them gains some.
AUGMENTED_FRACTION = 0.5


def infer_image_shape(n_features: int) -> ImageShape:
    """The image ``image_shape=None`` means: a square one-channel image when ``n_features`` is
    a perfect square, else a one-pixel-high strip, (1, n_features, 1)."""
    side = math.isqrt(n_features)
    return (side, side, 1) if side * side == n_features else (1, n_features, 1)


def default_max_shift(size: int) -> int:
    """Whole pixels a side of ``size`` pixels may shift by: about a tenth, at least one; none
    for sides under 4 pixels (a strip's height, tabular rows)."""
    return 0 if size < 4 else max(1, round(size / 10))


class ConvNetwork(nn.Module):
    """Input batch norm, conv-pool blocks, a dense layer with dropout, one output per class."""

    def __init__(
        self,
        image_shape: Sequence[int],
        conv_channels: Sequence[int],
        batch_norm: bool,
        dense_units: int,
        n_outputs: int,
        dropout: float,
    ) -> None:
        super().__init__()
        height, width, channels = (int(s) for s in image_shape)
        self.image_shape = (height, width, channels)
        self.input_norm = nn.BatchNorm2d(channels)
        blocks = []
        for out in conv_channels:
            # skip_init: no draw from torch's global generator; `initialise` fills the weights.
            layers = [nn.utils.skip_init(nn.Conv2d, channels, out, 3, padding=1), nn.ReLU()]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            pool = (2 if height >= 2 else 1, 2 if width >= 2 else 1)
            if pool != (1, 1):
                layers.append(nn.MaxPool2d(pool))
                height, width = height // pool[0], width // pool[1]
            blocks.append(nn.Sequential(*layers))
            channels = out
        # Channels last: CPU max pooling runs several times faster than on (n, C, H, W).
        # (torch's stubs omit Module.to's memory_format.)
        features = nn.Sequential(*blocks)
        self.features = features.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.dense = nn.utils.skip_init(nn.Linear, channels * height * width, dense_units)
        self.output = nn.utils.skip_init(nn.Linear, dense_units, n_outputs)
        self.dropout = dropout

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of flattened (height, width, channels) pixels as an (n, C, H, W) batch."""
        images = x.reshape(-1, *self.image_shape).permute(0, 3, 1, 2)
        return images.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.features(self.input_norm(self.images(x)))
        x = torch.relu(self.dense(x.flatten(1)))
        if self.training and self.dropout > 0:
            x = seeded_dropout(x, self.dropout, generator)
        return self.output(x)


def shift_and_rotate(
    images: torch.Tensor,
    max_shift: tuple[int, int],
    max_degrees: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each (n, C, H, W) image shifted by whole pixels, up to ``max_shift`` (rows, columns),
    and rotated by up to ``max_degrees`` about its centre; edge pixels fill the border."""
    n, _, height, width = images.shape
    dy = torch.randint(-max_shift[0], max_shift[0] + 1, (n,), generator=generator)
    dx = torch.randint(-max_shift[1], max_shift[1] + 1, (n,), generator=generator)
    angle = torch.zeros(n)
    if max_degrees > 0:
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates: one pixel is 2/width across, 2/height down.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * height / width, 2 * dx / width], dim=1),
            torch.stack([sin * width / height, cos, 2 * dy / height], dim=1),
        ],
        dim=1,
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


class TorchCNNClassifier(TorchNetClassifier):
    """A CNN classifier on images stored as rows of flattened pixels (see the module doc).

    ``image_shape`` is (height, width, channels); None infers it from the number of columns
    (``infer_image_shape``). ``augment`` shifts training images by up to ``max_shift`` pixels
    (None: about a tenth of each side, at least one; 0: no shifts) and rotates them by up to
    ``max_rotation`` degrees, a random half of each training batch. (On pixel columns
    standardised one by one a shift mixes scales; on the digits it cost no measurable accuracy.)
    Fitted attributes as the MLP's, plus ``image_shape_``.
    """

    _predict_chunk = 1024  # images per forward pass outside training: bounded activations
    _fused_optimizer = True

    def __init__(
        self,
        image_shape: Sequence[int] | None = (8, 8, 1),
        conv_channels: Sequence[int] = (32, 64),
        batch_norm: bool = True,
        dense_units: int = 128,
        dropout: float = 0.5,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 128,
        max_epochs: int = 100,
        validation_fraction: float = 0.1,
        patience: int = 10,
        lr_patience: int = 4,
        lr_factor: float = 0.5,
        min_delta: float = 1e-4,
        augment: bool = True,
        max_shift: int | None = None,
        max_rotation: float = 0.0,
        random_state: int | np.random.RandomState | None = None,
        n_threads: int = 1,
        verbose: int = 0,
        class_weight: str | dict[Any, float] | None = None,
    ) -> None:
        self.image_shape = image_shape
        self.conv_channels = conv_channels
        self.batch_norm = batch_norm
        self.dense_units = dense_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor
        self.min_delta = min_delta
        self.augment = augment
        self.max_shift = max_shift
        self.max_rotation = max_rotation
        self.random_state = random_state
        self.n_threads = n_threads
        self.verbose = verbose
        self.class_weight = class_weight

    def _param_rules(self) -> dict[str, bool]:
        def sizes(values: Any) -> bool:
            return isinstance(values, Sequence) and all(is_int_at_least(v, 1) for v in values)

        shape = self.image_shape
        return {
            "image_shape": shape is None or (sizes(shape) and len(shape) == 3),
            "conv_channels": sizes(self.conv_channels),
            "dense_units": is_int_at_least(self.dense_units, 1),
            "dropout": 0 <= self.dropout < 1,
            "max_shift": self.max_shift is None or is_int_at_least(self.max_shift, 0),
            "max_rotation": 0 <= self.max_rotation <= 45,
            **super()._param_rules(),
        }

    def _resolve_image_shape(self, n_inputs: int) -> ImageShape:
        if self.image_shape is None:
            return infer_image_shape(n_inputs)
        shape = (int(self.image_shape[0]), int(self.image_shape[1]), int(self.image_shape[2]))
        if math.prod(shape) != n_inputs:
            raise ValueError(
                f"{type(self).__name__}: image_shape={tuple(self.image_shape)!r} "
                f"(height, width, channels) holds {math.prod(shape)} pixel values, "
                f"but X has {n_inputs} features per row"
            )
        return shape

    def _architecture_for(self, n_inputs: int, n_outputs: int) -> dict[str, Any]:
        self.image_shape_ = self._resolve_image_shape(n_inputs)
        return {
            "image_shape": self.image_shape_,
            "conv_channels": tuple(int(c) for c in self.conv_channels),
            "batch_norm": bool(self.batch_norm),
            "dense_units": int(self.dense_units),
            "n_outputs": n_outputs,
            "dropout": float(self.dropout),
        }

    def _build_network(self) -> nn.Module:
        return ConvNetwork(**self._architecture)

    def _uses_batch_norm(self) -> bool:
        return True  # the input normalisation is a batch norm

    def _augmentation(self, shape: ImageShape) -> tuple[tuple[int, int], float] | None:
        """(max shift in rows, in columns; max degrees), or None when training batches are
        left as they are."""
        height, width, _ = shape
        if self.max_shift is None:
            shift = (default_max_shift(height), default_max_shift(width))
        else:
            shift = (min(self.max_shift, height - 1), min(self.max_shift, width - 1))
        if not self.augment or (shift == (0, 0) and not self.max_rotation):
            return None
        return shift, float(self.max_rotation)

    def _augment(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch (flattened rows, as they came) with a random half of its images
        shifted and rotated: the unshifted half keeps the network used to centred images."""
        augmentation = self._augmentation(self.image_shape_)
        if augmentation is None:
            return inputs
        chosen = torch.rand(len(inputs), generator=generator) < AUGMENTED_FRACTION
        if not chosen.any():
            return inputs
        height, width, channels = self.image_shape_
        images = inputs[chosen].reshape(-1, height, width, channels).permute(0, 3, 1, 2)
        moved = shift_and_rotate(images, *augmentation, generator)
        out = inputs.clone()
        out[chosen] = moved.permute(0, 2, 3, 1).reshape(len(images), -1)
        return out
