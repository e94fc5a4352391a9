"""Runs the `mvos` command in-process, the way the console script does, and captures what it prints."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from mvos.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_mvos(capsys: pytest.CaptureFixture, *args: str) -> Result:
    argv = sys.argv
    sys.argv = ["mvos", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)
