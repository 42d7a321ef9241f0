"""Model families and their estimators."""
