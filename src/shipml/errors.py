"""Errors a user can act on. Each carries a one-line fix hint and maps to an exit code."""

from __future__ import annotations


class ShipmlError(Exception):
    """Base of every error shipml raises on purpose; the CLI prints it as one line, no traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(ShipmlError):
    """shipml.yaml is missing, unreadable, or does not match the config schema."""


class DataError(ShipmlError):
    """A data file or table is missing, unreadable, empty, or does not fit what is expected."""


class DataSourceError(DataError):
    """A SQL source cannot be reached or its query fails."""


class ValidationFailed(DataError):
    """Data validation found fatal problems; ``report`` holds every finding."""

    def __init__(self, message: str, hint: str | None = None, report: object = None) -> None:
        super().__init__(message, hint)
        self.report = report


class InputSchemaError(DataError):
    """Input to a model (predict, evaluate) does not match the model's input schema."""


class RegistryError(ShipmlError):
    """A model version or alias does not exist, or the registry cannot be used."""


class TrainingError(ShipmlError):
    """Training could not produce a model (for example, every candidate failed)."""


class ClusterError(ShipmlError):
    """A compute cluster (Ray) cannot be reached or cannot run shipml's tasks."""


class GateFailed(ShipmlError):
    """A check the user asked to fail on did fail (gate, drift)."""

    exit_code = 1
