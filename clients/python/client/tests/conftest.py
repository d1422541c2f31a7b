"""The Python SDK's suite runs against live cartlytics systems (tests/client_stacks.py):

- CARTLYTICS_TEST_GRPC / CARTLYTICS_TEST_KEY: a stack with default settings, and the key
  (ingest + read) of a fresh project used by this suite alone;
- CARTLYTICS_TEST_THROTTLED_GRPC / CARTLYTICS_TEST_THROTTLED_KEY: a stack whose ingest is limited
  to one request a second (burst 1), for real 429s.

Without them every live test is skipped, unless CARTLYTICS_TEST_REQUIRE=1 (then they fail).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Stack:
    target: str
    key: str


def _stack(prefix: str) -> Stack:
    target = os.environ.get(f"CARTLYTICS_TEST_{prefix}GRPC", "")
    key = os.environ.get(f"CARTLYTICS_TEST_{prefix}KEY", "")
    if not target or not key:
        missing = f"CARTLYTICS_TEST_{prefix}GRPC and CARTLYTICS_TEST_{prefix}KEY"
        if os.environ.get("CARTLYTICS_TEST_REQUIRE") == "1":
            pytest.fail(f"{missing} are required (CARTLYTICS_TEST_REQUIRE=1)")
        pytest.skip(f"no live stack: set {missing} (python -m tests.client_stacks)")
    return Stack(target=target, key=key)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The main stack and this suite's key."""
    return _stack("")


@pytest.fixture(scope="session")
def throttled() -> Stack:
    """The stack whose ingest allows one request a second."""
    return _stack("THROTTLED_")
