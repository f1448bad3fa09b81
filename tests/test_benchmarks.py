"""Every benchmark is indexed in benchmarks/README.md and runs in its ``--quick`` form (the same
code path on tiny input), ending with one JSON line — so a benchmark that backs a number in the docs
cannot rot unnoticed. The runs are in the slow tier (bash scripts/test.sh --all)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def indexed() -> dict[str, str]:
    """script name → the docs page its index row names."""
    rows = {}
    for line in (BENCHMARKS / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`([a-z0-9_]+\.py)`\s*\|.*\]\(\.\./docs/([a-z0-9-]+\.md)", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_benchmark_is_indexed_with_the_page_it_feeds():
    rows = indexed()
    assert sorted(rows) == SCRIPTS
    for script, page in rows.items():
        assert (BENCHMARKS.parent / "docs" / page).is_file(), (script, page)
        assert script in (BENCHMARKS.parent / "docs" / page).read_text(), f"docs/{page} does not name {script}"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run_ends_with_one_json_line(script, tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, BACKMAP_NO_PROGRESS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert isinstance(result, dict) and result
    if "skipped" in result:
        pytest.skip(f"{script}: {result['skipped']}")
