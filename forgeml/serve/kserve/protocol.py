"""The JSON bodies of the server's routes as pydantic models.

They check the outer structure of a request (which keys, of which JSON type) and describe every
body in /openapi.json. What a value inside a tensor or an instance must be depends on the model,
so `codec.py` checks that, column by column.

Open Inference Protocol v2 (KServe): https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class _Open(BaseModel):
    """OIP objects may carry extension fields: unknown keys are ignored, not errors."""

    model_config = ConfigDict(extra="ignore")


# ------------------------------------------------------------------------------ OIP v2 request


class InferInput(_Open):
    name: StrictStr = Field(description="an input column of the model")
    shape: list[StrictInt] = Field(description="[N] (or [N, 1]) for one value per row")
    datatype: Datatype
    data: list[Any] = Field(description="row-major values, flat or nested")
    parameters: dict[str, Any] | None = None


class RequestedOutput(_Open):
    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferRequest(_Open):
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(
        None, description="the outputs to return; default: all"
    )


# ------------------------------------------------------------------------------ OIP v2 responses


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    id: str | None = None
    outputs: list[OutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1: any size")
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    name: str
    platform: str
    versions: list[str] = []
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


# ------------------------------------------------------------------------------ friendly route


class PredictRequest(BaseModel):
    """`{"instances": [{column: value, ...}, ...]}`: raw values as in the training file."""

    model_config = ConfigDict(extra="forbid")

    instances: list[dict[str, Any]] = Field(min_length=1)


class Prediction(BaseModel):
    prediction: Any = Field(description="the label (a list of labels for multi-label), or value")
    probabilities: dict[str, float] | None = Field(
        None, description="classification: the probability of each class"
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    ready: bool
    task: str | None = None
    inputs: list[str] = []


class ModelList(BaseModel):
    models: list[ModelInfo]


# ------------------------------------------------------------------------------ errors


class ErrorBody(BaseModel):
    """Every error response: what went wrong and, for a bad request value, where."""

    error: str
    field: str | None = Field(
        None, description='the offending part of the request, e.g. "instances[3].age"'
    )


BODY_MODELS: tuple[type[BaseModel], ...] = (InferRequest, PredictRequest)
