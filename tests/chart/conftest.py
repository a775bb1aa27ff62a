"""Shared fixtures for the chart tests: load the chart once, render it offline with
helm-python-sdk (Helm v4's Go SDK through a C ABI, no helm binary), parse the manifests.

Run with `scripts/chart-test`, which sets up the venv these imports need.
"""

from __future__ import annotations

from typing import Any, Callable

import helm_python
import pytest

from chartlib import CHART_DIR, NAMESPACE, RELEASE, Rendered


@pytest.fixture(scope="session")
def chart():
    loaded = helm_python.Chart.load(CHART_DIR)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def render(chart) -> Callable[..., Rendered]:
    """render(values) -> Rendered; raises helm_python.HelmRenderError / HelmValuesError."""

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        files = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
        return Rendered(files)

    return _render
