"""Training, evaluation and reporting commands (``python -m training.<name>``).

They run S, the baseline and D in float32, the precision every committed figure was measured in, unless
``$MIXDEMO_PRECISION`` (S, the baseline) or ``$MIXDEMO_UNMIXING_PRECISION`` (D's blocks) says otherwise
(``MIXDEMO_PRECISION=bfloat16 python -m training.evaluate`` made ``results/s_bfloat16.json``); the app, the
client and the server default to bfloat16 where the CPU has it (:func:`mixdemo.weights.s_precision`,
:func:`mixdemo.weights.unmixing_precision`).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

os.environ.setdefault("MIXDEMO_PRECISION", "float32")  # mixdemo.weights.PRECISION_ENV (not imported: no torch here)
os.environ.setdefault("MIXDEMO_UNMIXING_PRECISION", "float32")  # mixdemo.weights.UNMIXING_PRECISION_ENV

from mixdemo.launch import count, out_file  # noqa: E402, F401 - commands' count, --out types (no torch: after the defaults)


DATA_HELP = ("cohort folder: the mixdemo layout or BraTS case folders (mixdemo.data); phantoms are generated if the "
             "default is absent")
"""The help of the ``--data`` option of the commands that read a cohort."""


def default_out(name: str, quick: bool) -> Path:
    """The default ``--out`` of a command with a ``--quick`` smoke mode: ``results/<name>`` for a full run, the
    committed file the README's tables are generated from (``training.report``), and ``results/quick/<name>``
    (git-ignored) for a quick one, so that a smoke run's figures never overwrite the committed ones. Relative, as
    the commands' other defaults: the caller anchors it (``training.reliability``: at the repository root)."""
    return Path("results", "quick", name) if quick else Path("results", name)


def parse_with_out(parser, argv: list[str] | None, name: str, note: str = ""):  # noqa: ANN001, ANN201 - argparse
    """Parse ``argv`` with ``parser`` and an ``--out`` option added last: the JSON written, by default
    :func:`default_out` of ``name`` (under ``results/quick/`` with ``--quick``). ``note``: what else its help says."""
    parser.add_argument("--out", type=out_file, default=None,
                        help=f"the JSON written{note} (default results/{name}; results/quick/{name} with --quick)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = default_out(name, args.quick)
    return args


def check_alpha_range_option(parser, args) -> None:  # noqa: ANN001 - argparse
    """A usage error (exit status 2) unless ``args.alpha_range`` is a range of α that mixing and D take: low ≤ high,
    both in [:data:`mixdemo.mixing.MIN_ALPHA`, 1] (a reversed range raised at the first draw, and α above 1 weighed
    the reference negatively without a word)."""
    from mixdemo.mixing import check_alpha_range

    try:
        check_alpha_range(args.alpha_range)
    except ValueError as exc:
        parser.error(f"--alpha-range {args.alpha_range[0]:g} {args.alpha_range[1]:g}: {exc}")


@contextmanager
def user_errors() -> Iterator[None]:
    """Around a command's ``main()`` when run from the shell: an error in what the user gave (a cohort folder,
    a scan in it, a model folder) ends the command with its message and exit status 1, not a traceback. Other
    exceptions, bugs included, keep their traceback; ``main()`` called from Python raises them all as they are.
    The settings read from the environment are checked first (:func:`mixdemo.launch.check_setting_variables`): a bad
    one ends the command before any work, as it ends the app."""
    from mixdemo.launch import check_setting_variables

    try:
        check_setting_variables()
        yield
    except SystemExit as exc:  # a command's own refusal (its message): under torchrun, said once too
        if not isinstance(exc.code, str) or int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise
        _said_once(exc.code)
    except Exception as exc:
        from mixdemo.data import CohortError
        from mixdemo.io import ScanError
        from mixdemo.models import DeviceUnavailable
        from mixdemo.weights import WeightsError

        if not isinstance(exc, CohortError | ScanError | WeightsError | DeviceUnavailable):
            raise
        _said_once(f"error: {exc}")


def _said_once(message: str) -> NoReturn:
    """End the process with ``message``, said once under torchrun, where every process meets it: by rank 0, and by
    another rank only when rank 0 does not say it in time (:func:`_rank_0_said_it`)."""
    rank = os.environ.get("RANK", "0")
    if rank != "0":
        if _rank_0_said_it():
            raise SystemExit(1) from None
        raise SystemExit(f"{message} (rank {rank})") from None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # said now, before the others may exit and torchrun stop us
        print(message, file=sys.stderr, flush=True)
        _tell_the_others_it_is_said()
        raise SystemExit(1) from None
    raise SystemExit(message) from None


RANK_0_WAIT_S = 60.0
"""How long a process of a torchrun run that met a user error waits for rank 0 to say it before exiting: rank 0 may
meet it later (training.train checks the test split's headers on rank 0 first), and torchrun stops every process
once one has exited, so an early exit would leave the error unsaid."""


def _error_key() -> str:
    return f"mixdemo/user_error/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _launcher_store(timeout_s: float):  # noqa: ANN202 - a torch.distributed.TCPStore, or None
    """A client of the key-value store of the torchrun run (``MASTER_ADDR``:``MASTER_PORT``), None where there is
    none to reach."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    from datetime import timedelta

    import torch.distributed as dist

    try:
        return dist.TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))
    except Exception:  # noqa: BLE001 - no store: the caller says the error itself
        return None


def _tell_the_others_it_is_said() -> None:
    store = _launcher_store(10.0)
    try:
        if store is not None:
            store.set(_error_key(), "1")
    except Exception:  # noqa: BLE001 - the others then say it themselves after waiting
        pass


def _rank_0_said_it() -> bool:
    """Whether rank 0 said the error, waiting up to :data:`RANK_0_WAIT_S` for it; True outside torchrun (no store:
    nothing to wait for, as before), False when the wait ran out or the store could not be reached."""
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        return True
    store = _launcher_store(RANK_0_WAIT_S)
    if store is None:
        return False
    from datetime import timedelta

    try:
        store.wait([_error_key()], timedelta(seconds=RANK_0_WAIT_S))
        return True
    except Exception:  # noqa: BLE001 - a timeout or a lost store: this process says it
        return False


LISTED = 10
"""How many names a message lists before it says how many more there are."""


def first_few(names: list[str]) -> str:
    """The first :data:`LISTED` of ``names``, then how many more."""
    return ", ".join(names[:LISTED]) + (f" ... and {len(names) - LISTED} more" if len(names) > LISTED else "")


def write_record(path: Path, doc: dict) -> dict:
    """A results record: ``doc`` as indented JSON at ``path`` (its folder made if missing), a figure that is not
    a finite number (an ICC of a class no test scan holds) written as ``null``, since strict JSON has no NaN;
    returns the document as written."""
    import json

    written = finite_json(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(written, indent=2, allow_nan=False) + "\n")
    return written


def finite_json(value):  # noqa: ANN001, ANN201 - any JSON-like value
    """``value`` with every float that is NaN or infinite replaced by None, in nested dicts, lists and tuples."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


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


def trained_data(record: dict) -> Path:
    """The cohort a model's training record names (the default of the commands that derive a model from another:
    ``--data`` not given); the phantom cohort for a record that names none. A CohortError when the folder it names
    is not there (moved, or a relative path read from another folder): fitting on the phantoms instead would pass
    unseen wherever the classes agree."""
    from mixdemo.data import CohortError
    from mixdemo.phantoms import DEFAULT_COHORT  # here: this package loads without torch

    data = record.get("data")
    if not data or Path(data) == Path(DEFAULT_COHORT) or Path(data).is_dir():
        return Path(data) if data else DEFAULT_COHORT
    raise CohortError(f"the model was trained on {data}, which is not a folder here (a relative path is read from the "
                      f"current folder, {Path.cwd()}): give --data the cohort it was trained on.")


def check_model_classes(names: list[str], cohort) -> None:  # noqa: ANN001 - a mixdemo.data.Cohort
    """A CohortError when a model folder was trained on other classes than the cohort names: another number (its
    ``config.json``; older folders: the phantoms' four), or, where its ``training.json`` says, other class names
    (older records name none: the phantoms'), or another layout or modality. Scored or fitted on it, a class
    would go missing, a shape would not fit, or a tissue model would be scored as a tumour one."""
    import json

    from mixdemo.data import CohortError
    from mixdemo.weights import read_training_record, recorded_classes, resolve_model_dir

    remedy = "give the cohort it was trained on (--data), or models trained on this one (MIXDEMO_WEIGHTS_DIR)."
    for name in dict.fromkeys(names):
        folder = resolve_model_dir(name)
        classes = int(json.loads((folder / "config.json").read_text()).get("num_classes", 4))
        if classes != cohort.num_classes:
            raise CohortError(f"The model {name} gives {classes} classes, but the cohort {cohort.root} names "
                              f"{cohort.num_classes} ({', '.join(cohort.class_names)}): {remedy}")
        record = read_training_record(folder)
        if not record:  # nothing recorded: the number of classes is all there is to check
            continue
        trained = {"classes": recorded_classes(record), "layout": record.get("data_layout"),
                   "modality": record.get("modality")}
        here = {"classes": list(cohort.class_names), "layout": cohort.layout.name, "modality": cohort.modality}
        differ = [f"{k} {trained[k]} (the cohort's: {here[k]})" for k in here if trained[k] is not None and trained[k] != here[k]]
        if differ:
            raise CohortError(f"The model {name} was trained on other data than the cohort {cohort.root}: "
                              f"{'; '.join(differ)}: {remedy}")


def save_derived_model(model, out: Path, record: dict, key: str, entry: dict) -> Path:
    """Save ``model`` as ``out`` with the training record it came from, less that record's checksum (the
    new folder gets its own), plus ``key: entry`` saying how it was derived."""
    from mixdemo.weights import write_training_record

    model.save_pretrained(out)
    kept = {k: v for k, v in record.items() if k not in ("sha256", "model_class")}
    write_training_record(out, {**kept, key: entry}, record.get("model_class"))
    return out


def add_device_option(parser) -> None:  # noqa: ANN001 - an argparse parser
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N``, its spelling checked when parsed (whether this machine has
    that GPU, when the command picks it: :func:`mixdemo.models.pick_device`). Default: CUDA when present."""
    parser.add_argument("--device", default=None, type=device_name,
                        help="cpu, cuda or cuda:N (default: cuda when present, else the cpu)")


def device_name(text: str) -> str:
    """``text`` if it names the CPU or a CUDA GPU; else an argparse error that says why."""
    import argparse

    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: only cpu and cuda are supported")
    return text
