"""bench/payments.py in parts: config (sizes, goals), load (the generator), system (the gateway, the
machine, the databases, pgbench, the counter), figures (results and reports), profile (py-spy)."""
