#!/usr/bin/env python3
"""Build (or reuse) the emulated aarch64 "board" image: an arm64 Debian bookworm userland.

The image is made with ``mmdebstrap --arch=arm64`` and runs on this x86-64 host through
qemu-user (binfmt_misc, registered with the F flag so it also works inside bwrap).  The
aarch64 wheels of numpy, onnxruntime and ai-edge-litert are downloaded on the host and
installed with the image's own pip, so the board never needs a network.

Cache: ``$CONVBENCH_ARM64_CACHE`` or ``~/.cache/convbench/arm64-board``, one directory per
``sha256(this script less its "more backends" section + wheel spec + suite)``:

    <cache>/<hash>/rootfs/         the image (what Arm64Board boots)
    <cache>/<hash>/build-info.json versions, sizes, timings
    <cache>/<hash>/COMPLETE        written last: its presence means the image is usable

A complete image is reused in seconds (only the host-side binfmt registration is checked).
The last line printed on stdout is ``IMAGE_DIR=<path of rootfs>``.

More backends (``--backends executorch`` or ``$CONVBENCH_ARM64_BACKENDS``): the default image
runs the onnxruntime and tflite backends.  Asked for more, the script makes a second image, a
copy of the default one plus the aarch64 wheels of those backends, cached under
``sha256(default image's hash + this whole script + backends + their wheels and packages)``.
Those wheels are installed by the host's pip (``--target`` with the board's platform tags;
bytecode compiled by the host's Python when it is a 3.11 too), not by the board's pip under
emulation:

* ``torch``: torch 2.13.0's aarch64 wheel on PyPI is its CUDA build.  Its CPU code is what a
  Pi runs, but its libraries link against the CUDA runtime, cuDNN, cuBLAS, NCCL... (several
  GB of nvidia-* wheels) which can do nothing on a board without an NVIDIA GPU.  The image gets
  small aarch64 stand-ins instead, one per missing library, made here with binutils
  (``stub_missing_libraries``): every symbol torch needs from it, each a function that reports
  "no device" (``torch.cuda.is_available()`` is False).  Cortex-A72 caveat, measured: NVIDIA's
  BLAS in that wheel executes ARMv8.1 atomics (``ldaddal``) in its multi-threaded path, an
  illegal instruction on a Pi 4's ARMv8.0 cores, so torch ops that reach that BLAS with more than
  one thread die with SIGILL; one thread (the board's default) works;
* ``torch-compile``: torch as above, plus g++ and python3-dev (inductor compiles C++ that
  includes Python.h) installed by the image's apt under emulation (about 2 minutes).  Measured
  under qemu-user: inductor compiles a two-conv model in about 4 minutes (cpp_wrapper and
  freezing, as the runtime asks), once per item, since each item compiles cold;
* ``executorch``: ExecuTorch 1.5.1's aarch64 wheel (its runtime imports torch, and so needs it).

Under qemu-user these imports are slow: ``import torch`` about 27 s, ``import
executorch.runtime`` 45 s more, in every process that imports them.  Backends the board cannot
run are refused with the reason (``NOT_ON_BOARD``).

Needs root for a cold build (apt-get, mmdebstrap, binfmt_misc).  Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Pinned so the cache key means something; override with CONVBENCH_ARM64_WHEELS="a==1 b==2".
# ai-edge-litert 1.4.0 is the newest release with a linux aarch64 wheel (2.x ships none).
DEFAULT_WHEELS = ("numpy==2.4.6", "onnxruntime==1.31.1", "ai-edge-litert==1.4.0")
WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
# Debian packages in the image (on top of --variant=minbase).
IMAGE_PACKAGES = ("python3", "python3-pip", "openssh-server", "procps", "coreutils",
                  "ca-certificates")
# Host tools -> Debian package providing them.
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    # mmdebstrap only recommends arch-test, but refuses a foreign --arch without it.
    "arch-test": "arch-test",
    "qemu-aarch64-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
    "bwrap": "bubblewrap",
}
BOARD_FACT = "emulated=qemu-user model=Raspberry Pi 4 Model B (emulated) cpu=cortex-a72\n"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
AARCH64_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
MARKER = "COMPLETE"
PRUNE_AFTER_DAYS = 7  # images of other script versions unused this long are deleted


class BuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[arm64-board] {msg}", flush=True)


class Phases:
    """Times each phase and prints it."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.t0 = time.monotonic()

    @contextlib.contextmanager
    def __call__(self, name: str):
        log(f"phase {name} ...")
        t = time.monotonic()
        try:
            yield
        finally:
            dt = time.monotonic() - t
            self.timings[name] = round(dt, 2)
            log(f"phase {name}: {dt:.1f}s")

    def total(self) -> float:
        return time.monotonic() - self.t0


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def wheel_spec() -> list[str]:
    env = os.environ.get("CONVBENCH_ARM64_WHEELS", "").split()
    return env or list(DEFAULT_WHEELS)


BACKENDS_SECTION = "# " + "-" * 75 + " more backends\n"
MAIN_SECTION = "# " + "-" * 75 + " main\n"


def image_hash() -> str:
    """The default image's key: this script (less its "more backends" section, which that image
    never runs: changing how backends are added does not rebuild it), wheels and suite."""
    text = Path(__file__).read_text()
    start, end = text.index(BACKENDS_SECTION), text.index(MAIN_SECTION)
    h = hashlib.sha256()
    h.update((text[:start] + text[end:]).encode())
    h.update(b"\0wheels:" + " ".join(wheel_spec()).encode())
    h.update(b"\0suite:" + SUITE.encode())
    return h.hexdigest()[:20]


def cache_root(arg: str | None) -> Path:
    if arg:
        return Path(arg).expanduser()
    env = os.environ.get("CONVBENCH_ARM64_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/convbench/arm64-board").expanduser()


def is_complete(d: Path) -> bool:
    return (d / MARKER).is_file() and (d / "rootfs" / "usr" / "sbin" / "sshd").exists()


# --------------------------------------------------------------------------- host setup

def ensure_host_packages(tools: dict[str, str] = HOST_TOOLS) -> None:
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BuildError(f"missing host packages {missing} and not root to apt-get them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env,
        stdout=subprocess.DEVNULL)


def _binfmt_entry() -> dict[str, str] | None:
    p = BINFMT_DIR / "qemu-aarch64"
    if not p.exists():
        return None
    info: dict[str, str] = {"state": ""}
    for line in p.read_text().splitlines():
        if line in ("enabled", "disabled"):
            info["state"] = line
        elif " " in line:
            k, v = line.split(" ", 1)
            info[k.rstrip(":")] = v.strip()
    return info


def _binfmt_ok(info: dict[str, str] | None) -> bool:
    return bool(info and info["state"] == "enabled" and "F" in info.get("flags", "")
                and Path(info.get("interpreter", "/nonexistent")).exists())


def ensure_binfmt() -> str:
    """Make sure aarch64 ELF binaries run through qemu-aarch64-static with the F flag."""
    if not (BINFMT_DIR / "status").exists():
        if os.geteuid() != 0:
            raise BuildError(f"{BINFMT_DIR} is not mounted and we are not root")
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)])
    info = _binfmt_entry()
    if _binfmt_ok(info):
        return f"already registered ({info['interpreter']}, flags {info.get('flags')})"
    if os.geteuid() != 0:
        raise BuildError("qemu-aarch64 binfmt handler missing/not fix-binary, and not root")
    if shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
        info = _binfmt_entry()
        if _binfmt_ok(info):
            return f"enabled via update-binfmts ({info['interpreter']}, flags {info.get('flags')})"
    # Write the registration ourselves (replacing one that lacks the F flag).
    if info is not None:
        (BINFMT_DIR / "qemu-aarch64").write_text("-1")
    qemu = shutil.which("qemu-aarch64-static") or "/usr/bin/qemu-aarch64-static"
    (BINFMT_DIR / "register").write_text(
        f":qemu-aarch64:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{qemu}:F")
    info = _binfmt_entry()
    if not _binfmt_ok(info):
        raise BuildError(f"could not register qemu-aarch64 with binfmt_misc: {info}")
    return f"registered directly ({qemu}, flags {info.get('flags')})"


def debian_mirror() -> str:
    env = os.environ.get("CONVBENCH_DEBIAN_MIRROR")
    if env:
        return env
    srcs = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for p in srcs:
        try:
            text = p.read_text()
        except OSError:
            continue
        # deb822: "URIs: http://.../debian" ; one-line: "deb http://.../debian bookworm main"
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)/?(?:\s|$)",
                             text, re.M):
            return m.group(1)
    return DEFAULT_MIRROR


# --------------------------------------------------------------------------- build phases

def host_pip() -> list[str]:
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
        pip = [shutil.which("pip3") or "pip3"]
    return pip


def platform_args() -> list[str]:
    """pip's options that pick the board's wheels (aarch64, CPython 3.11) on this host."""
    args = []
    for plat in WHEEL_PLATFORMS:
        args += ["--platform", plat]
    return [*args, "--python-version", "3.11", "--implementation", "cp"]


def download_wheels(root: Path, spec: list[str] | None = None, no_deps: bool = False) -> Path:
    """The wheels of ``spec`` (default: the image's) for the board, in a cached directory.

    ``no_deps``: exactly these wheels (torch's own dependencies name the nvidia-* CUDA wheels).
    """
    spec = wheel_spec() if spec is None else spec
    deps = ["--no-deps"] if no_deps else []
    key = hashlib.sha256(" ".join(spec + list(WHEEL_PLATFORMS) + deps).encode()).hexdigest()[:16]
    wdir = root / "wheels" / key
    if (wdir / MARKER).exists():
        log(f"wheels reused from {wdir}")
        return wdir
    shutil.rmtree(wdir, ignore_errors=True)
    wdir.mkdir(parents=True)
    cmd = [*host_pip(), "download", "--disable-pip-version-check", "--only-binary=:all:", *deps,
           *platform_args(), "-d", str(wdir), *spec]
    run(cmd, stdout=subprocess.DEVNULL)
    (wdir / MARKER).write_text(" ".join(spec) + "\n")
    return wdir


def mmdebstrap(rootfs: Path, mirror: str) -> None:
    cmd = [
        "mmdebstrap", "--arch=arm64", "--variant=minbase", "--mode=root",
        "--include=" + ",".join(IMAGE_PACKAGES),
        # merged /usr without the usrmerge package (which drags in ~50 MB of perl)
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--aptopt=Acquire::Retries \"3\"",
        "--dpkgopt=force-unsafe-io",  # no fsync per file: a throwaway build, much faster
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/lintian/*",
        SUITE, str(rootfs), f"deb {mirror} {SUITE} main",
    ]
    run(cmd)


def bwrap_in_image(rootfs: Path, argv: list[str], extra: list[str] = (), **kw):
    """Run an aarch64 command inside the image (qemu-user via binfmt), with an empty /sys.

    The host's /sys is kept out on purpose: onnxruntime's cpuinfo crashes when it sees an
    x86 sysfs under qemu-user.
    """
    sysdir = rootfs.parent / "build-sys"
    cpu = sysdir / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for name in ("online", "possible", "present"):
        (cpu / name).write_text("0\n")
    cmd = ["bwrap", "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
           "--tmpfs", "/tmp", "--tmpfs", "/run", "--bind", str(sysdir), "/sys",
           "--unshare-pid", "--die-with-parent", "--clearenv",
           "--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "--setenv", "HOME", "/root", "--setenv", "LANG", "C.UTF-8",
           "--setenv", "QEMU_CPU", "cortex-a72", *extra, *argv]
    try:
        return run(cmd, **kw)
    finally:
        shutil.rmtree(sysdir, ignore_errors=True)


def pip_install(rootfs: Path, wheels: Path) -> None:
    names = [re.split(r"[=<>!~ ]", s, maxsplit=1)[0] for s in wheel_spec()]
    bwrap_in_image(rootfs, [
        "/usr/bin/python3", "-m", "pip", "install", "--no-index", "--find-links", "/tmp/wheels",
        "--break-system-packages", "--no-cache-dir", "--disable-pip-version-check",
        "--root-user-action=ignore", *wheel_spec()],
        extra=["--ro-bind", str(wheels), "/tmp/wheels"], stdout=subprocess.DEVNULL)
    log("installed " + ", ".join(names))


def configure(rootfs: Path) -> None:
    # A fact file the runner's fingerprint can read: this is no real Pi.
    (rootfs / "etc" / "convbench-board").write_text(BOARD_FACT)
    (rootfs / "etc" / "hostname").write_text("raspberrypi\n")
    # Mount points Arm64Board binds over (needed when the image is mounted read-only).
    (rootfs / "etc" / "ssh" / "convbench").mkdir(parents=True, exist_ok=True)
    (rootfs / "run" / "sshd").mkdir(parents=True, exist_ok=True)
    # Host keys come from the board's workdir; don't ship keys shared by every user.
    for k in (rootfs / "etc" / "ssh").glob("ssh_host_*"):
        k.unlink()
    prune_image(rootfs)


def prune_image(rootfs: Path) -> None:
    """Remove apt's lists and caches, logs, pip's cache and /tmp's leftovers from the image."""
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "var/cache/debconf/*-old", "var/log/*.log", "var/log/apt/*", "root/.cache",
                    "tmp/*"):
        for p in rootfs.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


SMOKE = ("import platform, numpy, onnxruntime, ai_edge_litert.interpreter, json; "
         "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
         "'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__, "
         "'ai_edge_litert': __import__('importlib.metadata').metadata.version('ai-edge-litert')}))")


def smoke(rootfs: Path) -> dict:
    out = bwrap_in_image(rootfs, ["/usr/bin/python3", "-c", SMOKE], capture_output=True,
                         text=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if info["machine"] != "aarch64":
        raise BuildError(f"image python reports machine {info['machine']!r}")
    log(f"smoke: {info}")
    return info


def safe_rmtree(path: Path) -> None:
    """rmtree that first detaches mounts left inside (an interrupted mmdebstrap's /proc,
    /sys, /dev binds): never recurse into the host's /dev or /sys."""
    prefix = str(path.resolve()) + "/"
    def mounts() -> list[str]:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1].replace("\\040", " ") for line in f]
        return sorted((m for m in points if m.startswith(prefix)), reverse=True)
    for m in mounts():
        subprocess.run(["umount", "-l", m], check=False)
    left = mounts()
    if left:
        raise BuildError(f"refusing to delete {path}: still mounted: {left}")
    shutil.rmtree(path, ignore_errors=True)


def prune(root: Path, keep: str) -> None:
    """Delete images of other hashes not used for PRUNE_AFTER_DAYS (bounded disk use)."""
    cutoff = time.time() - PRUNE_AFTER_DAYS * 86400
    for d in root.iterdir():
        if d.name == keep or not re.fullmatch(r"[0-9a-f]{20}", d.name) or not d.is_dir():
            continue
        stamp = d / "last-used"
        used = (stamp if stamp.exists() else d).stat().st_mtime
        if used >= cutoff:
            continue
        with open(root / f".{d.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # being built right now
            log(f"pruning unused image {d}")
            safe_rmtree(d)
        (root / f".{d.name}.lock").unlink(missing_ok=True)


def dir_size(p: Path) -> int:
    out = subprocess.run(["du", "-sb", str(p)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 else -1


# --------------------------------------------------------------------------- images

def cached_image(root: Path, h: str, what: str, make, phases: Phases, force: bool = False) -> Path:
    """The complete image ``root/h`` (reused, or made by ``make(work_dir) -> info`` under a lock).

    ``make`` fills ``work_dir/rootfs`` and returns what build-info.json should say; the image
    becomes ``root/h`` only when complete (COMPLETE written last, then one rename).
    """
    final = root / h
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{h}.lock", "w") as lock:
        with phases("lock"):
            fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists() and is_complete(final) and not force:
            (final / "last-used").touch()
            prune(root, keep=h)
            log(f"reusing complete {what} {final} ({phases.total():.1f}s)")
            return final / "rootfs"
        if os.geteuid() != 0:
            raise BuildError(f"no complete {what} at {final} and a cold build needs root")
        for stale in [final, *root.glob(f".{h}.partial-*")]:
            if stale.exists():
                log(f"removing stale {stale}")
                safe_rmtree(stale)
        work = root / f".{h}.partial-{os.getpid()}"
        work.mkdir()
        try:
            info = make(work)
            with phases("finalize"):
                size = dir_size(work / "rootfs")
                info = {"hash": h, **info, "size_bytes": size, "timings_s": phases.timings,
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                (work / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
                (work / "last-used").touch()
                (work / MARKER).write_text(f"{h}\n")  # written last
                os.rename(work, final)
            prune(root, keep=h)
        except BaseException:
            safe_rmtree(work)
            raise
        log(f"{what} size {size / 2**20:.0f} MiB; cold build total {phases.total():.1f}s")
        return final / "rootfs"


def build(root: Path, force: bool = False, phases: Phases | None = None) -> Path:
    """The default image (onnxruntime, tflite)."""
    phases = phases or Phases()
    with phases("host-packages"):
        ensure_host_packages()
    with phases("binfmt"):
        log("binfmt qemu-aarch64: " + ensure_binfmt())

    def make(work: Path) -> dict:
        rootfs = work / "rootfs"
        mirror = debian_mirror()
        log(f"cold build of {root / image_hash()} (mirror {mirror}, wheels {' '.join(wheel_spec())})")
        with phases("download-wheels"):
            wheels = download_wheels(root)
        with phases("mmdebstrap"):
            mmdebstrap(rootfs, mirror)
        with phases("pip-install"):
            pip_install(rootfs, wheels)
        with phases("configure"):
            configure(rootfs)
        with phases("smoke"):
            versions = smoke(rootfs)
        return {"suite": SUITE, "mirror": mirror, "wheels": wheel_spec(), "versions": versions}

    return cached_image(root, image_hash(), "image", make, phases, force)


# --------------------------------------------------------------------------- more backends

# Backends the default image runs.
BASE_BACKENDS = ("onnxruntime", "tflite")
# More backends, each with the aarch64 wheels it needs (pinned: they key the image).  No
# dependency resolution happens (--no-deps): these lists are complete for importing them.
TORCH_WHEELS = ("torch==2.13.0", "filelock==4.3.1", "fsspec==2026.9.0", "jinja2==3.1.6",
                "markupsafe==3.0.4", "mpmath==1.3.0", "networkx==3.6.1", "sympy==1.14.0")
BACKEND_WHEELS = {
    "torch": TORCH_WHEELS,
    "torch-compile": TORCH_WHEELS,
    # executorch.runtime imports torch, and through executorch.exir torchao, ruamel.yaml, tabulate
    "executorch": (*TORCH_WHEELS, "executorch==1.5.1", "torchao==0.18.0", "ruamel.yaml==0.19.1",
                   "tabulate==0.10.0"),
}
# Debian packages a backend needs in the image (installed by the image's apt, under emulation).
BACKEND_PACKAGES = {"torch-compile": ("g++", "python3-dev")}  # inductor compiles C++ including Python.h
# What each extra backend's smoke test imports (a line of Python printing a version).
BACKEND_SMOKE = {
    "torch": "import torch; assert not torch.cuda.is_available(); v['torch'] = torch.__version__",
    "torch-compile": ("import torch, shutil, sysconfig, os; assert shutil.which('g++'); "
                      "assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')); "
                      "v['torch'] = torch.__version__"),
    "executorch": ("from executorch.runtime import Runtime; "
                   "assert Runtime.get().backend_registry.is_available('XnnpackBackend'); "
                   "v['executorch'] = __import__('importlib.metadata').metadata.version('executorch')"),
}
NOT_ON_BOARD = {
    "litert": "the litert backend's CompiledModel API (ai_edge_litert.options: CpuOptions, hardware "
              "accelerators, tensor details) came with ai-edge-litert 2.2.0, and no 2.x release has a Linux "
              "aarch64 wheel; 1.4.0, the newest that does (in the image, run by the tflite backend), has only "
              "CompiledModel.from_file(path) on the CPU, without options (threads) or tensor details",
    "litert-gpu": "the board has no GPU, and no aarch64 ai-edge-litert has CompiledModel's accelerator options",
    "litert-npu": "the board has no NPU, and no aarch64 ai-edge-litert has CompiledModel's accelerator options",
    "torch-cuda": "the board has no CUDA",
    "torch-compile-cuda": "the board has no CUDA",
    "onnxruntime-cuda": "the board has no CUDA",
}
# Tools that make the stand-ins for the CUDA libraries torch's aarch64 wheel links against.
STUB_TOOLS = {"aarch64-linux-gnu-as": "binutils-aarch64-linux-gnu",
              "aarch64-linux-gnu-ld": "binutils-aarch64-linux-gnu",
              "aarch64-linux-gnu-readelf": "binutils-aarch64-linux-gnu"}
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"


def board_backends(names: str | list[str] | None) -> list[str]:
    """The backends beyond the default image's that ``names`` asks for (sorted), else BuildError."""
    if names is None:
        names = os.environ.get("CONVBENCH_ARM64_BACKENDS", "")
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    extra = set()
    for name in names:
        if name in BASE_BACKENDS:
            continue
        if name in NOT_ON_BOARD:
            raise BuildError(f"the board cannot run the {name} backend: {NOT_ON_BOARD[name]}")
        if name not in BACKEND_WHEELS:
            raise BuildError(f"unknown backend {name!r} for the board: it runs "
                             f"{', '.join([*BASE_BACKENDS, *BACKEND_WHEELS])}")
        extra.add(name)
    return sorted(extra)


def backend_wheel_spec(backends: list[str]) -> list[str]:
    return sorted({w for b in backends for w in BACKEND_WHEELS[b]})


def backends_hash(backends: list[str]) -> str:
    """The key of the image with ``backends``: the default image's, this whole script, what they need."""
    h = hashlib.sha256(image_hash().encode())
    h.update(Path(__file__).read_bytes())
    h.update(b"\0backends:" + ",".join(backends).encode())
    h.update(b"\0wheels:" + " ".join(backend_wheel_spec(backends)).encode())
    h.update(b"\0packages:" + " ".join(p for b in backends for p in BACKEND_PACKAGES.get(b, ())).encode())
    return h.hexdigest()[:20]


def copy_image(base: Path, rootfs: Path) -> None:
    """A copy of the default image to add to (reflinked where the file system can)."""
    run(["cp", "-a", "--reflink=auto", str(base), str(rootfs)])


def install_wheels_from_host(rootfs: Path, wheels: Path, spec: list[str]) -> list[str]:
    """Install ``spec`` from ``wheels`` into the image's site-packages with the host's pip.

    pip --target with the board's platform tags unpacks aarch64 wheels as they are: nothing is
    built or run.  It installs into an empty directory beside the image first, whose entries are
    then moved in (one rename each); console scripts (whose #! names the host's Python) and data
    files for a prefix (share/) are left out.
    """
    site = rootfs / SITE_PACKAGES
    staging = rootfs.parent / "staging"
    run([*host_pip(), "install", "--disable-pip-version-check", "--no-deps", "--no-index",
         "--find-links", str(wheels), "--only-binary=:all:", *platform_args(), "--no-compile",
         "--target", str(staging), *spec], stdout=subprocess.DEVNULL)
    added = []
    for entry in sorted(staging.iterdir()):
        if entry.name in ("bin", "share"):  # console scripts, data files meant for a prefix
            continue
        if (site / entry.name).exists():
            raise BuildError(f"{entry.name} is in the default image already: a backend's wheels must not "
                             "replace its packages")
        os.rename(entry, site / entry.name)
        added.append(entry.name)
    shutil.rmtree(staging)
    return added


# Never imported by a runtime: left for Python to compile if ever imported.
COMPILE_SKIP = r"/(tests?|testing/_internal|examples)/"


def compile_bytecode(rootfs: Path, names: list[str]) -> None:
    """Byte-compile the packages added (else every board session compiles them again, emulated).

    With a CPython 3.11 host its compileall writes the same .pyc the board's Python would (the
    magic number is 3.11's); otherwise the board's Python does it under emulation.
    """
    site = rootfs / SITE_PACKAGES
    dirs = [n for n in names if (site / n).is_dir() and not n.endswith((".dist-info", ".libs"))]
    files = [n for n in names if n.endswith(".py")]
    skip = ["-x", COMPILE_SKIP]
    if sys.version_info[:2] == (3, 11):
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *skip, "-s", str(rootfs), "-p", "/",
                        *[str(site / n) for n in dirs + files]], stdout=subprocess.DEVNULL, check=False)
    else:
        bwrap_in_image(rootfs, ["/usr/bin/python3", "-m", "compileall", "-q", "-j", "0", *skip,
                                *[f"/{SITE_PACKAGES}/{n}" for n in dirs + files]],
                       stdout=subprocess.DEVNULL, check=False)


# ---- stand-ins for the CUDA libraries torch's aarch64 wheel links against
STUB_MESSAGE = "no CUDA on this board: convbench put stand-ins for the CUDA libraries in torch/lib"
_RET_MESSAGE = "adr x0, .Lmessage\n\tret"
# Stand-ins whose callers read more than a status code: counts written as zero, strings given.
STUB_BODIES = {
    "cudaGetDeviceCount": "str wzr, [x0]\n\tmov w0, #100\n\tret",  # *count = 0, cudaErrorNoDevice
    "cudaDriverGetVersion": "str wzr, [x0]\n\tmov w0, #0\n\tret",  # 0: no driver
    "cudaRuntimeGetVersion": "str wzr, [x0]\n\tmov w0, #0\n\tret",
    "cudaGetErrorString": _RET_MESSAGE, "cudaGetErrorName": _RET_MESSAGE,
    "cuptiGetResultString": "adr x2, .Lmessage\n\tstr x2, [x1]\n\tmov w0, #0\n\tret",
    "cuptiGetCallbackName": "adr x3, .Lmessage\n\tstr x3, [x2]\n\tmov w0, #0\n\tret",
    "cuptiGetVersion": "str wzr, [x0]\n\tmov w0, #0\n\tret",
    "cudnnGetErrorString": _RET_MESSAGE, "ncclGetErrorString": _RET_MESSAGE,
    "nvrtcGetErrorString": _RET_MESSAGE, "cublasGetStatusString": _RET_MESSAGE,
    "cusparseGetErrorString": _RET_MESSAGE,
    "cudnnGetVersion": "mov x0, #0\n\tret", "cudnnGetCudartVersion": "mov x0, #0\n\tret",
    "cudnnGetProperty": "str wzr, [x1]\n\tmov w0, #0\n\tret",
}
_STUB_DEFAULT_BODY = "mov x0, #100\n\tret"  # a non-zero status: every CUDA C API call fails
_SYMBOL_RE = re.compile(r"^\s*\d+:\s+[0-9a-f]+\s+(\d+|0x[0-9a-f]+)\s+(\w+)\s+(\w+)\s+\w+\s+(\S+)\s+(\S+)")


def _readelf(*args: str) -> str:
    return subprocess.run(["aarch64-linux-gnu-readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


def elf_symbols(path: Path) -> list[tuple[str, str, str, str, bool, int]]:
    """(name, version, type, binding, defined, size) of each dynamic symbol."""
    syms = []
    for line in _readelf("--dyn-syms", str(path)).splitlines():
        m = _SYMBOL_RE.match(line)
        if not m or m.group(3) == "LOCAL" or m.group(2) in ("SECTION", "FILE"):
            continue
        size, typ, bind, ndx, name = m.groups()
        base, _, version = name.partition("@")
        syms.append((base, version.lstrip("@"), typ, bind, ndx != "UND", int(size, 0)))
    return syms


def elf_needed(path: Path) -> list[str]:
    return re.findall(r"\(NEEDED\).*\[(.+?)\]", _readelf("-d", str(path)))


def elf_version_files(path: Path) -> dict[str, str]:
    """Version name -> the library file it is needed from (the .gnu.version_r section)."""
    files, current = {}, None
    for line in _readelf("-V", str(path)).splitlines():
        if m := re.search(r"File: (\S+)", line):
            current = m.group(1)
        elif (m := re.search(r"Name: (\S+)", line)) and current:
            files[m.group(1)] = current
    return files


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def missing_library_symbols(rootfs: Path, package: Path) -> dict[str, dict[str, tuple[str, str, int]]]:
    """Libraries that ``package``'s ELF files need but neither it nor the image has, each with
    the symbols those files take from it: {soname: {symbol: (version, type, size)}}."""
    libdir = rootfs / "usr" / "lib" / "aarch64-linux-gnu"
    system = {p.name for d in (libdir, rootfs / "usr" / "lib") for p in d.glob("*.so*")}
    elfs = [p for p in sorted(package.rglob("*.so*")) if p.is_file() and not p.is_symlink() and is_elf(p)]
    present = system | {p.name for p in elfs}
    providers = [*elfs, rootfs / "usr" / "bin" / "python3.11", rootfs / "usr" / "lib" / "ld-linux-aarch64.so.1",
                 *[libdir / n for n in ("libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1",
                                        "libpthread.so.0", "libdl.so.2", "librt.so.1")]]
    defined = {s[0] for p in providers if p.exists() for s in elf_symbols(p) if s[4]}
    stubs: dict[str, dict[str, tuple[str, str, int]]] = {}
    for p in elfs:
        missing = [n for n in elf_needed(p) if n not in present]
        if not missing:
            continue
        if p.parent != package / "lib":
            raise BuildError(f"{p} needs {missing}: stand-ins go to {package / 'lib'}, which it may not search")
        files = elf_version_files(p)
        for name in missing:
            stubs.setdefault(name, {})
        for name, version, typ, bind, is_defined, size in elf_symbols(p):
            if is_defined or bind == "WEAK" or name in defined:
                continue
            owner = files.get(version) if version else missing[0]  # unversioned: any library in scope
            if owner not in missing:
                raise BuildError(f"{p.name} needs {name}@{version} from {owner}, which the image lacks")
            stubs[owner][name] = (version, typ, size)
    return stubs


def write_stub_library(soname: str, symbols: dict[str, tuple[str, str, int]], outdir: Path) -> None:
    """An aarch64 shared library named ``soname`` defining ``symbols``, with their versions."""
    text, data = ["\t.text"], []
    for name, (_version, typ, size) in sorted(symbols.items()):
        if typ in ("FUNC", "IFUNC", "NOTYPE"):
            text += ["\t.p2align 2", f"\t.globl {name}", f"\t.type {name}, %function", f"{name}:",
                     "\t" + STUB_BODIES.get(name, _STUB_DEFAULT_BODY), f"\t.size {name}, .-{name}"]
        elif typ == "OBJECT":
            n = max(size, 8)
            data += ["\t.p2align 4", f"\t.globl {name}", f"\t.type {name}, %object", f"\t.size {name}, {n}",
                     f"{name}:", f"\t.zero {n}"]
        else:
            raise BuildError(f"{soname}: no stand-in for {name} of type {typ}")
    lines = [*text, "\t.section .rodata", ".Lmessage:", f'\t.asciz "{STUB_MESSAGE}"']
    if data:
        lines += ["\t.data", *data]
    versions: dict[str, list[str]] = {}
    for name, (version, _typ, _size) in symbols.items():
        if version:
            versions.setdefault(version, []).append(name)
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, script = Path(tmp) / "stub.s", Path(tmp) / "stub.o", Path(tmp) / "versions.map"
        src.write_text("\n".join(lines) + "\n")
        subprocess.run(["aarch64-linux-gnu-as", "-o", str(obj), str(src)], check=True)
        cmd = ["aarch64-linux-gnu-ld", "-shared", "-soname", soname, "-o", str(outdir / soname), str(obj)]
        if versions:
            script.write_text("".join(f"{v} {{ global: {'; '.join(sorted(names))}; }};\n"
                                      for v, names in sorted(versions.items())))
            cmd += ["--version-script", str(script)]
        subprocess.run(cmd, check=True)


def stub_missing_libraries(rootfs: Path, package: str = "torch") -> dict[str, int]:
    """Give ``package``'s libraries a stand-in for each library they need that nothing provides."""
    pkg = rootfs / SITE_PACKAGES / package
    stubs = missing_library_symbols(rootfs, pkg)
    for soname, symbols in sorted(stubs.items()):
        write_stub_library(soname, symbols, pkg / "lib")
    log(f"stand-ins in {package}/lib: " + ", ".join(f"{k} ({len(v)} symbols)" for k, v in sorted(stubs.items())))
    return {k: len(v) for k, v in sorted(stubs.items())}


def apt_install_in_image(rootfs: Path, packages: list[str]) -> None:
    """Debian packages into the image, by its own apt and dpkg under emulation (the host's network)."""
    apt = "apt-get -q -o APT::Sandbox::User=root -o Acquire::Retries=3 -o Dpkg::Options::=--force-unsafe-io"
    script = (f"{apt} update && DEBIAN_FRONTEND=noninteractive {apt} install -y --no-install-recommends "
              + " ".join(packages))
    resolv = Path("/etc/resolv.conf").resolve()
    extra = ["--ro-bind", str(resolv), "/etc/resolv.conf"] if resolv.is_file() else []
    bwrap_in_image(rootfs, ["/bin/sh", "-c", script], extra=extra, stdout=subprocess.DEVNULL)
    prune_image(rootfs)
    log("installed " + ", ".join(packages))


def smoke_backends(rootfs: Path, backends: list[str]) -> dict:
    code = "import json, platform; v = {'machine': platform.machine()}; "
    code += "; ".join(BACKEND_SMOKE[b] for b in backends) + "; print(json.dumps(v))"
    out = bwrap_in_image(rootfs, ["/usr/bin/python3", "-c", code], capture_output=True, text=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"smoke: {info}")
    return info


def build_with_backends(root: Path, backends: list[str], force: bool = False) -> Path:
    """The default image plus what ``backends`` (see BACKEND_WHEELS) need; the default one if none."""
    phases = Phases()
    base = build(root, phases=phases)
    if not backends:
        return base
    with phases("host-packages-backends"):
        ensure_host_packages(STUB_TOOLS)
    spec = backend_wheel_spec(backends)

    def make(work: Path) -> dict:
        rootfs = work / "rootfs"
        log(f"cold build of {root / backends_hash(backends)}: the default image + {', '.join(backends)}")
        with phases("download-backend-wheels"):
            wheels = download_wheels(root, spec, no_deps=True)
        with phases("copy-image"):
            copy_image(base, rootfs)
        packages = sorted({p for b in backends for p in BACKEND_PACKAGES.get(b, ())})
        if packages:
            with phases("apt-install"):
                apt_install_in_image(rootfs, packages)
        with phases("install-backend-wheels"):
            added = install_wheels_from_host(rootfs, wheels, spec)
        with phases("stub-cuda-libraries"):
            stubs = stub_missing_libraries(rootfs) if "torch" in added else {}
        with phases("compile-bytecode"):
            compile_bytecode(rootfs, added)
        with phases("smoke-backends"):
            versions = smoke_backends(rootfs, backends)
        return {"base": image_hash(), "backends": [*BASE_BACKENDS, *backends], "backend_wheels": spec,
                "backend_packages": packages, "versions": versions, "cuda_stand_ins": stubs}

    return cached_image(root, backends_hash(backends), f"image with {', '.join(backends)}", make, phases,
                        force)


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", help="default $CONVBENCH_ARM64_CACHE or "
                    "~/.cache/convbench/arm64-board")
    ap.add_argument("--backends", help="comma-separated backends the image must run beyond "
                    f"{', '.join(BASE_BACKENDS)}: {', '.join(BACKEND_WHEELS)} (default "
                    "$CONVBENCH_ARM64_BACKENDS)")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--print-hash", action="store_true", help="print the cache key and exit")
    args = ap.parse_args(argv)
    t = time.monotonic()
    try:
        backends = board_backends(args.backends)
        if args.print_hash:
            print(backends_hash(backends) if backends else image_hash())
            return 0
        image = build_with_backends(cache_root(args.cache_dir), backends, force=args.force)
    except (BuildError, subprocess.CalledProcessError, OSError) as e:
        log(f"FAILED after {time.monotonic() - t:.1f}s: {e}")
        return 1
    log(f"done in {time.monotonic() - t:.1f}s")
    print(f"IMAGE_DIR={image}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
