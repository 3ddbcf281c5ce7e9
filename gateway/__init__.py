"""Wallet payment gateway: an async acquirer settling against a double-entry wallet ledger."""
