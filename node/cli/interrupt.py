"""Ctrl-C in a one-shot command: cancel the work cleanly, say one line, exit 130.

Left to itself, trio raises ``KeyboardInterrupt`` wherever the signal lands, often
inside a py-libp2p task: it escapes through the host's nurseries as a ~60-line
``ExceptionGroup`` traceback, and the streams are never reset, so a coordinator went
on with an abandoned debate.  :func:`run_one_shot` catches SIGINT itself and cancels
the command's task instead: its ``finally`` blocks run (a query resets its stream,
which stops the work on the network), then the process exits with 130.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from .exit_codes import EXIT_INTERRUPTED

# Seconds the cancelled command may take to close its connections before we leave anyway.
CLEANUP_SECONDS = 3.0


def say_interrupted() -> int:
    print("interrupted", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def run_one_shot(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    """``trio.run(fn, *args)``, but SIGINT cancels ``fn`` and returns 130 (a second Ctrl-C leaves at once)."""
    import trio

    async def guarded() -> int:
        interrupted = False
        result = EXIT_INTERRUPTED
        work = trio.CancelScope()
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        if interrupted:  # impatient: leave without waiting for the clean-up
                            sys.stderr.flush()
                            os._exit(say_interrupted())
                        interrupted = True
                        work.cancel()
                        # Clean-up (stream resets, host shutdown) is bounded too.
                        nursery.cancel_scope.deadline = trio.current_time() + CLEANUP_SECONDS

                nursery.start_soon(watch)
                with work:
                    result = await fn(*args)
                nursery.cancel_scope.cancel()
        return EXIT_INTERRUPTED if interrupted else result

    code = trio.run(guarded)
    return say_interrupted() if code == EXIT_INTERRUPTED else code
