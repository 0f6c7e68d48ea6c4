"""Publish the model folders and their cards to a Hugging Face Hub model repo.

    python -m training.publish --repo-id USER/NAME              # upload (needs a token)
    python -m training.publish --repo-id USER/NAME --dry-run    # build what would be uploaded

The repo mirrors ``weights/``: one subfolder per model (config.json, model.safetensors,
training.json, README.md), plus a top-level README.md. ``mixdemo.weights`` downloads from the
same layout when ``$MIXDEMO_HUB_REPO`` names the repo and the local folder is missing.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mixdemo.weights import MODEL_FILES, verify_checksum, weights_dir
from training import user_errors

CARD_FILES = (*MODEL_FILES, "README.md", "TRAINING_NOTE.md")  # the card points to its note


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
    lines = [
        "---", "library_name: mixdemo", "license: mit", "tags: [mixup-privacy, medical-imaging, brain-mri, segmentation]", "---",
        f"# {repo_id}", "",
        "Weights of Mixup-Privacy Lab (privacy-preserving brain MRI segmentation after Kim et al.).",
        "**Trained on MNI152-derived phantoms, not patients.** One folder per model; see each folder's card.", "",
        *[f"- [`{p.name}/`]({p.name}/README.md)" for p in copied], "",
    ]
    (staging / "README.md").write_text("\n".join(lines))
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
    if source.resolve().is_relative_to(args.staging.resolve()):  # emptied before staging: the weights would go
        p.error(f"--staging {args.staging} holds the weights it would stage ({source}): name another folder")
    if args.staging.exists():
        shutil.rmtree(args.staging)
    copied = stage(args.repo_id, source, args.staging)
    print(f"staged {len(copied)} model folders in {args.staging}: {', '.join(c.name for c in copied)}")
    if not args.dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.repo_id, repo_type="model", private=args.private, exist_ok=True)
        api.upload_folder(repo_id=args.repo_id, folder_path=str(args.staging), repo_type="model",
                          commit_message="Upload Mixup-Privacy Lab weights")
        print(f"uploaded to https://huggingface.co/{args.repo_id}")
    return args.staging


if __name__ == "__main__":
    with user_errors():
        main()
