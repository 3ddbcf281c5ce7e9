"""Simulators of the counter's devices, speaking the same bytes as the real ones.

Each runs in-process against one end of a pseudo-terminal (see ``hardware.sim.pty``) while the
production driver opens the other end as a serial port, so tests exercise the real code path.
"""
