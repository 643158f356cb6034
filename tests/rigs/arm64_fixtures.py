"""pytest fixtures for the emulated aarch64 board (see ``arm64_board/``).

Use from a test module::

    from tests.rigs.arm64_fixtures import arm64_board, arm64_board_image  # noqa: F401

``arm64_board`` (session scope) builds or reuses the cached image with
``arm64_board/build.py`` (cold: several minutes, root needed; warm: about a second) and
starts one board for the session.  When the image cannot be built or the board cannot
start, the test is skipped with the reason, except under CI (``CI`` set), where it fails:
CI never silently loses the arm64 coverage.

``arm64_backends_board`` is a second board whose image also runs the backends named in
``$CONVBENCH_ARM64_BACKENDS`` (e.g. ``executorch,torch``; see build.py).  It is opt-in: without
that variable its tests are skipped, CI included, since that image costs minutes more to build
(torch's 427 MB wheel) and every import of torch under emulation costs ~30 s.  The default
board ignores the variable.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness.lab.arm64_board as arm64_board_package

RIG_DIR = Path(arm64_board_package.__file__).resolve().parent
BUILD_SCRIPT = RIG_DIR / "build.py"
BUILD_TIMEOUT_S = 45 * 60
BACKENDS_ENV = "CONVBENCH_ARM64_BACKENDS"


def _load_board_module():
    return importlib.import_module("harness.lab.arm64_board.board")


def __getattr__(name):  # lazy: ``from tests.rigs.arm64_fixtures import Arm64Board``
    if name == "Arm64Board":
        return _load_board_module().Arm64Board
    raise AttributeError(name)


def unavailable(reason: str):
    """Skip, or fail when running under CI."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def build_or_reuse_image(log_path: Path, backends: str = "") -> Path:
    """Run build.py; return the image (rootfs) directory.  Raises RuntimeError on failure.

    ``backends``: what the image runs beyond onnxruntime and tflite ("": the default image,
    whatever $CONVBENCH_ARM64_BACKENDS says).
    """
    cmd = [sys.executable, str(BUILD_SCRIPT), f"--backends={backends}"]
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    text = log_path.read_text(errors="replace")
    m = re.search(r"^IMAGE_DIR=(.+)$", text, re.M)
    if rc != 0 or not m:
        tail = "\n".join(text.splitlines()[-25:])
        raise RuntimeError(f"arm64 board image build failed (rc={rc}, log {log_path}):\n{tail}")
    return Path(m.group(1).strip())


@pytest.fixture(scope="session")
def arm64_board_image(tmp_path_factory) -> Path:
    log_path = tmp_path_factory.mktemp("arm64-build") / "build.log"
    try:
        return build_or_reuse_image(log_path)
    except Exception as e:
        unavailable(str(e))


def _running_board(image: Path, workdir: Path):
    board = _load_board_module().Arm64Board(image, workdir)
    try:
        board.start()
    except Exception as e:
        board.kill()
        unavailable(f"arm64 board did not start: {e}")
    try:
        yield board
    finally:
        board.stop()


@pytest.fixture(scope="session")
def arm64_board(arm64_board_image, tmp_path_factory):
    """A running emulated Raspberry Pi 4 (aarch64, qemu-user) on 127.0.0.1:<port>."""
    yield from _running_board(arm64_board_image, tmp_path_factory.mktemp("arm64-board"))


def requested_backends() -> list[str]:
    """The backends $CONVBENCH_ARM64_BACKENDS asks the board to run beyond its default ones."""
    return os.environ.get(BACKENDS_ENV, "").replace(",", " ").split()


@pytest.fixture(scope="session")
def arm64_backends_board_image(tmp_path_factory) -> Path:
    backends = requested_backends()
    if not backends:
        pytest.skip(f"opt-in: set {BACKENDS_ENV}=executorch,torch to build the board image with those "
                    "backends too (on top of the default image: ~3 min cold, and ~3 min more for the test)")
    log_path = tmp_path_factory.mktemp("arm64-build-backends") / "build.log"
    try:
        return build_or_reuse_image(log_path, ",".join(backends))
    except Exception as e:
        unavailable(str(e))


@pytest.fixture(scope="session")
def arm64_backends_board(arm64_backends_board_image, tmp_path_factory):
    """Like ``arm64_board``, booted from the image with $CONVBENCH_ARM64_BACKENDS's backends."""
    yield from _running_board(arm64_backends_board_image, tmp_path_factory.mktemp("arm64-backends-board"))
