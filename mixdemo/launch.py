"""What ``python app.py`` checks before Gradio is imported: its host and port options, and the environment variable
Gradio itself reads when imported (``GRADIO_SERVER_PORT``), so that a bad value is a one-line message, not a
traceback; and :func:`count`, the whole-number type of every command's counts (``mixdemo``'s and ``training``'s).
No Gradio here."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

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


def check_port_variable() -> None:
    """SystemExit naming ``GRADIO_SERVER_PORT`` when it is set and not a port: Gradio parses it at import."""
    if "GRADIO_SERVER_PORT" in os.environ:
        try:
            port_number(os.environ["GRADIO_SERVER_PORT"])
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(f"error: GRADIO_SERVER_PORT: {exc}") from None


def parse_app_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--host`` and ``--port`` of the app (defaults: ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, else
    127.0.0.1:7860)."""
    p = argparse.ArgumentParser(prog="app.py", description="Mixup-Privacy Lab (Gradio app)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=port_number, default=os.environ.get("GRADIO_SERVER_PORT", str(DEFAULT_PORT)),
                   help=f"TCP port (default: $GRADIO_SERVER_PORT, else {DEFAULT_PORT})")
    return p.parse_args(argv)
