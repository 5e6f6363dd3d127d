"""U-Mamba (Ma, Li & Wang 2024): U-Mamba_Bot and U-Mamba_Enc, 3D and 2D, as the current official
code (bowang-lab/U-Mamba, ``UMambaBot_3d.py`` / ``UMambaEnc_3d.py`` / ``*_2d.py``) builds them.

Why our own: the official networks import ``mamba_ssm``, which needs its CUDA extension, so
they cannot be built, trained or run on a CPU at all. Ours use ``medpipe.models.mamba``
(same parameters, selective scan from ``medpipe.kernels``) and keep the official module
names, so an official ``network_weights`` state dict loads with ``strict=True``.

What the official constructor does, reproduced here (traps included):

* stem = residual block (in -> C0, 1x1 projection) + ``n_blocks[0] - 1`` BasicBlockD; then
  every stage s = residual block (stride ``strides[s]``, the 1x1 projection *always*
  present, the residual added before the last activation) + ``n_blocks[s] - 1`` BasicBlockD;
* block counts are silently cut: encoder stages ``s >= ceil(n / 2)`` and decoder stages
  ``s >= ceil((n - 1) / 2 + 0.5)`` get one block (a 6-stage plan with 2 blocks per stage
  becomes [2, 2, 2, 1, 1, 1] / [2, 2, 2, 1, 1]). The official code does it by mutating the
  plan's own lists; we copy them;
* decoder = nearest upsampling + 1x1 conv, concat skip, residual block (+ BasicBlockD), one
  1x1 head per stage; in 2D the last decoder stage has no skip (stage 0's output is unused);
* Mamba layer = flatten to tokens -> LayerNorm -> Mamba(d_state 16, d_conv 4, expand 2),
  run in fp32 with autocast off (AMP gave NaNs upstream); its output *replaces* the
  features, there is no residual around it;
* Bot: one layer on the deepest skip. Enc 3D: a layer after every stage, stage 0 included;
  a stage whose voxels are <= its channels switches to channel tokens (``d_model`` =
  voxels of that stage at the plan's patch size). Enc 2D: only stages with
  ``(s % 2) xor (n % 2)`` (the last stage always has one), ``nn.Identity`` elsewhere;
* initialisation: nnU-Net's He (a = 1e-2) on convolutions only; Mamba keeps its own.

The official decoder also holds the encoder as a submodule and nnU-Net's
``ConvDropoutNormReLU`` holds its layers twice (``conv`` and ``all_modules.0``), so official
checkpoints repeat tensors under alias keys (``decoder.encoder.*``, ``*.all_modules.N.*``).
Our state dict has each tensor once (safetensors refuses shared tensors); a load hook drops
the aliases after checking they hold the same values as the names we keep.

Counts (3D BraTS plan: 4 in, 4 classes, 128^3, 32..320 features, strides 1,2,2,2,2,2, 2 convs
per stage): Bot 42,124,692 and Enc 42,755,220 parameters; one Mamba layer at d_model 320 has
675,840. Outputs: deep supervision returns ``[full-res, 1/2, ...]`` in training mode only
(as STU-Net here; nnU-Net switches it off for inference the same way).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from medpipe.errors import BundleError
from medpipe.models._heads import DeepSupervisionHeads
from medpipe.models.mamba import Mamba
from medpipe.models.registry import register_model
from medpipe.models.stunet import BasicResBlock, UpsampleLayerNearest, _init_he

__all__ = ["ConvNormAct", "BasicBlockD", "MambaLayer", "UMamba", "halved_block_counts", "umamba_bot",
           "umamba_enc", "umamba_bot_2d", "umamba_enc_2d", "umamba_bot_xs", "umamba_enc_xs"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}


class ConvNormAct(nn.Module):
    """nnU-Net's ``ConvDropoutNormReLU`` (no dropout): ``conv``, ``norm``, optional ``nonlin``."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] | int, bias: bool,
                 act: bool, spatial_dims: int):
        super().__init__()
        kernel = list(kernel)
        self.conv = _CONV[spatial_dims](cin, cout, kernel, stride, padding=[(k - 1) // 2 for k in kernel], bias=bias)
        self.norm = _NORM[spatial_dims](cout, eps=1e-5, affine=True)
        self.nonlin = nn.LeakyReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return self.nonlin(x) if self.nonlin is not None else x


class BasicBlockD(nn.Module):
    """nnU-Net's ResNet-D basic block: conv-norm-act, conv-norm, + skip, act."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] | int = 1, *,
                 spatial_dims: int = 3):
        super().__init__()
        stride = [stride] * spatial_dims if isinstance(stride, int) else list(stride)
        self.conv1 = ConvNormAct(cin, cout, kernel, stride, True, True, spatial_dims)
        self.conv2 = ConvNormAct(cout, cout, kernel, 1, True, False, spatial_dims)
        self.nonlin2 = nn.LeakyReLU(inplace=True)
        ops: list[nn.Module] = []
        if any(s != 1 for s in stride):
            ops.append(_POOL[spatial_dims](stride, stride))
        if cin != cout:
            ops.append(ConvNormAct(cin, cout, [1] * spatial_dims, 1, False, False, spatial_dims))
        self.skip = nn.Sequential(*ops) if ops else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out += self.skip(x)
        return self.nonlin2(out)


class MambaLayer(nn.Module):
    """LayerNorm + Mamba over the voxels as tokens (or the channels, ``channel_token``), in fp32."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, channel_token: bool = False):
        super().__init__()
        self.dim = int(dim)
        self.norm = nn.LayerNorm(self.dim)
        self.mamba = Mamba(d_model=self.dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.channel_token = channel_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            b, c = x.shape[:2]
            dims = x.shape[2:]
            if self.channel_token:  # tokens = channels, d_model = voxels
                if math.prod(dims) != self.dim:
                    raise ValueError(f"this U-Mamba_Enc stage was built for {self.dim} voxels (its plan's patch size), "
                                     f"got {math.prod(dims)}: run it on patches of the size it was built for")
                out = self.mamba(self.norm(x.flatten(2))).reshape(b, c, *dims)
            else:
                if c != self.dim:
                    raise ValueError(f"Mamba layer of width {self.dim} got {c} channels")
                tokens = x.reshape(b, c, -1).transpose(1, 2)
                out = self.mamba(self.norm(tokens)).transpose(1, 2).reshape(b, c, *dims)
        return out.to(dtype) if dtype in (torch.float16, torch.bfloat16) else out


def _res_stage(cin: int, cout: int, blocks: int, kernel: Sequence[int], stride: Sequence[int],
               spatial_dims: int) -> nn.Sequential:
    first = BasicResBlock(cin, cout, kernel, stride=stride, use_1x1conv=True, spatial_dims=spatial_dims)
    rest = [BasicBlockD(cout, cout, kernel, spatial_dims=spatial_dims) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest)


def halved_block_counts(n_blocks: Sequence[int], n_blocks_decoder: Sequence[int]) -> tuple[list[int], list[int]]:
    """The official constructor's cut: later encoder/decoder stages get a single block."""
    enc, dec = list(n_blocks), list(n_blocks_decoder)
    n = len(enc)
    for s in range(math.ceil(n / 2), n):
        enc[s] = 1
    for s in range(math.ceil((n - 1) / 2 + 0.5), n - 1):
        dec[s] = 1
    return enc, dec


class _Encoder(nn.Module):
    def __init__(self, in_channels, features, kernels, strides, n_blocks, spatial_dims, mamba_stages, token_dims):
        super().__init__()
        n = len(features)
        self.stem = _res_stage(in_channels, features[0], n_blocks[0], kernels[0], [1] * spatial_dims, spatial_dims)
        self.stages = nn.ModuleList([_res_stage(features[s - 1] if s else features[0], features[s], n_blocks[s],
                                                kernels[s], strides[s], spatial_dims) for s in range(n)])
        if mamba_stages is not None:
            self.mamba_layers = nn.ModuleList([
                MambaLayer(token_dims[s] or features[s], channel_token=bool(token_dims[s])) if s in mamba_stages
                else nn.Identity() for s in range(n)])
        else:
            self.mamba_layers = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if self.mamba_layers is not None:
                x = self.mamba_layers[s](x)
            skips.append(x)
        return skips


class _Decoder(nn.Module):
    def __init__(self, features, kernels, strides, n_blocks, num_classes, spatial_dims):
        super().__init__()
        n = len(features)
        self.skip_last = spatial_dims == 2  # the official 2D decoders drop stage 0's skip
        ups, stages, heads = [], [], []
        for s in range(1, n):
            below, skip = features[-s], features[-(s + 1)]
            ups.append(UpsampleLayerNearest(below, skip, strides[-s], spatial_dims))
            concat = not (self.skip_last and s == n - 1)
            stages.append(_res_stage(2 * skip if concat else skip, skip, n_blocks[s - 1], kernels[-(s + 1)],
                                     [1] * spatial_dims, spatial_dims))
            heads.append(_CONV[spatial_dims](skip, num_classes, 1, 1, 0, bias=True))
        self.upsample_layers = nn.ModuleList(ups)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(heads)

    def forward(self, skips: list[torch.Tensor], heads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (up, stage) in enumerate(zip(self.upsample_layers, self.stages, strict=True)):
            x = up(x)
            if not (self.skip_last and s == last):
                x = torch.cat((x, skips[-(s + 2)]), 1)
            x = stage(x)
            if heads and s < last:
                outputs.append(self.seg_layers[s](x))
        return x, outputs


_ALIAS = re.compile(r"\.all_modules\.(\d+)\.")


class UMamba(DeepSupervisionHeads, nn.Module):
    """U-Mamba_Bot (``variant="bot"``) or U-Mamba_Enc (``"enc"``) from nnU-Net plan values."""

    def __init__(self, in_channels: int, num_classes: int, *, features: Sequence[int],
                 strides: Sequence[Sequence[int]], kernel_sizes: Sequence[Sequence[int]],
                 n_conv_per_stage: Sequence[int] | int = 2, n_conv_per_stage_decoder: Sequence[int] | int = 2,
                 variant: str = "bot", patch_size: Sequence[int] | None = None, deep_supervision: bool = False,
                 spatial_dims: int = 3):
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"U-Mamba supports spatial_dims 2 or 3, not {spatial_dims}")
        if variant not in ("bot", "enc"):
            raise ValueError(f"U-Mamba variant must be 'bot' or 'enc', got {variant!r}")
        n = len(features)
        strides = [list(s) for s in strides]
        kernels = [list(k) for k in kernel_sizes]
        if len(strides) != n or len(kernels) != n or any(len(v) != spatial_dims for v in strides + kernels):
            raise ValueError(f"U-Mamba with {n} stages needs {n} strides and {n} kernel sizes of {spatial_dims} "
                             f"entries each (strides start with {[1] * spatial_dims})")
        enc_blocks = [n_conv_per_stage] * n if isinstance(n_conv_per_stage, int) else list(n_conv_per_stage)
        dec_blocks = ([n_conv_per_stage_decoder] * (n - 1) if isinstance(n_conv_per_stage_decoder, int)
                      else list(n_conv_per_stage_decoder))
        enc_blocks, dec_blocks = halved_block_counts(enc_blocks, dec_blocks)
        self.in_channels, self.num_classes, self.spatial_dims = in_channels, num_classes, spatial_dims
        self.variant, self.deep_supervision = variant, deep_supervision
        self.n_blocks_per_stage, self.n_conv_per_stage_decoder = enc_blocks, dec_blocks
        self.input_shape_must_be_divisible_by = [math.prod(s[a] for s in strides) for a in range(spatial_dims)]
        self.training_precision = "fp32"  # the authors' NoAMP finding: autocast gives NaNs
        # measured: Bot converts to OpenVINO (agrees with PyTorch to 5e-4 in probability); Enc's
        # full-resolution scans over ~10^4-10^5 voxel tokens convert but fail OpenVINO's shape inference
        self.openvino_convertible = variant == "bot"
        self.openvino_note = ("U-Mamba_Enc's full-resolution Mamba layers (a selective scan over every voxel) do not "
                              "survive OpenVINO's conversion (shape inference fails at run time), so it runs on PyTorch")
        self.input_size = None
        mamba_stages, token_dims = None, [0] * n
        if variant == "enc":
            if patch_size is None or len(patch_size) != spatial_dims:
                raise ValueError(f"U-Mamba_Enc needs the plan's patch_size ({spatial_dims} sizes): a stage with no "
                                 "more voxels than channels uses channel tokens sized by it")
            self.input_size = [int(p) for p in patch_size]
            size = list(self.input_size)
            for s in range(n):
                size = [i // j for i, j in zip(size, strides[s], strict=True)]
                if math.prod(size) <= features[s]:
                    token_dims[s] = math.prod(size)
            mamba_stages = (set(range(n)) if spatial_dims == 3 else
                            {s for s in range(n) if bool(s % 2) ^ bool(n % 2)})
        self.encoder = _Encoder(in_channels, features, kernels, strides, enc_blocks, spatial_dims, mamba_stages,
                                token_dims)
        self.mamba_layer = MambaLayer(features[-1]) if variant == "bot" else None
        self.decoder = _Decoder(features, kernels, strides, dec_blocks, num_classes, spatial_dims)
        self.apply(_init_he)
        self._register_load_state_dict_pre_hook(self._drop_official_aliases)

    def _decode(self, x: torch.Tensor, heads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = self.encoder(x)
        if self.mamba_layer is not None:
            skips[-1] = self.mamba_layer(skips[-1])
        return self.decoder(skips, heads)

    @property
    def head(self) -> nn.Module:
        return self.decoder.seg_layers[-1]

    @staticmethod
    def _drop_official_aliases(state_dict, prefix, *args) -> None:
        """Official checkpoints repeat tensors (``decoder.encoder.*``, ``*.all_modules.N.*``): keep one."""
        for key in list(state_dict):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            name = rest[len("decoder."):] if rest.startswith("decoder.encoder.") else rest
            found = _ALIAS.search(name)
            if found:
                name = _ALIAS.sub(f".{('conv', 'norm', 'nonlin')[min(int(found.group(1)), 2)]}.", name, count=1)
            if name == rest:
                continue
            canonical = prefix + name
            alias = state_dict.pop(key)
            twin = state_dict.get(canonical)
            if twin is not None and not (twin.shape == alias.shape and torch.equal(twin, alias)):
                raise BundleError(f"checkpoint tensor {key!r} should repeat {canonical!r} (the official code "
                                  "stores it twice) but holds other values; the checkpoint is inconsistent")
            if twin is None:
                state_dict[canonical] = alias


# ----------------------------------------------------------------------------------- builders
_PLAN_3D = {"features": (32, 64, 128, 256, 320, 320), "patch": (128, 128, 128)}
_PLAN_2D = {"features": (32, 64, 128, 256, 512, 512, 512), "patch": (256, 256)}
_PLAN_XS = {"features": (8, 16, 32, 64, 64, 64), "patch": (64, 64, 64)}


def _create_umamba(variant: str, plan: dict, in_channels: int = 1, num_classes: int = 2, *,
                   pool_op_kernel_sizes: Sequence[Sequence[int]] | None = None,
                   conv_kernel_sizes: Sequence[Sequence[int]] | None = None,
                   patch_size: Sequence[int] | None = None, n_conv_per_stage: Sequence[int] | int = 2,
                   n_conv_per_stage_decoder: Sequence[int] | int = 2, deep_supervision: bool = False,
                   spatial_dims: int | None = None) -> UMamba:
    dims = spatial_dims or len(plan["patch"])
    features = list(plan["features"])
    n = len(features)
    pools = [list(p) for p in (pool_op_kernel_sizes or [[2] * dims] * (n - 1))]
    if len(pools) == n - 1:  # medpipe/STU-Net style (one per downsampling): nnU-Net's strides start with 1s
        pools = [[1] * dims] + pools
    kernels = [list(k) for k in (conv_kernel_sizes or [[3] * dims] * n)]
    patch = list(patch_size) if patch_size is not None else list(plan["patch"]) if len(plan["patch"]) == dims else None
    return UMamba(in_channels, num_classes, features=features, strides=pools, kernel_sizes=kernels,
                  n_conv_per_stage=n_conv_per_stage, n_conv_per_stage_decoder=n_conv_per_stage_decoder,
                  variant=variant, patch_size=patch if variant == "enc" else None,
                  deep_supervision=deep_supervision, spatial_dims=dims)


@register_model
def umamba_bot(**cfg) -> UMamba:
    """U-Mamba_Bot 3D on nnU-Net's default 3D plan (32..320 features, 6 stages; 42.12 M params at 4 -> 4)."""
    return _create_umamba("bot", _PLAN_3D, **cfg)


@register_model
def umamba_enc(patch_size: Sequence[int] | None = None, **cfg) -> UMamba:
    """U-Mamba_Enc 3D (a Mamba layer after every stage; 42.76 M params at 4 -> 4, 128^3 patches)."""
    return _create_umamba("enc", _PLAN_3D, patch_size=patch_size, **cfg)


@register_model
def umamba_bot_2d(**cfg) -> UMamba:
    """U-Mamba_Bot 2D on nnU-Net's default 2D plan (32..512 features, 7 stages)."""
    return _create_umamba("bot", _PLAN_2D, **cfg)


@register_model
def umamba_enc_2d(patch_size: Sequence[int] | None = None, **cfg) -> UMamba:
    """U-Mamba_Enc 2D (Mamba layers on alternate stages, the last one included; 256^2 patches)."""
    return _create_umamba("enc", _PLAN_2D, patch_size=patch_size, **cfg)


@register_model
def umamba_bot_xs(**cfg) -> UMamba:
    """Tiny U-Mamba_Bot 3D (8..64 features) for tests and CPU training."""
    return _create_umamba("bot", _PLAN_XS, **cfg)


@register_model
def umamba_enc_xs(patch_size: Sequence[int] | None = None, **cfg) -> UMamba:
    """Tiny U-Mamba_Enc 3D (8..64 features, 64^3 patches by default) for tests and CPU training."""
    return _create_umamba("enc", _PLAN_XS, patch_size=patch_size, **cfg)
