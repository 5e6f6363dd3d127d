"""Streamed export: resample the stitched network output onto the study grid, then decide.

nnU-Net's predictor resamples the *logits* of the whole volume back to the original grid
(linear, the coarse axis nearest) and only then takes the argmax, because resampling a
label map instead moves boundaries (about 0.1 % of voxels on our phantoms). It does so with
a ``classes x voxels`` float array on the original grid — for a 105-class model on a
512x512x400 CT that is tens of gigabytes, one of the most reported failures.

We get the same numbers without that array. The sliding-window engine hands over
finalised slabs of the stitched mean along the last axis, in order; each network slice is
resampled in-plane as it arrives, and each output slice is formed as soon as the (at most
two) network slices it interpolates between are in, then decided (argmax, or nnU-Net's
region thresholds) and dropped. Memory: a few slices of ``channels x I x J``. When the
engine stitches the features in front of a linear 1x1 head, the features are resampled
and the head applied per output slice — exact as well, since linear interpolation weights
sum to one and so commute with an affine head.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medpipe.inference.feature_stitching import LinearHead
from medpipe.transforms.interpolation import AxisTaps, axis_taps, resample_separable

__all__ = ["GridExport"]


class GridExport:
    """A ``predict`` sink writing labels on a target grid.

    ``taps`` give, per axis, the network-grid positions each output voxel interpolates from
    (``AxisTaps``: indices, weights, inside mask). Output voxels outside the network grid
    (``inside`` false on any axis) are background. ``class_order`` switches to region mode:
    output channel ``i`` paints ``class_order[i]`` where its logit is positive (sigmoid >
    0.5), regions in order.
    """

    def __init__(self, taps: Sequence[AxisTaps], *, num_classes: int, class_order: Sequence[int] | None = None,
                 progress=None) -> None:
        if len(taps) != 3:
            raise ValueError("GridExport needs taps for three axes")
        self.taps = list(taps)
        self.out_shape = tuple(t.n_out for t in taps)
        self.num_classes = num_classes
        self.class_order = list(class_order) if class_order is not None else None
        top = max(self.class_order) if self.class_order else num_classes - 1
        self.labels = np.zeros(self.out_shape, np.uint8 if top < 256 else np.int16)
        self.head: LinearHead | None = None
        self._cache: dict[int, torch.Tensor] = {}
        self._received = 0
        self._next_out = 0
        kt = self.taps[2]
        # The last network slice each output slice needs, and the first it needs (to free the cache).
        self._need_last = kt.idx.max(axis=0)
        self._need_first = kt.idx.min(axis=0)
        self._inplane_inside = np.outer(self.taps[0].inside, self.taps[1].inside)

    @classmethod
    def affine_map(cls, net_shape: Sequence[int], out_shape: Sequence[int], a: Sequence[float], b: Sequence[float],
                   orders: Sequence[int], **kw) -> GridExport:
        """Output voxel ``o`` sits at network position ``a * o + b`` on each axis."""
        taps = [axis_taps(int(n), int(m), float(ai), float(bi), int(order))
                for n, m, ai, bi, order in zip(net_shape, out_shape, a, b, orders, strict=True)]
        return cls(taps, **kw)

    def start(self, net_shape: Sequence[int], head: LinearHead | None) -> None:
        for ax, n in enumerate(net_shape):
            if self.taps[ax].idx.max() >= n:
                raise ValueError(f"export taps reach past the network grid on axis {ax} ({n} voxels)")
        self.head = head

    def consume(self, mean: torch.Tensor, z0: int) -> None:
        """Network-grid slices ``z0 .. z0 + n`` of the stitched mean, ``(C, I, J, n)`` fp32."""
        if z0 != self._received:
            raise ValueError(f"export expected network slice {self._received}, got {z0}")
        ident = axis_taps(mean.shape[-1], mean.shape[-1], 1.0, 0.0, 0)
        planes = resample_separable(mean.float().cpu().numpy(), (self.taps[0], self.taps[1], ident))
        planes_t = torch.from_numpy(planes)
        for k in range(planes_t.shape[-1]):
            self._cache[z0 + k] = planes_t[..., k]
        self._received = z0 + mean.shape[-1]
        self._emit()

    def _emit(self) -> None:
        kt = self.taps[2]
        while self._next_out < self.out_shape[2] and self._need_last[self._next_out] < self._received:
            o = self._next_out
            acc = None
            for t in range(kt.idx.shape[0]):
                w = float(kt.weight[t, o])
                if w == 0.0:
                    continue
                term = self._cache[int(kt.idx[t, o])] * w
                acc = term if acc is None else acc + term
            if acc is not None and kt.inside[o]:
                self.labels[:, :, o] = self._decide(acc)
            self._next_out += 1
            if self._next_out < self.out_shape[2]:
                first = int(self._need_first[self._next_out])
                for z in [z for z in self._cache if z < first]:
                    del self._cache[z]

    def _decide(self, values: torch.Tensor) -> np.ndarray:
        if self.class_order is None:
            top = self.head.argmax(values) if self.head is not None else values.permute(1, 2, 0).contiguous().argmax(-1)
            out = top.numpy().astype(self.labels.dtype, copy=False)
        else:
            logits = self.head.logits(values) if self.head is not None else values
            out = np.zeros(values.shape[1:], self.labels.dtype)
            for i, value in enumerate(self.class_order):
                out[(logits[i] > 0).numpy()] = value
        if not self._inplane_inside.all():
            out = np.where(self._inplane_inside, out, 0).astype(self.labels.dtype, copy=False)
        return out

    def finish(self) -> np.ndarray:
        if self._next_out != self.out_shape[2]:
            raise RuntimeError(f"export received {self._received} network slices; output slice {self._next_out} "
                               "was never completed")
        return self.labels
