"""A burst of sign-ups or sign-ins costs a bounded amount of memory: Argon2id takes 64 MiB per hash
while it runs, so hashes run on a pool of ``HASHES_CONCURRENT_MAX`` threads of their own (on the
shared default pool a burst took one 64 MiB block per thread: ~320 MiB more high-water mark on
two cores). Measured in a fresh process, by its peak resident size (VmHWM)."""

from __future__ import annotations

import subprocess
import sys

from gateway.auth import passwords

PROBE = """
import asyncio
from gateway.auth import passwords

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

async def main():
    before = hwm_kib()
    await asyncio.gather(*(passwords.hash_password(f"pw-{i}") for i in range(12)))
    assert all([await passwords.verify_password(await passwords.hash_password("x"), "x")])
    print(hwm_kib() - before, passwords._hasher.memory_cost, passwords.HASHES_CONCURRENT_MAX)

asyncio.run(main())
"""


def test_a_burst_of_hashes_holds_at_most_the_pools_blocks_of_memory() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    # The probe's own figures: this suite's processes may hash with a cheaper hasher.
    grown_kib, block_kib, threads = (int(x) for x in done.stdout.split())  # block: KiB per hash in flight
    assert block_kib >= 65536 and threads == passwords.HASHES_CONCURRENT_MAX
    assert grown_kib < (threads + 1) * block_kib, (grown_kib, block_kib)
