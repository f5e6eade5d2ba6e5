"""The node-wide upload cap holds across concurrent streams (virtual time: trio's autojump clock)."""

from __future__ import annotations

import pytest
import trio

from node.config import ConfigError, NodeConfig
from node.storage.upload_limit import UploadLimiter

MIB = 1024 * 1024


async def test_no_limit_never_waits(autojump_clock):
    limiter = UploadLimiter(None)
    start = trio.current_time()
    for _ in range(100):
        await limiter.acquire(MIB)
    assert trio.current_time() == start


async def test_one_sender_is_held_to_the_rate(autojump_clock):
    limiter = UploadLimiter(4 * MIB, burst=MIB)
    start = trio.current_time()
    for _ in range(40):
        await limiter.acquire(256 * 1024)  # 10 MiB in blocks
    # 10 MiB at 4 MiB/s, less the 1 MiB burst allowed up front.
    assert trio.current_time() - start == pytest.approx(9 / 4, abs=0.01)


async def test_concurrent_senders_share_one_budget(autojump_clock):
    limiter = UploadLimiter(8 * MIB, burst=MIB)
    start = trio.current_time()

    async def send(mib: int) -> None:
        for _ in range(mib * 4):
            await limiter.acquire(256 * 1024)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(send, 4)  # 16 MiB in total
    assert trio.current_time() - start == pytest.approx(15 / 8, abs=0.01)


def test_rejects_a_non_positive_rate():
    with pytest.raises(ValueError):
        UploadLimiter(0)


@pytest.mark.parametrize("bad", [0.5, -3, True, "fast"])
def test_config_names_a_bad_upload_limit(bad):
    config = NodeConfig()
    config.storage.upload_limit_mib = bad
    with pytest.raises(ConfigError, match="storage.upload_limit_mib"):
        config.validate()
