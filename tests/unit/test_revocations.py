"""The revoked-session set of a process: what it answers without the database, and when it must not."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gateway import settings as settings_mod
from gateway.errors import Unauthenticated
from gateway.services import revocations
from gateway.services.revocations import SessionRevocations


class _Clock:
    now_s = 1_000_000.0

    def __call__(self) -> float:
        return self.now_s


def _set(entries_max: int = 3) -> tuple[SessionRevocations, _Clock]:
    clock = _Clock()
    found = SessionRevocations(None, settings_mod.load(env={}, sign_in={"revoked_sessions_max": entries_max}),  # type: ignore[arg-type]
                               clock=clock)
    return found, clock


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The database fallback, recorded: it refuses nothing."""
    asked: list[Any] = []

    async def check_in_database(db: Any, holder_id: uuid.UUID, session_id: uuid.UUID | None, issued_at_s: int) -> None:
        asked.append(session_id)

    monkeypatch.setattr(revocations, "check_in_database", check_in_database)
    return asked


def _listening(found: SessionRevocations) -> None:
    found._connection = object()  # what the listener sets once it LISTENs and has loaded
    found._loaded = True


async def test_a_revoked_session_is_refused_from_memory(database: list[Any]) -> None:
    found, clock = _set()
    _listening(found)
    holder, revoked, live = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    found.add(revoked, holder, clock.now_s + 900, clock.now_s)
    with pytest.raises(Unauthenticated) as refused:
        await found.check(holder, revoked, int(clock.now_s) - 10)
    assert refused.value.code == "session_revoked"
    await found.check(holder, live, int(clock.now_s) - 10)
    assert database == [] and found.database_checks == 0


async def test_tokens_without_a_session_die_with_any_revocation_of_their_holder(database: list[Any]) -> None:
    found, clock = _set()
    _listening(found)
    holder = uuid.uuid4()
    await found.check(holder, None, int(clock.now_s) - 100)
    found.add(uuid.uuid4(), holder, clock.now_s + 900, clock.now_s)
    with pytest.raises(Unauthenticated):
        await found.check(holder, None, int(clock.now_s) - 100)
    await found.check(uuid.uuid4(), None, int(clock.now_s) - 100)


async def test_without_a_listener_or_over_the_cap_the_database_answers(database: list[Any]) -> None:
    found, clock = _set(entries_max=2)
    session = uuid.uuid4()
    await found.check(uuid.uuid4(), session, int(clock.now_s))
    assert database == [session]
    _listening(found)
    for _ in range(3):
        found.add(uuid.uuid4(), uuid.uuid4(), clock.now_s + 900, clock.now_s)
    assert not found.answering
    await found.check(uuid.uuid4(), session, int(clock.now_s))
    assert database == [session, session]
    # Once the entries' tokens have expired they go, and the set answers again.
    clock.now_s += 1000
    found.prune()
    assert found.size == 0 and found.answering


async def test_an_unreadable_notification_stops_the_set_from_answering(database: list[Any]) -> None:
    found, _ = _set()
    _listening(found)
    found._notified("not:a:payload")
    assert not found.answering
