"""What ``python app.py`` checks before Gradio is imported: its host and port options, and the environment variable
Gradio itself reads when imported (``GRADIO_SERVER_PORT``), so that a bad value is a one-line message, not a
traceback; and :func:`count`, the whole-number type of every command's counts (``mixdemo``'s and ``training``'s).
No Gradio here."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_PORT = 7860


def port_number(text: str) -> int:
    """A TCP port, 1-65535 (an argparse type: anything else is a usage error)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def count(smallest: int) -> Callable[[str], int]:
    """An argparse type: a whole number ``smallest`` or more (steps, repetitions, K, seeds, intervals), else an error
    that says so when the command line is parsed, not a traceback (or a silent run over nothing) later."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"{value} is less than {smallest}")
        return value

    parse.__name__ = f"whole number from {smallest}"
    return parse


def out_file(text: str) -> Path:
    """An argparse type: the file a command writes its record to (its folder made when missing), not an existing
    folder: else an error that says so when the command line is parsed, not when the record is written at the end."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: give the file to write in it, e.g. {path / 'out.json'}")
    return path


def widths(n: int, named: Sequence[str] = ()) -> Callable[[str], str]:
    """An argparse type: ``n`` comma-separated network widths, each a whole number 1 or more (or one of ``named``,
    e.g. 'small'), kept as given; else an error that says so when the command line is parsed, not a traceback later."""

    def parse(text: str) -> str:
        if text in named:
            return text
        parts = text.split(",")
        if len(parts) != n or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            either = f"{', '.join(repr(v) for v in named)} or " if named else ""
            raise argparse.ArgumentTypeError(f"{text!r} is not {either}{n} comma-separated whole numbers from 1")
        return text

    parse.__name__ = f"{n} widths"
    return parse


def check_port_variable() -> None:
    """SystemExit naming ``GRADIO_SERVER_PORT`` when it is set and not a port: Gradio parses it at import."""
    if "GRADIO_SERVER_PORT" in os.environ:
        try:
            port_number(os.environ["GRADIO_SERVER_PORT"])
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(f"error: GRADIO_SERVER_PORT: {exc}") from None


KEEP_FREED_ENV = "MIXDEMO_KEEP_FREED_MEMORY"
"""Environment variable for :func:`mixdemo.inference.keep_freed_memory`: ``1``, freed memory is kept within a step
and handed back after it; ``0``, the C library's allocator as it comes; unset or ``auto`` (the default), the first
where S runs in bfloat16 on the CPU and the second where it runs in float32
(:func:`mixdemo.inference.freed_memory_kept_by_choice`)."""

SWITCH_ON, SWITCH_OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
SWITCH_VALUES = (*SWITCH_ON, *SWITCH_OFF, "auto")
"""What ``$MIXDEMO_KEEP_FREED_MEMORY`` may say."""


S_MEMORY_ENV = "MIXDEMO_S_MEMORY_MB"
"""Environment variable: the memory (MB) S's activations may take on the CPU (:func:`mixdemo.inference.memory_budget`)."""


def megabytes(name: str) -> float | None:
    """The number of megabytes the environment variable ``name`` gives (None when unset or empty); a ValueError
    naming it when that is no positive, finite number."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"${name} must be a positive number of megabytes; got {os.environ[name]!r}.")
    return value


SERVER_ONLY_ENV = "MIXDEMO_SERVER_ONLY"
"""Environment variable for ``python app.py --server-only`` (a Space's variable, where no option can be passed):
``1``, the server's endpoints alone; ``0`` or unset, the whole demo."""


def server_only_from_env() -> bool:
    """Whether ``$MIXDEMO_SERVER_ONLY`` asks for the server alone (its value checked by :func:`check_setting_variables`)."""
    return os.environ.get(SERVER_ONLY_ENV, "").strip().lower() in SWITCH_ON


def check_setting_variables() -> None:
    """SystemExit naming the first of the settings read from the environment (S's and D's precision, the
    allocator switch, the server-only switch, S's memory budget) whose value cannot be used: at start, not as a
    traceback at the first request."""
    from mixdemo.weights import PRECISION_ENV, PRECISIONS, UNMIXING_PRECISION_ENV

    for name, allowed in ((PRECISION_ENV, PRECISIONS), (UNMIXING_PRECISION_ENV, PRECISIONS), (KEEP_FREED_ENV, SWITCH_VALUES),
                          (SERVER_ONLY_ENV, (*SWITCH_ON, *SWITCH_OFF))):
        value = os.environ.get(name, "").strip().lower()
        if value and value not in allowed:
            raise SystemExit(f"error: ${name} must be one of {', '.join(allowed)} (or unset); got {os.environ[name]!r}.")
    try:
        megabytes(S_MEMORY_ENV)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def parse_app_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--host`` and ``--port`` of the app (defaults: ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, else
    127.0.0.1:7860), and ``--server-only`` (default: ``$MIXDEMO_SERVER_ONLY``)."""
    p = argparse.ArgumentParser(prog="app.py", description="Mixup-Privacy Lab (Gradio app)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1, this machine only; "
                        "0.0.0.0 serves other machines, as a server for remote clients)")
    p.add_argument("--port", type=port_number, default=os.environ.get("GRADIO_SERVER_PORT", str(DEFAULT_PORT)),
                   help=f"TCP port (default: $GRADIO_SERVER_PORT, else {DEFAULT_PORT})")
    p.add_argument("--server-only", action="store_true", default=server_only_from_env(),
                   help="serve the server's endpoints alone (segment_proxy, server_info) for remote clients: no demo "
                        f"that takes a raw scan, no attack lab (default: ${SERVER_ONLY_ENV})")
    return p.parse_args(argv)
