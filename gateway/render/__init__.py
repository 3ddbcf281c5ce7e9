"""Rendering adapters: turn domain values into images. Pure CPU work, no I/O."""
