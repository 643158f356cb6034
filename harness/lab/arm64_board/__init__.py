"""The emulated aarch64 board: an arm64 Debian image under qemu-user, reached over SSH."""
