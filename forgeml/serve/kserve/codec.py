"""Request bodies -> validated records, predictions -> response bodies.

Every problem with a request is a `RequestError` naming the part of the body at fault
(`instances[3].age`, `inputs[1].data[7]`), so a client can fix it; nothing a client sends may
reach the model unchecked. This module handles the structure (which columns, tensors, shapes,
datatypes); `values.py` checks and cleans each value.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from forgeml.serve.errors import RequestError, invalid
from forgeml.serve.kserve.protocol import InferRequest, PredictRequest, RequestedOutput
from forgeml.serve.kserve.values import (
    DATATYPES,
    MAX_RANK,
    check_element,
    clean_value,
    dense_rows,
    short_shape,
)
from forgeml.tasks.table.serving import InputColumn, ServedModel

# "<source>, record <n>, column '<name>'": where a preprocessing DataError points.
_RECORD_REF = re.compile(r"record (\d+), column '([^']*)'")
# json.loads keeps a lone UTF-16 surrogate ("\ud800", or its UTF-8-style bytes): not text.
_SURROGATE = re.compile("[\ud800-\udfff]")

Locate = Callable[[int, str], str]  # (row index, column) -> field of the request


# ----------------------------------------------------------------------------- body


def parse_json(body: bytes, content_type: str | None) -> Any:
    """The JSON document of a request body; strict (no NaN/Infinity literals)."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise RequestError(
            415,
            f"unsupported content type '{media}'; send JSON with Content-Type: application/json",
        )
    if not body.strip():
        raise RequestError(400, "empty request body; send a JSON object")
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge integers
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "too deep"
        raise RequestError(400, f"the body is not valid JSON: {detail}") from None
    # In UTF-8 only an escape or a byte 0xED can make one, so most bodies skip the walk.
    utf8 = json.detect_encoding(body).startswith("utf-8")
    maybe = not utf8 or b"\\u" in body or b"\xed" in body
    if maybe and _has_lone_surrogate(document):
        raise RequestError(
            400,
            "the body is not valid JSON text: a string holds a lone surrogate (\\ud800-\\udfff "
            "without its pair), which is no character; send valid Unicode",
        )
    return document


def _has_lone_surrogate(document: Any) -> bool:
    """Whether a string (or key) of the document holds a surrogate code point. A valid pair of
    escapes decodes to one character, so any surrogate left is a lone one. Iterative: a body
    nested as deep as json.loads allows must not exhaust the stack here."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; send null for a missing value")


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], document: Any) -> M:
    """The body as `model`, or a 422 naming the first field at fault."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = field_path(first["loc"]) or "body"
        raise invalid(field, first["msg"]) from None


def field_path(loc: tuple[int | str, ...]) -> str:
    """("inputs", 0, "shape", 1) -> "inputs[0].shape[1]"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ----------------------------------------------------------------------------- friendly route


def instances_to_records(model: ServedModel, request: PredictRequest) -> list[dict[str, Any]]:
    """`{"instances": [...]}` -> one clean record per instance (every column present)."""
    known = {c.name for c in model.columns} | {model.target}  # the label may come along; unused
    records = []
    for i, instance in enumerate(request.instances):
        for key in instance:
            if key not in known:
                raise invalid(f"instances[{i}].{key}", unknown_column(key, model))
        records.append(
            {
                c.name: clean_value(c, instance.get(c.name), f"instances[{i}].{c.name}")
                for c in model.columns
            }
        )
    return records


def unknown_column(key: str, model: ServedModel) -> str:
    names = [c.name for c in model.columns]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown column '{key}'; {hint}the model takes: {', '.join(names)}"


# ----------------------------------------------------------------------------- OIP v2


def infer_to_records(model: ServedModel, request: InferRequest) -> tuple[list[dict], Locate]:
    """OIP input tensors -> one clean record per row, and where each (row, column) came from."""
    columns = {c.name: c for c in model.columns}
    values: dict[str, list[Any]] = {}
    index: dict[str, int] = {}
    rows = None
    for k, tensor in enumerate(request.inputs):
        where = f"inputs[{k}]"
        column = columns.get(tensor.name)
        if column is None:
            raise invalid(f"{where}.name", unknown_column(tensor.name, model))
        if tensor.name in values:
            raise invalid(f"{where}.name", f"input '{tensor.name}' is given twice")
        shape = tensor.shape
        if not 1 <= len(shape) <= MAX_RANK or any(d < 0 for d in shape) or shape[0] == 0:
            raise invalid(
                f"{where}.shape",
                f"{short_shape(shape)} is not a shape of N >= 1 rows and at most {MAX_RANK} "
                "dimensions, e.g. [N]",
            )
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            first = request.inputs[0]
            raise invalid(
                f"{where}.shape",
                f"{shape[0]} rows, but inputs[0] ('{first.name}') has {rows}; every input "
                "needs the same N",
            )
        if tensor.datatype not in DATATYPES[column.kind]:
            allowed = ", ".join(DATATYPES[column.kind])
            raise invalid(
                f"{where}.datatype",
                f"{tensor.datatype} does not fit {column.kind} column '{column.name}'; "
                f"expected one of {allowed}",
            )
        flat = _flatten(tensor.data, len(shape))
        if len(flat) != math.prod(shape):
            raise invalid(
                f"{where}.data",
                f"{len(flat)} values for shape {shape} ({math.prod(shape)} expected)",
            )
        values[tensor.name] = _column_values(column, tensor.datatype, shape, flat, where)
        index[tensor.name] = k
    missing = [c.name for c in model.columns if c.name not in values and c.required]
    if missing:
        raise invalid("inputs", f"missing input '{missing[0]}'; the model needs: {_names(model)}")
    assert rows is not None  # InferRequest has at least one input
    for c in model.columns:  # optional columns left out: missing values, filled by the run
        values.setdefault(c.name, [None] * rows)
    records = [{name: column[r] for name, column in values.items()} for r in range(rows)]

    def locate(row: int, column: str) -> str:
        return f"inputs[{index[column]}].data[{row}]" if column in index else "inputs"

    return records, locate


def _names(model: ServedModel) -> str:
    return ", ".join(c.name for c in model.columns)


def _flatten(data: list[Any], depth: int) -> list[Any]:
    """Row-major values of nested lists, `depth` levels at most (OIP allows flat or nested)."""
    if depth <= 1 or not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    for v in data:
        if isinstance(v, list):
            out.extend(_flatten(v, depth - 1))
        else:
            out.append(v)
    return out


def _column_values(
    column: InputColumn, datatype: str, shape: list[int], flat: list[Any], where: str
) -> list[Any]:
    """The N row values of one input tensor, each checked and cleaned."""
    dense = column.kind in ("image", "sequence") and datatype != "BYTES"
    if dense:
        return dense_rows(column, datatype, shape, flat, where)
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise invalid(f"{where}.shape", f"{shape}: expected [N] or [N, 1], one value per row")
    out = []
    for r, value in enumerate(flat):
        field = f"{where}.data[{r}]"
        check_element(value, datatype, field)
        out.append(clean_value(column, value, field))
    return out


# ----------------------------------------------------------------------------- values


def data_error_field(message: str, locate: Locate) -> str | None:
    """The request field a preprocessing error points at ("record 4, column 'age'")."""
    match = _RECORD_REF.search(message)
    return locate(int(match.group(1)) - 1, match.group(2)) if match else None


# ----------------------------------------------------------------------------- responses


def infer_outputs(
    model: ServedModel, rows: list[dict[str, Any]], requested: list[RequestedOutput] | None
) -> list[dict[str, Any]]:
    """Predictions -> OIP output tensors: "prediction" [N] (multi-label: BOOL [N, K]) and, for
    classification, "probabilities" FP32 [N, C] (the class order is in its parameters)."""
    n = len(rows)
    task = model.task
    outputs: list[dict[str, Any]] = []
    if task == "regression":
        outputs.append(_tensor("prediction", [n], "FP64", [r["prediction"] for r in rows]))
    else:
        names = [str(c) for c in model.classes or []]
        probs = [r["probabilities"][name] for r in rows for name in names]
        if task == "multilabel":  # every label with probability >= 0.5, as decode() picks them
            chosen = [p >= 0.5 for p in probs]
            outputs.append(_tensor("prediction", [n, len(names)], "BOOL", chosen, names))
        else:
            datatype, convert = label_datatype(model.classes or [])
            labels = [convert(r["prediction"]) for r in rows]
            outputs.append(_tensor("prediction", [n], datatype, labels))
        outputs.append(_tensor("probabilities", [n, len(names)], "FP32", probs, names))
    if requested is None:
        return outputs
    available = {o["name"]: o for o in outputs}
    chosen_outputs = []
    for k, out in enumerate(requested):
        if out.name not in available:
            raise invalid(
                f"outputs[{k}].name",
                f"unknown output '{out.name}'; this model has: {', '.join(available)}",
            )
        chosen_outputs.append(available[out.name])
    return chosen_outputs


def _tensor(
    name: str, shape: list[int], datatype: str, data: list[Any], classes: list[str] | None = None
) -> dict[str, Any]:
    tensor = {"name": name, "shape": shape, "datatype": datatype, "data": data}
    if classes is not None:
        tensor["parameters"] = {"classes": classes}
    return tensor


def label_datatype(classes: list[Any]) -> tuple[str, Callable[[Any], Any]]:
    """The OIP datatype of a class label: INT64 for integer classes, FP64 for numbers, BOOL,
    else BYTES (labels as strings)."""
    if classes and all(isinstance(c, bool) for c in classes):
        return "BOOL", bool
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64", int
    if classes and all(isinstance(c, int | float) and not isinstance(c, bool) for c in classes):
        return "FP64", float
    return "BYTES", str


def model_metadata(model: ServedModel) -> dict[str, Any]:
    """OIP model metadata: one input tensor per column, the outputs `infer_outputs` gives."""
    inputs = []
    for c in model.columns:
        meta: dict[str, Any] = {"name": c.name, "shape": [-1]}
        if c.kind == "numeric":
            meta["datatype"] = "FP64"
        elif c.kind == "image":
            spec = c.spec
            assert spec is not None
            meta |= {
                "datatype": "BYTES",
                "parameters": {
                    "content_type": "base64",
                    "image_shape": [spec.height, spec.width, spec.channels],
                    "also_accepts": "UINT8 or FP32 (0..1) pixels shaped [N, H, W(, C)]",
                },
            }
        elif c.kind == "sequence":
            meta |= {
                "datatype": "BYTES",
                "parameters": {
                    "content_type": "json",
                    "also_accepts": "FP32 values shaped [N, L] or [N, L, C]",
                },
            }
        else:
            meta["datatype"] = "BYTES"
        meta.setdefault("parameters", {})["kind"] = c.kind
        meta["parameters"]["required"] = c.required
        inputs.append(meta)
    task = model.task
    names = [str(c) for c in model.classes or []]
    outputs: list[dict[str, Any]] = []
    if task == "regression":
        outputs.append({"name": "prediction", "datatype": "FP64", "shape": [-1]})
    else:
        if task == "multilabel":
            outputs.append({"name": "prediction", "datatype": "BOOL", "shape": [-1, len(names)]})
        else:
            datatype, _ = label_datatype(model.classes or [])
            outputs.append({"name": "prediction", "datatype": datatype, "shape": [-1]})
        outputs.append(
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [-1, len(names)],
                "parameters": {"classes": names},
            }
        )
    return {
        "name": model.name,
        "platform": "forgeml_pytorch",
        "versions": [],
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"task": task, "target": model.target},
    }
