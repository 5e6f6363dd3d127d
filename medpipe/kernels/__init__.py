"""Fused ops: a plain PyTorch reference and a Triton kernel for each, one dispatcher.

``instance_norm_leaky_relu`` (the STU-Net block's hot pair) and ``accumulate_patch``
(Gaussian-weighted stitching of a tile's logits). CUDA tensors go to the Triton kernels
(triton is the optional ``medpipe[triton]`` extra); CPU tensors use the reference,
which we measured to be as fast as anything we could fuse in PyTorch on CPU.
"""

from __future__ import annotations

from medpipe.kernels.dispatch import (
    accumulate_patch,
    instance_norm_leaky_relu,
    triton_available,
)
from medpipe.kernels.reference import accumulate_patch_reference, instance_norm_leaky_relu_reference

__all__ = ["accumulate_patch", "instance_norm_leaky_relu", "triton_available",
           "accumulate_patch_reference", "instance_norm_leaky_relu_reference"]
