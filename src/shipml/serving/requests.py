"""Request bodies of the REST API, generated from the registered model's input schema.

The OpenAPI document at /docs shows the model's real inputs: one field per input column, with
its type, and for categorical columns the categories seen in training. Validation is strict
where a wrong value would silently predict nonsense (a string for a number, NaN or inf, a missing
or unknown field: 422 naming the field) and lenient where the model copes (an unseen category is
scored as the encoder scores unseen values; null is a missing value, imputed as in training).
In /predict/batch a value its column cannot read (text for a number, 3 for true/false) is
scored as missing and counted per column in the answer's ``unreadable``, so one odd value does
not fail the batch; ``"strict": true`` in the body makes it a 422 instead.
Beyond types (``RequestLimits``): text is at most serving.max_string_length characters, and a
number of a numeric column lies within the column's bounds (by default the training range
widened by serving.input_bounds.margin), checked in the decoders themselves (msgspec's and
pydantic-core's constraints, no Python call per value).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import pandas as pd
from msgspec.structs import astuple
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from shipml.config import InputBoundsConfig
from shipml.data.coerce import BOOL_FALSE, BOOL_TRUE, ISO_FORMAT, category_str, date_expected
from shipml.data.coerce import parse_datetime_text as parse_dates
from shipml.data.schema import Schema

MAX_SHOWN_CATEGORIES = 50
Bounds = tuple[float | None, float | None]  # (lowest, highest) accepted; None: unbounded


@dataclass(frozen=True)
class RequestLimits:
    """What a request's fields may hold beyond their types: text up to ``max_string``
    characters, numbers of a column within its ``bounds``."""

    max_string: int | None = None
    bounds: Mapping[str, Bounds] = field(default_factory=dict)


def input_bounds(
    ranges: Mapping[str, tuple[float, float]], numeric: list[str], config: InputBoundsConfig
) -> dict[str, Bounds]:
    """The accepted range of each numeric column: its training range (``ranges``, from the
    reference profile) widened by ``config.margin`` training ranges on each side, or the
    column's bounds in ``config.columns``."""
    if not config.enabled:
        return {}
    bounds: dict[str, Bounds] = {}
    for name in numeric:
        given = config.columns.get(name)
        if given is not None:
            bounds[name] = (given.min, given.max)
        elif name in ranges:
            low, high = ranges[name]
            width = high - low or max(abs(low), abs(high), 1.0)
            bounds[name] = (low - config.margin * width, high + config.margin * width)
    return bounds


def _shown(bounds: Bounds) -> str:
    low, high = bounds
    return (
        f"[{'-inf' if low is None else f'{low:.6g}'}, {'inf' if high is None else f'{high:.6g}'}]"
    )


def bounds_message(bounds: Bounds) -> str:
    return (
        f"outside the accepted range {_shown(bounds)} (the training range widened by "
        "serving.input_bounds.margin, or serving.input_bounds.columns)"
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number (not NaN or infinity)")
    return value


def _datetime_text(
    value: Any, max_length: int | None = None, date_format: str | None = None
) -> Any:
    """Date/time text as it is scored: for a column with a stored format (``date_format``),
    parsed in that format and given on as naive ISO 8601 (UTC), which the scoring path reads
    the same way whatever the format was; for older models, the text as sent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a date/time string, e.g. 2024-05-01 or 2024-05-01T12:30:00")
    if max_length is not None and len(value) > max_length:
        raise PydanticCustomError(
            "string_too_long",
            "String should have at most {max_length} characters",
            {"max_length": max_length},
        )
    if not value.strip():
        return None
    if date_format is not None:
        return _in_format(value, date_format)
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, OverflowError) as err:
        raise ValueError(f"'{value[:40]}' is not a date/time: {err}") from None
    if stamp is pd.NaT:
        return None
    return value


def _in_format(value: str, date_format: str) -> str:
    """``value`` read in the column's format, as naive ISO 8601 text (UTC). The standard
    library reads a value in microseconds; pandas (as training read the column) is asked only
    where it does not (nanoseconds, layouts only pandas' ISO 8601 parser takes)."""
    text = value.strip()
    try:
        if date_format == ISO_FORMAT:
            stamp = datetime.fromisoformat(text)
        else:
            stamp = datetime.strptime(text, date_format)
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(UTC).replace(tzinfo=None)
        return stamp.isoformat()
    except ValueError:
        parsed = parse_dates(pd.Series([text], dtype=object), date_format).iloc[0]
    if parsed is pd.NaT:
        raise ValueError(f"'{value[:40]}' is not {date_expected(date_format)}")
    return str(parsed.tz_localize(None).isoformat())


# Checked by pydantic-core itself (no Python call per value): ints pass as floats, strings,
# booleans, NaN and infinity do not.
Finite = Annotated[StrictFloat, AllowInfNan(False)]
Number = Finite | None


def _boolean(value: Any) -> Any:
    """true/false, or what training read as booleans: yes/no, y/n, t/f, 1/0 (any case)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in BOOL_TRUE:
            return True
        if text in BOOL_FALSE:
            return False
        if not text:
            return None
    raise ValueError("must be true or false (or yes/no, y/n, t/f, 1/0)")


Boolean = Annotated[StrictBool | None, BeforeValidator(_boolean)]


def _number(bounds: Bounds | None) -> Any:
    if bounds is None:
        return Number
    low, high = bounds
    return Annotated[Finite, Field(ge=low, le=high)] | None


def _text(max_length: int | None) -> Any:
    return (
        StrictStr
        if max_length is None
        else Annotated[str, StringConstraints(strict=True, max_length=max_length)]
    )


def _field(schema: Schema, name: str, limits: RequestLimits) -> tuple[Any, Any]:
    info = schema.columns[name]
    if info.role == "numeric":
        bounds = limits.bounds.get(name)
        within = "" if bounds is None else f", within {_shown(bounds)}"
        return _number(bounds), Field(
            ..., alias=name, description=f"number ({info.dtype}){within}; null: missing"
        )
    if info.role == "boolean":
        return Boolean, Field(
            ..., alias=name, description="true or false (or yes/no, 1/0); null: missing"
        )
    if info.role == "datetime":
        longest = limits.max_string

        date_format = info.date_format

        def datetime_text(value: Any) -> Any:
            return _datetime_text(value, longest, date_format)

        shown = "ISO text" if date_format in (None, ISO_FORMAT) else f"text as {date_format}"
        return Annotated[StrictStr | None, BeforeValidator(datetime_text)], Field(
            ..., alias=name, description=f"date/time as {shown}; null: missing"
        )
    categories = [str(c) for c in (info.categories or [])][:MAX_SHOWN_CATEGORIES]
    shown = ", ".join(categories)
    category = _text(limits.max_string) | StrictInt | Finite | None
    return category, Field(
        ...,
        alias=name,
        description=(
            f"category; seen in training: {shown}. Other values are accepted and scored as an "
            "unseen category; null: missing"
        ),
        examples=categories[:3] or None,
    )


# Errors of the request limits (serving.max_string_length, serving.input_bounds): a value past
# them is refused even where unreadable values are scored as missing.
_LIMIT_ERRORS = frozenset({"string_too_long", "greater_than_equal", "less_than_equal"})


@dataclass(frozen=True)
class Unread:
    """A value of a batch row that its column could not read (scored as missing)."""

    key: str  # the field's name in the request models (c0, c1, ...)
    value: Any
    kind: str  # pydantic's error type
    message: str


def _lenient(annotation: Any, key: str) -> Any:
    """``annotation`` with a value it cannot read kept as ``Unread`` instead of an error
    (but values past the request limits are still errors)."""

    def read(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as err:
            errors = err.errors()
            if not errors or any(e["type"] in _LIMIT_ERRORS for e in errors):
                raise
            return Unread(key, value, errors[0]["type"], str(errors[0]["msg"]))

    return Annotated[annotation, WrapValidator(read)]


def _refused(rows: list[BaseModel]) -> ValidationError | None:
    """The errors a strict batch is refused with: each value a column could not read, at its
    place (instances.<row>.<field>), as the request models would have named it."""
    errors = [
        InitErrorDetails(
            type=PydanticCustomError(value.kind, "{message}", {"message": value.message}),
            loc=("instances", i, value.key),
            input=value.value,
        )
        for i, row in enumerate(rows)
        for value in row.__dict__.values()
        if isinstance(value, Unread)
    ]
    return ValidationError.from_exception_data("BatchRequest", errors) if errors else None


class ColumnValues(list[list[Any]]):
    """Rows' values, one list per column, and how many values per column could not be read
    and were scored as missing (``unreadable``: column -> count, only columns with any)."""

    unreadable: dict[str, int]


def _example(schema: Schema) -> dict[str, Any]:
    example: dict[str, Any] = {}
    for name in schema.input_columns:
        info = schema.columns[name]
        if info.role == "numeric":
            example[name] = 0.0
        elif info.role == "boolean":
            example[name] = True
        elif info.role == "datetime":
            example[name] = "2024-01-01T00:00:00"
        else:
            example[name] = str(info.categories[0]) if info.categories else "a"
    return example


class RequestModels:
    """The pydantic models of one schema: features, /predict, /predict/batch, /feedback."""

    def __init__(
        self,
        schema: Schema,
        max_batch_rows: int,
        classes: list[Any] | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.schema = schema
        self.columns = list(schema.input_columns)
        limits = limits or RequestLimits()
        self.limits = limits
        fields = {f"c{i}": _field(schema, name, limits) for i, name in enumerate(self.columns)}
        lenient = {
            key: (_lenient(annotation, key), info) for key, (annotation, info) in fields.items()
        }
        example = _example(schema)
        self.features: type[BaseModel] = create_model(  # type: ignore[call-overload]
            "Features",
            __config__=ConfigDict(
                extra="forbid",
                populate_by_name=False,
                json_schema_extra={"examples": [example]},
            ),
            **fields,
        )
        # A batch row: what a column cannot read is kept as Unread (see ``values``).
        lenient_model: type[BaseModel] = create_model(  # type: ignore[call-overload]
            "BatchFeatures",
            __config__=ConfigDict(extra="forbid", populate_by_name=False),
            **lenient,
        )
        columns = self.columns
        features_model = self.features
        listed = (
            "a list of values in this order: " + ", ".join(columns[:20])
            if len(columns) <= 20
            else f"a list of {len(columns)} values in the model's column order (GET /model)"
        )

        def as_mapping(value: Any) -> Any:
            if isinstance(value, list):
                if len(value) != len(columns):
                    raise ValueError(
                        f"a list of features needs {len(columns)} values in the order "
                        f"{', '.join(columns[:10])}{' ...' if len(columns) > 10 else ''}; "
                        f"got {len(value)}"
                    )
                return dict(zip(columns, value, strict=True))
            return value

        Row = Annotated[features_model, BeforeValidator(as_mapping)]  # type: ignore[valid-type]
        BatchRow = Annotated[lenient_model, BeforeValidator(as_mapping)]  # type: ignore[valid-type]

        class PredictRequest(BaseModel):
            model_config = ConfigDict(
                extra="forbid", json_schema_extra={"examples": [{"features": example}]}
            )
            features: Row = Field(..., description=f"the model's inputs by name, or {listed}")

        self.predict: type[BaseModel] = PredictRequest
        if schema.image is not None:
            decode, described = _image_decoder(schema.image)

            class ImagePredictRequest(BaseModel):
                model_config = ConfigDict(extra="forbid")
                features: Row | None = Field(  # type: ignore[valid-type]
                    None, description=f"the pixel values by name, or {listed}"
                )
                image: str | None = Field(None, description=described)
                _decode = model_validator(mode="before")(decode)

                @model_validator(mode="after")
                def _one_of(self) -> ImagePredictRequest:
                    if self.features is None:
                        raise ValueError("give 'features' (pixel values) or 'image' (base64)")
                    return self

            self.predict = ImagePredictRequest

        class BatchRequest(BaseModel):
            model_config = ConfigDict(
                extra="forbid", json_schema_extra={"examples": [{"instances": [example]}]}
            )
            instances: list[BatchRow] = Field(  # type: ignore[valid-type]
                ...,
                min_length=1,
                max_length=max_batch_rows,
                description=f"1 to {max_batch_rows} rows, each like /predict's features; a "
                "value its column cannot read is scored as missing and counted in the "
                "answer's `unreadable`",
            )
            strict: bool = Field(
                False,
                description="true: refuse the batch (422) at a value its column cannot read, "
                "instead of scoring it as missing",
            )

            @model_validator(mode="after")
            def _strict(self) -> Any:
                refused = _refused(self.instances) if self.strict else None
                if refused is not None:
                    raise refused
                return self

        self.batch = BatchRequest
        self.feedback = feedback_model(None if schema.task != "classification" else classes)
        self._fast_batch, self._fast_predict = _fast_decoders(
            schema, self.columns, max_batch_rows, limits
        )

    def fast_values(self, body: bytes) -> list[list[Any]] | None:
        """A /predict/batch body as one list of values per column, parsed and checked in one
        pass by msgspec, or None: then the body goes through the pydantic models, which accept
        the lenient forms (a row as a list, "yes" for true) and name what is wrong."""
        batch = _decoded(self._fast_batch, body)
        if batch is None:
            return None
        # (astuple: a row's values in column order, read in C)
        return [list(column) for column in zip(*map(astuple, batch.instances), strict=True)]

    def fast_row(self, body: bytes) -> list[list[Any]] | None:
        """A /predict body as one one-value list per column, or None (as ``fast_values``)."""
        predict = _decoded(self._fast_predict, body)
        return None if predict is None else [[v] for v in astuple(predict.features)]

    def row(self, features: BaseModel) -> list[Any]:
        """One validated row's values in column order."""
        data = features.__dict__
        return [data[f"c{i}"] for i in range(len(self.columns))]

    def values(self, rows: list[BaseModel]) -> ColumnValues:
        """Validated rows as one list of values per column, in column order; values a column
        could not read (batch rows) become None, counted in the result's ``unreadable``."""
        dicts = [row.__dict__ for row in rows]
        out = ColumnValues()
        out.unreadable = {}
        for i, name in enumerate(self.columns):
            column = [d[f"c{i}"] for d in dicts]
            unread = sum(isinstance(v, Unread) for v in column)
            if unread:
                out.unreadable[name] = unread
                column = [None if isinstance(v, Unread) else v for v in column]
            out.append(column)
        return out


_FINITE = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
_FAST_ROLES = ("numeric", "boolean", "categorical")


def _fast_type(role: str, bounds: Bounds | None, max_string: int | None) -> Any:
    """msgspec's type of a column in the strict form: what the pydantic field accepts as is
    (ints are read as floats; not NaN, inf, bools or strings for a number)."""
    if role == "numeric":
        if bounds is None:
            return _FINITE | None
        low, high = bounds
        return (
            Annotated[
                float,
                msgspec.Meta(
                    ge=-sys.float_info.max if low is None else low,
                    le=sys.float_info.max if high is None else high,
                ),
            ]
            | None
        )
    if role == "boolean":
        return bool | None
    text = str if max_string is None else Annotated[str, msgspec.Meta(max_length=max_string)]
    return text | int | _FINITE | None


def _decoded(decoder: msgspec.json.Decoder[Any] | None, body: bytes) -> Any:
    """``body`` decoded, or None where there is no decoder or the body is not its form (the
    pydantic models then say what is wrong: invalid UTF-8 included, which msgspec reports as
    a UnicodeDecodeError)."""
    if decoder is None:
        return None
    try:
        return decoder.decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None


def _fast_decoders(
    schema: Schema, columns: list[str], max_rows: int, limits: RequestLimits
) -> tuple[msgspec.json.Decoder[Any] | None, msgspec.json.Decoder[Any] | None]:
    """msgspec's decoders of the strict forms of /predict/batch and /predict bodies (every
    row an object with every column, values of the column's JSON type), which accept no body
    that the pydantic models refuse and read each the same; None where a column needs pydantic
    (date/time text is parsed there) or /predict takes an image."""
    if not columns or any(schema.columns[c].role not in _FAST_ROLES for c in columns):
        return None, None
    types = [
        _fast_type(schema.columns[c].role, limits.bounds.get(c), limits.max_string) for c in columns
    ]
    row = msgspec.defstruct(
        "Row",
        [(f"c{i}", kind) for i, kind in enumerate(types)],
        rename={f"c{i}": c for i, c in enumerate(columns)},
        forbid_unknown_fields=True,
        gc=False,  # only scalars: no reference cycle, and a 1,000-row batch adds no GC work
    )
    instances = Annotated[list[row], msgspec.Meta(min_length=1, max_length=max_rows)]  # type: ignore[valid-type]
    batch = msgspec.defstruct(
        "Batch", [("instances", instances), ("strict", bool, False)], forbid_unknown_fields=True
    )
    predict = msgspec.defstruct("Predict", [("features", row)], forbid_unknown_fields=True)
    return msgspec.json.Decoder(batch), (
        None if schema.image is not None else msgspec.json.Decoder(predict)
    )


def _image_decoder(image: dict[str, Any]) -> tuple[Any, str]:
    """For an image model's /predict: a before-validator turning ``{"image": "<base64>"}`` into
    the pixel features (converted and resized to the training images' spec), and a description."""
    from shipml.data.images import ImageSpec, decode_image
    from shipml.errors import ShipmlError

    spec = ImageSpec.from_dict(image)

    def decode(data: Any) -> Any:
        if not isinstance(data, dict) or data.get("image") is None:
            return data
        if data.get("features") is not None:
            raise ValueError("give 'features' or 'image', not both")
        if not isinstance(data["image"], str):
            raise ValueError("'image' must be a base64 string")
        try:
            pixels = decode_image(data["image"], spec)
        except ShipmlError as err:
            raise ValueError(f"image: {err.message}") from None
        return {"features": pixels.tolist()}

    described = (
        f"a base64-encoded image (PNG, JPEG, ...; a data: URL works too), converted to "
        f"{spec.height}×{spec.width}×{spec.channels} as in training"
    )
    return decode, described


class FeedbackRequest(BaseModel):
    """A true label (classification) or value (regression) for an answered prediction."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(
        ...,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the request_id /predict answered ('<id>-<row>' for a row of a batch)",
    )
    label: Annotated[
        Annotated[str, StringConstraints(strict=True, max_length=1000)]
        | StrictInt
        | StrictFloat
        | StrictBool,
        BeforeValidator(_finite),
    ]

    @field_validator("request_id")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


def feedback_model(classes: list[Any] | None) -> type[FeedbackRequest]:
    """/feedback's body for a model: for classification the label is one of ``classes`` (as
    the model has them, or as text: '1' for the class 1), for regression a finite number."""
    label: Any
    if classes is None:
        label = (Finite, Field(..., description="the true value (a number)"))
    else:
        by_key = {category_str(c): c for c in classes}
        listed = ", ".join(str(c) for c in classes[:20])

        def to_class(value: Any) -> Any:
            if isinstance(value, bool):  # a model of boolean classes: true/false as sent
                for c in classes:
                    if isinstance(c, bool) and c == value:
                        return c
            elif isinstance(value, str | int | float):
                key = category_str(value)
                if key in by_key:
                    return by_key[key]
            raise ValueError(f"not a class of the model; classes: {listed}")

        Label = Annotated[
            Any,
            BeforeValidator(to_class),
            WithJsonSchema({"enum": list(classes), "description": "a class of the model"}),
        ]
        label = (Label, Field(..., description="the true class"))
    model: type[FeedbackRequest] = create_model(  # type: ignore[call-overload]
        "FeedbackRequest", __base__=FeedbackRequest, label=label
    )
    return model


def frame_from_columns(columns: dict[str, Any], order: list[str]) -> pd.DataFrame:
    """The coerced input frame (as shipml.data.coerce.coerce_frame gives) from the per-column
    arrays of shipml.models.fastpath.value_columns (missing values already NaN / NaT)."""
    return pd.DataFrame({name: columns[name] for name in order}, columns=order)


__all__ = [
    "Bounds",
    "ColumnValues",
    "FeedbackRequest",
    "RequestLimits",
    "RequestModels",
    "Unread",
    "bounds_message",
    "feedback_model",
    "frame_from_columns",
    "input_bounds",
]
