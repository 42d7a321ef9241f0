"""Data: sources, schema inference, validation, split."""
