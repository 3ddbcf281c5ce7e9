"""The NFC reader as an asyncio service: arm it for one tap, get a ``TapResult`` back.

``NfcReader(path)`` drives any reader nfcpy opens: ``usb:054c:06c1``, ``tty:USB0:pn532`` or
``udp:127.0.0.1:PORT`` (nfcpy's loopback driver, met by ``hardware.sim.phone``). A single
dedicated thread owns the ``nfc.ContactlessFrontend``; the event loop only hands it jobs and
receives outcomes through ``loop.call_soon_threadsafe``.

An armed read runs ``clf.connect(rdwr={"targets": ["106A"], "on-connect": lambda tag: False})``
with a ``terminate`` callback, then the EMV fast path (``hardware.nfc.emv``) over
``tag.transceive``, then S(DESELECT).

Invariants:
- The event loop never blocks on nfcpy: every nfcpy call happens in the reader thread.
- At most one read is armed (``ReaderBusy`` otherwise). ``read_tap`` always ends, by its own
  ``timeout_s`` at the latest, with a ``TapResult`` or an ``NfcError``: ``TapTimeout`` (no
  tap), ``TapCancelled`` (``disarm``), ``ReaderUnavailable`` (reader absent at the deadline, or
  closed), ``CardError`` (the card answered wrongly). A tap that breaks off mid-exchange (card
  pulled away) does not end the read: the reader keeps polling until the deadline.
- Cancellation (``disarm``, task cancellation, timeout) is immediate for the caller; the
  thread notices it through nfcpy's ``terminate`` callback at its next poll, within one sense
  (about 1 s on the udp driver, milliseconds on USB readers).
- A reader that fails (``IOError``, or nfcpy's ``connect`` returning False) is closed and
  re-opened with backoff capped at ``REOPEN_BACKOFF_MAX_S``, so a re-plugged reader is back
  within 2 s. While idle, a ``mute`` every ``HEALTH_CHECK_INTERVAL_S`` detects a pulled reader
  (on drivers whose ``mute`` talks to the device). ``connected`` and ``on_state_change`` expose
  the state; an armed read survives a reconnect.
- Polling is paced: a sense cycle starts at most every ``POLL_INTERVAL_S`` so fast USB readers
  do not spin.
- The token PAN is never logged (``TapResult`` reprs are masked).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import nfc
import nfc.clf
import nfc.tag
import nfc.tag.tt4

from hardware.nfc import emv
from hardware.nfc.card import WALLET_AID
from hardware.nfc.emv import TapResult, TerminalData
from hardware.nfc.errors import CardError, NfcError, ReaderBusy, ReaderUnavailable, TapCancelled, TapTimeout

log = logging.getLogger(__name__)

READ_TIMEOUT_MAX_S: Final = 300.0
HEALTH_CHECK_INTERVAL_S: Final = 0.5
REOPEN_BACKOFF_FIRST_S: Final = 0.05
REOPEN_BACKOFF_MAX_S: Final = 1.0
POLL_INTERVAL_S: Final = 0.1
DESELECT_TIMEOUT_S: Final = 0.1
FOREIGN_TAG_PAUSE_S: Final = 0.2
CLOSE_TIMEOUT_S: Final = 3.0
PATH_PREFIXES: Final = ("usb", "tty:", "com:", "udp")
DESELECT: Final = bytearray([0xC2])

StateCallback = Callable[[bool], None]


@dataclass(eq=False)
class _Job:
    """One armed read. ``cancelled`` is set by the event loop side (disarm, timeout, close);
    ``finished`` by the reader thread once it delivered an outcome."""

    terminal: TerminalData
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[TapResult]
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def live(self) -> bool:
        return not (self.cancelled.is_set() or self.finished.is_set())

    def deliver(self, outcome: TapResult | NfcError) -> None:
        self.finished.set()

        def settle() -> None:
            if self.future.done():
                return
            if isinstance(outcome, NfcError):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this read any more
            self.loop.call_soon_threadsafe(settle)


class NfcReader:
    def __init__(
        self,
        path: str,
        *,
        accepted_aids: Sequence[bytes] = (WALLET_AID,),
        on_state_change: StateCallback | None = None,
        today: Callable[[], datetime.date] = datetime.date.today,
        health_check_interval_s: float = HEALTH_CHECK_INTERVAL_S,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        if not path.startswith(PATH_PREFIXES):
            raise ValueError(f"reader path must start with one of {PATH_PREFIXES}: {path!r}")
        if not accepted_aids:
            raise ValueError("accepted_aids must not be empty")
        self._path = path
        self._accepted_aids = tuple(accepted_aids)
        self._on_state_change = on_state_change
        self._today = today
        self._health_check_interval_s = health_check_interval_s
        self._poll_interval_s = poll_interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._jobs = threading.Condition()
        self._job: _Job | None = None  # guarded by _jobs
        self._clf: Any = None  # nfc.ContactlessFrontend; reader thread only
        self._connected = False
        self._connected_event = asyncio.Event()

    @property
    def path(self) -> str:
        return self._path

    @property
    def connected(self) -> bool:
        """Whether the device is open right now (as last seen by the reader thread)."""
        return self._connected

    async def start(self) -> None:
        """Start the reader thread; it opens the device and keeps it open."""
        if self._thread is not None:
            raise RuntimeError("reader already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"nfc-reader {self._path}", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Disarm, stop the reader thread and close the device (waits up to CLOSE_TIMEOUT_S)."""
        self._closing.set()
        with self._jobs:
            job = self._job
            self._jobs.notify_all()
        if job is not None:
            job.cancelled.set()
            if not job.future.done():
                job.future.set_exception(ReaderUnavailable("reader closed"))
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if thread.is_alive():
            log.warning("nfc reader thread %s did not stop within %.1f s", self._path, CLOSE_TIMEOUT_S)

    async def __aenter__(self) -> NfcReader:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def read_tap(
        self, amount_minor: int, currency_numeric: int, country_numeric: int, timeout_s: float
    ) -> TapResult:
        """Arm the reader for one tap of ``amount_minor`` and wait for it (``timeout_s`` at most)."""
        if not 0 < timeout_s <= READ_TIMEOUT_MAX_S:
            raise ValueError(f"timeout_s must be in (0, {READ_TIMEOUT_MAX_S}]")
        loop = self._loop
        if loop is None or self._closing.is_set():
            raise ReaderUnavailable("reader not started or closed")
        terminal = TerminalData(
            amount_minor=amount_minor,
            currency_numeric=currency_numeric,
            country_numeric=country_numeric,
            transaction_date=self._today(),
            unpredictable_number=secrets.token_bytes(4),
        )
        job = _Job(terminal, time.monotonic() + timeout_s, loop, loop.create_future())
        with self._jobs:
            if self._job is not None and not self._job.future.done():
                raise ReaderBusy("a read is already armed")
            self._job = job
            self._jobs.notify_all()
        try:
            return await asyncio.wait_for(job.future, timeout_s)
        except NfcError:
            raise
        except TimeoutError:
            if self._connected:
                raise TapTimeout(f"no tap within {timeout_s:.1f} s") from None
            raise ReaderUnavailable(f"reader {self._path} unavailable") from None
        finally:
            job.cancelled.set()

    def disarm(self) -> None:
        """Cancel the armed read, if any: its ``read_tap`` raises ``TapCancelled``.

        Call from the event loop's thread.
        """
        with self._jobs:
            job = self._job
        if job is None or job.future.done():
            return
        job.cancelled.set()
        job.future.set_exception(TapCancelled("read disarmed"))

    # --- reader thread ---------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._closing.is_set():
            try:
                usable = self._step()
            except Exception:  # the thread must outlive any driver surprise
                log.exception("nfc reader %s: unexpected error; re-opening the device", self._path)
                self._device_failed()
                usable = False
            failures = 0 if usable else failures + 1
            if failures:
                self._closing.wait(min(REOPEN_BACKOFF_FIRST_S * 2 ** (failures - 1), REOPEN_BACKOFF_MAX_S))
        self._drop_device()

    def _step(self) -> bool:
        """One turn of the reader thread; False when the device is unusable (back off, re-open)."""
        if self._clf is None and not self._open():
            return False
        job = self._wait_for_job(self._health_check_interval_s)
        if job is None:
            return self._health_check()
        return self._attempt(job)

    def _wait_for_job(self, timeout_s: float) -> _Job | None:
        with self._jobs:
            self._jobs.wait_for(
                lambda: self._closing.is_set() or (self._job is not None and self._job.live()), timeout_s
            )
            job = self._job
        return job if job is not None and job.live() and not self._closing.is_set() else None

    def _open(self) -> bool:
        try:
            self._clf = nfc.ContactlessFrontend(self._path)
        except OSError as error:
            log.debug("nfc reader %s: open failed: %s", self._path, error)
            self._set_connected(False)
            return False
        self._set_connected(True)
        return True

    def _health_check(self) -> bool:
        clf = self._clf
        try:
            with clf.lock:
                if clf.device is None:
                    raise OSError("device closed")
                clf.device.mute()
        except OSError as error:
            log.warning("nfc reader %s: health check failed: %s", self._path, error)
            self._device_failed()
            return False
        return True

    def _attempt(self, job: _Job) -> bool:
        """One ``connect`` call: poll until a tag, the deadline, a cancel or a device failure;
        False if the device failed."""
        if time.monotonic() >= job.deadline:
            job.deliver(TapTimeout("no tap before the deadline"))
            return True
        clf = self._clf
        tag = clf.connect(
            rdwr={
                "targets": ["106A"],
                "on-connect": lambda _tag: False,
                "iterations": 1,
                "beep-on-connect": False,
            },
            terminate=self._terminate_for(job),
        )
        if tag is False:  # nfcpy's connect swallows IOError and returns False
            self._device_failed()
            return False
        if tag is None:
            return True
        if not job.live():  # cancelled while the tag was being activated
            self._deselect(clf)
            return True
        if not isinstance(tag, nfc.tag.tt4.Type4Tag):
            log.info("nfc reader %s: ignoring a %s", self._path, tag.type)
            job.cancelled.wait(FOREIGN_TAG_PAUSE_S)
            return True
        started = time.monotonic()
        try:
            result = emv.run_fast_path(_transceiver(tag), job.terminal, self._accepted_aids)
        except CardError as error:
            log.info("nfc reader %s: card error: %s", self._path, error)
            job.deliver(error)
            self._deselect(clf)
            return True
        except (nfc.clf.CommunicationError, nfc.tag.TagCommandError) as error:
            log.info("nfc reader %s: tap broke off (%s); polling on", self._path, error)
            return True
        job.deliver(result)
        self._deselect(clf)
        log.debug("nfc reader %s: %r in %.1f ms", self._path, result, (time.monotonic() - started) * 1000)
        return True

    def _terminate_for(self, job: _Job) -> Callable[[], bool]:
        last_poll = [float("-inf")]

        def terminate() -> bool:
            # nfcpy calls this before every sense cycle: pace the cycles, waking on cancel.
            pause_s = last_poll[0] + self._poll_interval_s - time.monotonic()
            if pause_s > 0:
                job.cancelled.wait(pause_s)
            last_poll[0] = time.monotonic()
            return not job.live() or self._closing.is_set() or last_poll[0] >= job.deadline

        return terminate

    def _deselect(self, clf: Any) -> None:
        try:
            clf.exchange(DESELECT, DESELECT_TIMEOUT_S)
        except nfc.clf.CommunicationError as error:
            log.debug("nfc reader %s: no answer to DESELECT: %s", self._path, error)

    def _device_failed(self) -> None:
        self._drop_device()
        self._set_connected(False)

    def _drop_device(self) -> None:
        clf, self._clf = self._clf, None
        if clf is not None:
            try:
                clf.close()
            except Exception as error:  # noqa: BLE001 - a dead device may fail to close in any way
                log.debug("nfc reader %s: close failed: %s", self._path, error)

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if connected:
            log.info("nfc reader %s connected", self._path)
        else:
            log.warning("nfc reader %s unavailable; re-opening", self._path)
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody to tell
            loop.call_soon_threadsafe(self._publish_state, connected)

    def _publish_state(self, connected: bool) -> None:
        if connected:
            self._connected_event.set()
        else:
            self._connected_event.clear()
        if self._on_state_change is not None:
            try:
                self._on_state_change(connected)
            except Exception:  # a listener's bug must not stop state updates
                log.exception("nfc reader %s: on_state_change failed", self._path)


def _transceiver(tag: Any) -> emv.Transceive:
    def transceive(command: bytes) -> bytes:
        response = tag.transceive(bytearray(command))
        if response is None:
            raise CardError("no response APDU", reason="malformed")
        return bytes(cast(bytearray, response))

    return transceive
