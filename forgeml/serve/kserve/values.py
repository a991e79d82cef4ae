"""One request value at a time: checked against its column and cleaned into what the run's
preprocessing takes from a file.

Numbers become floats (finite, within float32), categories and texts stay as they are, images
are decoded here from base64 or pixel tensors into the run's (H, W, C) uint8 size — a string is
never opened as a path — and sequences pass to the run's own parser, which names the bad step.
Every refusal is a `RequestError` (422) naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import numpy as np
import torch

from forgeml.errors import ForgeError
from forgeml.serve.errors import RequestError, invalid
from forgeml.tasks.table.serving import InputColumn

FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_RANK = 4  # [N, H, W, C] is the most any column takes
MAX_IMAGE_PIXELS = 4096 * 4096  # per image, checked before decoding (decompression bombs)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
INT_RANGES = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
FLOAT_TYPES = ("FP16", "FP32", "FP64")
NUMBER_TYPES = (*INT_RANGES, *FLOAT_TYPES)
# The datatypes an OIP input tensor of each column kind may have.
DATATYPES = {
    "numeric": NUMBER_TYPES,
    "category": ("BYTES", "BOOL", *NUMBER_TYPES),
    "text": ("BYTES",),
    "image": ("BYTES", "UINT8", *FLOAT_TYPES),
    "sequence": ("BYTES", *NUMBER_TYPES),
}


def check_element(value: Any, datatype: str, field: str) -> None:
    if value is None:
        return  # a missing value; clean_value decides whether the column allows it
    if datatype == "BYTES":
        ok, expected = isinstance(value, str), "a string"
    elif datatype == "BOOL":
        ok, expected = isinstance(value, bool), "true or false"
    elif datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = f"an integer in {low}..{high}"
        ok = ok and low <= value <= high
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    if not ok:
        raise invalid(field, f"{_describe(value)} is not {expected} ({datatype})")


def dense_rows(
    column: InputColumn, datatype: str, shape: list[int], flat: list[Any], where: str
) -> list[Any]:
    """Images [N, H, W(, C)] or sequences [N, L(, C)] given as numbers: one array per row."""
    if column.kind == "image":
        ok = len(shape) in (3, 4) and (len(shape) == 3 or shape[3] in (1, 3, 4))
        expected = "[N, H, W] or [N, H, W, C] with C 1, 3 or 4 (channels last)"
        ok = ok and shape[1] >= 1 and shape[2] >= 1 and shape[1] * shape[2] <= MAX_IMAGE_PIXELS
    else:
        ok = len(shape) in (2, 3) and all(d >= 1 for d in shape[1:])
        expected = "[N, L] or [N, L, C] (L steps of C values)"
    if not ok:
        raise invalid(f"{where}.shape", f"{shape}: expected {expected}")
    try:
        array = np.array(flat)
    except ValueError:  # lists of different lengths where numbers belong
        array = np.array([], dtype=object)
    has_bool = array.dtype.kind in "iu" and any(isinstance(v, bool) for v in flat)
    if (
        has_bool
        or array.ndim != 1  # lists nested deeper than the shape says, in place of numbers
        or array.dtype.kind not in "iuf"
        or (datatype in INT_RANGES and array.dtype.kind == "f")
    ):
        bad = next((v for v in flat if isinstance(v, bool) or not isinstance(v, int | float)), None)
        found = (
            _describe(bad) if bad is not None else "a number that is not an integer or too large"
        )
        raise invalid(f"{where}.data", f"{found} among the values; expected numbers ({datatype})")
    array = array.astype(np.float64).reshape(shape)
    if not np.isfinite(array).all():
        raise invalid(f"{where}.data", "NaN or infinite values; expected finite numbers")
    if column.kind == "sequence":
        return list(array)  # (L,) or (L, C) per row; the run's parser checks the rest
    if datatype == "UINT8":  # the only integer type an image takes
        if array.min() < 0 or array.max() > 255:
            raise invalid(f"{where}.data", "pixel values outside 0..255 (UINT8)")
        pixels = array.astype(np.uint8)
    else:
        if array.min() < 0.0 or array.max() > 1.0:
            raise invalid(
                f"{where}.data", f"pixel values outside 0..1 ({datatype}); scale by 1/255"
            )
        pixels = np.round(array * 255.0).astype(np.uint8)
    return [_fit_image(image, column, f"{where}.data[{r}]") for r, image in enumerate(pixels)]


def clean_value(column: InputColumn, value: Any, field: str) -> Any:
    """One request value -> what the run's preprocessing takes; a 422 for anything else."""
    kind = column.kind
    if value is None or (
        kind in ("numeric", "category") and isinstance(value, str) and not value.strip()
    ):
        if column.required:
            raise invalid(field, f"missing value; column '{column.name}' needs {_needs(kind)}")
        return None
    if kind == "numeric":
        return _number(value, column, field)
    if kind == "category":
        if isinstance(value, float) and not math.isfinite(value):
            raise invalid(field, "NaN or infinite is not a category; send null for a missing value")
        if not isinstance(value, str | int | float):  # bool is an int
            raise invalid(field, f"{_describe(value)}; expected a string or number (a category)")
        return value
    if kind == "text":
        if not isinstance(value, str):
            raise invalid(field, f"{_describe(value)}; expected a string of text")
        return value
    if kind == "image":
        if isinstance(value, np.ndarray):
            return value  # already decoded from an OIP pixel tensor
        if not isinstance(value, str):
            raise invalid(field, f"{_describe(value)}; expected a base64-encoded PNG or JPEG image")
        return _image_from_base64(value, column, field)
    if not isinstance(value, str | list | np.ndarray):
        raise invalid(field, f"{_describe(value)}; expected a list of numbers (a sequence)")
    return value  # the run's sequence parser checks the numbers and names the step


def _needs(kind: str) -> str:
    return {
        "numeric": "a number",
        "category": "a value",
        "text": "a text",
        "image": "an image",
        "sequence": "a list of numbers",
    }[kind]


def _number(value: Any, column: InputColumn, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid(field, f"{_describe(value)}; expected a number")
    try:
        number = float(value)
    except OverflowError:
        raise invalid(field, "the number is too large; expected a float32-sized number") from None
    except ValueError:
        raise invalid(field, f"{_describe(value)} is not a number") from None
    if not math.isfinite(number):
        raise invalid(field, "NaN or infinite; expected a finite number (null for missing)")
    spec = column.spec
    scaled = (number - spec.mean) / spec.std if spec is not None and spec.std else number
    if abs(number) > FLOAT32_MAX or abs(scaled) > FLOAT32_MAX:
        raise invalid(field, f"{number:g} is too large; expected a float32-sized number")
    return number


def _image_from_base64(text: str, column: InputColumn, field: str) -> np.ndarray:
    from PIL import Image

    from forgeml.data.image import _pil_to_array

    text = text.strip()
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise invalid(
                field, "a data URL that is not base64; expected data:image/png;base64,..."
            )
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(
            field, "not valid base64; expected a base64-encoded PNG or JPEG image"
        ) from None
    if not raw:
        raise invalid(field, "an empty image; expected a base64-encoded PNG or JPEG image")
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise invalid(field, f"a {width}x{height} image is too large; at most 4096x4096")
            img.load()
            pixels = _pil_to_array(img)
    except RequestError:
        raise
    except Exception:  # Pillow raises many kinds on corrupt or hostile files; none is our bug
        formats = "/".join(IMAGE_FORMATS)
        raise invalid(field, f"the bytes are not a readable image; expected {formats}") from None
    return _fit_image(pixels, column, field)


def _fit_image(pixels: np.ndarray, column: InputColumn, field: str) -> np.ndarray:
    """uint8 (H, W(, C)) -> the run's (H, W, C): resized and converted exactly as `Predictor`
    does it, here and once, so a request holds only model-sized images."""
    from forgeml.data.image import decode_images

    spec = column.spec
    assert spec is not None and spec.height and spec.width and spec.channels
    try:
        images, _ = decode_images(
            [pixels],
            size=(spec.height, spec.width),
            channels=spec.channels,
            refs=[field],
            bad_rows=None,
        )  # (1, C, H, W) float32 = uint8 / 255
    except ForgeError as exc:
        raise RequestError(422, str(exc), field) from None
    return images[0].mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()


def short_shape(shape: list[int]) -> str:
    return str(shape) if len(shape) <= 6 else f"[{', '.join(map(str, shape[:5]))}, ...]"


def _describe(value: Any) -> str:
    """A request value as a client would recognise it, kept short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return type(value).__name__ if not isinstance(value, int | float) else f"{value:.6g}"
