"""Device layer of the checkout counter.

Invariant: nothing under ``hardware`` imports from ``gateway`` or ``pos_agent``; devices and their
simulators speak the real wire protocols, so tests and a real counter run the same code.
"""
