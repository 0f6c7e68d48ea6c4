"""Training, evaluation and reporting commands (``python -m training.<name>``)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line(module: str, argv: list[str] | None) -> str:
    """The command a results file or training record names: ``python -m <module>`` with ``argv``
    (the process's own arguments when ``argv`` is None, i.e. when run from the shell)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m " + module, *(shlex.quote(a) for a in args)])


def source_model(name: str, threads: int) -> dict:
    """Set torch's threads (0: its default) and return the training record of the model folder ``name``,
    the weights a derived folder (``training.precise_bn``, ``training.calibrate``) starts from."""
    import torch

    from mixdemo.weights import read_training_record, resolve_model_dir

    if threads:
        torch.set_num_threads(threads)
    return read_training_record(resolve_model_dir(name))


def save_derived_model(model, out: Path, record: dict, key: str, entry: dict) -> Path:
    """Save ``model`` as ``out`` with the training record it came from, less that record's checksum (the
    new folder gets its own), plus ``key: entry`` saying how it was derived."""
    from mixdemo.weights import write_training_record

    model.save_pretrained(out)
    kept = {k: v for k, v in record.items() if k not in ("sha256", "model_class")}
    write_training_record(out, {**kept, key: entry}, record.get("model_class"))
    return out
