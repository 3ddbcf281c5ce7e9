"""A database URL the driver cannot read is reported in one line that never shows a password,
whether it was given in the userinfo or as a query parameter (asyncpg takes both)."""

from __future__ import annotations

from gateway.store import db


def test_the_unreadable_url_line_redacts_passwords_of_userinfo_and_query() -> None:
    url = "postgresql://app:s3cr3t-user@db:5432/gw?password=s3cr3t-query&sslmode=bogus"
    cause = ValueError(f"invalid connection option in {url!r}: sslpassword=s3cr3t-ssl")
    line = str(db.DatabaseUrlInvalid(url + "&sslpassword=s3cr3t-ssl", cause))
    assert "s3cr3t" not in line, line
    assert "driver cannot read the database URL" in line
