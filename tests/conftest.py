"""Shared fixtures: the artifact cache, an isolated results directory, rig requirements."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # Exports are the slow part of the tests.  Artifacts are keyed by the workload
    # definitions and exporter versions, so the user's cache is safe to share; a fresh
    # machine fills it once.  CONVBENCH_TEST_CACHE isolates a test session when wanted.
    if "CONVBENCH_TEST_CACHE" in os.environ:
        os.environ["CONVBENCH_CACHE"] = os.environ["CONVBENCH_TEST_CACHE"]
    # `harness run` calibrates first on a fresh results directory (seconds per device x backend
    # x threads); the many tests that run it in a fresh tmp_path opt out, and the calibration
    # tests (tests/test_calibration.py) turn it back on where they test it.
    os.environ.setdefault("CONVBENCH_CALIBRATE", "off")


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "results"
    monkeypatch.setenv("CONVBENCH_RESULTS", str(path))
    return path


def require(condition: bool, reason: str) -> None:
    """Skip locally when a test's real component is missing; fail in CI, never skip there."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)
