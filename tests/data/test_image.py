"""Tests for forgeml.data.image: decoding PNG files and arrays, conversion, resize, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from forgeml.data.image import augment, decode_images, is_grayscale, load_image
from forgeml.errors import DataError


def save_png(path, array: np.ndarray, mode: str | None = None) -> str:
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


def test_load_rgb_gray_rgba_files(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    gray = np.full((4, 6), 77, dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((4, 6), 128, dtype=np.uint8)])
    loaded_rgb = load_image(save_png(tmp_path / "rgb.png", rgb), ref="r")
    loaded_gray = load_image(save_png(tmp_path / "gray.png", gray), ref="r")
    loaded_rgba = load_image(save_png(tmp_path / "rgba.png", rgba), ref="r")
    assert loaded_rgb.shape == (4, 6, 3) and loaded_rgb.dtype == np.uint8
    np.testing.assert_array_equal(loaded_rgb, rgb)
    assert loaded_gray.shape == (4, 6, 1) and is_grayscale(loaded_gray)
    assert loaded_rgba.shape == (4, 6, 4) and not is_grayscale(loaded_rgba)


def test_load_array_values():
    assert load_image(np.zeros((5, 5), dtype=np.uint8), ref="r").shape == (5, 5, 1)
    assert load_image(np.zeros((5, 5, 3), dtype=np.uint8), ref="r").shape == (5, 5, 3)
    with pytest.raises(DataError, match=r"^data\.npz, row 3: image array has shape \(5, 5, 2\)"):
        load_image(np.zeros((5, 5, 2), dtype=np.uint8), ref="data.npz, row 3")


def test_unreadable_image_names_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError) as excinfo:
        load_image(str(missing), ref="data.csv, line 4")
    message = str(excinfo.value)
    assert message.startswith(f"data.csv, line 4: cannot read image '{missing}': ")
    assert message.endswith(
        "; expected a PNG or JPEG file; replace or remove the file, or fix the path"
    )
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"line 5: cannot read image '.*broken\.png'"):
        load_image(str(broken), ref="data.csv, line 5")


def test_relative_path_found_next_to_the_data_file(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((2, 2), dtype=np.uint8))
    assert load_image("a.png", ref="r", base_dir=tmp_path).shape == (2, 2, 1)


def test_decode_images_converts_channels_and_resizes(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 255  # pure green
    gray = np.full((8, 8), 255, dtype=np.uint8)
    rgba = np.dstack([rgb, np.zeros((4, 4), dtype=np.uint8)])
    values = [
        save_png(tmp_path / "rgb.png", rgb),
        save_png(tmp_path / "gray.png", gray),  # 8x8: resized to 4x4
        save_png(tmp_path / "rgba.png", rgba),  # alpha dropped
        np.full((4, 4), 51, dtype=np.uint8),  # an array value
    ]
    refs = [f"row {i}" for i in range(4)]
    out, decoded = decode_images(values, size=(4, 4), channels=3, refs=refs, bad_rows=None)
    assert decoded.tolist() == [0, 1, 2, 3]  # every image read
    assert out.shape == (4, 3, 4, 4) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(out[1], torch.ones(3, 4, 4))
    torch.testing.assert_close(out[2], out[0])
    torch.testing.assert_close(out[3], torch.full((3, 4, 4), 0.2))
    gray_out, _ = decode_images(values, size=(2, 3), channels=1, refs=refs, bad_rows=None)
    assert gray_out.shape == (4, 1, 2, 3)
    # Pillow's "L" conversion of pure green: 587/1000 of full scale.
    assert abs(float(gray_out[0, 0, 0, 0]) - 150 / 255) < 1e-6


def test_decode_images_error_names_the_row(tmp_path):
    with pytest.raises(DataError, match=r"^data\.csv, line 3: cannot read image 'gone\.png'"):
        decode_images(
            [np.zeros((2, 2), dtype=np.uint8), "gone.png"],
            size=(2, 2),
            channels=1,
            refs=["data.csv, line 2", "data.csv, line 3"],
            bad_rows=None,
        )


# --- augmentation ------------------------------------------------------------------------------


def batch() -> torch.Tensor:
    return torch.arange(8 * 3 * 5 * 6, dtype=torch.float32).reshape(8, 3, 5, 6)


def test_augment_noop_returns_input():
    images = batch()
    assert augment(images, crop_padding=0, flip=False, generator=torch.Generator()) is images


def test_augment_is_deterministic_and_keeps_shape():
    images = batch()
    a = augment(images, crop_padding=2, flip=True, generator=torch.Generator().manual_seed(0))
    b = augment(images, crop_padding=2, flip=True, generator=torch.Generator().manual_seed(0))
    c = augment(images, crop_padding=2, flip=True, generator=torch.Generator().manual_seed(1))
    assert a.shape == images.shape
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_flip_mirrors_some_samples():
    images = batch()
    out = augment(images, crop_padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], images[i].flip(-1)) for i in range(8)]
    kept = [torch.equal(out[i], images[i]) for i in range(8)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_crop_shifts_within_the_padding():
    images = batch()
    out = augment(images, crop_padding=1, flip=False, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(8):  # every sample is some (H, W) window of its zero-padded self
        windows = [
            torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 6])
            for dy in range(3)
            for dx in range(3)
        ]
        assert any(windows)
    assert not torch.equal(out, images)
