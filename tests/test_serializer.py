"""skops, the model serializer, is imported without torch, and lists the same trusted types."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
{setup}
from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES
torch_during = "torch" in sys.modules
import sklearn.externals.array_api_compat.torch as adapter
print(json.dumps({{
    "names": SKLEARN_ESTIMATOR_TYPE_NAMES,
    "torch_during": torch_during,
    "adapter_is_real": hasattr(adapter, "asarray") and "torch" in sys.modules,
}}))
"""


def _probe(setup: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_serializer_skips_torch_and_trusts_the_same_estimators() -> None:
    ours = _probe("from shipml.registry import serializer\nserializer()")
    plain = _probe("import skops.io")
    assert plain["torch_during"]  # what the placeholder saves: skops' walk imports torch
    assert not ours["torch_during"]
    assert ours["names"] == plain["names"] and len(ours["names"]) > 100
    # The placeholder is gone: the adapter imports for real afterwards (and torch with it).
    assert ours["adapter_is_real"]


def test_serializer_is_skops_io() -> None:
    import skops.io

    from shipml.registry import serializer

    assert serializer() is skops.io
