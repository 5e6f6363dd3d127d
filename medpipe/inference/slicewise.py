"""2D networks through the 3D sliding-window engine, slice by slice, in batches.

Why not a second engine: tiling, Gaussian blending, TTA, streamed stitching, OpenVINO,
int8 and the memory checks already exist for volumes, and a 3D study segmented by a 2D
network is a sliding window whose tiles are ``(P, P, k)`` slabs: ``k`` consecutive
slices (the slice axis is the last, K, after the bundle's reorientation; axial for RAS)
go through the 2D network as one batch of ``k`` images and come back as a ``(P, P, k)``
block of logits. Along K the tiles do not overlap (a slice's prediction does not depend
on its neighbours, so overlapping there would only repeat work) and the blending weights
are constant along K; in-plane the tiles overlap and blend exactly as for 3D models. A
true 2D image is a volume with K = 1.

``SliceWise`` wraps anything that maps ``(N, C, P, P)`` to ``(N, X, P, P)`` — a torch
module, its ``forward_features``, or a compiled OpenVINO network (fp32 or int8) — so the
2D network is converted and quantised as a 2D graph, where OpenVINO and NNCF work best.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from medpipe.errors import InputError

__all__ = ["SliceWise", "is_2d", "slab_patch", "DEFAULT_SLICES_PER_BATCH", "check_min_size"]

# Slices per forward pass when none are given: 4 keeps a full-size ParaTransCNN (attention
# over 56x56 tokens at 224^2) at about 2 GB of activations; small networks gain little more.
DEFAULT_SLICES_PER_BATCH = 4


def is_2d(model: Any) -> bool:
    """True for networks that declare ``spatial_dims == 2`` (the registry's 2D models)."""
    return int(getattr(model, "spatial_dims", 3)) == 2


def slab_patch(patch_size: Sequence[int], depth: int, slices: int | None) -> tuple[int, int, int]:
    """The engine's ``(P, P, k)`` tile for a 2D patch on a volume ``depth`` slices deep."""
    if len(patch_size) != 2 or any(int(p) <= 0 for p in patch_size):
        raise InputError(f"a 2D network needs a 2D patch size (height, width), got {tuple(patch_size)}")
    k = max(1, min(int(slices or DEFAULT_SLICES_PER_BATCH), int(depth)))
    return int(patch_size[0]), int(patch_size[1]), k


def check_min_size(model: Any, in_plane: Sequence[int], where: str = "the image") -> None:
    """Refuse an image smaller in-plane than the network's minimum input (its divisor), with
    one sentence; anything at least that big is padded up to the patch by the engine."""
    div = list(getattr(model, "input_shape_must_be_divisible_by", []) or [])[:2]
    name = type(model).__name__
    if div and any(int(s) < int(d) for s, d in zip(in_plane, div, strict=False)):
        raise InputError(f"{where} is {int(in_plane[0])}x{int(in_plane[1])} pixels in-plane, smaller than the "
                         f"{div[0]}x{div[1]} minimum of {name}")


class SliceWise:
    """``(B, C, P, P, k)`` -> ``(B, X, P, P, k)`` through a 2D callable on ``B * k`` images."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor]):
        self.net = net
        inner_imap = getattr(net, "imap", None)
        if inner_imap is not None:
            self.imap = self._imap

    @staticmethod
    def to_images(x: torch.Tensor) -> torch.Tensor:
        b, c, i, j, k = x.shape
        return x.permute(0, 4, 1, 2, 3).reshape(b * k, c, i, j)

    @staticmethod
    def to_slab(y: torch.Tensor, b: int, k: int) -> torch.Tensor:
        n, x, i, j = y.shape
        return y.reshape(b, k, x, i, j).permute(0, 2, 3, 4, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise InputError(f"slice-wise inference needs (B, C, I, J, K) tiles, got shape {tuple(x.shape)}")
        return self.to_slab(self.net(self.to_images(x)), x.shape[0], x.shape[-1])

    def _imap(self, items: Iterable[tuple[Any, torch.Tensor]]) -> Iterator[tuple[Any, torch.Tensor]]:
        """Pipelined passes of an OpenVINO network: reshape on the way in and out."""
        shapes: dict[int, tuple[int, int]] = {}

        def images() -> Iterator[tuple[Any, torch.Tensor]]:
            for n, (tag, x) in enumerate(items):
                shapes[n] = (x.shape[0], x.shape[-1])
                yield (n, tag), self.to_images(x)

        for (n, tag), y in self.net.imap(images()):  # type: ignore[attr-defined]
            b, k = shapes.pop(n)
            yield tag, self.to_slab(y, b, k)

