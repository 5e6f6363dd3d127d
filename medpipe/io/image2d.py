"""2D pictures (PNG, JPEG, BMP, TIFF) as one-slice ``Image`` volumes, and back.

X-ray exports, ultrasound frames, endoscopy stills and histology tiles come as pictures
without a patient coordinate system. They become ``(C, rows, columns, 1)`` images with
1 mm pixels and an identity affine (what nnU-Net's ``NaturalImage2DIO`` assumes too), so
every stage — including the 2D bundles' slice-wise segmentation and ``restore_geometry``
— treats them like a one-slice volume, and a label map written back as PNG lies on the
picture pixel for pixel. Grey-scale pictures have one channel; RGB has three (an alpha
channel is dropped, and said so in the image's warnings).

Pillow does the decoding. Float pixel data has no PNG form, so writing a non-integer
image to PNG is refused with a pointer to NIfTI; label maps are written as 8- or 16-bit
grey PNGs holding the label values, with medpipe's metadata (label names) in a text chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image

__all__ = ["IMAGE2D_SUFFIXES", "read_image2d", "write_image2d"]

IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_META_KEY = "medpipe_meta"


def read_image2d(path: Path, meta_from_json) -> Image:  # meta_from_json: io.volumes' reader of our JSON
    """``path`` as a ``(C, rows, cols, 1)`` image (see the module docstring)."""
    from PIL import Image as PILImage

    with PILImage.open(path) as pic:
        frames = getattr(pic, "n_frames", 1)
        if frames > 1:
            raise InputError(f"{path} holds {frames} frames; medpipe reads single-frame pictures "
                             "(convert a stack to NIfTI to segment it as a volume)")
        text = pic.info.get(_META_KEY) if isinstance(pic.info.get(_META_KEY), str) else None
        meta, is_label = meta_from_json(text)
        warnings = []
        if pic.mode == "P" and not is_label:  # palette: label maps keep their indices, pictures become RGB
            pic = pic.convert("RGB")
        if pic.mode in ("RGBA", "LA"):
            warnings.append(f"{path.name}: its alpha channel was dropped")
            pic = pic.convert("RGB" if pic.mode == "RGBA" else "L")
        elif pic.mode in ("CMYK", "YCbCr", "HSV", "1"):
            pic = pic.convert("L" if pic.mode == "1" else "RGB")
        arr = np.asarray(pic)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise InputError(f"{path} decodes to a {arr.ndim}-D array of shape {arr.shape}, not a picture")
    meta.extra.setdefault("warnings", []).extend(warnings)
    if not meta.extra["warnings"]:
        del meta.extra["warnings"]
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() < 2**16:  # Pillow's "I" mode
        arr = arr.astype(np.uint16)
    return Image(np.ascontiguousarray(arr[..., None]), np.eye(4), meta, is_label=is_label)


def write_image2d(image: Image, arr: np.ndarray, tmp: Path, final: Path, meta_json: str) -> None:
    """A one-slice, 1- or 3-channel integer image as PNG/TIFF/BMP (JPEG only for pictures)."""
    from PIL import Image as PILImage
    from PIL import PngImagePlugin

    if image.shape[2] != 1:
        raise InputError(f"cannot write {final}: the image has {image.shape[2]} slices and a picture holds one; "
                         "write it as NIfTI (.nii.gz) instead")
    if image.n_channels not in (1, 3):
        raise InputError(f"cannot write {final}: pictures hold 1 (grey) or 3 (RGB) channels, the image has "
                         f"{image.n_channels}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min(initial=0) < 0 or arr.max(initial=0) >= 2**16:
        raise InputError(f"cannot write {final}: a picture stores 8/16-bit unsigned integers and the image holds "
                         f"{arr.dtype} values; write it as NIfTI (.nii.gz) instead")
    suffix = final.name.lower().rsplit(".", 1)[-1]
    if image.is_label and suffix in ("jpg", "jpeg"):
        raise InputError(f"cannot write {final}: JPEG is lossy and would change label values; use .png")
    pixels = arr[..., 0]
    if image.n_channels == 3:
        data = np.moveaxis(pixels, 0, -1).astype(np.uint8 if pixels.max(initial=0) < 256 else np.uint16)
        if data.dtype == np.uint16:
            raise InputError(f"cannot write {final}: 16-bit RGB pictures are not supported; write NIfTI instead")
        pic = PILImage.fromarray(data, mode="RGB")
    else:
        data = pixels[0]
        pic = PILImage.fromarray(data.astype(np.uint8)) if data.max(initial=0) < 256 else \
            PILImage.fromarray(data.astype(np.uint16))
    fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}[suffix]
    kwargs = {}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text(_META_KEY, meta_json)
        kwargs["pnginfo"] = info
    pic.save(tmp, format=fmt, **kwargs)
