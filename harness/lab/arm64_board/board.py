"""An emulated aarch64 "board" reachable over SSH on 127.0.0.1, like a Raspberry Pi 4.

The board is the image built by ``build.py`` (arm64 Debian bookworm) running its own
aarch64 ``/usr/sbin/sshd`` under qemu-user (binfmt_misc) inside ``bwrap``:

* the image is the root file system.  As root the board gets a writable overlay on top of
  the (cached, never modified) image, so ``/`` is writable like a real board's; otherwise
  the image is mounted read-only with a writable ``/root``;
* its own ``/tmp``, ``/run`` (tmpfs), ``/proc``, ``/dev``, pid namespace and hostname;
* its own sysfs-shaped directory at ``/sys`` (``sys_root`` on the host: the test writes the
  cpufreq/thermal files and the board sees them).  Never the host's ``/sys``: onnxruntime's
  cpuinfo crashes under qemu-user when it sees an x86 sysfs.  ``/proc/cpuinfo`` is replaced
  by a Pi 4 (Cortex-A72) one, and qemu emulates a Cortex-A72 (``QEMU_CPU``);
* ``/etc/convbench-board`` says ``emulated=qemu-user model=...`` so a fingerprint can tell.

Only the host network is shared: sshd listens on 127.0.0.1:<random free port>, root login
by key only (ed25519 keys generated in ``workdir``).

    board = Arm64Board(image_dir, workdir).start()
    paramiko ... connect("127.0.0.1", board.port, "root", key_filename=board.user_key_path)
    board.set_temperature(61.5); board.stop()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MODEL = "Raspberry Pi 4 Model B (emulated)"
QEMU_CPU = "cortex-a72"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _keypair(private_path: Path) -> str:
    """Write an OpenSSH ed25519 private key (mode 600); return the public key line."""
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    private_path.chmod(0o600)
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    Path(str(private_path) + ".pub").write_text(pub + "\n")
    return pub


def _cpu_list(n: int) -> str:
    return "0" if n == 1 else f"0-{n - 1}"


def pi4_cpuinfo(n_cpus: int, model: str = MODEL) -> str:
    """/proc/cpuinfo as a Raspberry Pi 4 (BCM2711, 4x Cortex-A72 r0p3) shows it."""
    cores = "".join(
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        f"CPU part\t: 0xd08\nCPU revision\t: 3\n\n" for i in range(n_cpus))
    return (cores + "Hardware\t: BCM2835\nRevision\t: c03114\n"
            f"Serial\t\t: 10000000emu1a7e0\nModel\t\t: {model}\n")


class Arm64Board:
    """One emulated aarch64 board; see the module docstring."""

    user = "root"
    host = "127.0.0.1"

    def __init__(self, image_dir: str | os.PathLike, workdir: str | os.PathLike, *,
                 n_cpus: int = 4, max_freq_khz: int = 1_800_000, temp_c: float = 45.0,
                 hostname: str = "raspberrypi", writable_root: bool | None = None) -> None:
        self.image_dir = Path(image_dir).resolve()
        self.workdir = Path(workdir).resolve()
        self.n_cpus = n_cpus
        self.max_freq_khz = max_freq_khz
        self.initial_temp_c = temp_c
        self.hostname = hostname
        # Overlay needs root (mount in a private mount namespace); else read-only image.
        self.writable_root = os.geteuid() == 0 if writable_root is None else writable_root
        self._proc: subprocess.Popen | None = None
        self._port: int | None = None
        self._log_file = None
        if not (self.image_dir / "usr" / "sbin" / "sshd").exists():
            raise FileNotFoundError(f"{self.image_dir} is not a board image (no /usr/sbin/sshd)")

    # ------------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("board not started")
        return self._port

    @property
    def sys_root(self) -> Path:
        """Host path of the directory the board sees as /sys."""
        return self.workdir / "sys"

    @property
    def user_key_path(self) -> Path:
        return self.workdir / "ssh" / "id_ed25519"

    @property
    def host_key_line(self) -> str:
        """The board's public host key, e.g. ``ssh-ed25519 AAAA...``."""
        return (self.workdir / "ssh" / "convbench" / "ssh_host_ed25519_key.pub").read_text().strip()

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ssh_config(self) -> dict:
        """What a devices.yaml entry (or paramiko.connect) needs to reach the board."""
        return {"host": self.host, "port": self.port, "user": self.user,
                "key_file": str(self.user_key_path), "known_hosts_line": self.known_hosts_line}

    # ------------------------------------------------------------------ sysfs control
    def write_sys(self, rel: str, value) -> None:
        p = self.sys_root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{value}\n")

    def set_temperature(self, celsius: float, zone: int = 0) -> None:
        milli = round(celsius * 1000)
        self.write_sys(f"class/thermal/thermal_zone{zone}/temp", milli)
        if zone == 0:
            self.write_sys("class/hwmon/hwmon0/temp1_input", milli)

    def set_frequency(self, khz: int, cpu: int | None = None) -> None:
        for c in range(self.n_cpus) if cpu is None else [cpu]:
            self.write_sys(f"devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq", khz)

    def set_governor(self, governor: str, cpu: int | None = None) -> None:
        for c in range(self.n_cpus) if cpu is None else [cpu]:
            self.write_sys(f"devices/system/cpu/cpu{c}/cpufreq/scaling_governor", governor)

    def _make_sysfs(self) -> None:
        n, cpus = self.n_cpus, _cpu_list(self.n_cpus)
        w = self.write_sys
        for name in ("online", "possible", "present"):
            w(f"devices/system/cpu/{name}", cpus)
        w("devices/system/cpu/offline", "")
        for c in range(n):
            base = f"devices/system/cpu/cpu{c}"
            w(f"{base}/online", 1)
            w(f"{base}/regs/identification/midr_el1", "0x00000000410fd083")
            w(f"{base}/regs/identification/revidr_el1", "0x0000000000000000")
            for k, v in {"physical_package_id": 0, "core_id": c, "cluster_id": 0,
                         "core_siblings_list": cpus, "package_cpus_list": cpus,
                         "thread_siblings_list": c, "core_cpus_list": c}.items():
                w(f"{base}/topology/{k}", v)
            for k, v in {"scaling_cur_freq": self.max_freq_khz,
                         "cpuinfo_max_freq": self.max_freq_khz, "cpuinfo_min_freq": 600_000,
                         "scaling_max_freq": self.max_freq_khz, "scaling_min_freq": 600_000,
                         "scaling_governor": "ondemand", "scaling_driver": "cpufreq-dt",
                         "scaling_available_governors":
                             "conservative ondemand userspace powersave performance schedutil",
                         "related_cpus": cpus, "affected_cpus": cpus}.items():
                w(f"{base}/cpufreq/{k}", v)
        w("class/thermal/thermal_zone0/type", "cpu-thermal")
        w("class/thermal/thermal_zone0/policy", "step_wise")
        w("class/thermal/thermal_zone0/mode", "enabled")
        w("class/hwmon/hwmon0/name", "cpu_thermal")
        self.set_temperature(self.initial_temp_c)
        dt = self.sys_root / "firmware" / "devicetree" / "base"
        dt.mkdir(parents=True, exist_ok=True)
        (dt / "model").write_bytes(MODEL.encode() + b"\0")
        (dt / "compatible").write_bytes(b"raspberrypi,4-model-b\0brcm,bcm2711\0")

    # ------------------------------------------------------------------ lifecycle
    def _prepare(self) -> None:
        if self.workdir.exists():
            # A fresh board each start: stale overlay/sysfs from a previous run go.
            for name in ("sys", "ssh", "overlay", "home", "proc"):
                shutil.rmtree(self.workdir / name, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._make_sysfs()
        (self.workdir / "proc").mkdir()
        (self.workdir / "proc" / "cpuinfo").write_text(pi4_cpuinfo(self.n_cpus))
        sshdir = self.workdir / "ssh" / "convbench"  # bound at /etc/ssh/convbench
        sshdir.mkdir(parents=True)
        _keypair(sshdir / "ssh_host_ed25519_key")
        user_pub = _keypair(self.user_key_path)
        (sshdir / "authorized_keys").write_text(user_pub + "\n")
        (sshdir / "sshd_config").write_text(
            f"Port {self._port}\nListenAddress {self.host}\n"
            "HostKey /etc/ssh/convbench/ssh_host_ed25519_key\n"
            "AuthorizedKeysFile /etc/ssh/convbench/authorized_keys .ssh/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\nPrintLastLog no\n"
            "Subsystem sftp internal-sftp\n"
            # sessions are new processes started through binfmt: keep them Cortex-A72 too
            f"SetEnv QEMU_CPU={QEMU_CPU}\n"
            "MaxStartups 50\nMaxSessions 50\nLogLevel INFO\n")
        if self.writable_root:
            for d in ("upper", "work", "merged"):
                (self.workdir / "overlay" / d).mkdir(parents=True)
        else:
            (self.workdir / "home").mkdir()

    def _command(self) -> list[str]:
        bw = ["bwrap"]
        if self.writable_root:
            bw += ["--bind", str(self.workdir / "overlay" / "merged"), "/"]
        else:
            bw += ["--ro-bind", str(self.image_dir), "/",
                   "--bind", str(self.workdir / "home"), "/root"]
        bw += [
            "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", "/run/sshd",
            "--bind", str(self.sys_root), "/sys",
            "--ro-bind", str(self.workdir / "proc" / "cpuinfo"), "/proc/cpuinfo",
            "--ro-bind", str(self.workdir / "ssh" / "convbench"), "/etc/ssh/convbench",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", self.hostname,
            "--die-with-parent", "--clearenv",
            "--setenv", "PATH", PATH, "--setenv", "HOME", "/root", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "QEMU_CPU", QEMU_CPU,
            "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/convbench/sshd_config",
        ]
        if not self.writable_root:
            return bw
        o = self.workdir / "overlay"
        opts = f"lowerdir={self.image_dir},upperdir={o / 'upper'},workdir={o / 'work'}"
        # The overlay lives in a private mount namespace: it vanishes with the board.
        script = ('mount -t overlay convbench-board -o "$1" "$2" && shift 2 && exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                opts, str(o / "merged"), *bw]

    def start(self, timeout: float = 120.0) -> Arm64Board:
        if self.running:
            return self
        last_err = ""
        for _attempt in range(3):  # a port race with another process is retried
            self._port = free_port(self.host)
            self._prepare()
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - the board's lifetime
            self._proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                          stdout=self._log_file, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError as e:
                last_err = str(e)
                self.kill()
                if "Address already in use" not in last_err:
                    break
        raise RuntimeError(last_err)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"board sshd exited with {self._proc.returncode}:\n"
                                   + self.log_tail())
            try:
                with socket.create_connection((self.host, self._port), timeout=2) as s:
                    s.settimeout(10)
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"board sshd not ready after {timeout}s:\n" + self.log_tail())

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the board (bwrap tears the pid namespace down with it), then SIGKILL."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait(timeout)
        self._cleanup()

    def kill(self) -> None:
        """Pull the plug."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._proc.wait(10)
        self._cleanup()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)  # the board's own session: nothing else

    def _cleanup(self) -> None:
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Arm64Board:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()


if __name__ == "__main__":  # manual use: python board.py IMAGE_DIR WORKDIR
    import sys

    board = Arm64Board(sys.argv[1], sys.argv[2]).start()
    kh = board.workdir / "known_hosts"
    kh.write_text(board.known_hosts_line + "\n")
    print(f"ssh -i {board.user_key_path} -o UserKnownHostsFile={kh} -p {board.port} "
          f"root@{board.host}\nsysfs: {board.sys_root}\nCtrl-C stops the board.", flush=True)
    try:
        board._proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
