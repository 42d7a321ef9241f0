"""The chaos suite's pytest configuration: its tests share the helpers of tests/serving_helpers.py
(a real `shipml serve`, a bounded load generator) and record figures with tests/chaos/figures.py.
Every attack runs on 127.0.0.1 only, and every loop and wait has a deadline."""
