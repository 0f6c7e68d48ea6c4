"""Model folders: where weights come from, checksums, training records and model cards.

A model folder (Hugging Face Hub format) holds ``config.json`` + ``model.safetensors``
(written by ``PyTorchModelHubMixin.save_pretrained``), ``training.json`` (the command,
hardware, steps, and the SHA-256 of the weights) and a ``README.md`` model card.

Resolution order for :func:`load_model`: the local ``weights/<name>`` folder (or
``$MIXDEMO_WEIGHTS_DIR/<name>``), then the Hub repo ``$MIXDEMO_HUB_REPO`` (subfolder
``<name>``) through ``hf_hub_download`` (its local cache only when the Hub does not answer,
:func:`hub_reachable`); offline with neither, a :class:`WeightsError` naming both places.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the app reads the names here without importing torch
    import torch
    from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR_ENV = "MIXDEMO_WEIGHTS_DIR"
HUB_REPO_ENV = "MIXDEMO_HUB_REPO"
UNMIXING_ENV = "MIXDEMO_UNMIXING"  # which client network D the app and the client use
PRECISION_ENV = "MIXDEMO_PRECISION"  # S's inference precision: float32, bfloat16 or auto (see s_precision)
PRECISIONS = ("float32", "bfloat16", "auto")
DEFAULT_PRECISION = "auto"  # bfloat16 where the CPU has it: the full protocol's Dice within 0.001 (results/s_bfloat16.json)
UNMIXING_PRECISION_ENV = "MIXDEMO_UNMIXING_PRECISION"  # D's blocks: float32, bfloat16 or auto (see unmixing_precision)
DEFAULT_UNMIXING_PRECISION = "auto"  # bfloat16 where the CPU has it: the full protocol's Dice within 0.001 (results/d_bfloat16.json)
DEFAULT_UNMIXING = "unmixing-p2-96-a35-cal"  # unmixing-p2-96 trained on at the deployment α, then calibrated (its card)
DEFAULT_HUB_REPO = "mixup-privacy-lab/mixup-privacy-weights"
MODEL_FILES = ("config.json", "model.safetensors", "training.json")
LOADED_FILES = MODEL_FILES[:2]  # what from_pretrained reads: a local folder without both is no model folder

MODEL_CLASSES = {
    "segmentation": "mixdemo.models.SegmentationNet",
    "baseline": "mixdemo.models.SegmentationNet",
    "unmixing": "mixdemo.models.UnmixingNet",
}


class WeightsError(RuntimeError):
    """Weights missing, corrupt or of the wrong kind; the message says what to do."""


class WeightsNotFound(WeightsError):
    """No weights of that name, neither in the local folder nor on the Hub (corrupt ones raise WeightsError)."""


def weights_dir() -> Path:
    """Local weights folder (``$MIXDEMO_WEIGHTS_DIR`` when set and not empty, else the repo's ``weights/``)."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or REPO_ROOT / "weights")


def unmixing_name() -> str:
    """The client's D: the model folder ``$MIXDEMO_UNMIXING`` when set and not empty (e.g. ``unmixing-96``,
    the D at full resolution, ``unmixing``, the D trained end-to-end with S on 32³ patches, or ``unmixing-p4``,
    the cheapest), else :data:`DEFAULT_UNMIXING` (``unmixing-p2-96-a35-cal``: the D whose blocks run on 2³ patches,
    trained on 96³ patches, the size it runs at, then on the α range the client draws, with class offsets fitted on
    training scans; the Dice of ``unmixing-96`` and more at a fraction of its client time)."""
    return os.environ.get(UNMIXING_ENV) or DEFAULT_UNMIXING


def unmixing_choices() -> list[tuple[str, str]]:
    """The one-reference client networks D in the local weights folder as (name, where its blocks run and,
    when not 32³, the patches it was trained on), the chosen one (:func:`unmixing_name`) first; just that
    one when none is local (a Hub download)."""
    default = unmixing_name()
    found: dict[str, str] = {}
    root = weights_dir()
    server_s = readable_training_record(root / "segmentation").get("sha256")
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        record = readable_training_record(folder)  # an unreadable one: not listed (loading it names the file)
        if not str(record.get("model_class", "")).endswith("UnmixingNet"):
            continue
        if other_segmentation(record, server_s):  # trained with another S: wrong for this server's outputs
            continue
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if config.get("n_references", 1) == 1 and (folder / "model.safetensors").exists():
            where = unmixing_where(int(config.get("patch", 1)), int(config.get("voxel_hidden", 0)))
            size = record.get("patch_size", 32)  # the patches it was last trained on, when not the usual 32³
            found[folder.name] = where if size == 32 else f"{where}, trained on {size}³ patches"
    ordered = sorted(found.items(), key=lambda item: item[0] != default)
    return ordered if default in found else [(default, ""), *ordered]


def readable_training_record(folder: Path) -> dict:
    """:func:`read_training_record`, or {} when it cannot be read (a menu of models lists the others)."""
    try:
        return read_training_record(folder)
    except WeightsError:
        return {}


def native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX: oneDNN's check)."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def s_precision(device: torch.device | str) -> str:
    """The precision S-shaped networks (the server's S, the baseline) run in on ``device``: ``$MIXDEMO_PRECISION``
    when set, else :data:`DEFAULT_PRECISION`; ``auto`` is ``bfloat16`` on a CPU with native bfloat16
    (:func:`native_bfloat16`; the case measured here), else ``float32``. D's is :func:`unmixing_precision`;
    the attack networks always run in float32."""
    return _precision(PRECISION_ENV, DEFAULT_PRECISION, device)


def unmixing_precision(device: torch.device | str) -> str:
    """The precision of the client network D's four blocks on ``device`` (:meth:`mixdemo.models.UnmixingNet.use_bfloat16`):
    ``$MIXDEMO_UNMIXING_PRECISION`` when set, else :data:`DEFAULT_UNMIXING_PRECISION`; ``auto`` as in
    :func:`s_precision`."""
    return _precision(UNMIXING_PRECISION_ENV, DEFAULT_UNMIXING_PRECISION, device)


def _precision(env: str, default: str, device: torch.device | str) -> str:
    asked = (os.environ.get(env) or default).strip().lower()
    if asked not in PRECISIONS:
        raise WeightsError(f"${env} must be one of {', '.join(PRECISIONS)}; got {asked!r}.")
    import torch

    if asked == "auto":
        return "bfloat16" if torch.device(device).type == "cpu" and native_bfloat16() else "float32"
    if asked == "bfloat16" and torch.device(device).type == "cpu" and not native_bfloat16():
        logging.getLogger(__name__).warning(
            "$%s=bfloat16 on a CPU without bfloat16 instructions (AVX512-BF16 or AMX): it is emulated, on the order "
            "of a hundred times slower than float32; 'auto' picks float32 here.", env)
    return asked


def paired_segmentation_sha256(record: dict) -> str | None:
    """SHA-256 of the S a D was trained with, from its training record: the S trained beside it
    (``segmentation_sha256``, end-to-end runs) or the frozen S it was trained against (``--mode unmixing``);
    None when the record does not say."""
    if record.get("segmentation_sha256"):
        return record["segmentation_sha256"]
    if record.get("mode") == "unmixing":
        return (record.get("init_from_sha256") or {}).get("segmentation")
    return None


def other_segmentation(record: dict, s_sha256: str | None) -> str | None:
    """The checksum of the S a D was trained with (its training ``record``) when that is not the S ``s_sha256``:
    the D would unmix outputs it never saw. None when they pair, or when the record or the S does not say."""
    paired = paired_segmentation_sha256(record)
    return paired if paired and s_sha256 and paired != s_sha256 else None


def unmixing_where(patch: int, voxel_hidden: int = 0) -> str:
    """Where a D's blocks run, in words (``mixdemo.models.UnmixingNet``'s ``patch`` and ``voxel_hidden``)."""
    if patch == 1:
        return "at full resolution"
    mlp = f", a per-voxel MLP ({voxel_hidden} channels)" if voxel_hidden else ""
    return f"on {patch}³ patches{mlp}"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_training_record(folder: Path, training: dict, model_class: str | None = None) -> Path:
    """Write ``training.json`` (training facts + the weights' SHA-256) into a model folder."""
    folder = Path(folder)
    record = dict(training)
    if model_class:
        record["model_class"] = model_class
    record["sha256"] = sha256_file(folder / "model.safetensors")
    path = folder / "training.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_training_record(folder: Path) -> dict:
    """``training.json`` of a model folder ({} if absent); a :class:`WeightsError` naming it when it is no JSON
    object (a truncated copy, an edit gone wrong)."""
    path = Path(folder) / "training.json"
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"The training record {path} cannot be read ({type(exc).__name__}): restore it from git "
                           "(git checkout -- weights) or retrain.") from None
    if not isinstance(record, dict):
        raise WeightsError(f"The training record {path} is not a JSON object: restore it from git "
                           "(git checkout -- weights) or retrain.")
    return record


def recorded_classes(record: dict) -> list[str] | None:
    """The class names a model was trained on, from its training ``record``: those it names (a list of two or
    more), else (an older record) the phantoms'; None when there is no record at all (the number of classes is
    then all there is). The one reader of a record's classes: the server's (:func:`mixdemo.server.model_classes`),
    the client's check of its D and the training commands' checks of their models."""
    from mixdemo.classes import CLASS_NAMES

    if not record:
        return None
    names = record.get("classes")
    return list(names) if isinstance(names, list) and len(names) >= 2 else list(CLASS_NAMES)


def resolve_model_dir(name: str) -> Path:
    """Local folder of model ``name``; falls back to the Hub; raises WeightsError with both places."""
    local = weights_dir() / name
    if is_model_folder(local):
        return local
    repo_id = hub_repo_id()
    reachable = hub_reachable()
    try:
        from huggingface_hub import hf_hub_download

        # unreachable: the Hub's local cache only (huggingface_hub would retry for ~25 s before failing)
        paths = [hf_hub_download(repo_id, f"{name}/{f}", local_files_only=not reachable) for f in MODEL_FILES]
        return Path(paths[0]).parent
    except Exception as exc:  # offline, missing repo, missing file: one clear message
        hub = (f"the Hugging Face Hub repo '{repo_id}' (set ${HUB_REPO_ENV} to another repo, or train them with "
               f"python -m training.train). Cause: {_hub_cause(exc, reachable)}.")
        lacking = [f for f in LOADED_FILES if not (local / f).exists()]
        if len(lacking) < len(LOADED_FILES):  # a folder of that name that lacks a file: broken, not absent
            raise WeightsError(f"The model folder {local} lacks {' and '.join(lacking)}: restore it (git checkout -- "
                               f"weights) or retrain; nor could it be downloaded from {hub}") from None
        here = local_model_names()
        raise WeightsNotFound(
            f"No weights for '{name}': not in the local folder {local.parent} "
            f"({'which holds ' + ', '.join(here) if here else 'which holds no model folder'}) and not downloadable "
            f"from {hub}"
        ) from None


def is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` holds what ``from_pretrained`` reads (:data:`LOADED_FILES`)."""
    return all((folder / f).exists() for f in LOADED_FILES)


def hub_repo_id() -> str:
    """The Hub repo the weights come from when not local: ``$MIXDEMO_HUB_REPO`` when set and not empty (as
    ``$MIXDEMO_WEIGHTS_DIR``), else :data:`DEFAULT_HUB_REPO`."""
    return os.environ.get(HUB_REPO_ENV) or DEFAULT_HUB_REPO


def served_model_dir(name: str) -> Path | None:
    """The folder model ``name`` loads from, asking nothing of the network: the local one (as
    :func:`resolve_model_dir`), else the Hub's local cache of ``$MIXDEMO_HUB_REPO`` where loading it put it; None
    when neither holds it (not loaded yet). For what describes the loaded model, its training record."""
    local = weights_dir() / name
    if is_model_folder(local):
        return local
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(hub_repo_id(), f"{name}/{MODEL_FILES[0]}", local_files_only=True)).parent
    except Exception:  # noqa: BLE001 - not in the cache (or no valid repo id): nothing loaded from the Hub
        return None


def _hub_cause(exc: Exception, reachable: bool) -> str:
    """Why the Hub gave no weights: ``exc``'s type where it was asked; else that it was not asked (offline mode,
    ``python app.py``'s default) or could not be reached, and the files were not in its local cache."""
    from huggingface_hub import constants

    if reachable:
        return type(exc).__name__
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1, so the Hub was not asked (HF_HUB_OFFLINE=0 allows it), nor were they in its local cache"
    return "the Hub could not be reached, nor were they in its local cache"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (``$HF_ENDPOINT``) answers a TCP connection within ``timeout_s``; False
    under ``HF_HUB_OFFLINE=1`` without trying."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout_s).close()
    except (OSError, ValueError):
        return False
    return True


def local_model_names() -> list[str]:
    """The model folders (``config.json`` + ``model.safetensors``) in the local weights folder, by name."""
    root = weights_dir()
    return sorted(p.name for p in root.iterdir()
                  if is_model_folder(p)) if root.is_dir() else []


def verify_checksum(folder: Path) -> None:
    """Compare model.safetensors with the SHA-256 recorded in training.json."""
    record = read_training_record(folder)
    expected = record.get("sha256")
    if expected and sha256_file(Path(folder) / "model.safetensors") != expected:
        raise WeightsError(
            f"The weights in {folder} do not match their recorded checksum: the file is corrupt or was "
            "replaced. Restore it from git (git checkout -- weights) or retrain."
        )


def _import_class(dotted: str) -> type:
    module, _, cls = dotted.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def load_model(name: str, *, device: str | None = None, fast: bool = True, precision: str | None = None) -> nn.Module:
    """Load model ``name`` (e.g. ``"segmentation"``, ``"unmixing"``, ``"baseline"``) in eval mode, for
    inference on the fast path: channels-last on the CPU, S fused and in the precision of :func:`s_precision`,
    and on the CPU the process's allocator set to keep freed memory within each pass (unless
    ``$MIXDEMO_KEEP_FREED_MEMORY=0``; :func:`mixdemo.inference.keep_freed_memory`), a D on patches through its fused inference. ``fast=False``:
    the reference path, the modules exactly as trained in float32 (a D on patches through its convolutions),
    which the tests check the fast path against. ``precision`` (``float32`` or ``bfloat16``) overrides
    :func:`s_precision` (S-shaped networks) or :func:`unmixing_precision` (D) on the fast path."""
    if precision not in (None, "float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16; got {precision!r}.")
    folder = resolve_model_dir(name)
    verify_checksum(folder)
    record = read_training_record(folder)
    dotted = record.get("model_class") or MODEL_CLASSES.get(name.split("-")[0])
    if dotted is None:
        raise WeightsError(f"Model folder {folder} does not say which class it holds (training.json: model_class).")
    try:
        model = _import_class(dotted).from_pretrained(str(folder))
    except Exception as exc:
        raise WeightsError(f"Could not load the weights in {folder}: {type(exc).__name__}: {exc}") from None
    model.eval()
    model.training_record = record  # what it was trained on (its classes: recorded_classes), for callers to check
    if device is not None:
        model.to(device)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if fast and on_cpu:
        from mixdemo.inference import keep_freed_memory

        keep_freed_memory()
    if fast and hasattr(model, "use_channels_last") and on_cpu:
        model.use_channels_last()
    if fast and hasattr(model, "fuse_for_inference"):
        model.fuse_for_inference()
    if fast and hasattr(model, "use_bfloat16") and (precision or _precision_of(model)) == "bfloat16":
        model.use_bfloat16()
    if hasattr(model, "fused_patches"):
        model.fused_patches = fast
    return model


def _precision_of(model: nn.Module) -> str:
    """The precision setting that applies to ``model`` on its device: D's (:func:`unmixing_precision`) or S's."""
    from mixdemo.models import UnmixingNet

    device = next(model.parameters()).device
    return unmixing_precision(device) if isinstance(model, UnmixingNet) else s_precision(device)


PHANTOM_NOTICE = ("> **Trained on synthetic phantoms, not patients.** The training data are phantoms generated from "
                  "the MNI152 2009a template that nilearn's wheel ships (`python -m mixdemo.phantoms`); no patient "
                  "data were used. Figures on real scans will differ.")


def trained_on_phantoms(record: dict) -> bool:
    """Whether a training record's data are the default phantom cohort (``data/phantoms``, as the shipped
    weights' records name it); a record that names no data, or other data, is not claimed to be."""
    from mixdemo.phantoms import DEFAULT_COHORT

    data = record.get("data")
    return bool(data) and (Path(data) == DEFAULT_COHORT or Path(data).resolve() == DEFAULT_COHORT.resolve())


def training_data_notice(record: dict) -> str:
    """A model card's line on what the weights were trained on: the phantoms' notice, or the data the record
    names (a folder of the user's, which this project knows nothing of), or that the record names none."""
    if trained_on_phantoms(record):
        return PHANTOM_NOTICE
    if not record.get("data"):
        return "> **What these weights were trained on is not recorded** (no `data` in `training.json`)."
    what = ", ".join(str(v) for v in (record.get("data_layout") and f"{record['data_layout']} layout",
                                      record.get("modality"), record.get("classes") and
                                      "classes " + ", ".join(record["classes"])) if v)
    return (f"> **Trained on `{record['data']}`**{f' ({what})' if what else ''}, not on this project's phantoms. "
            "What those scans are, and whether weights trained on them may be shared, is for whoever trained them "
            "to say here.")


def write_model_card(
    folder: Path,
    *,
    title: str,
    summary: str,
    sections: dict[str, str],
    tags: tuple[str, ...] = ("mixup-privacy", "medical-imaging", "brain-mri", "segmentation", "monai"),
) -> Path:
    """Write a Hub model card (YAML front matter + Markdown) into a model folder."""
    record = read_training_record(folder)
    lines = [
        "---",
        "library_name: mixdemo",
        "license: mit",
        f"tags: [{', '.join(tags)}]",
        "---",
        f"# {title}",
        "",
        summary,
        "",
        training_data_notice(record),
        "",
    ]
    for heading, body in sections.items():
        lines += [f"## {heading}", "", body.strip(), ""]
    if record:
        lines += [
            "## Training record",
            "",
            f"- Command: `{record.get('command', '?')}`",
            f"- Steps: {record.get('steps', '?')} × batch {record.get('batch_size', '?')} "
            f"({record.get('patch_size', '?')}³ patches)"
            + (f", α ~ U{tuple(record['alpha_range'])}" if record.get("alpha_range") else "")
            + (f"; consistency weight {record['consistency']:g} (each target mixed twice, so 2 × {record['batch_size']}"
               " mixes a step)" if record.get("consistency") else ""),
            f"- Hardware: {record.get('hardware', '?')}; {record.get('train_seconds', '?')} s; {record.get('date', '?')}"
            + ("; mixed precision (bfloat16 forward)" if record.get("precision") == "bfloat16" else ""),
            f"- SHA-256 of model.safetensors: `{record.get('sha256', '?')}`",
            "",
        ]
    path = Path(folder) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")  # α, ³, ×: not the locale's (cp1252 on Windows)
    return path
