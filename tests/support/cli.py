"""Run the ``sockmesh`` CLI in-process (integration.cli.main) and capture what it prints."""

from __future__ import annotations

import pytest

from integration.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``sockmesh ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err
