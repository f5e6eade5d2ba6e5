"""llama.cpp, loaded and initialised once per process (its OpenMP policy, its log routed to ours)."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import Any

from ....logs import event, get_logger

log = get_logger("expert.llamacpp")

_backend_lock = threading.Lock()
_backend_ready = False


def import_llama_cpp() -> Any:
    """``llama_cpp``, with its OpenMP threads waiting passively unless the user chose a policy.

    llama.cpp's kernels run on libgomp (its own copy, not torch's), which reads the policy once,
    when the library loads.  Spinning waits made decoding 3x slower on a loaded 2-core box
    (measured: 4.8 against 13.6 tok/s, SmolLM2, load average 13), as they did for torch (threads.py).
    """
    if "llama_cpp" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    return llama_cpp


def init_backend() -> None:
    """llama.cpp's global init, once per process, with its chatty log routed to ours (warnings up)."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        global _LOG_CALLBACK
        llama_cpp = import_llama_cpp()
        if _LOG_CALLBACK is None:
            _LOG_CALLBACK = _make_log_callback()
        llama_cpp.llama_backend_init()
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        _backend_ready = True


# Warnings llama.cpp gives about a model it then handles itself: nothing a contributor can act on,
# so they are debug lines, not a warning on every start (the catalog's Qwen GGUFs mark `</s>` as a
# normal token; llama.cpp overrides its type).
HANDLED_BY_LLAMA_CPP = ("was not control-type; this is probably a bug in the model",)


def forward_log(level: int, text: bytes, _user: Any = None) -> None:
    """One llama.cpp log line to our log: warnings and errors only, known-handled ones as debug."""
    # GGML_LOG_LEVEL_WARN = 3, ERROR = 4: the rest (model metadata dumps) is noise.
    if level in (3, 4):
        message = text.decode("utf-8", "replace").strip()
        if message:
            severity = 30 if level == 3 else 40
            if severity == 30 and any(known in message for known in HANDLED_BY_LLAMA_CPP):
                severity = 10
            event(log, "llama_cpp_log", level=severity, message=message[:300])


def _make_log_callback() -> Any:
    import llama_cpp

    return llama_cpp.llama_log_callback(forward_log)


_LOG_CALLBACK: Any = None
