"""The POS agent: the counter's devices wired to the gateway.

Layers, each a module: ``settings`` (one frozen object from a TOML file), ``credentials`` (the
enrolled device), ``gateway_client`` (the device API with idempotent retries), ``journal``
(durable operations and offline taps), ``offline`` (pure limit arithmetic), ``checkout`` (the
sale state machine and its driver), ``forwarder`` (offline taps and compensations to the
gateway), ``devices`` (adapters over ``hardware``), ``register`` (the Concert link to the cash
register), ``agent`` (wiring and lifecycle), ``__main__`` (the ``pos-agent`` command).

Invariant: nothing here imports ``gateway``; the agent speaks to it only over HTTP.
"""
