"""Publish the model folders and their cards to a Hugging Face Hub model repo.

    python -m training.publish --repo-id USER/NAME --redact-paths   # upload (needs a token; paths: below)
    python -m training.publish --repo-id USER/NAME --dry-run        # build what would be uploaded

The repo mirrors ``weights/``: one subfolder per model (config.json, model.safetensors,
training.json, README.md), plus a top-level README.md. ``mixdemo.weights`` downloads from the
same layout when ``$MIXDEMO_HUB_REPO`` names the repo and the local folder is missing.

A model folder whose card is the stub that ``save_pretrained`` writes (your own weights: ``training.report``
writes the cards of ``weights/`` only) gets a card made from its ``training.json`` in the upload (the
folder itself is left as it is); each card, and the top-level one, says what the weights were trained on.
``--staging`` is emptied and rebuilt on each run, so it must be a new or empty folder or one this command
staged before (it marks those); any other is refused.

Training records and cards name the paths a run was given (``--data /home/you/ppmi``, ``--out``, ``--init-from``).
Each absolute path of this machine found in the upload's text is listed; an upload holding any is refused unless
``--redact-paths`` (each becomes ``<local>/`` and its last part, in the upload only) or ``--keep-paths``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from pathlib import Path

from mixdemo.weights import (MODEL_FILES, PHANTOM_NOTICE, read_training_record, trained_on_phantoms,
                             verify_checksum, weights_dir, write_model_card)
from training import first_few, user_errors

CARD_FILES = (*MODEL_FILES, "README.md", "TRAINING_NOTE.md")  # the card points to its note

STAGING_MARK = ".mixdemo-publish-staging"
"""The file that marks a folder this command staged (so a rerun may empty it); it is not uploaded."""

CARD_TITLES = {"mixdemo.models.SegmentationNet": "Segmentation network (3D U-Net++)",
               "mixdemo.models.UnmixingNet": "Client unmixing network D (AdaIN U-Net conditioned on α)"}


def is_stub_card(path: Path) -> bool:
    """Whether a model folder's README.md is missing or the mixin's stub (no title: "[More Information Needed]")
    rather than a card written for it."""
    return not path.is_file() or not any(line.startswith("# ") for line in path.read_text().splitlines())


def card_from_record(folder: Path) -> Path:
    """A model card for a staged folder from its ``training.json`` (what trained it, on what, how)."""
    record = read_training_record(folder)
    title = CARD_TITLES.get(record.get("model_class", ""), "Mixup-Privacy Lab model")
    mode = f" (`--mode {record['mode']}`)" if record.get("mode") else ""
    summary = (f"Weights of Mixup-Privacy Lab{mode}, trained with this repository's `training.train`. Load with "
               f"`mixdemo.weights.load_model(\"{folder.name}\")` from a folder holding it, or from this Hub repo "
               "with `MIXDEMO_HUB_REPO`.")
    return write_model_card(folder, title=title, summary=summary, sections={})


_NAME = r"(?:[\w.@+-]|%[0-9A-Fa-f]{2})+"  # a path part's name: a percent sign only as a URL's escape (%20)
LOCAL_PATH = re.compile(r"(?:(?<![\w.:/~\\-])|(?<=\\[ntr])|(?<=file://)|(?<=file:///))"
                        rf"(?:/{_NAME}(?:/{_NAME})+|~/(?:[\w.@+/-]|%[0-9A-Fa-f]{{2}})+"
                        rf"|[A-Za-z]:(?:(?:\\{{1,2}}|/){_NAME})+)")
"""An absolute path of a machine in text: POSIX (two parts at least), a home-relative one, or a Windows one (its
backslashes doubled in JSON; with slashes, as a ``file:`` URL writes it), also right after a JSON ``\\n``, ``\\t`` or
``\\r`` and as a ``file://`` URL's path, percent-escapes and all (``/home/Jane%20Doe``; a percent sign followed by
anything but two hex digits ends a name: ``80%/10%/10%`` is no path). Another URL's path is not one
(``https://host/a/b``: each slash follows ``:``, ``/`` or a name)."""

TEXT_FILES = ("README.md", "training.json", "TRAINING_NOTE.md")
"""The upload's files that may name paths (the others are weights and the networks' configuration)."""

REDACTED = "<local>/"


def _is_absolute(text: str) -> bool:
    """Whether ``text`` as a whole is an absolute path of two parts at least (POSIX, home-relative or Windows), as
    :data:`LOCAL_PATH` reads them, whatever characters its parts hold."""
    if "\n" in text or '"' in text or not re.match(r"(?:/|~/|[A-Za-z]:[\\/])[^/\\]", text):
        return False
    return len([part for part in re.split(r"[/\\]+", text) if part]) >= 2


def recorded_paths(staging: Path) -> list[str]:
    """The absolute paths the staged records hold that :data:`LOCAL_PATH` reads only in part (a space in a folder's
    name, ``/home/Jane Doe/ppmi``: the pattern stops at ``/home/Jane``, whose redaction left ``Doe/ppmi`` and the name
    in the upload; or a non-ASCII letter, which a record writes JSON-escaped: ``/home/j\\u00f6rg``), longest first: each string value of a ``training.json`` that is such a path, and each word of
    one that is a command line (``shlex``: ``--data '/home/Jane Doe/ppmi'``, or ``--data=...``)."""
    found: set[str] = set()

    def visit(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, str):
            if _is_absolute(value):
                words = [value]
            else:
                try:
                    words = shlex.split(value)
                except ValueError:  # not a command line (an unbalanced quote)
                    words = []
            for word in words:
                word = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
                if _is_absolute(word) and not all(LOCAL_PATH.fullmatch(form) for form in _forms(word)):
                    found.add(word)  # a part the pattern stops at, as written or JSON-escaped (a non-ASCII letter)

    for record in sorted(staging.rglob("training.json")):
        visit(json.loads(record.read_text(encoding="utf-8")))
    return sorted(found, key=lambda path: (-len(path), path))


def _forms(path: str) -> tuple[str, ...]:
    """How a path is written in the upload's text: as it is (cards, notes) and JSON-escaped (records)."""
    return tuple(dict.fromkeys((path, json.dumps(path)[1:-1])))


def local_paths(staging: Path) -> dict[str, list[str]]:
    """Each local path named in the staged text files: {path: [files, relative to ``staging``]}; a recorded path the
    pattern reads only in part (:func:`recorded_paths`) whole."""
    whole = recorded_paths(staging)
    found: dict[str, list[str]] = {}
    for path in sorted(f for f in staging.rglob("*") if f.name in TEXT_FILES):
        text, named = path.read_text(encoding="utf-8"), []
        for local in whole:
            for form in _forms(local):
                if form in text:
                    named.append(local)
                    text = text.replace(form, " ")
        named += LOCAL_PATH.findall(text)
        if path.suffix == ".json":  # a Windows path's backslashes are doubled there: listed once, as written
            named = [match.replace("\\\\", "\\") for match in named]
        for match in dict.fromkeys(named):
            files = found.setdefault(match, [])
            if str(path.relative_to(staging)) not in files:
                files.append(str(path.relative_to(staging)))
    return found


def redacted(local: str) -> str:
    """``<local>/`` and a path's last part: what it names without where it lay (``/home/you/ppmi`` → ``<local>/ppmi``)."""
    return REDACTED + re.split(r"[/\\]+", local.rstrip("/\\"))[-1]


def redact_paths(staging: Path) -> None:
    """Replace each local path (:func:`recorded_paths`, then :data:`LOCAL_PATH`) by :func:`redacted` in the staged
    text files, where :func:`local_paths` found it (nowhere else: not inside a URL); a record stays valid JSON."""
    whole = recorded_paths(staging)  # before the pattern, which would take a part of each
    for path in sorted(f for f in staging.rglob("*") if f.name in TEXT_FILES):
        text = path.read_text(encoding="utf-8")
        for local in whole:
            for form in _forms(local):
                text = text.replace(form, redacted(local))
        text = LOCAL_PATH.sub(lambda match: redacted(match.group(0)), text)
        if path.suffix == ".json":
            json.loads(text)  # a replacement holds no quote nor backslash: still a record
        path.write_text(text, encoding="utf-8")


def _paths(n: int) -> str:
    """``1 path``, ``2 paths``."""
    return f"{n} path" + ("" if n == 1 else "s")


def paths_listing(found: dict[str, list[str]]) -> str:
    """One line per local path: where the upload names it."""
    return "\n".join(f"  {local}  ({first_few(files)})" for local, files in found.items())


def check_staging(staging: Path, source: Path) -> None:
    """SystemExit unless ``source`` is a folder and ``staging`` may be emptied: absent, empty, or marked as staged by
    this command, neither holding the weights it would stage nor inside them. Checked before anything is emptied or
    written."""
    if not source.is_dir():  # a traceback from iterdir, after the previous staging was emptied
        what = "does not exist" if not source.exists() else "is not a folder"
        raise SystemExit(f"error: the weights folder {source} {what}: give --weights the folder of model folders "
                         "(training.train's --out).")
    if source.resolve().is_relative_to(staging.resolve()):  # emptied before staging: the weights would go
        raise SystemExit(f"error: --staging {staging} holds the weights it would stage ({source}): name another folder.")
    if staging.resolve().is_relative_to(source.resolve()):  # a copy of every model left among the models
        raise SystemExit(f"error: --staging {staging} lies inside the weights it would stage ({source}): name a folder "
                         "outside it.")
    if staging.exists() and not staging.is_dir():  # rmtree's traceback (NotADirectoryError)
        raise SystemExit(f"error: --staging {staging} is a file, not a folder: name a new or empty folder.")
    if staging.is_dir() and any(staging.iterdir()) and not (staging / STAGING_MARK).is_file():
        raise SystemExit(f"error: --staging {staging} is not empty and was not staged by training.publish: it is emptied "
                         "before staging, so name a new or empty folder.")


def hub_repo_id(text: str) -> str:
    """A Hub repo id, ``USER/NAME`` (an argparse type: one the Hub would refuse is a usage error now, not a traceback
    from the upload after staging)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def stage(repo_id: str, source: Path, staging: Path) -> list[Path]:
    """Copy every complete, checksum-verified model folder of ``source`` into ``staging``."""
    staging.mkdir(parents=True, exist_ok=True)
    copied = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        if not all((folder / f).exists() for f in MODEL_FILES):
            continue
        verify_checksum(folder)
        dest = staging / folder.name
        dest.mkdir(exist_ok=True)
        for name in CARD_FILES:
            if (folder / name).exists():
                shutil.copy2(folder / name, dest / name)
        copied.append(dest)
    if not copied:
        raise SystemExit(f"No complete model folders under {source} (each needs {', '.join(MODEL_FILES)}).")
    for dest in copied:
        if is_stub_card(dest / "README.md"):
            card_from_record(dest)
    records = {p.name: read_training_record(p) for p in copied}
    if all(trained_on_phantoms(r) for r in records.values()):
        trained, listed = [PHANTOM_NOTICE, ""], [f"- [`{name}/`]({name}/README.md)" for name in records]
    else:
        trained = ["Trained on the data each model's card names (not all on this project's phantoms):", ""]
        listed = [f"- [`{name}/`]({name}/README.md): "
                  + ("MNI152-derived phantoms" if trained_on_phantoms(r) else f"`{r.get('data', 'not recorded')}`")
                  for name, r in records.items()]
    lines = [
        "---", "library_name: mixdemo", "license: mit", "tags: [mixup-privacy, medical-imaging, brain-mri, segmentation]", "---",
        f"# {repo_id}", "",
        "Weights of Mixup-Privacy Lab (privacy-preserving brain MRI segmentation after Kim et al.). One folder per "
        "model; see each folder's card.", "",
        *trained, *listed, "",
    ]
    (staging / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return copied


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-id", required=True, type=hub_repo_id, help="USER/NAME of the Hub model repo")
    p.add_argument("--weights", type=Path, default=None, help="source folder (default: weights/)")
    p.add_argument("--staging", type=Path, default=Path("runs/publish"), help="where the upload is assembled")
    p.add_argument("--dry-run", action="store_true", help="assemble only; upload nothing")
    p.add_argument("--private", action="store_true")
    paths = p.add_mutually_exclusive_group()
    paths.add_argument("--redact-paths", action="store_true",
                       help="replace each local path in the upload's records and cards by <local>/ and its last part")
    paths.add_argument("--keep-paths", action="store_true", help="upload the local paths as they are")
    args = p.parse_args(argv)
    source = args.weights or weights_dir()
    check_staging(args.staging, source)
    try:
        if args.staging.exists():
            shutil.rmtree(args.staging)
        args.staging.mkdir(parents=True)
        (args.staging / STAGING_MARK).write_text("staged by python -m training.publish; emptied by its next run\n")
    except OSError as exc:  # a file where a parent folder should be, no permission
        raise SystemExit(f"error: --staging {args.staging} cannot be made: {exc.strerror}; name another folder.") from None
    copied = stage(args.repo_id, source, args.staging)
    print(f"staged {len(copied)} model folders in {args.staging}: {', '.join(c.name for c in copied)}")
    found = local_paths(args.staging)
    if found and args.redact_paths:
        redact_paths(args.staging)
        print(f"replaced {_paths(len(found))} by {REDACTED} and the last part in the upload")
        if left := local_paths(args.staging):  # read again: what a replacement missed is never uploaded
            raise SystemExit(f"error: {_paths(len(left))} still named in the upload after --redact-paths:\n"
                             f"{paths_listing(left)}\nNothing was uploaded; edit the records or cards named.")
    elif found and not args.keep_paths:
        listing = (f"{_paths(len(found))} of this machine named in the upload (its records and cards; public unless "
                   f"--private):\n{paths_listing(found)}\n")
        if not args.dry_run:
            raise SystemExit(f"error: {listing}Pass --redact-paths to replace each by {REDACTED} and its last part, "
                             "or --keep-paths to upload them as they are.")
        print(f"note: {listing}An upload needs --redact-paths or --keep-paths.")
    if not args.dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
        try:
            api.create_repo(args.repo_id, repo_type="model", private=args.private, exist_ok=True)
            api.upload_folder(repo_id=args.repo_id, folder_path=str(args.staging), repo_type="model",
                              commit_message="Upload Mixup-Privacy Lab weights", ignore_patterns=[STAGING_MARK])
        except Exception as exc:  # noqa: BLE001 - no network, offline mode, no or a read-only token: one line
            raise SystemExit(f"error: the upload to {args.repo_id} failed: {type(exc).__name__}: {exc} (an upload "
                             "needs the Hub reachable, HF_HUB_OFFLINE unset and a token with write access: hf auth "
                             "login). "
                             f"{args.staging} holds what was staged.") from None
        print(f"uploaded to https://huggingface.co/{args.repo_id}")
    return args.staging


if __name__ == "__main__":
    with user_errors():
        main()
