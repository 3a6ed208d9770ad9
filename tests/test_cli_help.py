"""`--help` shows every option's default, text defaults included (typer renders help as rich markup,
where an unescaped "[zorba]" is read as a style tag and silently dropped)."""

import re

import pytest
from typer.testing import CliRunner

from zorba.cli.app import app
from zorba.federation.config import RunConfig

FLAGS_AND_PATHS = {"--help", "--resume", "--faults", "--summarize-only", "--include-in"}


@pytest.mark.parametrize("command", ["run", "flower-sim", "plan"])
def test_every_option_line_shows_a_default(command):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"}).output
    options = [line for line in out.splitlines() if re.match(r"^│\s+--", line)]
    assert len(options) > 5, out
    missing = [line.split()[1] for line in options if line.split()[1] not in FLAGS_AND_PATHS
               and not re.search(r"\]\s*│$", line)]
    assert missing == [], missing


def test_text_defaults_come_from_the_config():
    out = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"}).output
    cfg = RunConfig()
    for value in (cfg.planner, cfg.precision, cfg.dist, cfg.model, cfg.task, cfg.head_steps):
        assert f"[{value}]" in out, value
    assert "STUDY_LR" in out  # the lr follows the planner
