"""``longtail demo --exit``: what ``make run`` does (the real console script, Triton and the five
services on free ports, the 3,000-item demo catalogue indexed and trained), then stop.

Slow by nature (~2.5 min on an idle 2-core machine, most of it indexing through Triton). The demo
runs with the product's default hop ceilings, so whether its answers come from the fallback can
depend on load: the test checks what holds either way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.suite import datasets
from tests.conftest import require_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

# A generous bound for the whole command on a busy machine.
DEMO_TIMEOUT_SECONDS = 900
KNOWN_USER_TITLE = re.compile(r"Recommend\(user_id='([^']+)', k=10\)")
NEW_USER_TITLE = "Recommend for a new user with stated interests"
FOOTER = re.compile(r"^request_id=(\w+) policy=(\S+) version=\S+ fallback=(True|False)$")


@dataclass(frozen=True)
class Printed:
    title_line: int
    item_ids: list[str]
    reasons: list[str]
    request_id: str


def _table_after(lines: Sequence[str], title_line: int) -> Printed:
    """The rows of the table whose title is on ``title_line`` and the footer line after it."""
    rows: list[list[str]] = []
    index = title_line + 1
    while not lines[index].startswith("└"):
        if lines[index].startswith("│"):
            rows.append([cell.strip() for cell in lines[index].strip("│").split("│")])
        index += 1
    footer = FOOTER.match(lines[index + 1].strip())
    assert footer is not None, lines[index + 1]
    assert [row[0] for row in rows] == [str(p) for p in range(len(rows))]
    return Printed(title_line, [row[1] for row in rows], [row[4] for row in rows], footer[1])


def test_demo_prints_recommend_tables_for_a_known_and_a_new_user(tmp_path: Path) -> None:
    require_triton()
    console_script = Path(sys.executable).with_name("longtail")
    assert console_script.exists(), f"{console_script}: run make setup"
    # As on a user's machine: no LONGTAIL_* settings leak in; wide enough that no cell is cut.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGTAIL_")}
    env["COLUMNS"] = "200"
    workdir = tmp_path / "state"
    result = subprocess.run(
        [str(console_script), "demo", "--exit", "--free-ports", "--workdir", str(workdir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = result.stdout.splitlines()

    known_titles = [(i, m) for i, line in enumerate(lines) if (m := KNOWN_USER_TITLE.search(line))]
    assert len(known_titles) == 1, result.stdout[-4000:]
    title_line, match = known_titles[0]
    user = match[1]
    known = _table_after(lines, title_line)
    data = datasets.make_demo_catalogue(seed=0)  # what the demo loads
    catalogue = {item.item_id for item in data.items}
    seen = {i.item_id for i in data.interactions if i.user_id == user}
    assert seen, f"{user} is not a user of the demo catalogue with a history"
    assert len(known.item_ids) == 10 and len(set(known.item_ids)) == 10
    assert set(known.item_ids) <= catalogue
    assert not set(known.item_ids) & seen
    assert all(reason and reason not in ("unspecified", "?") for reason in known.reasons)

    new_titles = [i for i, line in enumerate(lines) if line.strip() == NEW_USER_TITLE]
    assert len(new_titles) == 1, result.stdout[-4000:]
    new = _table_after(lines, new_titles[0])
    assert new.title_line > known.title_line
    assert len(new.item_ids) == 10 and len(set(new.item_ids)) == 10
    assert set(new.item_ids) <= catalogue
    assert all(reason and reason not in ("unspecified", "?") for reason in new.reasons)
    assert new.request_id != known.request_id
