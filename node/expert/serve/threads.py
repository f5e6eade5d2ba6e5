"""How many torch threads the inference worker uses: chosen safely by default, logged at start.

Measured (issue 11): torch's default, a thread per logical core, made generation
25-30x slower (1.7-1.9 s/token against 62-69 ms with one thread, same moment)
while another process held a core.  OpenMP threads of one forward wait for each
other, spinning by default, so one descheduled thread stalls the whole step.
The default therefore takes the cores that are free (allowed by affinity, minus
the current load), never more than physical cores (a hyper-thread sibling shares
the core's arithmetic units), and OpenMP threads wait passively.  An explicit
``expert.threads`` / ``--threads`` (or ``OMP_NUM_THREADS``) wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...logs import event, get_logger

log = get_logger("expert.threads")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # "config" (flag / TOML / env key), "OMP_NUM_THREADS" or "auto"
    allowed: int  # CPUs this process may run on
    physical: int  # physical cores among them
    load: float  # 1-minute load average when chosen


def choose_threads(
    requested: int, *, allowed: int, physical: int, load: float, env: Mapping[str, str] | None = None
) -> ThreadChoice:
    """The thread count for ``requested`` (0: automatic) on a machine described by the rest (pure)."""
    if requested > 0:
        return ThreadChoice(requested, "config", allowed, physical, load)
    omp = (env or {}).get("OMP_NUM_THREADS", "")
    if omp.strip().isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS", allowed, physical, load)
    cores = max(1, min(allowed, physical))
    free = allowed - round(load)
    return ThreadChoice(max(1, min(cores, free)), "auto", allowed, physical, load)


def cpu_topology() -> tuple[int, int]:
    """(CPUs this process may use, physical cores among them), from affinity and sysfs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
        cpus = list(range(count))
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # unknown topology: count each CPU as a core
    return len(cpus), max(1, min(len(cores), len(cpus)))


def machine_load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def openmp_env(env: Mapping[str, str]) -> dict[str, str]:
    """Variables to set before torch loads: passive OpenMP waits unless the user chose a policy."""
    return {} if "OMP_WAIT_POLICY" in env else {"OMP_WAIT_POLICY": "PASSIVE"}


def prepare_openmp() -> None:
    """Set :func:`openmp_env` in this process; only effective before torch (libgomp) is imported."""
    if "torch" in sys.modules:
        return  # libgomp read its environment already (tests, benchmarks that imported torch first)
    os.environ.update(openmp_env(os.environ))


def resolve_threads(requested: int) -> ThreadChoice:
    """Choose for this machine now (see the module docstring)."""
    allowed, physical = cpu_topology()
    return choose_threads(requested, allowed=allowed, physical=physical, load=machine_load(), env=os.environ)


def log_choice(choice: ThreadChoice) -> None:
    event(log, "torch_threads", threads=choice.threads, source=choice.source, allowed=choice.allowed,
          physical=choice.physical, load=round(choice.load, 2),
          omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"))
