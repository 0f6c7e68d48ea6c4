"""Shared fixtures: model weights (committed, or untrained stand-ins), and a launched app.

* ``app_weights`` — ``MIXDEMO_WEIGHTS_DIR``: the committed ``weights/`` when they hold the
  segmentation and unmixing models, else untrained models saved to a temporary folder, so that
  the tests never need the network.
* ``small_cohort`` — a 4-subject phantom cohort (2 training, 2 test subjects, 2 scans each, seed 11) in a temporary
  folder, written by the phantoms CLI (``tests/test_phantoms.py`` checks what it wrote), for the scripts that read
  a cohort (``--data``).
* ``app_url`` — the Gradio app launched in this process (a thread) on a free port. In-process,
  so that tests can observe what the server endpoint receives (``mixdemo.server.add_observer``).

The example/reference phantoms are cached in ``$MIXDEMO_CACHE`` (default ``~/.cache/mixdemo``):
generated once (≈ 3 s per scan), then reused across runs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest-xdist (pytest.ini: -n 2): the cores shared out among workers,
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])  # read by torch at its import and by the commands run
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test starts with torch's own thread count: a command run in-process with ``--threads`` sets it for the
    whole process, and would otherwise slow (or speed) every test after it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _has_weights(folder: Path) -> bool:
    from mixdemo.weights import DEFAULT_UNMIXING

    return all((folder / n / "model.safetensors").exists() for n in ("segmentation", DEFAULT_UNMIXING))


@pytest.fixture(scope="session")
def app_weights(tmp_path_factory: pytest.TempPathFactory):
    """Point MIXDEMO_WEIGHTS_DIR at usable weights for the whole session."""
    old = os.environ.get("MIXDEMO_WEIGHTS_DIR")
    if old and _has_weights(Path(old)):
        yield Path(old)
        return
    if _has_weights(REPO / "weights"):
        folder = REPO / "weights"
    else:
        import torch

        from mixdemo.models import SegmentationNet, UnmixingNet
        from mixdemo.weights import DEFAULT_UNMIXING, write_training_record

        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp("weights")
        for name, cls in (("segmentation", SegmentationNet), (DEFAULT_UNMIXING, UnmixingNet)):
            cls().save_pretrained(folder / name)
            write_training_record(folder / name, {"note": "untrained test stand-in"}, f"mixdemo.models.{cls.__name__}")
    os.environ["MIXDEMO_WEIGHTS_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("MIXDEMO_WEIGHTS_DIR", None)
    else:
        os.environ["MIXDEMO_WEIGHTS_DIR"] = old


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_demo(app_weights):
    """The app, launched in a thread of this process as ``python app.py`` launches it."""
    from mixdemo.ui import build_demo, launch_demo

    demo = build_demo()
    launch_demo(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="session")
def app_url(app_demo):
    """URL of the launched app."""
    return app_demo.local_url.rstrip("/")


@pytest.fixture(scope="session")
def api(app_url, tmp_path_factory: pytest.TempPathFactory):
    """A gradio_client Client of the launched app."""
    from gradio_client import Client

    client = Client(app_url, verbose=False, analytics_enabled=False, download_files=str(tmp_path_factory.mktemp("dl")))
    yield client
    client.close()


@pytest.fixture(scope="session")
def example(app_weights):
    """(folder of the first example target, the reference bank) — generated once, cached."""
    from mixdemo import examples

    folder = next(iter(examples.example_folders().values()))
    return folder, examples.reference_bank()


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-subject phantom cohort (half of them test subjects), generated once per session (once for all the
    workers of a pytest-xdist session). Tests read it and write nothing into it."""
    from mixdemo import phantoms

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one cohort for all the xdist workers: their temp roots' parent
        shared = shared.parent
    root, done = shared / "cohort4", shared / "cohort4.done"
    with FileLock(str(shared / "cohort4.lock")):
        if not done.exists():
            phantoms.main(["--out", str(root), "--subjects", "4", "--scans", "2", "--seed", "11",
                           "--test-fraction", "0.5"])
            done.touch()
    return root
