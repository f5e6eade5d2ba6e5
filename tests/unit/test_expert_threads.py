"""Torch threads chosen safely by default, and the flags that override them (issue 11, item 3).

With torch's default (a thread per logical core) generation ran 25-30x slower
while another process held a core; the default must come from the cores that
are free, never exceed the physical cores, and be overridable.
"""

from __future__ import annotations

import logging

import pytest

from node.cli import build_parser
from node.cli.start import build_config
from node.expert.serve.threads import ThreadChoice, choose_threads, cpu_topology, openmp_env


@pytest.mark.parametrize("allowed, physical, load, expected", [
    (8, 8, 0.0, 8),    # an idle machine: every core
    (8, 4, 0.0, 4),    # hyper-threads are not cores: never more threads than physical cores
    (8, 8, 3.2, 5),    # three cores busy with other work: the free ones
    (2, 2, 1.0, 1),    # the measured case: another process holds one of two cores
    (2, 2, 17.0, 1),   # overloaded: still one thread, never zero
    (4, 8, 0.0, 4),    # affinity (taskset, cgroup cpuset) limits below the physical count
    (1, 1, 0.0, 1),
])
def test_auto_choice_uses_free_physical_cores(allowed, physical, load, expected):
    choice = choose_threads(0, allowed=allowed, physical=physical, load=load)
    assert choice == ThreadChoice(threads=expected, source="auto", allowed=allowed, physical=physical, load=load)


def test_an_explicit_count_wins_and_omp_num_threads_counts_as_one():
    assert choose_threads(3, allowed=2, physical=2, load=5.0).threads == 3
    assert choose_threads(3, allowed=2, physical=2, load=5.0).source == "config"
    env_choice = choose_threads(0, allowed=8, physical=8, load=0.0, env={"OMP_NUM_THREADS": "2"})
    assert (env_choice.threads, env_choice.source) == (2, "OMP_NUM_THREADS")
    # A malformed variable is ignored rather than crashing the node.
    assert choose_threads(0, allowed=4, physical=4, load=0.0, env={"OMP_NUM_THREADS": "many"}).source == "auto"


def test_this_machine_topology_is_consistent():
    allowed, physical = cpu_topology()
    assert 1 <= allowed and 1 <= physical <= allowed


def test_openmp_waits_passively_unless_the_user_chose():
    assert openmp_env({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {}


def test_start_flags_set_threads_and_max_batch(tmp_path):
    args = build_parser().parse_args(["start", "--data-dir", str(tmp_path), "--threads", "2", "--max-batch", "4"])
    config = build_config(args, env={})
    assert config.expert.threads == 2 and config.expert.max_batch == 4
    defaults = build_config(build_parser().parse_args(["start", "--data-dir", str(tmp_path)]), env={})
    assert defaults.expert.threads == 0 and defaults.expert.max_batch == 8  # 0: choose automatically
    toml = tmp_path / "node.toml"
    toml.write_text("[expert]\nthreads = 3\nmax_batch = 2\n")
    from_file = build_config(build_parser().parse_args(["start", "--config", str(toml)]), env={})
    assert from_file.expert.threads == 3 and from_file.expert.max_batch == 2


def test_the_choice_is_logged(caplog):
    from node.expert.serve.threads import log_choice

    with caplog.at_level(logging.INFO, logger="mosaic"):
        log_choice(ThreadChoice(threads=1, source="auto", allowed=2, physical=2, load=1.4))
    (line,) = [r.getMessage() for r in caplog.records if "torch_threads" in r.getMessage()]
    assert "threads=1" in line and "source=auto" in line and "allowed=2" in line and "load=1.4" in line
