"""Partition maintenance (services/partitions.py) at start-up and every ``partitions.interval_s``."""

from __future__ import annotations

import asyncio
import logging
import random

from gateway.services import partitions
from gateway.services.context import Services

log = logging.getLogger(__name__)


async def loop(svc: Services) -> None:
    delay_s = random.uniform(0, 5)  # at start-up, soon: the months ahead may be short after a long stop
    while True:
        await asyncio.sleep(delay_s)
        delay_s = svc.settings.partitions.interval_s * random.uniform(0.8, 1.2)
        try:
            done = await asyncio.wait_for(partitions.maintain(svc), timeout=300)
            if done.created or done.dropped:
                log.info("partitions maintained", extra={"created": list(done.created), "dropped": list(done.dropped)})
        except Exception:
            log.exception("partition maintenance failed; will retry")
