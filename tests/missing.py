"""What to do when a test's tool is missing: skip on a developer's machine, fail in CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str, *, module: bool = False) -> NoReturn:
    """Skip with `reason`; with CI=true fail instead, since CI must run every test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason, allow_module_level=module)
