"""convbench: measure standard vs depthwise-separable convolutions on real hardware."""

__version__ = "0.1.0"
