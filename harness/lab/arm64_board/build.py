#!/usr/bin/env python3
"""Build (or reuse) the emulated aarch64 "board" image: an arm64 Debian bookworm userland.

The image is made with ``mmdebstrap --arch=arm64`` and runs on this x86-64 host through
qemu-user (binfmt_misc, registered with the F flag so it also works inside bwrap).  The
aarch64 wheels of numpy, onnxruntime and ai-edge-litert are downloaded on the host and
installed with the image's own pip, so the board never needs a network.

Cache: ``$CONVBENCH_ARM64_CACHE`` or ``~/.cache/convbench/arm64-board``, one directory per
``sha256(this script + wheel spec + suite)``:

    <cache>/<hash>/rootfs/         the image (what Arm64Board boots)
    <cache>/<hash>/build-info.json versions, sizes, timings
    <cache>/<hash>/COMPLETE        written last: its presence means the image is usable

A complete image is reused in seconds (only the host-side binfmt registration is checked).
The last line printed on stdout is ``IMAGE_DIR=<path of rootfs>``.

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


def image_hash() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
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

def ensure_host_packages() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
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

def download_wheels(root: Path) -> Path:
    spec = wheel_spec()
    key = hashlib.sha256(" ".join(spec + list(WHEEL_PLATFORMS)).encode()).hexdigest()[:16]
    wdir = root / "wheels" / key
    if (wdir / MARKER).exists():
        log(f"wheels reused from {wdir}")
        return wdir
    shutil.rmtree(wdir, ignore_errors=True)
    wdir.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
        pip = [shutil.which("pip3") or "pip3"]
    cmd = [*pip, "download", "--disable-pip-version-check", "--only-binary=:all:"]
    for plat in WHEEL_PLATFORMS:
        cmd += ["--platform", plat]
    cmd += ["--python-version", "3.11", "--implementation", "cp", "-d", str(wdir), *spec]
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
    # Prune.
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


# --------------------------------------------------------------------------- main

def build(root: Path, force: bool = False) -> Path:
    phases = Phases()
    with phases("host-packages"):
        ensure_host_packages()
    with phases("binfmt"):
        log("binfmt qemu-aarch64: " + ensure_binfmt())
    h = image_hash()
    final = root / h
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{h}.lock", "w") as lock:
        with phases("lock"):
            fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists() and is_complete(final) and not force:
            (final / "last-used").touch()
            prune(root, keep=h)
            log(f"reusing complete image {final} ({phases.total():.1f}s)")
            return final / "rootfs"
        if os.geteuid() != 0:
            raise BuildError(f"no complete image at {final} and a cold build needs root")
        for stale in [final, *root.glob(f".{h}.partial-*")]:
            if stale.exists():
                log(f"removing stale {stale}")
                safe_rmtree(stale)
        work = root / f".{h}.partial-{os.getpid()}"
        work.mkdir()
        rootfs = work / "rootfs"
        mirror = debian_mirror()
        log(f"cold build of {final} (mirror {mirror}, wheels {' '.join(wheel_spec())})")
        try:
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
            with phases("finalize"):
                size = dir_size(rootfs)
                info = {"hash": h, "suite": SUITE, "mirror": mirror, "wheels": wheel_spec(),
                        "versions": versions, "size_bytes": size, "timings_s": phases.timings,
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                (work / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
                (work / "last-used").touch()
                (work / MARKER).write_text(f"{h}\n")  # written last
                os.rename(work, final)
            prune(root, keep=h)
        except BaseException:
            safe_rmtree(work)
            raise
        log(f"image size {size / 2**20:.0f} MiB; cold build total {phases.total():.1f}s")
        return final / "rootfs"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", help="default $CONVBENCH_ARM64_CACHE or "
                    "~/.cache/convbench/arm64-board")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--print-hash", action="store_true", help="print the cache key and exit")
    args = ap.parse_args(argv)
    if args.print_hash:
        print(image_hash())
        return 0
    t = time.monotonic()
    try:
        image = build(cache_root(args.cache_dir), force=args.force)
    except (BuildError, subprocess.CalledProcessError, OSError) as e:
        log(f"FAILED after {time.monotonic() - t:.1f}s: {e}")
        return 1
    log(f"done in {time.monotonic() - t:.1f}s")
    print(f"IMAGE_DIR={image}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
