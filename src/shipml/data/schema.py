"""Column roles and the model's input schema.

A ``Schema`` is inferred from the training table (shipml.data.infer), stored with every model
version, and used to check inputs at predict time (shipml.data.coerce).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from shipml.config import Task

__all__ = ["MODEL_ROLES", "ColumnInfo", "Role", "Schema", "Task"]

Role = Literal["numeric", "categorical", "boolean", "datetime", "text", "identifier", "excluded"]
MODEL_ROLES: tuple[str, ...] = ("numeric", "categorical", "boolean", "datetime")


@dataclass
class ColumnInfo:
    """One column of the training table and the role shipml gives it."""

    name: str
    role: Role
    dtype: str
    missing_share: float = 0.0
    n_unique: int = 0
    categories: list[str] | None = None  # most frequent values, for categorical/boolean columns
    note: str = ""  # why the role was chosen, shown by `shipml init`
    # datetime columns read from text: the one format every value is parsed with ("ISO8601"
    # or a strftime format such as "%d/%m/%Y"); None for models that predate it (parsed value
    # by value, as they were trained)
    date_format: str | None = None


@dataclass
class Schema:
    """What the model reads: the target, the task, and every column's role, in table order."""

    target: str
    task: Literal["classification", "regression"]
    columns: dict[str, ColumnInfo]
    classes: list[Any] | None = None
    derived: dict[str, str] = field(default_factory=dict)
    image: dict[str, Any] | None = None  # shipml.data.images.ImageSpec of an image data set
    encoding: str | None = None  # the training file's text encoding, where it was not UTF-8

    def columns_with(self, role: str) -> list[str]:
        return [c.name for c in self.columns.values() if c.role == role]

    @property
    def input_columns(self) -> list[str]:
        """Columns a model needs at predict time, in table order."""
        return [c.name for c in self.columns.values() if c.role in MODEL_ROLES]

    @property
    def known_columns(self) -> set[str]:
        """Every column of the training table; at predict, extra columns from this set are fine."""
        return set(self.columns) | {self.target}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "task": self.task,
            "classes": self.classes,
            "derived": dict(self.derived),
            "image": self.image,
            "encoding": self.encoding,
            "columns": [asdict(c) for c in self.columns.values()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        columns = {c["name"]: ColumnInfo(**c) for c in data["columns"]}
        return cls(
            target=data["target"],
            task=data["task"],
            columns=columns,
            classes=data.get("classes"),
            derived=dict(data.get("derived") or {}),
            image=data.get("image"),
            encoding=data.get("encoding"),
        )
