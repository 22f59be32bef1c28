"""The chaos lane: tests marked ``chaos`` run only with RETHINKER_CHAOS=1 (``make test-chaos``)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("RETHINKER_CHAOS") == "1":
        return
    skip = pytest.mark.skip(reason="the chaos test runs in its own lane: make test-chaos (RETHINKER_CHAOS=1)")
    for item in items:
        if "chaos" in item.keywords:
            item.add_marker(skip)
