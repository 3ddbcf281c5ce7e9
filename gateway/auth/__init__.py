"""Credentials: API keys, passwords, JWTs, and the principal every request acts as."""
