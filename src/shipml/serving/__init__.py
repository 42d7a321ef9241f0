"""Serving the champion: the FastAPI app, fast inference, metrics and the prediction log."""
