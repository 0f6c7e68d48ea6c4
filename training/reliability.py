"""Reliability and privacy hygiene: hostile input, load, faults, leaks.

    python -m training.reliability [--quick] [--out results/reliability.json]   # --quick: results/quick/ by default

Runs the generated corpus of malformed inputs (:mod:`mixdemo.badinputs`) through three surfaces —
the library loader, the CLI client (``python -m mixdemo.client``) and the launched app's API
(``segment_proxy`` and the browser's upload handler) — plus a hypothesis fuzz of the loader; then
8 concurrent ``gradio_client`` users, the fault checks (client killed mid-request, app restarted,
weights missing/corrupt, Hub unreachable) and the privacy-hygiene checks (what the client sends,
URL access to another user's files, temp files, logs, the server without client code). Every
number in the JSON is measured. The app runs as a subprocess on 127.0.0.1 with its own temp dirs
and a DEBUG log that the checks read.

``tests/test_reliability.py`` calls the same functions on a smaller scale.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mixdemo.badinputs import PATIENT_LIKE_NAME, BadInput, nifti_corpus, proxy_corpus, valid_nifti_bytes
from training import default_out

ROOT = Path(__file__).resolve().parent.parent
CONCURRENT_USERS = 8
_TRACE_RE = re.compile(r"Traceback|File \"|\.py\", line|Exception:|Error\(")
_PATH_RE = re.compile(r"(?:^|[\s'\"(=])(?:[A-Za-z]:)?[/\\](?:[\w.\-]+[/\\])+[\w.\-]*")
_VOXELS_RE = re.compile(r"(?:-?\d+\.\d+(?:e[-+]?\d+)?,?\s+){12,}|array\(\[|tensor\(\[")


# ------------------------------------------------------------------------------ what "clear" means
def is_clear(message: str, names: Iterable[str] = ()) -> bool:
    """A clear message: one or a few plain sentences (capital first, ends with '.'), no traceback,
    no file path, none of ``names`` (file names or stems of the input)."""
    text = message.strip()
    for prefix in ("error: ", "Error: "):
        text = text.removeprefix(prefix)
    if not text or len(text) > 500 or not text[0].isupper() or not text.endswith("."):
        return False
    if _TRACE_RE.search(text) or _PATH_RE.search(text):
        return False
    return not any(n and n.lower() in text.lower() for n in names)


@dataclass
class Outcome:
    """What one bad input did on one surface."""

    surface: str
    key: str
    message: str
    clear: bool
    crash: bool
    partial_output: bool = False
    accepted: bool = False


@dataclass
class CorpusReport:
    """Totals over the outcomes of a corpus run."""

    outcomes: list[Outcome] = field(default_factory=list)
    served_after: bool = True

    def add(self, o: Outcome) -> None:
        """Record one outcome."""
        self.outcomes.append(o)

    def summary(self) -> dict:
        """Counts by surface and overall."""
        by: dict[str, dict] = {}
        for o in self.outcomes:
            s = by.setdefault(o.surface, {"tried": 0, "clear": 0, "crashes": 0, "partial_outputs": 0, "accepted": 0})
            s["tried"] += 1
            s["clear"] += o.clear
            s["crashes"] += o.crash
            s["partial_outputs"] += o.partial_output
            s["accepted"] += o.accepted
        return by

    def failures(self) -> list[dict]:
        """Outcomes that are not a clear refusal (for the report and the tests)."""
        return [asdict(o) for o in self.outcomes if o.crash or not o.clear or o.partial_output or o.accepted]


def served_classes() -> int:
    """How many classes the served S gives (its training record's, as the server tells clients): the channel count
    every answer the harness checks must have, whatever weights it runs on."""
    from mixdemo.server import model_classes

    return len(model_classes())


def _names(item: BadInput, stored: Path | None = None) -> list[str]:
    """File names a message must not contain."""
    base = item.upload_name.replace("\\", "/").rsplit("/", 1)[-1]
    out = [base, PATIENT_LIKE_NAME, "evil.nii"]
    if stored is not None:
        out += [stored.name, stored.parent.name]
    return [n for n in out if n not in ("scan.nii", "scan.nii.gz", "proxy.npy", "scan", "scan.txt")]


def write_corpus(items: Sequence[BadInput], folder: Path) -> list[tuple[BadInput, Path]]:
    """Write the corpus into ``folder`` (file names carry the key, and the patient-like name where used)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for item in items:
        base = item.upload_name.replace("\\", "/").rsplit("/", 1)[-1]
        name = f"{item.key}__{base}" if PATIENT_LIKE_NAME in base else item.stored_name
        path = folder / name
        path.write_bytes(item.data)
        out.append((item, path))
    return out


# ------------------------------------------------------------------------------ surface 1: library
def check_library(files: Sequence[tuple[BadInput, Path]], report: CorpusReport) -> None:
    """``mixdemo.io.load_scan`` on every scan; ``mixdemo.server.read_proxy_file`` on every proxy."""
    from mixdemo.io import ScanError, load_scan
    from mixdemo.server import ProxyError, read_proxy_file

    for item, path in files:
        is_proxy = item.key.startswith("npy_")
        arg = path
        if item.key == "dotdot_name":  # reach the file through a ../ path component
            (path.parent / "sub").mkdir(exist_ok=True)
            arg = path.parent / "sub" / ".." / path.name
        try:
            if is_proxy:
                with _throwaway_copy(path) as copy:
                    read_proxy_file(copy)
            else:
                load_scan(arg, refuse_label_maps=True)  # as the client and the app load a target
            report.add(Outcome("library", item.key, "accepted", False, False, accepted=True))
        except (ScanError, ProxyError) as exc:
            msg = str(exc)
            report.add(Outcome("library", item.key, msg, is_clear(msg, _names(item, path)), False))
        except Exception as exc:  # noqa: BLE001 - a crash is what we count
            report.add(Outcome("library", item.key, f"{type(exc).__name__}: {exc}", False, True))


@contextlib.contextmanager
def _throwaway_copy(path: Path) -> Iterator[Path]:
    """A copy of ``path`` in a temporary folder removed afterwards (the server deletes the file it reads, not the
    folder)."""
    with tempfile.TemporaryDirectory(prefix="mixdemo-rel-") as tmp:
        copy = Path(tmp) / "proxy.npy"
        shutil.copyfile(path, copy)
        yield copy


# ------------------------------------------------------------------------------ hypothesis fuzz
def fuzz_loader(max_examples: int = 200, seed: int = 0) -> dict:
    """Mutated NIfTI bytes through ``load_scan``: a ``Scan`` or a clear ``ScanError``, nothing else."""
    from hypothesis import HealthCheck, given, seed as hseed, settings
    from hypothesis import strategies as st

    from mixdemo.io import ScanError, load_scan

    base = valid_nifti_bytes((12, 12, 12))
    folder = Path(tempfile.mkdtemp(prefix="mixdemo-fuzz-"))
    stats = {"examples": 0, "accepted": 0, "refused_clear": 0, "crashes": 0, "unclear": 0, "first_failures": []}

    flips = st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), max_size=12)
    fields = st.lists(st.tuples(st.sampled_from([0, 40, 42, 44, 46, 70, 72, 76, 80, 108, 112, 252, 254, 280, 344]),
                                st.binary(min_size=2, max_size=4)), max_size=4)

    @hseed(seed)
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(flips=flips, fields=fields, cut=st.one_of(st.none(), st.integers(0, len(base))),
           tail=st.binary(max_size=64), gz=st.booleans(), ext=st.sampled_from([".nii", ".nii.gz"]))
    def one(flips, fields, cut, tail, gz, ext):  # noqa: ANN001 - hypothesis arguments
        import gzip

        raw = bytearray(base)
        for off, val in flips:
            raw[off] = val
        for off, val in fields:
            raw[off:off + len(val)] = val
        data = bytes(raw[:cut] if cut is not None else raw) + tail
        if gz:
            data = gzip.compress(data, compresslevel=1, mtime=0)  # the same bytes at any time
            if cut is not None:
                data = data[: max(cut, 1)]
        path = folder / f"fuzz{ext}"
        path.write_bytes(data)
        stats["examples"] += 1
        try:
            load_scan(path)
            stats["accepted"] += 1
        except ScanError as exc:
            if is_clear(str(exc), ["fuzz"]):
                stats["refused_clear"] += 1
            else:
                stats["unclear"] += 1
                stats["first_failures"] = (stats["first_failures"] + [str(exc)])[:5]
        except Exception as exc:  # noqa: BLE001
            stats["crashes"] += 1
            stats["first_failures"] = (stats["first_failures"] + [f"{type(exc).__name__}: {exc}"])[:5]

    try:
        one()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return stats


def fuzz_loader_alone(max_examples: int, seed: int = 0) -> dict:
    """:func:`fuzz_loader` in a fresh process that imports nothing else: Hypothesis's choice of examples for one
    seed changed with the modules the calling process had imported (the recorded counts moved with unrelated
    changes to the app's modules), so the record is made where only this module and the loader are loaded."""
    code = ("import json, sys; from training.reliability import fuzz_loader; "
            "print(json.dumps(fuzz_loader(int(sys.argv[1]), int(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, str(max_examples), str(seed)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"examples": 0, "accepted": 0, "refused_clear": 0, "crashes": 1, "unclear": 0,
                "first_failures": [f"the fuzz's process failed: {proc.stderr[-300:]}"]}


# ------------------------------------------------------------------------------ the launched app
class AppProcess:
    """``python app.py`` in a subprocess on 127.0.0.1 with its own temp dirs and a DEBUG log."""

    def __init__(self, workdir: Path, port: int | None = None, env: dict | None = None,
                 args: Sequence[str] = ()) -> None:
        """``args``: more options of ``app.py`` (``--server-only``)."""
        self.workdir = Path(workdir)
        self.args = list(args)
        self.gradio_tmp = self.workdir / "gradio"
        self.tmp = self.workdir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "app.log"
        self.port = port or _free_port()
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._peak_mb = 0.0  # over every process this object started (restarts included)

    @property
    def url(self) -> str:
        """The app's address."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> float:
        """Launch and wait for the API; returns the seconds it took."""
        code = ("import logging, runpy, sys; logging.basicConfig(level=logging.DEBUG); "
                "sys.argv = ['app.py', '--host', '127.0.0.1', '--port', *sys.argv[1:]]; "
                "runpy.run_path('app.py', run_name='__main__')")
        env = dict(os.environ, GRADIO_TEMP_DIR=str(self.gradio_tmp), TMPDIR=str(self.tmp),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=str(ROOT),
                   GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", **self.extra_env)
        log = open(self.log_path, "a")  # noqa: SIM115 - lives as long as the process
        t0 = time.time()
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.port), *self.args], cwd=ROOT, env=env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        while time.time() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}; see {self.log_path}")
            if _get_ok(self.url + "/gradio_api/info"):
                return time.time() - t0
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("the app did not start in time")

    def stop(self) -> None:
        """Terminate (then kill) the app."""
        self._peak_mb = self.peak_rss_mb()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the app, over all its starts."""
        now = _proc_mem_mb(self.proc.pid, "VmHWM") if self.proc else 0.0
        return max(self._peak_mb, now)

    def rss_mb(self) -> float:
        """Current resident memory of the app process."""
        return _proc_mem_mb(self.proc.pid, "VmRSS") if self.proc else 0.0

    def log_text(self) -> str:
        """Everything the app logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> AppProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _proc_mem_mb(pid: int, field_name: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ------------------------------------------------------------------------------ raw HTTP (as the browser)
def fn_index(url: str, api_name: str) -> int:
    """The event id of ``api_name`` in the app's config (private endpoints included)."""
    import httpx

    deps = httpx.get(url + "/config", timeout=10).json()["dependencies"]
    return next(d["id"] for d in deps if d.get("api_name") == api_name)


def upload_raw(url: str, name: str, data: bytes) -> str:
    """POST a file to ``/gradio_api/upload`` under ``name``; returns the server-side path."""
    import httpx

    r = httpx.post(url + "/gradio_api/upload", files=[("files", (name, data))], timeout=30)
    r.raise_for_status()
    return r.json()[0]


def call_raw(url: str, fn: int, data: list, session_hash: str | None = None, timeout_s: float = 300) -> dict:
    """Run event ``fn`` through the queue like the browser; returns the ``process_completed`` message."""
    import httpx

    sh = session_hash or secrets.token_hex(8)
    with httpx.Client(timeout=timeout_s) as http:
        r = http.post(url + "/gradio_api/queue/join",
                      json={"data": data, "fn_index": fn, "session_hash": sh, "event_data": None, "trigger_id": None})
        r.raise_for_status()
        with http.stream("GET", url + "/gradio_api/queue/data", params={"session_hash": sh}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("msg") == "process_completed":
                        return msg
    raise RuntimeError("the queue closed without a result")


def _file_data(path: str, name: str) -> dict:
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def _error_text(msg: dict) -> str | None:
    out = msg.get("output") or {}
    if msg.get("success"):
        return _refused_upload_text(out.get("data") or [])
    return str(out.get("error") or out.get("title") or "")


def _refused_upload_text(outputs: list) -> str | None:
    """The status line of an upload the app refused (it answers with the reason and an emptied upload box rather
    than an error, :func:`mixdemo.ui.load_upload`), else None."""
    from mixdemo.ui import UPLOAD_REFUSED

    refused = f"**{UPLOAD_REFUSED}:** "
    return next((o[len(refused):] for o in outputs if isinstance(o, str) and o.startswith(refused)), None)


# ------------------------------------------------------------------------------ surface 2: the CLI
def _run_cli_inprocess(argv: list[str]) -> tuple[int, str]:
    from mixdemo.client import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        except Exception:  # noqa: BLE001 - an uncaught exception is a crash
            import traceback

            traceback.print_exc(file=err)
            code = -1
    return code, err.getvalue()


def _cli_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    return lines[-1] if lines else stderr.strip().splitlines()[-1] if stderr.strip() else ""


def check_cli(url: str, files: Sequence[tuple[BadInput, Path]], out_dir: Path, report: CorpusReport,
              subprocess_keys: Sequence[str] = ()) -> None:
    """``mixdemo.client`` on every scan (in-process ``main``; a real subprocess for ``subprocess_keys``):
    exit status 2, one clear ``error:`` line, no traceback, nothing written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for item, path in files:
        if item.key.startswith("npy_"):
            continue
        out = out_dir / f"seg_{item.key}.nii.gz"
        argv = [str(path), "-o", str(out), "--server", url, "--mode", "patch", "--seed", "0"]
        if item.key in subprocess_keys:
            proc = subprocess.run([sys.executable, "-m", "mixdemo.client", *argv], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            code, stderr, surface = proc.returncode, proc.stderr, "cli_subprocess"
        else:
            (code, stderr), surface = _run_cli_inprocess(argv), "cli"
        line = _cli_error_line(stderr)
        crash = code not in (0, 2) or bool(_TRACE_RE.search(stderr))
        clean = is_clear(line, _names(item, path)) and not any(n in stderr for n in _names(item, path))
        partial = any(out_dir.iterdir())
        report.add(Outcome(surface, item.key, line, clean and code == 2, crash, partial, accepted=code == 0))
        for leftover in out_dir.iterdir():
            leftover.unlink()


# ------------------------------------------------------------------------------ surface 3: the app
def check_app_api(app: AppProcess, files: Sequence[tuple[BadInput, Path]], report: CorpusReport) -> None:
    """Every file to ``/segment_proxy`` (gradio_client), every scan to the browser's upload handler
    (raw HTTP, with the hostile upload name); then a good request must succeed."""
    from gradio_client import Client

    from mixdemo.client import close_client

    client = Client(app.url, verbose=False, analytics_enabled=False, download_files=str(app.workdir / "dl"))
    upload_fn = fn_index(app.url, "load_upload")
    try:
        for item, path in files:
            _api_segment_proxy(client, app, item, path, report)
            if not item.key.startswith("npy_"):
                _api_upload(app, upload_fn, item, report)
        report.served_after = good_request(client) and bool(client.predict(api_name="/server_info"))
    finally:
        close_client(client)


def _api_segment_proxy(client, app: AppProcess, item: BadInput, path: Path, report: CorpusReport) -> None:  # noqa: ANN001
    """One file to ``/segment_proxy`` under its (hostile) upload base name; the upload must not stay."""
    from gradio_client import handle_file

    name = item.upload_name.replace("\\", "/").rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="mixdemo-rel-") as tmp:
        req = Path(tmp) / name
        shutil.copyfile(path, req)
        try:
            out = client.predict(handle_file(str(req)), api_name="/segment_proxy")
            report.add(Outcome("app_segment_proxy", item.key, f"accepted: {Path(out).name}", False, False, accepted=True))
            return
        except Exception as exc:  # noqa: BLE001 - AppError carries the server's message
            msg = str(exc)
            crash = type(exc).__name__ != "AppError" or bool(_TRACE_RE.search(msg))
    left = [p for p in app.gradio_tmp.rglob(name) if p.is_file() and "mixdemo-server" not in p.parts]
    report.add(Outcome("app_segment_proxy", item.key, msg, is_clear(msg, _names(item, path)), crash, bool(left)))
    for p in left:
        p.unlink()


def _api_upload(app: AppProcess, fn: int, item: BadInput, report: CorpusReport) -> None:
    try:
        server_path = upload_raw(app.url, item.upload_name, item.data)
    except Exception as exc:  # noqa: BLE001 - the upload route refusing is a clear outcome only if it says so
        report.add(Outcome("app_upload", item.key, f"upload refused: {type(exc).__name__}", False, True))
        return
    contained = Path(server_path).resolve().is_relative_to(app.gradio_tmp.resolve())
    msg = call_raw(app.url, fn, [_file_data(server_path, item.upload_name), 0, None])  # the scan, its DICOM series
    # (0: one), the session's state (held by the server: its value here is ignored)
    err = _error_text(msg)
    left = Path(server_path).exists()
    if err is None:
        report.add(Outcome("app_upload", item.key, "accepted", False, False, left or not contained, accepted=True))
        return
    report.add(Outcome("app_upload", item.key, err, is_clear(err, _names(item)), False,
                       partial_output=left or not contained))


def good_request(client, seed: int = 0) -> bool:  # noqa: ANN001
    """A valid 1×16³ request through ``client`` returns well-formed probabilities."""
    from gradio_client import handle_file

    with tempfile.TemporaryDirectory(prefix="mixdemo-rel-") as tmp:
        req = Path(tmp) / "proxy.npy"
        np.save(req, np.random.default_rng(seed).uniform(0, 1, (1, 16, 16, 16)).astype(np.float16))
        out = client.predict(handle_file(str(req)), api_name="/segment_proxy")
    probs = np.load(out)
    shutil.rmtree(Path(out).parent, ignore_errors=True)
    return probs.shape == (1, served_classes(), 16, 16, 16) and bool(np.allclose(probs.astype(np.float32).sum(1), 1, atol=2e-2))


def run_corpus(app: AppProcess, folder: Path, *, include_bomb: bool = False, every: int = 1,
               subprocess_keys: Sequence[str] = ()) -> CorpusReport:
    """All three surfaces over the corpus (``every``: take every n-th scan on the CLI, for speed)."""
    items = nifti_corpus(include_bomb=include_bomb) + proxy_corpus()
    files = write_corpus(items, folder / "corpus")
    report = CorpusReport()
    check_library(files, report)
    cli_files = [f for i, f in enumerate(files) if i % every == 0 or f[0].key in subprocess_keys]
    check_cli(app.url, cli_files, folder / "cli_out", report, subprocess_keys)
    check_app_api(app, files, report)
    return report


# ------------------------------------------------------------------------------ load
@dataclass
class UserResult:
    """One load-test user's requests and what came back."""

    user: int
    mode: str
    requests: int = 0
    ok: int = 0
    crossed: int = 0
    errors: list[str] = field(default_factory=list)


def _targets(n: int) -> list:
    from mixdemo import examples
    from mixdemo.client import load_target

    folders = list(examples.example_folders().values())
    return [load_target(folders[i % len(folders)] / "t1.nii.gz") for i in range(min(n, len(folders)))]


def _user_key(i: int, r: int, pool: Sequence[str]):  # noqa: ANN202
    from mixdemo.client import make_key

    return make_key(pool, 1 + (i + r) % 2, alpha=round(0.3 + 0.05 * i, 2), seed=100 * i + r)


def _user_centre(i: int, r: int) -> tuple[int, int, int]:
    return (48 + 6 * i + 3 * r, 70 + 5 * i, 56 + 4 * i + 2 * r)


def load_test(url: str, *, users: int = CONCURRENT_USERS, rounds: int = 1, whole_brain: bool = False,
              rss: Callable[[], float] | None = None) -> dict:
    """``users`` concurrent gradio_client users (patch mode; one more doing a whole-brain request if asked).

    Each request uses its own key (K, α, seed) and patch centre; what comes back is checked against the
    same round trip computed in this process, and against every other user's expected answer.
    """
    from mixdemo import examples, server
    from mixdemo.client import RemoteServer, run_private, unmixing_model

    bank = examples.reference_bank()
    pool = [r.ref_id for r in bank]
    targets = _targets(users)
    unmix = unmixing_model()
    got: dict[tuple[int, int], np.ndarray] = {}
    results = [UserResult(i, "patch") for i in range(users)]
    samples: list[float] = []
    start = threading.Barrier(users + (1 if whole_brain else 0))

    def patch_user(res: UserResult) -> None:
        remote = RemoteServer(url, timeout_s=900)
        try:
            start.wait(60)
            for r in range(rounds):
                res.requests += 1
                try:
                    run = run_private(targets[res.user % len(targets)].image, bank, _user_key(res.user, r, pool),
                                      remote, unmix, mode="patch", centre=_user_centre(res.user, r))
                    got[(res.user, r)] = run.result.mixed_probs.numpy()
                    res.ok += 1
                except Exception as exc:  # noqa: BLE001 - counted, reported
                    res.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        finally:
            remote.close()

    whole = UserResult(users, "whole")

    def whole_user() -> None:
        remote = RemoteServer(url, timeout_s=900)
        try:
            start.wait(60)
            whole.requests += 1
            key = _user_key(users, 0, pool)
            key = type(key)(key.reference_ids[:1], key.alphas[:1], key.seed)
            run = run_private(targets[0].image, bank, key, remote, None, mode="whole")  # naive Eq. 4: bounded time
            probs = run.result.mixed_probs
            if tuple(probs.shape) == (1, served_classes(), *targets[0].image.shape):
                whole.ok += 1
            else:
                whole.crossed += 1
        except Exception as exc:  # noqa: BLE001
            whole.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        finally:
            remote.close()

    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set() and rss is not None:
            samples.append(rss())
            stop.wait(0.5)

    threads = [threading.Thread(target=patch_user, args=(res,)) for res in results]
    if whole_brain:
        threads.append(threading.Thread(target=whole_user))
    mon = threading.Thread(target=sampler, daemon=True)
    t0 = time.time()
    mon.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    elapsed = time.time() - t0
    _verify(results, got, targets, bank, pool, unmix, rounds, server.segment)
    all_users = results + ([whole] if whole_brain else [])
    return {
        "concurrent_users": users + (1 if whole_brain else 0),
        "patch_users": users,
        "whole_brain_users": 1 if whole_brain else 0,
        "rounds": rounds,
        "requests": sum(u.requests for u in all_users),
        "served": sum(u.ok for u in all_users),
        "users_crossed": sum(u.crossed for u in all_users),
        "errors": [e for u in all_users for e in u.errors][:10],
        "seconds": round(elapsed, 1),
        "rss_mb_samples_max": round(max(samples), 1) if samples else None,
    }


def _verify(results: list[UserResult], got: dict, targets: list, bank: list, pool: list, unmix,  # noqa: ANN001
            rounds: int, segment: Callable) -> None:
    """Recompute every user's round trip in process; a result nearer another user's answer is crossed."""
    from mixdemo.client import run_private

    expected = {}
    for res in results:
        for r in range(rounds):
            if (res.user, r) in got:
                run = run_private(targets[res.user % len(targets)].image, bank, _user_key(res.user, r, pool), segment,
                                  unmix, mode="patch", centre=_user_centre(res.user, r))
                expected[(res.user, r)] = run.result.mixed_probs.numpy()
    for (u, r), arr in got.items():
        own = float(np.abs(arr - expected[(u, r)]).max())
        others = [float(np.abs(arr - e).mean()) for k, e in expected.items() if k != (u, r) and e.shape == arr.shape]
        own_mean = float(np.abs(arr - expected[(u, r)]).mean())
        if own > 2e-2 or any(o <= own_mean for o in others):
            results[u].crossed += 1
            results[u].ok -= 1


# ------------------------------------------------------------------------------ queue limits
def queue_limits(url: str) -> dict:
    """The limits the app sets: max file size from the running app's config, the queue and per-event
    limits from ``mixdemo.ui.build_demo`` (the same code the app runs; Gradio's config omits them)."""
    import httpx

    from mixdemo import ui

    cfg = httpx.get(url + "/config", timeout=10).json()
    demo = ui.build_demo()
    fns = {f.api_name: f for f in demo.fns.values()}
    seg = fns["segment_proxy"]
    return {
        "segment_proxy_concurrency_limit": seg.concurrency_limit,
        "segment_proxy_concurrency_id": seg.concurrency_id,
        "compute_events_sharing_the_limit": sorted(n for n, f in fns.items() if f.concurrency_id == seg.concurrency_id),
        "max_file_size_bytes": cfg.get("max_file_size"),
        "queue_max_size": demo._queue.max_size,
        "default_concurrency_limit": demo._queue.default_concurrency_limit,
    }


# ------------------------------------------------------------------------------ faults
def fault_client_killed(app: AppProcess, sides: int = 96, k: int = 3) -> str:
    """Kill a client (SIGKILL) while its request is being computed; a new request must succeed."""
    from gradio_client import Client

    from mixdemo.client import close_client

    req = app.workdir / "kill" / "proxy.npy"
    req.parent.mkdir(exist_ok=True)
    np.save(req, np.random.default_rng(0).uniform(0, 1, (k, sides, sides, sides)).astype(np.float16))
    code = ("import sys; from gradio_client import Client, handle_file; "
            "c = Client(sys.argv[1], verbose=False); c.predict(handle_file(sys.argv[2]), api_name='/segment_proxy')")
    mark = f"segmenting {k} proxy(ies)"
    before = app.log_text().count(mark)
    proc = subprocess.Popen([sys.executable, "-c", code, app.url, str(req)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while app.log_text().count(mark) == before and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.1)
    mid = proc.poll() is None and app.log_text().count(mark) > before
    stops_before = app.log_text().count(LEFT_MARK)
    proc.kill()
    proc.wait()
    client = Client(app.url, verbose=False, analytics_enabled=False, download_files=str(app.workdir / "dl"))
    try:
        t1 = time.time()
        ok = good_request(client, seed=7)
        waited = time.time() - t1
    finally:
        close_client(client)
    alive = app.proc is not None and app.proc.poll() is None
    leftover = [p.name for p in app.gradio_tmp.rglob("proxy.npy")]
    stopped = ("stopped at its next proxy when the client's session ended (ui.leave_session)"
               if app.log_text().count(LEFT_MARK) > stops_before else "finished before the session's end was seen")
    if not (mid and ok and alive):
        return f"FAILED: killed mid-computation={mid}, next request ok={ok}, app alive={alive}"
    return (f"ok: client SIGKILLed while the server computed its {k}x{sides}^3 request, which {stopped}; the app "
            f"kept serving (next request succeeded after {waited:.1f} s); uploaded requests left: {len(leftover)}")


LEFT_MARK = "a page was left during its segment_proxy request"
"""What the app logs (``mixdemo.ui.leave_session``) when a client's session ends while its request is computed."""


def fault_app_restarted(app: AppProcess) -> str:
    """Stop and start the app on the same port: a client made before and a new client both work."""
    from gradio_client import Client

    from mixdemo.client import close_client

    dl = str(app.workdir / "dl")
    old = Client(app.url, verbose=False, analytics_enabled=False, download_files=dl)
    ok_before = good_request(old, seed=1)
    app.stop()
    down_msg = ""
    try:
        good_request(old, seed=2)
    except Exception as exc:  # noqa: BLE001 - expected while down
        down_msg = type(exc).__name__
    secs = app.start()
    new = Client(app.url, verbose=False, analytics_enabled=False, download_files=dl)
    try:
        ok_new = good_request(new, seed=3)
        try:
            ok_old = good_request(old, seed=4)
        except Exception:  # noqa: BLE001
            ok_old = False
    finally:
        close_client(new)
        close_client(old)
    if not (ok_before and ok_new):
        return f"FAILED: before={ok_before}, new client after restart={ok_new}"
    return (f"ok: while down a call failed ({down_msg or 'no error'}); restarted in {secs:.1f} s; a new client's "
            f"request succeeded; the client made before the restart {'also works' if ok_old else 'must reconnect'}")


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _serve_once(folder: Path) -> str:
    """The app's ``segment_proxy`` handler on a small request with weights from ``folder``: ``'ok'``, or the
    gr.Error message the client is told, then `` | log: `` and what the server logged (the operator's detail)."""
    import logging

    import gradio as gr

    from mixdemo import ui

    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(ui.__name__).addHandler(handler)
    with (tempfile.TemporaryDirectory(prefix="mixdemo-rel-") as tmp,
          _env(MIXDEMO_WEIGHTS_DIR=str(folder), HF_HUB_OFFLINE="1", MIXDEMO_HUB_REPO="mixup-privacy-lab/no-such-repo")):
        req = Path(tmp) / "proxy.npy"
        np.save(req, np.random.default_rng(0).uniform(0, 1, (1, 16, 16, 16)).astype(np.float16))
        try:
            out = ui._server_endpoint(str(req), progress=lambda *a, **k: None)
            ok = np.load(out).shape == (1, served_classes(), 16, 16, 16)
            shutil.rmtree(Path(out).parent, ignore_errors=True)
            return "ok" if ok else "wrong shape"
        except gr.Error as exc:
            return f"{exc.message} | log: {' '.join(logged)}"
        finally:
            logging.getLogger(ui.__name__).removeHandler(handler)


def _told_and_logged(msg: str, told: str, logged: str, folder: Path) -> str:
    """A weights fault's verdict: the client told ``told`` (and not the server's folder), the log ``logged``."""
    client_part, _, log_part = msg.partition(" | log: ")
    ok = told in client_part and logged in log_part and str(folder) not in client_part and "Traceback" not in msg
    return f"ok: the client told: {client_part}; the server's log: {log_part}" if ok else f"FAILED: {msg}"


def fault_weights(weights: Path, workdir: Path) -> dict[str, str]:
    """Weights missing, corrupt (checksum of training.json), and Hub unreachable with local weights."""
    import huggingface_hub

    out: dict[str, str] = {}
    empty = workdir / "weights_missing"
    empty.mkdir(parents=True, exist_ok=True)
    out["weights_missing"] = _told_and_logged(_serve_once(empty), "No weights for 'segmentation' on this server",
                                              "No weights for 'segmentation': not in the local folder", empty)
    corrupt = workdir / "weights_corrupt"
    shutil.copytree(weights / "segmentation", corrupt / "segmentation", dirs_exist_ok=True)
    blob = corrupt / "segmentation" / "model.safetensors"
    data = bytearray(blob.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    blob.write_bytes(bytes(data))
    out["weights_corrupt"] = _told_and_logged(_serve_once(corrupt), "The server's segmentation model could not be "
                                              "loaded", "checksum", corrupt)
    calls: list[str] = []
    real = huggingface_hub.hf_hub_download

    def unreachable(*args, **kwargs):  # noqa: ANN002, ANN003
        calls.append(str(args[:2]))
        raise ConnectionError("the Hub is unreachable (simulated)")

    huggingface_hub.hf_hub_download = unreachable
    try:
        local = workdir / "weights_local"
        shutil.copytree(weights / "segmentation", local / "segmentation", dirs_exist_ok=True)
        msg = _serve_once(local)
    finally:
        huggingface_hub.hf_hub_download = real
    out["hub_unreachable_local_present"] = (f"ok: served from local weights, Hub contacted {len(calls)} time(s)"
                                            if msg == "ok" and not calls else f"FAILED: {msg}; Hub calls {calls}")
    return out


def fault_weights_via_app(workdir: Path) -> str:
    """An app launched with no weights at all: it starts, and segment_proxy says so clearly."""
    from gradio_client import Client

    from mixdemo.client import close_client

    app = AppProcess(workdir / "app_noweights", env={"MIXDEMO_WEIGHTS_DIR": str(workdir / "weights_missing"),
                                                    "MIXDEMO_HUB_REPO": "mixup-privacy-lab/no-such-repo"})
    with app:
        client = Client(app.url, verbose=False, analytics_enabled=False, download_files=str(app.workdir / "dl"))
        try:
            good_request(client)
            return "FAILED: a request succeeded without weights"
        except Exception as exc:  # noqa: BLE001
            msg = str(exc)
            return f"ok: clear API error: {msg}" if "No weights" in msg and "Traceback" not in msg else f"FAILED: {msg}"
        finally:
            close_client(client)


# ------------------------------------------------------------------------------ privacy hygiene
SECRET_DESCRIP = "SECRET-DESCRIP Jane Doe 1970"
SECRET_EXT = "SECRET-EXTENSION-MRN424242"


def distinctive_scan(folder: Path) -> Path:
    """An example target re-saved with identifying header fields, an extension and a patient-like name."""
    import nibabel as nib

    from mixdemo import examples

    src = next(iter(examples.example_folders().values())) / "t1.nii.gz"
    img = nib.load(src)
    affine = img.affine.copy()
    affine[:3, 3] += (12.345, -6.789, 3.21)
    new = nib.Nifti1Image(np.asarray(img.dataobj), affine)
    new.header["descrip"] = SECRET_DESCRIP.encode()
    new.header["aux_file"] = b"SECRET-AUX"
    new.header["db_name"] = b"SECRET-DB"
    new.header.extensions.append(nib.nifti1.Nifti1Extension(6, SECRET_EXT.encode()))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PATIENT_LIKE_NAME}.nii.gz"
    nib.save(new, path)
    return path


def _secrets() -> list[bytes]:
    return [s.encode() for s in (SECRET_DESCRIP, SECRET_EXT, "SECRET-AUX", "SECRET-DB", PATIENT_LIKE_NAME,
                                 "Doe_Jane", "12.345", "n+1")]


def check_payload(url: str, folder: Path) -> dict:
    """Run the CLI on the distinctive scan and capture every HTTP POST gradio_client makes."""
    import gradio_client.client as gc

    scan = distinctive_scan(folder)
    posts: list[dict] = []
    real_post = gc.httpx.post

    def spy(u, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        rec = {"url": str(u), "files": [], "json": kwargs.get("json")}
        for _, (name, fh) in kwargs.get("files") or []:
            data = fh.read() if hasattr(fh, "read") else bytes(fh)
            if hasattr(fh, "seek"):
                fh.seek(0)
            rec["files"].append((name, data))
        posts.append(rec)
        return real_post(u, *args, **kwargs)

    gc.httpx.post = spy
    try:
        code, stderr = _run_cli_inprocess([str(scan), "-o", str(folder / "seg.nii.gz"), "--server", url,
                                           "--mode", "patch", "--tta", "2", "--alpha", "0.5", "--seed", "1"])
    finally:
        gc.httpx.post = real_post
    files = [f for p in posts for f in p["files"]]
    problems = []
    for name, data in files:
        problems += _npy_problems(name, data)
    blob = b"".join(d for _, d in files) + json.dumps([p["json"] for p in posts], default=str).encode()
    found = [s.decode() for s in _secrets() if s in blob]
    return {
        "cli_exit": code,
        "http_posts_captured": sorted({p["url"].split("/gradio_api/")[-1].split("?")[0] for p in posts}),
        "uploads": len(files),
        "upload_names": sorted({n for n, _ in files}),
        "npy_problems": problems,
        "secrets_found_in_requests": found,
        "file_name_in_cli_messages": PATIENT_LIKE_NAME in stderr,
        "leaks": int(bool(problems)) + len(found) + int(PATIENT_LIKE_NAME in stderr) + int(code != 0 or not files),
    }


def _npy_problems(name: str, data: bytes) -> list[str]:
    """A request file must be exactly ``proxy.npy``: an .npy header (descr, fortran_order, shape) and the voxels."""
    import ast

    problems = []
    if name != "proxy.npy":
        problems.append(f"upload named {name!r}")
    if not data.startswith(b"\x93NUMPY"):
        return problems + ["not an .npy file"]
    major = data[6]
    hlen = int.from_bytes(data[8:10], "little") if major == 1 else int.from_bytes(data[8:12], "little")
    start = 10 if major == 1 else 12
    header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    if set(header) != {"descr", "fortran_order", "shape"}:
        problems.append(f"extra header keys {sorted(header)}")
    n = int(np.prod(header["shape"])) * np.dtype(header["descr"]).itemsize
    if len(data) != start + hlen + n:
        problems.append("bytes beyond the array")
    if np.dtype(header["descr"]) != np.float16:
        problems.append(f"dtype {header['descr']}")
    return problems


def check_url_isolation(app: AppProcess) -> dict:
    """User A sends a proxy the browser way; user B (a fresh HTTP client, no cookies) tries A's URLs."""
    import httpx

    fn = fn_index(app.url, "segment_proxy")
    req = io.BytesIO()
    np.save(req, np.random.default_rng(5).uniform(0, 1, (1, 16, 16, 16)).astype(np.float16))
    up = upload_raw(app.url, "proxy.npy", req.getvalue())
    msg = call_raw(app.url, fn, [_file_data(up, "proxy.npy")])
    out = msg["output"]["data"][0]
    file_url = out.get("url") or f"{app.url}/gradio_api/file={out['path']}"
    upload_url = f"{app.url}/gradio_api/file={up}"
    with httpx.Client(timeout=30) as user_b:
        b_upload = user_b.get(upload_url).status_code
    with httpx.Client(timeout=30) as user_a:
        a_first = user_a.get(file_url)
        a_ok = a_first.status_code == 200 and np.load(io.BytesIO(a_first.content)).shape == (1, served_classes(), 16, 16, 16)
    with httpx.Client(timeout=30) as user_b:
        b_output = user_b.get(file_url).status_code
    with httpx.Client(timeout=30) as user_a:
        a_again = user_a.get(file_url).status_code
    leaks = int(b_upload == 200) + int(b_output == 200)
    return {
        "user_a_download": "ok" if a_ok else "FAILED",
        "user_b_fetch_of_a_upload": b_upload,
        "user_b_fetch_of_a_output_after_a_downloaded": b_output,
        "user_a_second_fetch": a_again,
        "gradio_behaviour": ("Gradio serves any file of its cache to any holder of the /gradio_api/file= URL "
                             "(no session check; the URL holds a salted 256-bit hash). Hardening: uploads are "
                             "deleted on read; segment_proxy responses are written inside the cache and deleted by "
                             "mixdemo.oneshot right after their first complete download."),
        "leaks": leaks + int(not a_ok),
    }


def check_ui_download(app: AppProcess) -> dict:
    """The browser demo's downloadable segmentation: what a fresh HTTP client holding its URL gets.

    Gradio has no per-session file access: while user A's session lives, the URL (a salted 256-bit
    hash, sent only to A) works for anyone holding it. The download is the only copy (written inside
    Gradio's cache) and is deleted by A's next run or when A's session state is dropped. Recorded as a
    residual risk of the browser demo (where the raw scan reaches the app anyway), not as a leak."""
    import httpx

    from mixdemo import examples

    sh = secrets.token_hex(8)
    loaded = call_raw(app.url, fn_index(app.url, "load_example"), [examples.example_names()[0], None], session_hash=sh)
    done = call_raw(app.url, fn_index(app.url, "segment"), [None, [], 1, 0.5, False, "patch", 0.5, None, False], session_hash=sh)
    if not (loaded.get("success") and done.get("success")):
        return {"ok": False, "error": _error_text(done) or _error_text(loaded), "leaks": 1}
    seg = done["output"]["data"][13]
    path = seg.get("path") or ""
    url = seg.get("url") or f"{app.url}/gradio_api/file={path}"
    with httpx.Client(timeout=30) as user_b:
        b_live = user_b.get(url).status_code
    done2 = call_raw(app.url, fn_index(app.url, "segment"), [None, [], 1, 0.6, False, "patch", 0.5, None, False], session_hash=sh)
    with httpx.Client(timeout=30) as user_b:
        b_after_next_run = user_b.get(url).status_code
    copies = [p for p in app.gradio_tmp.rglob(Path(path).name) if p.is_file()]
    return {"ok": bool(done2.get("success")), "user_b_fetch_while_a_session_lives": b_live,
            "user_b_fetch_after_a_next_run": b_after_next_run, "copies_of_current_download": len(copies),
            "residual_risk": "the live download is served to any holder of its URL (Gradio has no per-session "
                             "file ACL); it is removed by the owner's next run or when the session ends",
            "leaks": int(b_after_next_run == 200) + int(len(copies) > 1)}


def check_scan_kept(app: AppProcess) -> dict:
    """A page that loaded a scan, then more API calls than the app keeps sessions with a scan, each call a session
    of its own (a remote client's batch: a session per scan), then the page's next run: it still has its scan.
    Gradio's own store counted every session against one bound and dropped the page's scan after 64 such calls
    (``mixdemo.ui.ScansFirstStateHolder``)."""
    from mixdemo import examples
    from mixdemo.ui import SCAN_SESSIONS

    page = secrets.token_hex(8)
    loaded = call_raw(app.url, fn_index(app.url, "load_example"), [examples.example_names()[0], None], session_hash=page)
    info = fn_index(app.url, "server_info")
    answered = sum(bool(call_raw(app.url, info, []).get("success")) for _ in range(SCAN_SESSIONS + 6))
    run = call_raw(app.url, fn_index(app.url, "segment"), [None, [], 1, 0.5, False, "patch", 0.5, None, False],
                   session_hash=page)
    kept = bool(loaded.get("success") and run.get("success"))
    return {"api_sessions_between": answered, "page_kept_its_scan": kept,
            "error": None if kept else (_error_text(run) or _error_text(loaded))}


MALFORMED_MARK = "Doe^Jane-malformed-request"
"""A patient-like value sent in malformed requests: it must not reach the app's log."""


class RawBody(NamedTuple):
    """A malformed request's body as bytes, with its headers: what JSON cannot carry (``NaN``), or a form;
    ``leaves``: the client sends half of it, then closes the connection (a page closed during an upload)."""

    content: bytes
    headers: dict[str, str]
    leaves: bool = False


def _send_half_and_leave(url: str, method: str, path: str, body: RawBody) -> None:
    """Send a request's head (the whole body's Content-Length) and half of its body on a socket, then close it."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": where.netloc, **body.headers,
                                                  "Content-Length": str(len(body.content))}.items())
    with socket.create_connection((where.hostname, where.port or 80), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + body.content[:len(body.content) // 2])
    time.sleep(0.5)  # the server reads the rest, finds the client gone


def malformed_requests(url: str) -> list[tuple[str, str, dict | RawBody | None]]:
    """(method, path, JSON body or :class:`RawBody`) of requests a browser never sends: queue joins naming no event
    of the app, one that runs in the page alone, too few inputs, each named event's inputs all of one wrong value (a
    number, the patient-like :data:`MALFORMED_MARK`, a file the app never received, nothing), an empty session, a
    very long one, a number JSON has not, a body too long to check; calls by name of endpoints the app lacks,
    arguments by name an endpoint does not take; a component that does not exist, a component call's form without its fields or with a
    component_id that is no number; a stream with nothing queued (an empty session's, a call's event's); a file
    path with a NUL byte, a list of ranges of a file, the code of a custom component the app lacks, a page it
    lacks, a proxy header that makes no URL, a form boundary too long, an upload's ``files`` part that is no file,
    a screen recording to cut at a point that is no number, an upload whose client leaves half-way, and direct
    calls (the page's, for an event it does not queue) of no event or with too few inputs."""
    import httpx

    config = httpx.get(url + "/config", timeout=10)
    deps = config.json()["dependencies"]
    join = "/gradio_api/queue/join"

    def body(fn: object, data: list) -> dict:
        return {"data": data, "fn_index": fn, "session_hash": secrets.token_hex(8), "event_data": None,
                "trigger_id": None}

    page_only = next((d["id"] for d in deps if not d.get("backend_fn", True)), None)
    takes_inputs = next(d for d in deps if d.get("backend_fn", True) and d["inputs"])
    requests = [("POST", join, body(fn, [])) for fn in (10**6, -1, str(10**6), 10**30)]
    requests += [("POST", join, body(takes_inputs["id"], []))]
    if page_only is not None:
        requests += [("POST", join, body(page_only, []))]
    wrong = [12345, MALFORMED_MARK, {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, None]
    requests += [("POST", join, body(d["id"], [value] * len(d["inputs"])))
                 for d in deps if d.get("api_name") and d.get("backend_fn", True) and d["inputs"] for value in wrong]
    server_info = next(d for d in deps if d.get("api_name") == "server_info")
    json_type = {"content-type": "application/json"}
    requests += [("POST", join, {**body(server_info["id"], []), "session_hash": ""}),
                 ("POST", join, {**body(server_info["id"], []), "session_hash": "s" * 100_000}),
                 ("POST", join, RawBody(b'{"data": [], "fn_index": 1e400, "session_hash": "s"}', json_type)),
                 ("POST", join, RawBody(b'{"data": [NaN], "fn_index": %d, "session_hash": "s"}' % server_info["id"],
                                        json_type)),
                 ("POST", join, body(10**6, ["x" * (1 << 20)])),
                 ("POST", f"/gradio_api/call/{MALFORMED_MARK}", {"data": []}),
                 ("POST", "/gradio_api/call/server_info", {"data": [], "session_hash": ""}),
                 ("POST", f"/gradio_api/call/v2/{MALFORMED_MARK}", {}),
                 ("POST", "/gradio_api/call/v2/server_info", {MALFORMED_MARK: 1}),
                 ("POST", f"/gradio_api/run/{MALFORMED_MARK}", {"data": []}),
                 ("POST", "/gradio_api/cancel", RawBody(b'{"session_hash": "s", "fn_index": NaN, "event_id": "e"}',
                                                        json_type))]
    form_type = {"content-type": "multipart/form-data; boundary=b0undary"}

    def form(**fields: str) -> RawBody:
        parts = "".join(f'--b0undary\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                        for k, v in fields.items())
        return RawBody(f"{parts}--b0undary--\r\n".encode(), form_type)

    requests += [("POST", "/gradio_api/component_server",
                  {"session_hash": secrets.token_hex(8), "component_id": 10**6, "fn_name": "x", "data": []}),
                 ("POST", "/gradio_api/component_server", form(session_hash=secrets.token_hex(8))),
                 ("POST", "/gradio_api/component_server",
                  form(session_hash=secrets.token_hex(8), component_id=MALFORMED_MARK, fn_name="x")),
                 ("POST", "/gradio_api/component_server",
                  form(session_hash=secrets.token_hex(8), component_id=str(10**6), fn_name="x")),
                 ("GET", f"/gradio_api/queue/data?session_hash={secrets.token_hex(8)}", None),
                 ("GET", "/gradio_api/queue/data?session_hash=", None),
                 ("GET", f"/gradio_api/call/server_info/{secrets.token_hex(16)}", None),
                 ("GET", f"/gradio_api/call/v2/server_info/{secrets.token_hex(16)}", None),
                 ("GET", f"/gradio_api/file=/tmp/%00{MALFORMED_MARK}.npy", None),  # no file's path: a NUL byte
                 ("GET", f"/gradio_api/custom_component/{secrets.token_hex(8)}/client/js/{MALFORMED_MARK}.js", None),
                 ("GET", f"/?page={MALFORMED_MARK}", None),
                 *[("GET", served, RawBody(b"", {"range": "bytes=0-1,2-3"}))  # a list of ranges, of a file it serves
                   for served in re.findall(r'"url": ?"[^"]*(/gradio_api/file=[^"]+)"', config.text)[:1]],
                 ("GET", "/config", RawBody(b"", {"x-forwarded-host": f"{MALFORMED_MARK}:port"})),
                 ("POST", "/gradio_api/upload", RawBody(b"x", {"content-type": "multipart/form-data; boundary="
                                                                              + "b" * 300})),
                 ("POST", "/gradio_api/upload", form(files=MALFORMED_MARK)),  # a "files" part that is no file
                 ("POST", "/gradio_api/process_recording", RawBody(  # where ffmpeg is installed: float(MARK)
                     b'--b0undary\r\nContent-Disposition: form-data; name="video"; filename="r.mp4"\r\n\r\nzz\r\n'
                     + form(remove_segment_start=MALFORMED_MARK, remove_segment_end="5").content, form_type)),
                 ("POST", "/gradio_api/upload", RawBody(  # a file whose client leaves half-way
                     b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="scan.nii"\r\n\r\n'
                     + b"\0" * 4096 + b"\r\n--b0undary--\r\n", form_type, leaves=True)),
                 ("POST", "/gradio_api/run/predict", body(10**6, [])),
                 ("POST", "/gradio_api/run/predict", body(takes_inputs["id"], []))]
    return requests


def check_malformed_requests(app: AppProcess) -> dict:
    """Each of :func:`malformed_requests`, raw: answered with a 4xx or, through the queue, with the event's error
    (never a 5xx or a dropped connection; one whose client leaves half-way is counted as ``left``); the app's log
    gains no traceback and never the request's values; the app serves a proxy after them. Gradio answered several
    with 500 and a traceback of up to 80 lines each (``mixdemo.gatekeeper``)."""
    import httpx

    before = app.log_text()
    statuses: dict[str, int] = {}
    server_errors = 0
    for method, path, body in malformed_requests(app.url):
        if isinstance(body, RawBody) and body.leaves:
            _send_half_and_leave(app.url, method, path, body)
            statuses["left"] = statuses.get("left", 0) + 1
            continue
        try:
            if method == "GET":
                status = _bounded_get(app.url + path, body.headers if isinstance(body, RawBody) else {})
            elif isinstance(body, RawBody):
                status = httpx.request(method, app.url + path, content=body.content, headers=body.headers,
                                       timeout=30).status_code
            else:
                status = httpx.request(method, app.url + path, json=body, timeout=30).status_code
            if status == 200 and path.endswith("/queue/join") and isinstance(body, dict):
                status = _queued_outcome(app.url, body["session_hash"])
        except httpx.HTTPError:
            status = 0
        server_errors += status == 0 or status >= 500
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    added = app.log_text()[len(before):]
    served = call_raw(app.url, fn_index(app.url, "server_info"), []).get("success")
    return {"requests": sum(statuses.values()), "answers": statuses, "server_errors": server_errors,
            "tracebacks_in_log": added.count("Traceback (most recent call last)"),
            "values_in_log": added.count(MALFORMED_MARK), "served_after": bool(served)}


def _bounded_get(url: str, headers: dict[str, str], limit_s: float = 30) -> int:
    """A GET's status once its whole body has come within ``limit_s`` seconds, else 0: a stream that never ends
    (Gradio's queue stream for a session with nothing queued but a broken event's entry sent heartbeats for ever)."""
    import httpx

    deadline = time.monotonic() + limit_s
    with httpx.stream("GET", url, headers=headers, timeout=limit_s) as response:
        for _ in response.iter_raw():
            if time.monotonic() > deadline:
                return 0
    return response.status_code


def _queued_outcome(url: str, session_hash: str) -> int:
    """What a queued event's stream ended with: 200 for a result or the event's error, 0 for none."""
    import httpx

    with httpx.Client(timeout=120) as http, http.stream(
            "GET", url + "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                return 200
    return 0


def check_upload_hygiene(app: AppProcess, folder: Path) -> dict:
    """The browser's upload of a scan with an identifying name: deleted after reading, name never logged."""
    scan = distinctive_scan(folder)
    fn = fn_index(app.url, "load_upload")
    path = upload_raw(app.url, scan.name, scan.read_bytes())
    msg = call_raw(app.url, fn, [_file_data(path, scan.name), 0, None])  # the scan, its series, the session's state
    loaded = _error_text(msg) is None
    return {"loaded": loaded, "upload_deleted": not Path(path).exists(),
            "leaks": int(Path(path).exists()) + int(not loaded)}


def check_temp_dirs(app: AppProcess, client_tmp_before: set[str]) -> dict:
    """What is left in the app's temp dirs (Gradio's cache, TMPDIR) and in this client's temp dir.

    A response computed for a client that died before downloading it is not a leak of a served
    file (nobody received its URL); it is listed apart and removed by the server's sweep."""
    from mixdemo.server import RESPONSE_MAX_AGE_S

    left, undelivered = [], []
    for root in (app.gradio_tmp, app.tmp):
        for p in root.rglob("*"):
            if p.is_file() and p.stat().st_size > 0 and (
                    p.suffix in (".npy", ".nii", ".gz") or PATIENT_LIKE_NAME in p.name):
                rel_path = str(p.relative_to(app.workdir))
                if "mixdemo-server" in p.parts:
                    undelivered.append(rel_path)
                elif "mixdemo-outputs" not in p.parts:  # live browser sessions' downloads (see check_ui_download)
                    left.append(rel_path)
    client_left = sorted(client_tmp_snapshot() - client_tmp_before)
    empty = [p for p in app.gradio_tmp.glob("*") if p.is_file() and p.stat().st_size == 0]  # Gradio's stray files
    return {"app_files_left": left, "client_files_left": client_left,
            "empty_files_left": len(empty),  # no data (not a leak); one per upload before ui.UploadedFile
            "undelivered_responses": len(undelivered),
            "undelivered_note": f"responses of clients that died mid-request; removed after {RESPONSE_MAX_AGE_S} s",
            "leaks": len(left) + len(client_left)}


def client_tmp_snapshot() -> set[str]:
    """Names of the client's temp folders now (to diff after the run)."""
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith(("mixdemo-client-", "mixdemo-proxy-"))}


def check_logs(app: AppProcess, corpus_names: Iterable[str] = ()) -> dict:
    """The app's DEBUG log: no uploaded file names, no header secrets, no voxel data."""
    text = app.log_text()
    names = [PATIENT_LIKE_NAME, "Doe_Jane", SECRET_DESCRIP, SECRET_EXT, "SECRET-AUX", "SECRET-DB",
             *[n for n in corpus_names if len(n) > 12]]
    found = sorted({n for n in names if n in text})
    voxels = _VOXELS_RE.findall(text)
    return {"log_bytes": len(text), "names_found": found, "voxel_dumps": len(voxels),
            "leaks": len(found) + len(voxels)}


_SPLIT_CODE = r"""
import importlib.abc, json, sys
import numpy as np
BLOCKED = ("mixdemo.mixing", "mixdemo.client", "mixdemo.pipeline", "mixdemo.examples", "mixdemo.ui", "mixdemo.attacks")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.startswith("mixdemo.attacks."):
            raise ImportError(f"client-side module {name} is absent")
        return None
sys.meta_path.insert(0, Block())
try:
    import mixdemo.mixing
    blocked = False
except ImportError:
    blocked = True
from mixdemo import server
np.save(sys.argv[1], np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 32)).astype(np.float16))
out = server.segment_file(sys.argv[1])
probs = np.load(out)
print(json.dumps({"blocked": blocked, "shape": list(probs.shape),
                  "client_modules_loaded": sorted(m for m in sys.modules if m in BLOCKED)}))
"""


def check_server_without_client(folder: Path) -> dict:
    """A subprocess where the client-side modules cannot be imported serves a proxy."""
    req = folder / "split" / "proxy.npy"  # beside the server's cache, not in it: a file of the cache that no upload
    req.parent.mkdir(parents=True, exist_ok=True)  # made is refused (mixdemo.oneshot.is_foreign)
    proc = subprocess.run([sys.executable, "-c", _SPLIT_CODE, str(req)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                GRADIO_TEMP_DIR=str(folder / "split" / "cache")))
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "stderr_tail": proc.stderr[-500:], "leaks": 1}
    ok = res["blocked"] and res["shape"] == [2, served_classes(), 32, 32, 32] and not res["client_modules_loaded"]
    return {**res, "ok": ok, "leaks": int(not ok)}


# ------------------------------------------------------------------------------ the whole run
def _say(t0: float, what: str) -> None:
    print(f"[{time.time() - t0:6.1f} s] {what}", file=sys.stderr, flush=True)


def run(quick: bool = False, out: Path | None = None, workdir: Path | None = None) -> dict:
    """Everything, into one JSON-able dict (``quick``: fewer inputs, no whole-brain, no gzip bomb)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    work = Path(workdir or tempfile.mkdtemp(prefix="mixdemo-reliability-"))
    weights = Path(os.environ.get("MIXDEMO_WEIGHTS_DIR", ROOT / "weights"))
    os.environ["MIXDEMO_WEIGHTS_DIR"] = str(weights)
    tmp_before = client_tmp_snapshot()
    doc: dict = {"command": "python -m training.reliability" + (" --quick" if quick else ""),
                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    app = AppProcess(work / "app", env={"MIXDEMO_WEIGHTS_DIR": str(weights)})
    with app:
        _say(t0, "app started; bad inputs through library, CLI and app")
        report = run_corpus(app, work, include_bomb=not quick, every=3 if quick else 1,
                            subprocess_keys=("truncated_gzip",) if quick else ("truncated_gzip", "dicom_renamed", "nifti_4d"))
        _say(t0, "fuzz")
        fuzz = fuzz_loader_alone(150 if quick else 600)
        _say(t0, "load test")
        load = load_test(app.url, rounds=1 if quick else 3, whole_brain=not quick, rss=app.rss_mb)
        limits = queue_limits(app.url)
        _say(t0, "privacy checks")
        payload = check_payload(app.url, work / "payload")
        urls = check_url_isolation(app)
        upload = check_upload_hygiene(app, work / "upload")
        ui_download = check_ui_download(app)
        scan_kept = check_scan_kept(app)
        malformed = check_malformed_requests(app)
        _say(t0, "faults: client killed, app restarted")
        faults = {"client_killed_mid_request": fault_client_killed(app, sides=64 if quick else 96, k=2 if quick else 3)}
        faults["app_restarted"] = fault_app_restarted(app)
        temp = check_temp_dirs(app, tmp_before)
        logs = check_logs(app, [p.name for p in (work / "corpus").iterdir()])
        peak = app.peak_rss_mb()
    _say(t0, "faults: weights")
    faults.update(fault_weights(weights, work))
    if not quick:
        faults["weights_missing_via_app_api"] = fault_weights_via_app(work)
    split = check_server_without_client(work)
    summary = report.summary()
    privacy = {"proxy_payload": payload, "url_isolation": urls, "upload_deleted_after_use": upload,
               "browser_download": ui_download,
               "temp_dirs_after_run": temp, "logs": logs, "server_without_client_code": split}
    doc.update({
        "inputs_tried": sum(s["tried"] for s in summary.values()),
        "distinct_bad_inputs": len({o.key for o in report.outcomes}),
        "crashes": sum(s["crashes"] for s in summary.values()) + fuzz["crashes"],
        "clear_messages": sum(s["clear"] for s in summary.values()),
        "accepted_bad_inputs": sum(s["accepted"] for s in summary.values()),
        "partial_outputs": sum(s["partial_outputs"] for s in summary.values()),
        "served_after_bad_inputs": report.served_after,
        "by_surface": summary,
        "not_clear": report.failures()[:20],
        "fuzz": fuzz,
        "requests_served_under_load": load["served"],
        "users_crossed": load["users_crossed"],
        "concurrent_users": load["concurrent_users"],
        "load": load,
        "peak_rss_mb": round(peak, 1),
        "queue_limits": limits,
        "pages_that_lost_their_scan_to_api_calls": int(not scan_kept["page_kept_its_scan"]),
        "sessions": scan_kept,
        "malformed_requests": malformed,
        "faults": faults,
        "leaks_found": sum(v["leaks"] for v in privacy.values()),
        "privacy_checks": privacy,
        "seconds": round(time.time() - t0, 1),
    })
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return doc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.reliability", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer inputs and requests (about 2 minutes)")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON written (default results/reliability.json; results/quick/reliability.json with "
                        "--quick; both in the repository)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = ROOT / default_out("reliability.json", args.quick)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run and write the JSON; exit 1 if anything crashed, crossed or leaked."""
    args = parse_args(argv)
    doc = run(quick=args.quick, out=args.out)
    keys = ("inputs_tried", "crashes", "clear_messages", "partial_outputs", "requests_served_under_load",
            "users_crossed", "pages_that_lost_their_scan_to_api_calls", "malformed_requests", "peak_rss_mb",
            "leaks_found", "seconds")
    print(json.dumps({k: doc[k] for k in keys}, indent=1))
    print(f"wrote {args.out}")
    bad = doc["crashes"] or doc["users_crossed"] or doc["leaks_found"] or doc["partial_outputs"]
    bad = bad or doc["pages_that_lost_their_scan_to_api_calls"]
    malformed = doc["malformed_requests"]
    bad = bad or malformed["server_errors"] or malformed["tracebacks_in_log"] or malformed["values_in_log"]
    bad = bad or any(str(v).startswith("FAILED") for v in doc["faults"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
