"""The README's commands work as written in a fresh shell (issue 21, item 3): bare `python`
only after the README has said to activate the venv; the set-up stays two commands."""

from __future__ import annotations

import re

from tests.cluster.harness import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
ACTIVATE = "source .venv/bin/activate"


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_set_up_is_exactly_two_commands_that_need_no_activated_venv() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", _section("Set up (fresh machine, Python 3.11)"), re.S)
    assert [b.strip() for b in blocks] == ["bash scripts/install.sh && .venv/bin/python -m node start",
                                          "bash scripts/install.sh && .venv/bin/python -m pytest"]


def test_bare_python_comes_only_after_the_venv_is_activated() -> None:
    assert (REPO_ROOT / "scripts" / "install.sh").read_text().count("python3 -m venv .venv") == 1
    activated = README.find(ACTIVATE)
    bare = [m.start() for m in re.finditer(r"(?<![/\w])python -m ", README)]
    assert bare, "the README shows commands"
    assert activated != -1 and activated < min(bare), "bare `python -m` before the README says to activate .venv"
