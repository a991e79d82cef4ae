"""Built-in data sets, for examples, tests and benchmarks: `builtin:NAME?param=value`.

digits      1,797 8x8 grayscale digit images (scikit-learn's copy of UCI digits)
blobs       Gaussian clusters: numeric x0..xF-1, class label
regression  linear + sine target y over numeric x0..xF-1
tabular     age, income (numeric), color (category) -> yes/no
waves       variable-length 1-D signals (sine, square, sawtooth) -> their shape
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import math
from collections.abc import Callable

import numpy as np

from forgeml.data.table import Table
from forgeml.errors import DataError


def list_builtins() -> list[str]:
    """Names accepted after `builtin:` in `read_table`, e.g. `["blobs", "digits", ...]`."""
    return sorted(_BUILTINS)


def _error(message: str) -> DataError:
    return DataError(" ".join(message.split()))


def _object_array(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def read_builtin(spec: str) -> Table:
    name, _, query = spec.removeprefix("builtin:").partition("?")
    if name not in _BUILTINS:
        raise _error(
            f"unknown built-in data set {name!r} in {spec!r}; expected one of "
            f"{', '.join(list_builtins())}; e.g. builtin:digits"
        )
    build, defaults = _BUILTINS[name]
    params = dict(defaults)
    valid = ", ".join(defaults) or "none"
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise _error(
                f"{spec}: unknown parameter {key!r}; valid parameters of builtin:{name}: {valid}"
            )
        kind = type(defaults[key])
        try:
            params[key] = kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise _error(
                f"{spec}: parameter {key!r} must be {what}, got {value!r}; valid parameters of "
                f"builtin:{name}: {valid}"
            ) from None
        # Counts need at least one; seed, std and noise only need to be non-negative.
        least = 1 if key in ("n", "features", "classes", "length") else 0
        if not params[key] >= least or not math.isfinite(params[key]):
            raise _error(
                f"{spec}: parameter {key!r} must be a finite number of at least {least}, "
                f"got {value!r}; e.g. builtin:{name}?{key}={defaults[key]}"
            )
    return Table(build(**params), source=spec, row_label="row")


def _digits() -> dict[str, np.ndarray]:
    # scikit-learn's copy of the UCI digits (BSD): 64 pixels 0..16 then the label, no header.
    raw = importlib.resources.files("forgeml.data").joinpath("builtin/digits.csv.gz").read_bytes()
    data = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",")  # (1797, 65)
    pixels = np.clip(np.round(data[:, :64] * 255 / 16), 0, 255).astype(np.uint8)
    return {
        "image": _object_array(pixels.reshape(-1, 8, 8)),  # each entry (8, 8) uint8
        "label": data[:, 64].astype(np.int64),
    }


def _blobs(n: int, features: int, classes: int, std: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-5.0, 5.0, size=(classes, features))
    labels = rng.permutation(np.arange(n) % classes)  # balanced, in random order
    x = centers[labels] + rng.normal(0.0, std, size=(n, features))  # (n, features)
    return {**{f"x{j}": x[:, j] for j in range(features)}, "label": labels.astype(np.int64)}


def _regression(n: int, features: int, noise: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))  # (n, features)
    weights = rng.normal(size=features)
    # The sine term keeps a purely linear model from being exactly right.
    y = x @ weights + 0.5 * np.sin(x[:, 0]) + rng.normal(0.0, noise, size=n)
    return {**{f"x{j}": x[:, j] for j in range(features)}, "y": y}


def _tabular(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    age = rng.uniform(18.0, 80.0, size=n).round()
    income = rng.lognormal(mean=10.5, sigma=0.5, size=n).round(-2)
    color = rng.choice(np.array(["red", "green", "blue"], dtype=object), size=n)
    # Each input moves the odds, so a model must use all three (and encode the category) to do well.
    color_effect = np.select([color == "red", color == "green"], [1.5, 0.0], default=-1.5)
    logit = 0.06 * (age - 49.0) + 2.0 * (np.log(income) - 10.5) + color_effect
    yes = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    return {
        "age": age,
        "income": income,
        "color": color,
        "label": np.where(yes, "yes", "no").astype(object),
    }


def _waves(n: int, length: int, noise: float, seed: int) -> dict[str, np.ndarray]:
    """Signals of 1/2..1 x `length` steps, each a noisy sine, square or sawtooth wave of random
    frequency, phase and amplitude; the label is the shape. Variable length on purpose."""
    rng = np.random.default_rng(seed)
    shapes = np.array(["sawtooth", "sine", "square"], dtype=object)
    labels = rng.permutation(np.arange(n) % 3)
    signals = []
    for shape in labels:
        steps = int(rng.integers(max(1, length // 2), length + 1))
        cycles = rng.uniform(1.5, 4.0)  # periods over the signal
        phase = rng.uniform(0.0, 1.0) + np.arange(steps) * cycles / steps  # in periods
        frac = phase % 1.0
        wave = (
            2.0 * frac - 1.0
            if shape == 0
            else np.sin(2 * np.pi * phase)
            if shape == 1
            else np.where(frac < 0.5, 1.0, -1.0)
        )
        amplitude = rng.uniform(0.5, 2.0)
        signals.append((amplitude * wave + rng.normal(0.0, noise, steps)).astype(np.float32))
    return {"signal": _object_array(signals), "label": shapes[labels]}


_BUILTINS: dict[str, tuple[Callable[..., dict[str, np.ndarray]], dict[str, int | float]]] = {
    "digits": (_digits, {}),
    "blobs": (_blobs, {"n": 600, "features": 2, "classes": 3, "std": 1.0, "seed": 0}),
    "regression": (_regression, {"n": 1000, "features": 8, "noise": 0.1, "seed": 0}),
    "tabular": (_tabular, {"n": 1000, "seed": 0}),
    "waves": (_waves, {"n": 1200, "length": 64, "noise": 0.3, "seed": 0}),
}
