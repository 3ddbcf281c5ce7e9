"""Use cases. Each one is one database transaction; handlers call exactly one."""
