"""Training, evaluation and reporting commands (``python -m training.<name>``)."""

from __future__ import annotations

import shlex
import sys


def command_line(module: str, argv: list[str] | None) -> str:
    """The command a results file or training record names: ``python -m <module>`` with ``argv``
    (the process's own arguments when ``argv`` is None, i.e. when run from the shell)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m " + module, *(shlex.quote(a) for a in args)])
