"""Real components the tests start: found, or skipped with a reason (a failure under CI)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """Skip on a developer machine; under CI=true a missing component fails the run."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def binary(name: str, *, package: str, extra_dirs: tuple[str, ...] = ()) -> str:
    found = shutil.which(name)
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if not found and candidate.exists():
            found = str(candidate)
    if not found:
        missing(f"{name} is not installed (apt-get install {package})")
    return found
