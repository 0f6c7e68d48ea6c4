"""Publish the model folders and their cards to a Hugging Face Hub model repo.

    python -m training.publish --repo-id USER/NAME              # upload (needs a token)
    python -m training.publish --repo-id USER/NAME --dry-run    # build what would be uploaded

The repo mirrors ``weights/``: one subfolder per model (config.json, model.safetensors,
training.json, README.md), plus a top-level README.md. ``mixdemo.weights`` downloads from the
same layout when ``$MIXDEMO_HUB_REPO`` names the repo and the local folder is missing.

A model folder whose card is the stub that ``save_pretrained`` writes (your own weights: ``training.report``
writes the cards of ``weights/`` only) gets a card made from its ``training.json`` in the upload (the
folder itself is left as it is); each card, and the top-level one, says what the weights were trained on.
``--staging`` is emptied and rebuilt on each run, so it must be a new or empty folder or one this command
staged before (it marks those); any other is refused.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mixdemo.weights import (MODEL_FILES, PHANTOM_NOTICE, read_training_record, trained_on_phantoms,
                             verify_checksum, weights_dir, write_model_card)
from training import user_errors

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


def check_staging(staging: Path, source: Path) -> None:
    """SystemExit unless ``staging`` may be emptied: absent, empty, or marked as staged by this command, and
    not holding the weights it would stage."""
    if source.resolve().is_relative_to(staging.resolve()):  # emptied before staging: the weights would go
        raise SystemExit(f"error: --staging {staging} holds the weights it would stage ({source}): name another folder.")
    if staging.is_dir() and any(staging.iterdir()) and not (staging / STAGING_MARK).is_file():
        raise SystemExit(f"error: --staging {staging} is not empty and was not staged by training.publish: it is emptied "
                         "before staging, so name a new or empty folder.")


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
    p.add_argument("--repo-id", required=True, help="USER/NAME of the Hub model repo")
    p.add_argument("--weights", type=Path, default=None, help="source folder (default: weights/)")
    p.add_argument("--staging", type=Path, default=Path("runs/publish"), help="where the upload is assembled")
    p.add_argument("--dry-run", action="store_true", help="assemble only; upload nothing")
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    source = args.weights or weights_dir()
    check_staging(args.staging, source)
    if args.staging.exists():
        shutil.rmtree(args.staging)
    args.staging.mkdir(parents=True)
    (args.staging / STAGING_MARK).write_text("staged by python -m training.publish; emptied by its next run\n")
    copied = stage(args.repo_id, source, args.staging)
    print(f"staged {len(copied)} model folders in {args.staging}: {', '.join(c.name for c in copied)}")
    if not args.dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.repo_id, repo_type="model", private=args.private, exist_ok=True)
        api.upload_folder(repo_id=args.repo_id, folder_path=str(args.staging), repo_type="model",
                          commit_message="Upload Mixup-Privacy Lab weights", ignore_patterns=[STAGING_MARK])
        print(f"uploaded to https://huggingface.co/{args.repo_id}")
    return args.staging


if __name__ == "__main__":
    with user_errors():
        main()
