"""Model evaluation: metrics, confusion matrices, and the metric registry used by training."""
