"""`harness lab up|down|status`: an emulated Pi board and a loopback phone, to try multi-device runs
without hardware (the parts are in harness/lab/)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from harness.lab.lab import LabState


DEFAULT_DIR = Path("lab")  # harness.lab.lab.DEFAULT_DIR; imported lazily so `harness --help` stays instant
_dir_option = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                           default=DEFAULT_DIR, show_default=True,
                           help="The lab's directory: its devices file, state, keys and logs.")


@click.group()
def lab() -> None:
    """An emulated Raspberry Pi 4 and a loopback Android phone on this machine, to try
    `harness run --devices pi4,pixel7` before wiring real devices.

    \b
    pi4     an arm64 Debian userland under qemu-user with its own sshd, reached over SSH
    pixel7  the device side of the ADB protocol, reached by the real adb client; its
            benchmark_model runs the .tflite with LiteRT's interpreter on this host
    Both are marked emulated: reports say their timings are not real hardware's.
    """


@lab.command("up")
@_dir_option
@click.option("--detach", is_flag=True, help="Run the lab in the background; `harness lab down` stops it.")
@click.option("--no-board", is_flag=True, help="Without the emulated Pi board.")
@click.option("--no-phone", is_flag=True, help="Without the loopback phone.")
def lab_up(directory: Path, detach: bool, no_board: bool, no_phone: bool) -> None:
    """Start the lab, write DIR/devices.yaml, print the commands to try; Ctrl-C or SIGTERM stops it all.

    The first start builds the board image (several minutes, as root; `make lab` does it all).
    """
    if no_board and no_phone:
        raise click.UsageError("--no-board and --no-phone leave nothing to start")
    if detach:
        _up_detached(directory, no_board, no_phone)
        return
    from harness.lab.lab import Lab, Stopped, serve, signals_ignored, stop_on_signals

    lab_ = Lab(directory, board=not no_board, phone=not no_phone, say=lambda text: click.echo(text, err=True))
    why = "stopped"
    with stop_on_signals():
        try:
            state = lab_.start()
            _print_ready(state)
            click.echo("The lab runs until Ctrl-C (or `harness lab down` from another terminal).", err=True)
            why = serve(lab_)
            click.echo(f"lab stopping: {why}", err=True)
        except Stopped as stop:
            why = stop.signal_name
            click.echo(f"lab stopping ({why})", err=True)
        finally:
            with signals_ignored():
                lab_.stop()
    click.echo("lab stopped: everything it started is gone", err=True)
    if why.startswith("the board"):
        sys.exit(1)


def _print_ready(state: LabState) -> None:
    from harness.lab.lab import suggested_commands

    click.echo(f"\nlab up: devices file {state.devices_file}\nTry (from this directory):")
    for command in suggested_commands(state):
        click.echo(f"  {command}")
    click.echo("", err=True)


def _up_detached(directory: Path, no_board: bool, no_phone: bool) -> None:
    """Start ``harness lab up`` in a session of its own and return once it is ready, showing its progress."""
    from harness.lab.lab import LOG_FILE, READY_TIMEOUT_S, LabState

    directory.mkdir(parents=True, exist_ok=True)
    running = LabState.load(directory.resolve())
    if running is not None and running.alive:
        raise click.ClickException(f"a lab is already running from {directory} (pid {running.pid}); "
                                   f"`harness lab down --dir {directory}` stops it")
    log_path = directory / LOG_FILE
    argv = [sys.executable, "-m", "harness.cli", "lab", "up", "--dir", str(directory)]
    argv += ["--no-board"] * no_board + ["--no-phone"] * no_phone
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # a Ctrl-C in this terminal must not reach it
    shown = 0
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        text = log_path.read_text(errors="replace")
        lines = text.splitlines()
        for line in lines[shown:]:
            if line.startswith("lab up:"):
                break
            click.echo(line, err=True)
            shown += 1
        state = LabState.load(directory.resolve())
        if state is not None and state.pid == proc.pid and state.ready:
            _print_ready(state)
            click.echo(f"The lab runs in the background (pid {proc.pid}, log {log_path}); "
                       f"`harness lab down --dir {directory}` stops it.", err=True)
            return
        if proc.poll() is not None:
            raise click.ClickException(f"the lab did not start (exit code {proc.returncode}); see {log_path}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise click.ClickException(f"the lab was not ready within {READY_TIMEOUT_S / 60:.0f} minutes; "
                                       f"see {log_path}")
        time.sleep(0.3)


@lab.command("down")
@_dir_option
def lab_down(directory: Path) -> None:
    """Stop the lab running from DIR (what `lab up --detach` started, or one in another terminal)."""
    from harness.lab.lab import stop_running

    if stop_running(directory, say=lambda text: click.echo(text, err=True)):
        click.echo("lab stopped")
    else:
        click.echo(f"no lab is running from {directory}")


@lab.command("status")
@_dir_option
def lab_status(directory: Path) -> None:
    """Is a lab running from DIR, and what to type to use it. Exit code 1 when none is."""
    from harness.lab.lab import LOG_FILE, LabState, pid_alive

    state = LabState.load(directory.resolve())
    if state is None or not pid_alive(state.pid):
        click.echo(f"no lab is running from {directory}")
        sys.exit(1)
    if not state.ready:
        click.echo(f"the lab (pid {state.pid}) is starting; its log: {directory / LOG_FILE}")
        return
    click.echo(f"lab running (pid {state.pid})")
    _print_ready(state)


def register(main: click.Group) -> None:
    main.add_command(lab)
