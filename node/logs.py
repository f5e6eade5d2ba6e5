"""Structured logging: one ``key=value`` line per event on stderr, peer ids shortened.

Library code calls :func:`event` (never ``print``); the CLI calls :func:`setup`
once.  stdout stays free for the one line the multi-process test harness parses
(``mosaic node <peer id> listening on <multiaddr>``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import typing

_ROOT = "mosaic"


def short_id(peer_id: object) -> str:
    """The last 8 characters of a peer id: enough to tell peers apart in logs."""
    text = str(peer_id)
    return text[-8:] if len(text) > 8 else text


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{_ROOT}.{name}")


def _format_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in " \"=\n\t"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def event(logger: logging.Logger, event_name: str, /, level: int = logging.INFO, **fields: object) -> None:
    """Log one event: ``event=<name> k=v ...``; values named ``peer``/``*_peer`` are shortened."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={event_name}"]
    for key, value in fields.items():
        if key == "peer" or key.endswith("_peer"):
            value = short_id(value)
        parts.append(f"{key}={_format_value(value)}")
    logger.log(level, " ".join(parts))


# Lines per second one rate-limited event (or one libp2p logger) may write; the rest are counted.
MAX_LINES_PER_SECOND = 5
# Longest message a third-party logger may write (py-libp2p logs whole rejected DHT values in hex).
MAX_MESSAGE_CHARS = 400


class _Window:
    __slots__ = ("start", "count", "suppressed")

    def __init__(self) -> None:
        self.start = 0.0
        self.count = 0
        self.suppressed = 0

    def allow(self, now: float) -> int | None:
        """``None``: drop this line; else the number of lines dropped since the last one written."""
        if now - self.start >= 1.0:
            self.start, self.count = now, 0
        if self.count >= MAX_LINES_PER_SECOND:
            self.suppressed += 1
            return None
        self.count += 1
        dropped, self.suppressed = self.suppressed, 0
        return dropped


_windows: dict[tuple[str, str], _Window] = {}


def limited_event(logger: logging.Logger, event_name: str, /, level: int = logging.INFO, **fields: object) -> None:
    """:func:`event`, at most :data:`MAX_LINES_PER_SECOND` per event name; lines dropped in
    between are reported as ``suppressed=N`` on the next line written.  For events a remote
    peer can trigger at will (rejected records, refused streams)."""
    if not logger.isEnabledFor(level):
        return
    window = _windows.setdefault((logger.name, event_name), _Window())
    dropped = window.allow(time.monotonic())
    if dropped is None:
        return
    if dropped:
        fields["suppressed"] = dropped
    event(logger, event_name, level, **fields)


class _BriefFilter(logging.Filter):
    """Truncates and rate-limits third-party log lines (one attacker must not fill the disk:
    five rejected 1 MB DHT puts wrote 9.8 MiB of hex through py-libp2p's warnings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_ROOT):
            return True
        window = _windows.setdefault((record.name, str(record.levelno)), _Window())
        dropped = window.allow(time.monotonic())
        if dropped is None:
            return False
        message = record.getMessage()
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + f"... ({len(message)} chars)"
        if dropped:
            message += f" (suppressed {dropped} similar)"
        record.msg, record.args = message, None
        return True


# Third-party errors that are routine on a healthy network, demoted to debug: a peer that
# speaks no GossipSub (every CLI client: py-libp2p logged "protocols not supported /meshsub"
# for each), and a dial that failed (4 lines per try; our callers report the dials that matter,
# e.g. an unreachable bootstrap peer, in one line of their own).
ROUTINE_THIRD_PARTY: tuple[tuple[str, str], ...] = (
    ("libp2p.host.basic_host", "protocols not supported"),
    ("libp2p.transport.tcp.tcp", "Failed to open TCP stream"),
)


class _RoutineFilter(logging.Filter):
    """Lowers :data:`ROUTINE_THIRD_PARTY` records to DEBUG (so the quiet thresholds drop them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            for name, text in ROUTINE_THIRD_PARTY:
                if record.name == name and text in record.getMessage():
                    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                    break
        return True


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = record.getMessage()
        if not message.startswith("event="):
            # Third-party (libp2p) messages span lines; keep one line per event.
            message = "msg=" + _format_value(" | ".join(p.strip() for p in message.splitlines() if p.strip()))
        line = f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} logger={record.name} {message}"
        if record.exc_info:
            # Keep one line per event even for errors: the exception type and message only.
            exc = record.exc_info[1]
            line += f" exc={_format_value(type(exc).__name__ + ': ' + str(exc))}"
        return line


def line_handler(stream: typing.TextIO) -> logging.Handler:
    """A handler writing one line per event to ``stream``; third-party lines truncated and rate-limited."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_LineFormatter())
    handler.addFilter(_BriefFilter())
    return handler


class _QuietFilter(logging.Filter):
    """Drops third-party records below their logger family's threshold.

    Levels alone do not hold: some py-libp2p modules set their own logger's level
    when imported (``libp2p.network.auto_connector`` sets INFO and then logs its
    state every 10 s), which overrides the parent's.
    """

    def __init__(self, thresholds: dict[str, int]) -> None:
        super().__init__()
        self._thresholds = thresholds

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        while name:
            threshold = self._thresholds.get(name)
            if threshold is not None:
                return record.levelno >= threshold
            name = name.rpartition(".")[0]
        return True


# Third-party loggers and their level on a node's stderr.  On a 4-node cluster 96% of stderr
# (2,715 lines in 37 min) was py-libp2p's: routine DHT misses, stream resets and shutdown
# chatter a node operator cannot act on.  ``--log-level debug`` lowers each to WARNING.
QUIET_LOGGERS: dict[str, int] = {
    "libp2p": logging.ERROR,
    "multiaddr": logging.ERROR,
    "zeroconf": logging.ERROR,
    "quic": logging.ERROR,
    "http3": logging.ERROR,
    "trio-websocket": logging.ERROR,
    "hypercorn": logging.WARNING,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "urllib3": logging.WARNING,
    "asyncio": logging.WARNING,
}


def setup(level: str = "info", *, libp2p_level: str | None = None) -> None:
    """Route every logger to stderr as single lines; third-party ones (QUIET_LOGGERS) quietly.

    ``level`` is ours (``mosaic.*``); at ``debug`` the third-party loggers' warnings
    return too.  ``libp2p_level`` overrides py-libp2p's level (light commands pass
    ``critical``).  ``LIBP2P_DEBUG`` set in the environment leaves py-libp2p's own
    debug logging alone.

    py-libp2p configures its "libp2p" logger when it is *imported* (level WARNING,
    no handler, propagate=False: its lines then reached stderr unformatted through
    logging's last-resort handler), so it is imported here first; configuring
    before that import was undone by it.
    """
    import os

    import libp2p  # noqa: F401 - its import-time logging setup must run before ours

    debug = level.lower() == "debug"
    thresholds = {name: (min(quiet, logging.WARNING) if debug else quiet) for name, quiet in QUIET_LOGGERS.items()}
    if libp2p_level is not None:
        thresholds["libp2p"] = logging.getLevelName(libp2p_level.upper())
    handler = line_handler(sys.stderr)
    # Drop quiet lines before the rate limiter counts them.
    handler.filters.insert(0, _QuietFilter(thresholds))
    handler.filters.insert(0, _RoutineFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger(_ROOT).setLevel(level.upper())
    for name, threshold in thresholds.items():
        logging.getLogger(name).setLevel(threshold)
    libp2p_logger = logging.getLogger("libp2p")
    if os.environ.get("LIBP2P_DEBUG"):
        return  # py-libp2p's own per-module debug logging (libp2p/utils/logging.py) is in charge
    # py-libp2p detaches its logger (propagate=False, no handler): give it ours.
    libp2p_logger.handlers[:] = [handler]
    libp2p_logger.propagate = False


# ----------------------------------------------------------------------------- progress on a terminal

# Long silent steps (a model conversion: 16-40 s; a training run's model load and held-out
# scoring) show a progress line on stderr, but only where a person watches: the CLI turns it
# on for a terminal, and leaves it off for pipes, log files, --no-progress and --json.
_progress = {"on": False}


def show_progress(on: bool) -> None:
    """Turn the progress lines of :func:`stage` on or off for this process (the CLI decides)."""
    _progress["on"] = on


def progress_wanted(stream: typing.TextIO | None = None, *, quiet: bool = False) -> bool:
    """Whether a progress line helps: not asked to be quiet, and ``stream`` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return not quiet and bool(getattr(stream, "isatty", lambda: False)())


class _Stage:
    """What :func:`stage` yields: ``advance(note)`` moves to the next step, ``update(n)`` counts items."""

    def __init__(self, bar: typing.Any = None) -> None:
        self._bar = bar

    def advance(self, note: str = "") -> None:
        if self._bar is not None:
            self._bar.update(1)
            if note:
                self._bar.set_postfix_str(note, refresh=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)


@contextlib.contextmanager
def stage(desc: str, total: int | None = None, *, unit: str = "step") -> typing.Iterator[_Stage]:
    """A progress line on stderr while a long step runs (when :func:`show_progress` is on).

    The elapsed time ticks every half second even when the work reports nothing (a
    conversion inside transformers), so a terminal never looks frozen.
    """
    if not _progress["on"]:
        yield _Stage()
        return
    import shutil
    import threading

    from tqdm import tqdm

    # A terminal that reports no size (0 columns) would get an empty line: assume 80 then.
    width = shutil.get_terminal_size((80, 24)).columns
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, ncols=width, leave=True)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.5):
            bar.refresh()

    ticker = threading.Thread(target=tick, name="progress-tick", daemon=True)
    ticker.start()
    try:
        yield _Stage(bar)
    finally:
        done.set()
        ticker.join(1.0)
        bar.close()
