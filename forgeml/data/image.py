"""Image decoding (Pillow) into tensors, and the training-time augmentation (crop, flip).

Images arrive as paths to PNG/JPEG files or as uint8 arrays shaped (H, W) or (H, W, C) (see
`table.py`). `decode_images` turns a column of them into one (N, C, H, W) float32 tensor in
[0, 1] (or skips unreadable ones); normalisation with the train statistics is the
preprocessor's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from forgeml.data.bad_rows import UNREADABLE_IMAGE, BadRows
from forgeml.errors import DataError

# Pillow modes that hold one intensity per pixel (plus alpha for "LA").
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def load_image(value: object, *, ref: str, base_dir: str | Path | None = None) -> np.ndarray:
    """Decode one image value into a uint8 (H, W, C) array, C in {1, 3, 4}.

    Args:
        value: a path to a PNG/JPEG file, or a uint8 array (H, W) / (H, W, C) (or floats in
            [0, 1], scaled to 0..255).
        ref: where the value comes from ("data.csv, line 7"), for error messages.
        base_dir: a relative path that does not exist from the current directory is looked up
            here too (the folder of the data file that names it).

    Raises:
        DataError: the file is missing or not a readable image, or the array has the wrong shape.
    """
    try:
        return _read_image(value, base_dir)
    except _Unreadable as exc:
        raise DataError(f"{ref}: {exc}") from None


class _Unreadable(Exception):
    """An image value that cannot be used: `detail` says why, `fix` what to do."""

    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(f"{detail}; {fix}" if fix else detail)
        self.detail = detail


def _read_image(value: object, base_dir: str | Path | None) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return _array_image(value)
    if not isinstance(value, str | Path):
        raise _Unreadable(
            f"expected an image (a PNG/JPEG path or a uint8 array), found "
            f"{type(value).__name__} {value!r}"
        )
    path = Path(value)
    if not path.is_absolute() and not path.exists() and base_dir is not None:
        path = Path(base_dir) / path
    try:
        with Image.open(path) as img:
            img.load()
            return _pil_to_array(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        if isinstance(exc, UnidentifiedImageError):  # Pillow's text repeats the path
            reason = "not a recognisable image (corrupt, or another file type)"
        else:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _Unreadable(
            f"cannot read image '{value}': {reason}",
            "expected a PNG or JPEG file; replace or remove the file, or fix the path",
        ) from None


def _array_image(value: np.ndarray) -> np.ndarray:
    if value.dtype.kind == "f" and value.size and 0.0 <= value.min() and value.max() <= 1.0:
        # A float (N, H, W) .npz array reads as sequences unless declared `type: image`; its
        # rows arrive here as floats in [0, 1], as a (N, H, W, C) float array is read (npz.py).
        value = np.round(value * 255).astype(np.uint8)
    if value.ndim == 2:
        value = value[:, :, None]
    if value.ndim != 3 or value.shape[2] not in (1, 3, 4) or value.dtype != np.uint8:
        raise _Unreadable(
            f"image array has shape {value.shape} and dtype {value.dtype}",
            "expected uint8 pixels (or floats in [0, 1]) shaped (H, W), (H, W, 1), (H, W, 3) "
            "or (H, W, 4)",
        )
    return value


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Pillow image -> uint8 (H, W, C): grayscale C=1, colour C=3, with alpha C=4."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float grayscale: scale the range down to 8 bits instead of clipping it.
        pixels = np.asarray(img, dtype=np.float64)
        top = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        return np.clip(np.round(pixels * 255.0 / top), 0, 255).astype(np.uint8)[:, :, None]
    if img.mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.uint8)[:, :, None]
    if img.mode in ("RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return np.asarray(img.convert("RGBA"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def is_grayscale(image: np.ndarray) -> bool:
    """For a `load_image` result: one channel (the default for `channels` is then 1)."""
    return image.shape[2] == 1


def decode_images(
    values: Sequence[object] | np.ndarray,
    *,
    size: tuple[int, int],
    channels: int,
    refs: Sequence[str],
    base_dir: str | Path | None = None,
    bad_rows: BadRows | None,
    column: str | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Decode, convert and resize a column of images to `size` (H, W) (bilinear) and `channels`
    (1: grayscale, Pillow "L"; 3: RGB, alpha dropped). `refs` are the rows' references for error
    messages, `base_dir` as for `load_image`. With `bad_rows` (skip mode) an image that cannot be
    read is recorded as a bad row of `column` and left out instead of raising.

    Returns:
        (K, C, H, W) float32 in [0, 1], and the (K,) int64 indices into `values` of the K
        images decoded (all of them without `bad_rows`).
    """
    height, width = size
    pixels = np.empty((len(values), height, width, channels), dtype=np.uint8)  # (N, H, W, C)
    decoded = np.ones(len(values), dtype=bool)
    for i, value in enumerate(values):
        try:
            image = _read_image(value, base_dir)
        except _Unreadable as exc:
            if bad_rows is None:
                raise DataError(f"{refs[i]}: {exc}") from None
            bad_rows.record(refs[i], column, UNREADABLE_IMAGE, exc.detail)
            decoded[i] = False
            continue
        if image.shape[:2] == (height, width) and image.shape[2] == channels:
            pixels[i] = image  # already right: skip Pillow (e.g. arrays from .npz)
            continue
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        pil = pil.convert("L" if channels == 1 else "RGB")
        if pil.size != (width, height):
            pil = pil.resize((width, height), Image.Resampling.BILINEAR)
        converted = np.asarray(pil, dtype=np.uint8)
        pixels[i] = converted[:, :, None] if channels == 1 else converted
    kept = np.flatnonzero(decoded)
    if len(kept) < len(values):
        pixels = pixels[kept]  # (K, H, W, C)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # (K, C, H, W) uint8 view
    return tensor.to(torch.float32).div_(255.0).contiguous(), kept


def augment(
    images: torch.Tensor, *, crop_padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crop (after zero padding) and random horizontal flip, per sample.

    Args:
        images: (B, C, H, W), on any device.
        crop_padding: pad each side by this many pixels, then crop back to (H, W) at a random
            offset per sample; 0 disables cropping.
        flip: mirror each sample left-right with probability 1/2.
        generator: a CPU generator; every random draw comes from it, so runs are reproducible.

    Returns:
        (B, C, H, W); the input itself when there is nothing to do.
    """
    if crop_padding == 0 and not flip:
        return images
    b, _, h, w = images.shape
    device = images.device
    if crop_padding > 0:
        p = crop_padding
        # Draw on the CPU generator, then move: the same numbers on every device.
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(device)
        padded = F.pad(images, (p, p, p, p))  # (B, C, H + 2p, W + 2p), zeros = the train mean
        rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
        cols = dx[:, None] + torch.arange(w, device=device)  # (B, W)
        batch = torch.arange(b, device=device)[:, None, None]  # (B, 1, 1)
        # Advanced indices around the channel slice put their dims first: (B, H, W, C).
        images = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        images = images.contiguous()
    if flip:
        mirror = (torch.rand(b, generator=generator) < 0.5).to(device)  # (B,)
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images
