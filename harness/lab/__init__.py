"""A lab to try convbench's multi-device runs without hardware (``harness lab up``).

Every part speaks the real protocol to the real client, so the code path a run takes is the
one it takes against real devices:

* ``arm64_board``: an arm64 Debian userland under qemu-user with its own sshd, reached over
  SSH like a Raspberry Pi 4 (emulated timings; its fingerprint says so);
* ``adb_device``: the device side of the ADB wire protocol, which the real ``adb`` client
  connects to like a phone with wireless debugging on; its commands run sandboxed;
* ``benchmark_model_standin``: TFLite's ``benchmark_model`` flags and output, running the
  model for real with LiteRT's interpreter;
* ``sshd``: a real OpenSSH server on 127.0.0.1.

The test suite uses the same parts (tests/rigs/ holds only their pytest fixtures).
"""
