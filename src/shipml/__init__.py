"""shipml: from a table of data to a tracked, registered, evaluated model."""

__version__ = "0.1.0"
