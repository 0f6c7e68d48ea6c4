"""The remote client: mixes locally, sends only proxies, unmixes locally; tested against a launched app."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mixdemo.client import ClientError, RemoteServer, conform_to_grid, make_key, patch_region
from mixdemo.io import ScanError


# ------------------------------------------------------------------------------ pure helpers
@pytest.mark.parametrize("shape", [(144, 192, 160), (150, 180, 160), (100, 200, 170)])
def test_conform_to_grid_round_trip(shape):
    vol = np.random.default_rng(0).integers(1, 4, shape).astype(np.uint8)
    grid, fit = conform_to_grid(vol, (144, 192, 160))
    assert grid.shape == (144, 192, 160)
    back = fit.restore(grid)
    assert back.shape == shape
    inside = tuple(fit.src)
    assert np.array_equal(back[inside], vol[inside])


def test_patch_region_stays_inside():
    for centre in [(0, 0, 0), (143, 191, 159), (72, 96, 80)]:
        region = patch_region(centre, (144, 192, 160))
        assert all(s.stop - s.start == 32 and s.start >= 0 and s.stop <= n for s, n in zip(region, (144, 192, 160)))
    with pytest.raises(ClientError):
        patch_region((5, 5, 5), (16, 64, 64))
    assert patch_region((72, 96, 80), (144, 192, 160)) == (slice(56, 88), slice(80, 112), slice(64, 96))  # centred
    assert patch_region((0, 191, 20), (144, 192, 160)) == (slice(0, 32), slice(160, 192), slice(4, 36))  # clamped


def test_the_default_centre_is_the_middle_of_the_bright_voxels_box():
    from mixdemo.client import default_centre

    volume = np.zeros((40, 50, 60), np.float32)
    volume[10:21, 5:16, 30:41] = 1.0
    volume[0, 0, 0] = 0.01  # below 5 % of the maximum: not part of the box
    assert default_centre(volume) == (15, 10, 35)
    assert default_centre(np.zeros((40, 50, 60), np.float32)) == (20, 25, 30)


def test_make_key():
    pool = ["a", "b", "c"]
    key = make_key(pool, 2, alpha=0.4, seed=1)
    assert key.k == 2 and key.alphas == (0.4, 0.4) and set(key.reference_ids) <= set(pool)
    key = make_key(pool, 1, reference_ids=["c", "a"], alpha=0.6)
    assert key.reference_ids == ("c", "a") and key.alphas == (0.6, 0.6)
    from mixdemo.mixing import DEFAULT_ALPHA_RANGE

    lo, hi = DEFAULT_ALPHA_RANGE
    assert all(lo <= a <= hi for a in make_key(pool, 3, seed=2).alphas)
    with pytest.raises(ClientError, match="between 1 and"):
        make_key(pool, 4)
    with pytest.raises(ClientError, match="Unknown reference"):
        make_key(pool, 1, reference_ids=["zz"])


def test_k_above_one_requests_worth_is_sent_in_several_requests():
    """The app calls the server in-process: K = 10 patches go as 8 + 2, within the server's own limit (a request
    of 9 was refused)."""
    from mixdemo import server
    from mixdemo.client import run_private
    from mixdemo.pipeline import Reference

    rng = np.random.default_rng(0)
    grid = (40, 40, 40)
    target = rng.uniform(0, 1, grid).astype(np.float32)
    bank = [Reference(f"r{i}", rng.uniform(0, 1, grid).astype(np.float32), rng.integers(0, 4, grid).astype(np.uint8))
            for i in range(10)]
    calls: list[int] = []

    def in_process(proxies: np.ndarray) -> torch.Tensor:
        calls.append(len(server.check_proxies(proxies)))  # the server's own limits
        return torch.softmax(torch.zeros(len(proxies), 4, *proxies.shape[1:]), 1)

    run = run_private(target, bank, make_key([r.ref_id for r in bank], 10, alpha=0.4, seed=0), in_process, None,
                      mode="patch")
    assert calls == [server.MAX_K, 10 - server.MAX_K] and run.result.naive.shape[0] == 10


# ------------------------------------------------------------------------------ against the app
@pytest.mark.slow
def test_server_receives_only_proxies(app_url, example):
    """Instrument the server endpoint: every array it receives is the client's proxy, never the target."""
    from mixdemo import server
    from mixdemo.client import RemoteServer, load_target, make_key, run_private, unmixing_model

    folder, bank = example
    target = load_target(folder / "t1.nii.gz")
    received: list[np.ndarray] = []
    server.add_observer(received.append)
    remote = RemoteServer(app_url)
    try:
        key = make_key([r.ref_id for r in bank], 3, alpha=0.4, seed=0)  # not 0.5: α and 1 − α must not be swappable
        run = run_private(target.image, bank, key, remote, unmixing_model(), mode="patch")
    finally:
        server.remove_observer(received.append)
        remote.close()
    assert len(received) == 1
    got = received[0]
    proxies = run.result.proxies
    assert got.shape == proxies.shape == (3, 32, 32, 32)
    np.testing.assert_allclose(got, proxies, atol=2e-3)  # float16 on the wire
    raw = target.image[run.region]
    for k in range(3):
        assert np.abs(got[k] - raw).mean() > 0.02  # what arrived is not the target
        ref = next(r for r in bank if r.ref_id == key.reference_ids[k]).image[run.region]
        np.testing.assert_allclose(got[k], 0.4 * raw + 0.6 * ref, atol=2e-3)  # it is Eq. 2's mix
    assert run.labels().shape == target.image.shape


@pytest.mark.slow
def test_cli_writes_segmentation_in_input_space(app_url, example, tmp_path, capsys):
    """... and with ``--mirror`` the second of its two proxies mixes the target's mirror image."""
    from mixdemo import server
    from mixdemo.client import default_centre, load_target, main, make_key, patch_region
    from mixdemo.io import load_labels, load_scan
    from mixdemo.mixing import mirror

    folder, bank = example
    out = tmp_path / "seg.nii.gz"
    received: list[np.ndarray] = []
    server.add_observer(received.append)
    try:
        code = main([str(folder / "t1.nii.gz"), "-o", str(out), "--server", app_url, "--mode", "patch",
                     "--tta", "2", "--alpha", "0.4", "--seed", "3", "--mirror"])
    finally:
        server.remove_observer(received.append)
    assert code == 0, capsys.readouterr().err
    key = make_key([r.ref_id for r in bank], 2, alpha=0.4, seed=3, mirror=True)  # the CLI's key for its first scan
    target = load_target(folder / "t1.nii.gz").image
    region = patch_region(default_centre(target), target.shape)
    by_id = {r.ref_id: r for r in bank}
    sent = np.concatenate(received)
    assert key.mirrored == (False, True) and sent.shape == (2, 32, 32, 32)
    for proxy, ref_id, flag in zip(sent, key.reference_ids, key.mirrored):
        raw = target[region]
        np.testing.assert_allclose(proxy, 0.4 * (mirror(raw) if flag else raw) + 0.6 * by_id[ref_id].image[region], atol=2e-3)
    labels = load_labels(out)
    assert labels.shape == load_scan(folder / "t1.nii.gz").source_shape
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    err = capsys.readouterr().err
    assert "t1.nii.gz" not in err  # no file name in the client's messages
    assert "trained with the S" not in err  # the shipped D pairs with the shipped S
    assert "public phantom bank" in err and "--references" in err  # no private bank given: the CLI says so


def test_pairing_warning_names_a_d_trained_with_another_s(tmp_path, monkeypatch):
    """The client warns when its D's record names another S than the server's checksum, not when they
    pair or when either side does not say."""
    from mixdemo.client import pairing_warning
    from mixdemo.models import UnmixingNet
    from mixdemo.weights import WEIGHTS_DIR_ENV, write_training_record

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    for name, record in {"d-a": {"mode": "private", "segmentation_sha256": "a" * 64},
                         "d-old": {"mode": "private"}}.items():
        UnmixingNet().save_pretrained(tmp_path / name)
        write_training_record(tmp_path / name, record, "mixdemo.models.UnmixingNet")
    assert pairing_warning("d-a", "a" * 64) is None
    assert pairing_warning("d-a", None) is None and pairing_warning("d-old", "b" * 64) is None
    warning = pairing_warning("d-a", "b" * 64)
    assert "'d-a'" in warning and "aaaaaaaaaaaa" in warning and "bbbbbbbbbbbb" in warning


@pytest.mark.slow
def test_cli_references_dir(app_url, example, tmp_path, capsys):
    from mixdemo import examples, server
    from mixdemo.client import main

    folder, _ = example
    received: list[np.ndarray] = []
    server.add_observer(received.append)
    try:
        code = main([str(folder / "t1.nii.gz"), "-o", str(tmp_path / "s.nii"), "--server", app_url, "--mode", "patch",
                     "--references", str(examples.reference_folder()), "--centre", "60,90,70", "--tta", "2",
                     "--separate-requests"])
    finally:
        server.remove_observer(received.append)
    assert code == 0 and (tmp_path / "s.nii").exists()
    assert [r.shape for r in received] == [(1, 32, 32, 32)] * 2  # one proxy per request
    assert "public phantom bank" not in capsys.readouterr().err  # its own bank: no warning


@pytest.mark.slow
def test_cli_clear_errors(app_url, example, tmp_path, capsys):
    from mixdemo.client import main

    folder, _ = example
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"nope")
    assert main([str(bad), "-o", str(tmp_path / "o.nii.gz"), "--server", app_url]) == 2
    assert "gzip" in capsys.readouterr().err
    assert main([str(folder / "t1.nii.gz"), "-o", str(tmp_path / "o.txt"), "--server", app_url]) == 2
    assert "must end in .nii" in capsys.readouterr().err
    assert main([str(folder / "t1.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--server", app_url, "--alpha", "0.99"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert main([str(folder / "t1.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--server", app_url, "--mode", "patch",
                 "--unmixing", "no-such-d"]) == 2
    err = capsys.readouterr().err
    assert "no-such-d" in err and "Traceback" not in err
    assert main([str(folder / "t1.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--server", app_url, "--mode", "patch",
                 "--centre", "999,0,0"]) == 2
    assert "centre 999,0,0 lies outside the 144×192×160 grid" in capsys.readouterr().err
    assert main([str(folder / "t1.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--server", app_url,
                 "--centre", "70,90,70"]) == 2  # whole mode: a centre would be ignored
    assert "--mode patch" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.slow
def test_cli_unreachable_server(example, tmp_path, capsys):
    from mixdemo.client import main

    from .conftest import free_port

    folder, _ = example
    code = main([str(folder / "t1.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--server", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and "Could not reach" in err and "Traceback" not in err


def test_a_server_that_accepts_and_never_answers_is_named_within_the_connect_timeout(monkeypatch):
    """Not after the 10 minutes a segmentation may take: connecting has its own, short timeout."""
    import socket
    import threading

    from mixdemo import client

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(8)], daemon=True).start()
    monkeypatch.setattr(client, "CONNECT_TIMEOUT_S", 1.0)
    try:
        with pytest.raises(ClientError, match=r"accepted the connection but did not answer within 1 s"):
            client.RemoteServer(f"http://127.0.0.1:{listener.getsockname()[1]}")
    finally:
        listener.close()


def test_https_to_a_server_that_speaks_plain_http_is_named_as_such_not_as_unreachable():
    """``--server https://HOST:7860`` against ``python app.py``, which serves plain HTTP: the TLS handshake fails, and
    the client said it could not reach the server ("check ... that the server is running"), which is running. It
    says the address speaks plain HTTP and gives the http:// address to try."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from mixdemo import client

    class Plain(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        with pytest.raises(ClientError, match=rf"speaks plain HTTP, not https.*try http://127\.0\.0\.1:{port}"):
            client.RemoteServer(f"https://127.0.0.1:{port}")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_connected_client_waits_the_segmentation_timeout_not_the_connect_one(app_url):
    """Connecting has CONNECT_TIMEOUT_S; once connected, every request (a segmentation) has the timeout asked for."""
    from mixdemo import client

    remote = client.RemoteServer(app_url, timeout_s=123.0)
    try:
        assert remote._client.httpx_kwargs["timeout"] == 123.0 and client.CONNECT_TIMEOUT_S < 123.0
        assert remote.grid_shape() == (144, 192, 160)  # a request under the new timeout
    finally:
        remote.close()


@pytest.mark.parametrize("argv, says", [
    (["-o", ""], "The output is empty: give an output file name"),
    (["-o", "  "], "The output is empty"),
])
def test_an_empty_output_is_refused_not_read_as_the_current_folder(fake_main, capsys, argv, says, tmp_path, monkeypatch):
    """-o "$OUT" with OUT unset wrote into the current folder, silently."""
    scans, loads, _ = fake_main
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _run_main([scans[0], *argv, "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and says in err and not FakeRemote.made and loads == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_negative_seed_is_a_usage_error_naming_it(capsys):
    from mixdemo.client import main

    with pytest.raises(SystemExit) as usage:
        main(["scan.nii.gz", "-o", "x.nii.gz", "--server", "http://127.0.0.1:1", "--seed", "-1"])
    assert usage.value.code == 2 and "argument --seed: -1 is less than 0" in capsys.readouterr().err


@pytest.mark.slow
def test_load_target_off_grid_goes_through_preprocess(example, tmp_path, monkeypatch):
    """A scan not on the 144×192×160 grid is brought onto it by mixdemo.preprocess, and labels go back. The file
    is read once (a DICOM series is unpacked once; it was read twice, normalised and raw)."""
    import nibabel as nib

    from mixdemo import io as mio
    from mixdemo.client import load_target

    folder, _ = example
    img = nib.load(folder / "t1.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[2:-2, 4:-4, :-8], img.affine), tmp_path / "crop.nii.gz")
    reads: list[str] = []
    load_scan = mio.load_scan
    monkeypatch.setattr(mio, "load_scan", lambda path, **kw: reads.append("read") or load_scan(path, **kw))
    target = load_target(tmp_path / "crop.nii.gz")
    assert target.image.shape == (144, 192, 160) and target.prepared is not None and reads == ["read"]
    from mixdemo.ui import what_was_read  # what the app's status line says of an upload

    # cropped, the scan is still in MNI space by its header: resampled onto the grid, not registered
    assert not target.prepared.registered
    assert what_was_read(target) == "a 140×184×152 grid of 1×1×1 mm voxels, in MNI space, resampled onto the models' grid"
    target.save_labels(np.ones((144, 192, 160), np.uint8), tmp_path / "seg.nii.gz")
    assert nib.load(tmp_path / "seg.nii.gz").shape == (140, 184, 152)
    # its labels, cropped as the scan was, follow the scan's registration onto the grid
    seg = nib.load(folder / "seg.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj)[2:-2, 4:-4, :-8], seg.affine), tmp_path / "crop_seg.nii.gz")
    truth = target.truth_from_file(tmp_path / "crop_seg.nii.gz")
    unregistered = np.asarray(seg.dataobj).astype(np.uint8)  # the labels as they lay before the scan was shifted
    assert truth.shape == unregistered.shape == target.image.shape

    def spread(labels: np.ndarray) -> list[float]:  # each tissue's intensity spread in the registered image
        return [float(target.image[labels == c].std()) for c in (1, 2, 3)]

    assert all(t < 0.6 * u for t, u in zip(spread(truth), spread(unregistered)))  # they lie on the tissues they name
    means = [float(target.image[truth == c].mean()) for c in (3, 1, 2)]
    assert means == sorted(means)  # CSF darker than GM, darker than WM: a T1's order
    with pytest.raises(ScanError, match="do not match the scan"):  # labels of another grid
        target.truth_from_file(folder / "seg.nii.gz")


def test_a_scan_of_the_grid_s_shape_placed_off_it_by_its_header_is_resampled_onto_it(example, tmp_path):
    """A skull-stripped MNI scan of 144×192×160 voxels whose header puts its first voxel 6 mm off the grid's (MNI
    space all the same: the brain where it belongs) is resampled onto the grid, not taken voxels-off as it is;
    its labels go back onto its own voxels."""
    import nibabel as nib

    from mixdemo.client import load_target
    from mixdemo.io import normalize_intensity

    folder, _ = example
    img = nib.load(folder / "t1.nii.gz")
    on_grid = load_target(folder / "t1.nii.gz")
    assert on_grid.prepared is None  # the file itself: used as it is
    shifted = np.zeros(img.shape, np.float32)
    shifted[6:] = np.asarray(img.dataobj, np.float32)[:-6]  # voxel i + 6 holds what voxel i held ...
    affine = img.affine.copy()
    affine[:3, 3] -= 6 * img.affine[:3, 0]  # ... and lies where it lay
    nib.save(nib.Nifti1Image(shifted, affine), tmp_path / "shifted.nii.gz")
    target = load_target(tmp_path / "shifted.nii.gz")
    assert target.prepared is not None and not target.prepared.registered and target.warning is None
    from mixdemo.ui import what_was_read  # the app's status line: not "registered"

    assert what_was_read(target).endswith("1×1×1 mm voxels, in MNI space, resampled onto the models' grid")
    assert what_was_read(on_grid).endswith("already on the models' grid")
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1  # voxel i of the file is voxel n - 1 - i of the scan: the same grid, stored L,A,S
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ flip), tmp_path / "flipped.nii.gz")
    reversed_axes = load_target(tmp_path / "flipped.nii.gz")
    assert reversed_axes.prepared is None and np.array_equal(reversed_axes.image, on_grid.image)
    assert "stored L,A,S in the file, are read as R,A,S" in what_was_read(reversed_axes)
    kept = np.asarray(img.dataobj, np.float32).copy()
    kept[-6:] = 0  # the planes the shift pushed out of the file
    np.testing.assert_allclose(target.image, normalize_intensity(kept), atol=1e-6)
    target.save_labels((kept > 0).astype(np.uint8), tmp_path / "seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj), shifted > 0)


def test_a_reference_that_is_the_target_itself_is_left_out(example, tmp_path):
    """A references folder holding the target's own case: drawn as a reference, its proxy α·x + (1 − α)·x is the scan
    itself, sent unmixed. segment_file leaves such a reference out (with a warning) and refuses when none is left."""
    import torch

    from mixdemo.client import ClientError, copies_of_target, load_target, segment_file
    from mixdemo.pipeline import Reference

    folder, bank = example
    target = load_target(folder / "t1.nii.gz")
    itself = Reference("itself", target.image.copy(), bank[0].labels)
    assert copies_of_target(target.image, [*bank[:2], itself]) == ["itself"]
    sent: list[np.ndarray] = []

    def server(proxies: np.ndarray) -> torch.Tensor:
        sent.extend(proxies)
        return torch.full((len(proxies), 4, *proxies.shape[1:]), 0.25)

    said: list[str] = []
    key = segment_file(folder / "t1.nii.gz", tmp_path / "seg.nii.gz", server, references=[itself, *bank[:2]], k=2,
                       mode="whole", seed=1, progress=lambda f, m: said.append(m))
    assert "itself" not in key.reference_ids and len(sent) == 2
    assert all(np.abs(p - target.image).mean() > 0.02 for p in sent)  # every proxy mixes in another subject
    assert any("1 reference(s) are this scan itself, left out" in m for m in said)
    with pytest.raises(ClientError, match="Every reference is this scan itself"):
        segment_file(folder / "t1.nii.gz", tmp_path / "seg2.nii.gz", server, references=[itself], k=1)


def test_a_resampled_scan_s_labels_go_back_from_the_class_scores(example, tmp_path):
    """A scan whose grid lies half a voxel off the models' is resampled onto it, so its labels are resampled back:
    segment_file keeps the class scores for it (run_private_labels(..., scores=True)) and carries them back
    (preprocess.scores_to_source_grid), which differs from carrying back their labels at the boundaries the
    interpolation straddles; a scan on the grid keeps the labels path, scores or not."""
    import nibabel as nib
    import torch
    from scipy import ndimage

    from mixdemo import preprocess as pp
    from mixdemo.client import load_target, make_key, run_private_labels, segment_file

    folder, bank = example
    img = nib.load(folder / "t1.nii.gz")
    affine = img.affine.copy()
    affine[:3, 3] += 0.5 * img.affine[:3, 0]  # half a voxel along the first axis
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), affine), tmp_path / "half.nii.gz")
    target = load_target(tmp_path / "half.nii.gz")
    assert target.needs_scores and not load_target(folder / "t1.nii.gz").needs_scores
    noise = ndimage.gaussian_filter(np.random.default_rng(0).random((4, *target.image.shape), np.float32), (0, 2, 2, 2))

    def server(proxies: np.ndarray) -> torch.Tensor:  # a stand-in S: smooth class scores that depend on the proxy
        logits = torch.from_numpy(noise * 40) + torch.from_numpy(proxies[:, None] * 3)
        return torch.softmax(logits, 1)

    refs = bank[:2]
    segment_file(tmp_path / "half.nii.gz", tmp_path / "seg.nii.gz", server, references=refs, k=2, alpha=0.5, seed=3)
    written = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    key = make_key([r.ref_id for r in refs], 2, alpha=0.5, seed=3)
    scores = run_private_labels(target.image, refs, key, server, None, mode="whole", scores=True)
    labels = run_private_labels(target.image, refs, key, server, None, mode="whole")
    assert (scores.argmax(0) != labels).mean() < 1e-4  # the scores whose arg-max the labels are
    np.testing.assert_array_equal(written, pp.scores_to_source_grid(scores, target.prepared))
    assert (written != pp.labels_to_source_grid(labels, target.prepared)).sum() > 100
    seg = nib.load(folder / "seg.nii.gz")  # its labels, checked on their own grid before any resampling
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), affine), tmp_path / "half_seg.nii.gz")
    seen: list[tuple] = []

    def refuse(file_labels: np.ndarray) -> None:
        seen.append(file_labels.shape)
        raise ValueError("not the model's classes")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pp, "labels_to_model_grid", lambda *a, **k: pytest.fail("resampled labels that were refused"))
        with pytest.raises(ValueError, match="not the model's classes"):
            target.truth_from_file(tmp_path / "half_seg.nii.gz", check=refuse)
    assert seen == [img.shape]
    truth = target.truth_from_file(tmp_path / "half_seg.nii.gz", check=seen.append)
    assert truth.shape == target.image.shape and set(np.unique(truth)) <= {0, 1, 2, 3}


def test_the_status_line_says_what_became_of_the_scan():
    """Registered, resampled by its header (in MNI space, voxels elsewhere) or used as it is, with its own grid."""
    from types import SimpleNamespace

    from mixdemo.ui import what_was_read

    scan = SimpleNamespace(source_shape=(176, 256, 256), source_affine=np.diag([1.2, 1.0, 1.0, 1.0]))
    says = {registered: what_was_read(SimpleNamespace(scan=scan, prepared=SimpleNamespace(registered=registered)))
            for registered in (True, False)}
    assert says[True] == "a 176×256×256 grid of 1.2×1×1 mm voxels, registered to the models' MNI grid"
    assert says[False] == "a 176×256×256 grid of 1.2×1×1 mm voxels, in MNI space, resampled onto the models' grid"
    assert what_was_read(SimpleNamespace(scan=scan, prepared=None)).endswith("voxels, already on the models' grid")
    flipped = SimpleNamespace(source_shape=(144, 192, 160), source_affine=np.diag([-1.0, 1.0, 1.0, 1.0]))
    assert what_was_read(SimpleNamespace(scan=flipped, prepared=None)).endswith(
        "voxels, on the models' grid once its voxel axes, stored L,A,S in the file, are read as R,A,S")


def test_unmixing_model_follows_the_name_or_the_environment(tmp_path, monkeypatch):
    """The client's D: ``DEFAULT_UNMIXING`` by default, another folder by name or $MIXDEMO_UNMIXING; a D
    chosen by name must exist and be a D, while a missing default falls back to None (naive)."""
    from mixdemo.client import unmixing_model
    from mixdemo.models import SegmentationNet, UnmixingNet
    from mixdemo.weights import UNMIXING_ENV, WEIGHTS_DIR_ENV, WeightsError, write_training_record

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(UNMIXING_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert unmixing_model() is None
    with pytest.raises(WeightsError):
        unmixing_model(required=True)
    UnmixingNet(patch=2).save_pretrained(tmp_path / "fast-d")
    write_training_record(tmp_path / "fast-d", {"note": "test"}, "mixdemo.models.UnmixingNet")
    SegmentationNet(features=(4, 4, 8, 8, 16, 4)).save_pretrained(tmp_path / "not-a-d")
    write_training_record(tmp_path / "not-a-d", {"note": "test"}, "mixdemo.models.SegmentationNet")
    assert unmixing_model(name="fast-d").patch == 2
    monkeypatch.setenv(UNMIXING_ENV, "fast-d")
    assert unmixing_model().patch == 2
    monkeypatch.setenv(UNMIXING_ENV, "no-such-d")
    with pytest.raises(WeightsError, match="no-such-d"):
        unmixing_model()
    with pytest.raises(WeightsError, match="not an unmixing network"):
        unmixing_model(name="not-a-d")


def test_a_corrupt_default_d_is_said_not_replaced_by_the_naive_unmixing(tmp_path, monkeypatch):
    """A missing default D falls back to Eq. 4 (None); the default D there but failing its checksum raises its
    WeightsError instead of a silent fall-back."""
    from mixdemo.client import unmixing_model
    from mixdemo.models import UnmixingNet
    from mixdemo.weights import DEFAULT_UNMIXING, UNMIXING_ENV, WEIGHTS_DIR_ENV, WeightsError, write_training_record

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(UNMIXING_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / DEFAULT_UNMIXING
    UnmixingNet(patch=2).save_pretrained(folder)
    write_training_record(folder, {"note": "test"}, "mixdemo.models.UnmixingNet")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum"):
        unmixing_model()


def test_unmixing_choices_lists_the_local_one_reference_ds_the_chosen_first(tmp_path, monkeypatch):
    """The app's D menu: each local one-reference D with where its blocks run, $MIXDEMO_UNMIXING's (or
    the default's) first; not an S, not a three-source D; the chosen name alone when none is local."""
    from mixdemo.models import SegmentationNet, UnmixingNet
    from mixdemo.weights import DEFAULT_UNMIXING, UNMIXING_ENV, WEIGHTS_DIR_ENV, unmixing_choices, write_training_record

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(UNMIXING_ENV, raising=False)
    assert unmixing_choices() == [(DEFAULT_UNMIXING, "")]
    for name, model in {"unmixing-a": UnmixingNet(), "unmixing-p4": UnmixingNet(patch=4, voxel_hidden=8),
                        DEFAULT_UNMIXING: UnmixingNet(),
                        "unmixing-2ref": UnmixingNet(n_references=2), "segmentation": SegmentationNet(features=(4, 4, 8, 8, 16, 4))}.items():
        model.save_pretrained(tmp_path / name)
        trained_on = {"patch_size": 96} if name == DEFAULT_UNMIXING else {"patch_size": 32}
        write_training_record(tmp_path / name, trained_on, f"mixdemo.models.{type(model).__name__}")
    assert unmixing_choices() == [(DEFAULT_UNMIXING, "at full resolution, trained on 96³ patches"),
                                  ("unmixing-a", "at full resolution"),
                                  ("unmixing-p4", "on 4³ patches, a per-voxel MLP (8 channels)")]
    monkeypatch.setenv(UNMIXING_ENV, "unmixing-p4")
    assert [n for n, _ in unmixing_choices()] == ["unmixing-p4", *sorted(["unmixing-a", DEFAULT_UNMIXING])]


def test_unmixing_choices_leave_out_the_ds_trained_with_another_s(tmp_path, monkeypatch):
    """A D is listed only when its record names no S or the local S (the server's): one trained beside another
    S (segmentation_sha256) or against another frozen S (--mode unmixing) would unmix outputs it never saw."""
    from mixdemo.models import SegmentationNet, UnmixingNet
    from mixdemo.weights import DEFAULT_UNMIXING, UNMIXING_ENV, WEIGHTS_DIR_ENV, unmixing_choices, write_training_record

    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(UNMIXING_ENV, raising=False)
    SegmentationNet(features=(4, 4, 8, 8, 16, 4)).save_pretrained(tmp_path / "segmentation")
    server_s = json.loads(write_training_record(tmp_path / "segmentation", {}, "mixdemo.models.SegmentationNet")
                          .read_text())["sha256"]
    records = {DEFAULT_UNMIXING: {"mode": "unmixing", "init_from_sha256": {"segmentation": server_s}},
               "unmixing-beside": {"mode": "private", "segmentation_sha256": server_s},
               "unmixing-old": {"mode": "private"},
               "unmixing-64": {"mode": "private", "segmentation_sha256": "another S"},
               "unmixing-p2": {"mode": "unmixing", "init_from_sha256": {"segmentation": "another S"}}}
    for name, record in records.items():
        UnmixingNet().save_pretrained(tmp_path / name)
        write_training_record(tmp_path / name, record, "mixdemo.models.UnmixingNet")
    assert [n for n, _ in unmixing_choices()] == [DEFAULT_UNMIXING, "unmixing-beside", "unmixing-old"]


def test_output_paths_one_file_or_a_folder_of_named_segmentations(tmp_path):
    from mixdemo.client import ClientError, output_paths

    assert output_paths(["a/scan.nii.gz"], "seg.nii.gz") == [Path("seg.nii.gz")]
    assert output_paths(["a/x.nii.gz", "b/Y.NII"], str(tmp_path / "out")) == [tmp_path / "out" / "x_seg.nii.gz",
                                                                           tmp_path / "out" / "Y_seg.nii.gz"]
    assert output_paths(["a/scan.zip"], "seg.dcm") == [Path("seg.dcm")]
    assert output_paths(["a/x.zip", "b/y"], str(tmp_path / "dcm"), dicom_seg=True) == [tmp_path / "dcm" / "x_seg.dcm",
                                                                                        tmp_path / "dcm" / "y_seg.dcm"]
    with pytest.raises(ClientError, match="ending in .dcm"):
        output_paths(["a/scan.zip"], "seg.nii.gz", dicom_seg=True)
    with pytest.raises(ClientError, match="must end in .nii"):
        output_paths(["a/scan.nii.gz"], "seg.txt")
    with pytest.raises(ClientError, match="a folder"):
        output_paths(["a/x.nii.gz", "b/y.nii.gz"], "seg.nii.gz")
    with pytest.raises(ClientError, match="share a file name"):
        output_paths(["a/x.nii.gz", "b/x.nii"], str(tmp_path / "out2"))


def test_scan_names_differing_only_in_case_are_refused_where_the_output_folder_folds_case(tmp_path, monkeypatch):
    """``a/Scan.nii.gz b/scan.nii.gz -o segs/``: on macOS's and Windows's usual file systems Scan_seg.nii.gz and
    scan_seg.nii.gz are one file, and the second segmentation silently replaced the first. Refused where the output
    folder folds case (emulated here), kept apart where it does not (this machine's)."""
    import os

    from mixdemo import client

    scans = ["a/Scan.nii.gz", "b/scan.nii.gz"]
    assert client.output_paths(scans, str(tmp_path / "here")) == [tmp_path / "here" / "Scan_seg.nii.gz",
                                                                  tmp_path / "here" / "scan_seg.nii.gz"]
    real_exists = os.path.exists

    def case_folding_exists(path) -> bool:  # a file system that takes any case of a name for the file
        folder, name = os.path.split(os.fspath(path))
        return real_exists(path) or (os.path.isdir(folder) and any(n.casefold() == name.casefold()
                                                                    for n in os.listdir(folder)))

    monkeypatch.setattr(os.path, "exists", case_folding_exists)
    with pytest.raises(ClientError, match="differ only in case"):
        client.output_paths(scans, str(tmp_path / "folding"))
    assert client.output_paths(["a/x.nii.gz", "b/y.nii.gz"], str(tmp_path / "folding")) == [
        tmp_path / "folding" / "x_seg.nii.gz", tmp_path / "folding" / "y_seg.nii.gz"]
    assert os.listdir(tmp_path / "folding") == []  # the probe left nothing


def test_one_scan_with_a_folder_output_gets_its_named_segmentation_there(tmp_path):
    """``scans/dicom/*.zip -o segs-dicom/`` as the README writes it, with one scan matched: the folder form
    (a trailing slash, or a folder that exists) names the segmentation as it would for several."""
    from mixdemo.client import output_paths

    assert output_paths(["a/x.zip"], f"{tmp_path / 'new'}/") == [tmp_path / "new" / "x_seg.nii.gz"]
    assert (tmp_path / "new").is_dir()
    assert output_paths(["a/x.zip"], str(tmp_path / "new"), dicom_seg=True) == [tmp_path / "new" / "x_seg.dcm"]


def test_a_series_folder_given_as_dot_or_dot_dot_is_named_after_the_folder_itself(tmp_path, monkeypatch):
    """``cd t1_series && python -m mixdemo.client . -o ../segs/``: the segmentation is ``t1_series_seg.nii.gz`` (the
    README's ``<name>_seg.nii.gz``), not ``_seg.nii.gz`` (a hidden-looking file named after nothing); ``..`` and
    ``series/..`` name the folder they stand for, and two ways of naming one folder share a name (refused)."""
    from mixdemo.client import ClientError, output_paths

    series = tmp_path / "t1_series"
    (series / "inner").mkdir(parents=True)
    monkeypatch.chdir(series)
    assert output_paths(["."], f"{tmp_path / 'segs'}/") == [tmp_path / "segs" / "t1_series_seg.nii.gz"]
    monkeypatch.chdir(series / "inner")
    assert output_paths([".."], str(tmp_path / "segs"), dicom_seg=True) == [tmp_path / "segs" / "t1_series_seg.dcm"]
    assert output_paths(["../inner/"], str(tmp_path / "segs")) == [tmp_path / "segs" / "inner_seg.nii.gz"]
    with pytest.raises(ClientError, match="share a file name"):
        output_paths([".", "../inner"], str(tmp_path / "segs"))


def test_an_output_that_would_replace_an_input_scan_is_refused_before_any_work(tmp_path, monkeypatch):
    """``scan.nii.gz -o scan.nii.gz`` (a slip of the shell's completion) replaced the scan with its segmentation once
    the work was done: the scan was lost. So did a batch whose ``<name>_seg.nii.gz`` is another input's file, and an
    enhanced DICOM file given as its own SEG's name. Refused before any work, naming the scan by position; an output
    of another name, or one that does not exist yet, is taken."""
    from mixdemo.client import ClientError, output_paths

    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"the only copy")
    monkeypatch.chdir(tmp_path)
    for output in (str(scan), "scan.nii.gz", "./scan.nii.gz"):
        with pytest.raises(ClientError, match=r"would replace the input scan \(scan 1\)"):
            output_paths([str(scan)], output)
    (tmp_path / "link.nii.gz").symlink_to(scan)
    with pytest.raises(ClientError, match="would replace the input scan"):
        output_paths(["link.nii.gz"], str(scan))
    other = tmp_path / "scan_seg.nii.gz"  # a batch in which scan 1's segmentation would be scan 2
    other.write_bytes(b"another scan")
    with pytest.raises(ClientError, match=r"would replace the input scan \(scan 2\)"):
        output_paths([str(scan), str(other)], f"{tmp_path}/")
    enhanced = tmp_path / "study.dcm"
    enhanced.write_bytes(b"an enhanced DICOM file")
    with pytest.raises(ClientError, match="would replace the input scan"):
        output_paths([str(enhanced)], str(enhanced), dicom_seg=True)
    assert scan.read_bytes() == b"the only copy" and enhanced.read_bytes() == b"an enhanced DICOM file"
    assert output_paths([str(scan)], str(tmp_path / "seg.nii.gz")) == [tmp_path / "seg.nii.gz"]  # the control
    assert output_paths([str(scan)], f"{tmp_path / 'segs'}/") == [tmp_path / "segs" / "scan_seg.nii.gz"]


def test_an_output_that_would_replace_a_file_of_an_input_series_folder_is_refused(tmp_path):
    """A DICOM series given as its folder, and ``-o`` naming one of its images (the shell's completion again): the
    SEG replaced that image once the work was done, a slice of the series lost. Refused before any work, as an
    output replacing a scan file is; a new file in that folder is taken, and a NIfTI written there before replaced."""
    from mixdemo.client import ClientError, output_paths

    series = tmp_path / "series" / "sub"
    series.mkdir(parents=True)
    image = series / "IM_0001.dcm"
    image.write_bytes(b"\0" * 128 + b"DICM a slice of the series")
    for output in (str(image), f"{tmp_path}/series/./sub/IM_0001.dcm"):
        with pytest.raises(ClientError, match=r"would replace a file of the input series \(scan 1\)"):
            output_paths([str(tmp_path / "series")], output, dicom_seg=True)
    assert image.read_bytes().endswith(b"a slice of the series")
    assert output_paths([str(tmp_path / "series")], str(series / "seg.dcm")) == [series / "seg.dcm"]  # the controls:
    (series / "seg.nii.gz").write_bytes(b"a segmentation written there before")  # a NIfTI beside the series
    assert output_paths([str(tmp_path / "series")], str(series / "seg.nii.gz")) == [series / "seg.nii.gz"]


def test_output_paths_make_the_folder_first_or_refuse_before_any_work(tmp_path):
    from mixdemo.client import ClientError, output_paths

    nested = tmp_path / "new" / "deeper" / "seg.nii.gz"
    assert output_paths(["scan.nii.gz"], str(nested)) == [nested] and nested.parent.is_dir()
    folder_named_like_a_file = tmp_path / "looks.nii.gz"
    folder_named_like_a_file.mkdir()
    with pytest.raises(ClientError, match="names a folder"):
        output_paths(["scan.nii.gz"], str(folder_named_like_a_file))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ClientError, match="could not be made"):
        output_paths(["scan.nii.gz"], str(blocker / "sub" / "seg.nii.gz"))
    with pytest.raises(ClientError, match="could not be made"):
        output_paths(["x.nii.gz", "y.nii.gz"], str(blocker / "segs"))


def test_a_segmentation_that_cannot_be_written_is_a_message_and_the_next_scan_goes_on(tmp_path, monkeypatch, capsys):
    import argparse
    import errno

    from mixdemo import client

    calls = []

    def disk_full_once(scan, out, *args, **kwargs):
        calls.append(out)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(out))
        return make_key(["ref"], k=1, seed=0)

    monkeypatch.setattr(client, "segment_file", disk_full_once)
    scans = [tmp_path / "private_name_a.nii.gz", tmp_path / "private_name_b.nii.gz"]
    for scan in scans:
        scan.write_bytes(b"")
    args = argparse.Namespace(scan=[str(s) for s in scans], series=None, alpha=None, tta=1, mode="whole",
                              centre=None, seed=None, mirror=False)
    failed = client._segment_scans(args, [tmp_path / "a_seg.nii.gz", tmp_path / "b_seg.nii.gz"], None, [], None)
    err = capsys.readouterr().err
    assert failed == [1] and len(calls) == 2
    assert "scan 1 of 2: a file could not be read or written (No space left on device)" in err
    assert "private_name" not in err and "a_seg" not in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_segments_several_scans_and_goes_on_past_a_bad_one(app_url, example, tmp_path, capsys):
    import shutil

    from mixdemo.client import main

    folder, _ = example
    other = tmp_path / "second.nii.gz"
    shutil.copy(folder / "t1.nii.gz", other)
    missing = tmp_path / "absent.nii.gz"
    code = main([str(folder / "t1.nii.gz"), str(missing), str(other), "-o", str(tmp_path / "segs"), "--server", app_url,
                 "--mode", "patch", "--tta", "2", "--seed", "5"])
    err = capsys.readouterr().err
    assert code == 2 and sorted(p.name for p in (tmp_path / "segs").iterdir()) == ["second_seg.nii.gz", "t1_seg.nii.gz"]
    assert "scan 2 of 3: The input scan could not be found" in err and "1 of 3 scans failed (scan 2)" in err
    assert "absent" not in err and "second" not in err  # no file name in the client's messages


@pytest.mark.slow
def test_cli_a_corrupt_reference_is_a_message(app_url, example, tmp_path, capsys):
    from mixdemo.client import main

    folder, _ = example
    bad = tmp_path / "refs" / "r0"
    bad.mkdir(parents=True)
    (bad / "t1.nii.gz").write_bytes(b"not a scan")
    (bad / "seg.nii.gz").write_bytes(b"not labels")
    code = main([str(folder / "t1.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--server", app_url,
                 "--references", str(tmp_path / "refs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err



def test_the_client_sends_no_hugging_face_token_unless_asked(monkeypatch):
    """What reaches a server's first request: no HF token (gradio_client would send HF_TOKEN to any URL) and a
    user agent naming only this client; the token only with send_hf_token (the positive control)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from mixdemo.client import RemoteServer

    heard: list[dict[str, str]] = []

    class Listener(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            heard.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None:  # quiet
            pass

    monkeypatch.setenv("HF_TOKEN", "hf_NOT_A_REAL_TOKEN_0123456789")
    server = HTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for send in (False, True):
            heard.clear()
            with pytest.raises(ClientError):  # the listener is no Gradio app
                RemoteServer(url, timeout_s=10, send_hf_token=send)
            assert heard, "the client sent nothing"
            carried = any("hf_NOT_A_REAL_TOKEN" in value for request in heard for value in request.values())
            assert carried is send
            assert all(request.get("user-agent") == "mixdemo-client" for request in heard)
    finally:
        server.shutdown()


@pytest.mark.slow
def test_separate_requests_each_go_in_a_new_session(app_url, monkeypatch):
    """With separate_requests every proxy's request carries its own Gradio session id, so the server cannot
    re-link the K proxies of one target by it."""
    import torch

    from mixdemo.client import RemoteServer

    remote = RemoteServer(app_url, separate_requests=True)
    try:
        sessions = [remote._client.session_hash]
        monkeypatch.setattr(remote, "_request", lambda p: sessions.append(remote._client.session_hash)
                            or torch.zeros((len(p), 4, *p.shape[1:])))
        remote(np.zeros((3, 16, 16, 16), np.float32))
    finally:
        remote.close()
    assert len(sessions) == 4 and len(set(sessions)) == 4  # the connection's, then one per request

class CookieRelay:
    """A byte relay in front of the app, as a load balancer with sticky sessions: it adds ``set-cookie: COOKIE`` to
    the app's answer to ``/config`` and keeps every byte each connection sends (``sent``, one per connection)."""

    def __init__(self, upstream: str, cookie: bytes) -> None:
        import socket
        import threading
        from urllib.parse import urlsplit

        self.upstream = ("127.0.0.1", urlsplit(upstream).port)
        self.cookie, self.sent = cookie, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            up, sent = socket.create_connection(self.upstream), bytearray()
            self.sent.append(sent)
            threading.Thread(target=self._pump, args=(conn, up, sent, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, sent, True), daemon=True).start()

    def _pump(self, src, dst, sent: bytearray, answers: bool) -> None:  # noqa: ANN001 - sockets
        import socket

        first = True
        try:
            while data := src.recv(65536):
                if answers and first and sent.startswith(b"GET /config "):
                    end = data.index(b"\r\n") + 2  # after the status line
                    data = data[:end] + b"set-cookie: " + self.cookie + b"\r\n" + data[end:]
                first = False
                if not answers:
                    sent += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


@pytest.mark.slow
def test_separate_requests_carry_no_cookie_the_server_set_when_the_client_connected(app_url):
    """gradio_client keeps the cookies of its first answer (``/config``) and sends them with every later request,
    whatever its session: a cookie that a load balancer or the server sets there linked every "separate" request
    (and every scan of a batch) to the others. A new session starts without it."""
    from mixdemo.client import RemoteServer

    relay = CookieRelay(app_url, b"AWSALB=lb-affinity-7f3a9c; Path=/")
    remote = RemoteServer(relay.url, separate_requests=True)
    try:
        first_session = remote._client.session_hash
        answer = remote(np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 16)).astype(np.float32))
    finally:
        remote.close()
        relay.close()
    assert answer.shape == (3, 4, 16, 16, 16)
    sent = [bytes(b) for b in relay.sent]
    info = [b for b in sent if b.startswith(b"GET /gradio_api/info")]
    assert info and b"lb-affinity-7f3a9c" in info[0]  # the control: the cookie was set and sent back at first
    later = [b for b in sent if b.startswith((b"POST /gradio_api/upload", b"GET /gradio_api/file="))
             or (b.startswith((b"POST /gradio_api/queue/join", b"GET /gradio_api/queue/data", b"GET /gradio_api/heartbeat"))
                 and first_session.encode() not in b)]
    assert sum(b.startswith(b"POST /gradio_api/upload") for b in later) == 3
    assert [b.split(b"\r\n", 1)[0] for b in later if b"lb-affinity-7f3a9c" in b] == []


@pytest.fixture
def local_hub(monkeypatch):
    """A local listener as the Hugging Face Hub (huggingface_hub's endpoint), online as a user's shell is: the
    requests it hears, each ``(request line, {header: value})``; it answers 404 to every one."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    heard: list[tuple[str, dict[str, str]]] = []

    class Hub(BaseHTTPRequestHandler):
        def answer(self) -> None:
            heard.append((f"{self.command} {self.path}", {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_POST = answer

        def log_message(self, *args) -> None:  # quiet
            pass

    hub = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests' conftest sets it; a user's shell does not
    yield heard
    hub.shutdown()
    hub.server_close()


def test_connecting_sends_nothing_to_hugging_face(app_url, local_hub, monkeypatch, tmp_path):
    """Connecting to a server reaches no other host: gradio_client takes ``analytics_enabled=False`` as ``False or
    $GRADIO_ANALYTICS_ENABLED == "True"`` and, in a shell without that variable, sent huggingface.co a telemetry
    ping naming the server's address; huggingface_hub, building its headers, fetched huggingface.co's list of
    AI-agent harnesses. Here the Hub is a local listener (``HF_ENDPOINT``), in a user's environment (online, no
    telemetry switches), and a plain gradio_client Client connecting the same way is the control."""
    import threading

    from gradio_client import Client
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent, _telemetry

    from mixdemo.client import RemoteServer

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))  # not cached
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)

    def heard_on_connecting(connect) -> list[str]:  # noqa: ANN001
        local_hub.clear()
        monkeypatch.setattr(_detect_agent, "_registry", None)  # nor cached in this process
        client = connect()
        for thread in threading.enumerate():  # gradio_client's telemetry thread, then huggingface_hub's queue
            if thread.name.endswith("(_telemetry_thread)"):
                thread.join()
        _telemetry._TELEMETRY_QUEUE.join()
        client.close()
        return [f"{line} user-agent: {headers.get('user-agent')}" for line, headers in local_hub]

    control = heard_on_connecting(lambda: Client(app_url, verbose=False, download_files=False,
                                                 analytics_enabled=False, headers={"user-agent": "mixdemo-client"}))
    assert any(h.startswith("HEAD /api/telemetry/py_client/initiated") and app_url in h for h in control), control
    assert any(h.startswith("GET /api/agent-harnesses") for h in control), control
    assert heard_on_connecting(lambda: RemoteServer(app_url)) == []
    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") is None and constants.HF_HUB_DISABLE_TELEMETRY is False  # put back


def test_no_call_of_gradio_client_sends_the_saved_login_to_hugging_face_unless_asked(local_hub, monkeypatch):
    """gradio_client 2.7.2, when a Space's answer holds no data (its rate limit's message), asks
    ``huggingface_hub.space_info(space_id)`` with no token argument: huggingface_hub then sends the user's saved login
    (or HF_TOKEN) to huggingface.co, whatever ``token=False`` told the Client. Here the Hub is a local listener and a
    stand-in connection makes that very call inside the real RemoteServer's requests: no token unless
    send_hf_token; the same call outside them sends it (the control)."""
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub import constants

    from mixdemo.client import RemoteServer

    token = "hf_NOT_A_REAL_TOKEN_0123456789"
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setenv("HF_TOKEN", token)

    def as_gradio_client_does(*args, api_name):  # client.py: huggingface_hub.space_info(client.space_id)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
            huggingface_hub.HfApi(endpoint=constants.ENDPOINT).space_info("owner/name")
        return {}

    def tokens_heard() -> list[str | None]:
        heard = [headers.get("authorization") for _, headers in local_hub]
        local_hub.clear()
        assert heard, "the Hub heard nothing"
        return heard

    def view_api(**kwargs):
        as_gradio_client_does(api_name=None)
        return {"named_endpoints": {}}

    def segment_proxy(*args, api_name):
        as_gradio_client_does(api_name=api_name)
        raise ConnectionError("the Space answered with its rate limit's message")

    for send in (False, True):
        remote = RemoteServer.__new__(RemoteServer)
        remote._send_hf_token = send
        for call in ("listing the API", "server_info", "segment_proxy"):
            remote._client = SimpleNamespace(predict=segment_proxy if call == "segment_proxy" else as_gradio_client_does,
                                             view_api=view_api)
            if call == "listing the API":
                remote._endpoints()
            elif call == "server_info":
                remote.info()
            else:
                remote.num_classes = lambda: 4
                with pytest.raises(ClientError):
                    remote._request(np.zeros((1, 8, 8, 8), np.float32))
            heard = tokens_heard()
            assert all((h == f"Bearer {token}") is send for h in heard), (call, heard)
    as_gradio_client_does(api_name="/server_info")  # outside the client's calls: the saved login goes
    assert set(tokens_heard()) == {f"Bearer {token}"}
    assert constants.HF_HUB_DISABLE_IMPLICIT_TOKEN is False  # put back


@pytest.mark.slow
def test_the_answer_is_fetched_into_memory_not_through_gradio_clients_download(app_url, monkeypatch):
    """gradio_client's download stages each answer in a new folder of the temporary directory and leaves it there,
    empty: the client fetches the answer itself, into memory, from the server's own file route."""
    from gradio_client import client as gradio_client_module

    from mixdemo.client import RemoteServer

    monkeypatch.setattr(gradio_client_module.Endpoint, "_download_file",
                        lambda *a, **k: pytest.fail("the answer went through gradio_client's download"))
    remote = RemoteServer(app_url)
    try:
        proxies = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 16)).astype(np.float32)
        answer = remote(proxies)
    finally:
        remote.close()
    assert answer.shape == (2, 4, 16, 16, 16) and answer.dtype == torch.float32
    torch.testing.assert_close(answer.sum(1), torch.ones(2, 16, 16, 16), atol=1e-2, rtol=0)  # probabilities


def test_an_npy_answer_is_read_without_unpickling():
    import io

    from mixdemo.client import ClientError, npy_from_bytes

    for array in (np.arange(24, dtype=np.float16).reshape(2, 3, 4), np.asfortranarray(np.arange(6.0).reshape(2, 3))):
        buffer = io.BytesIO()
        np.save(buffer, array)
        np.testing.assert_array_equal(npy_from_bytes(buffer.getvalue()), array)
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ClientError, match="object array"):
        npy_from_bytes(buffer.getvalue())


def test_an_npy_answer_that_is_not_floats_cut_short_or_no_npy_is_refused():
    """An integer array was passed on as probabilities; a header promising more values than its bytes hold, or bytes
    that are no .npy file, raised numpy's ValueError as a traceback."""
    import io

    from mixdemo.client import ClientError, npy_from_bytes

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 3), np.int64))
    with pytest.raises(ClientError, match="type int64"):
        npy_from_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 4, 8, 8, 8), np.float16))
    with pytest.raises(ClientError, match="cut short"):
        npy_from_bytes(buffer.getvalue()[:-2])
    with pytest.raises(ClientError, match="not a readable .npy"):
        npy_from_bytes(b"<html>a proxy's error page</html>")


@pytest.fixture
def answering_server():
    """A local HTTP server whose file route answers what the test sets (``body``, and a ``length`` to declare or
    None to stream it chunked without one); yields (the state, a RemoteServer shim whose _fetch reaches it)."""
    import http.server
    import threading
    from types import SimpleNamespace

    from mixdemo.client import RemoteServer

    state = {"body": b"", "length": None, "sent": 0, "redirect": None, "heard": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - http.server's name
            state["heard"].append((self.headers.get("host"), self.path, dict(self.headers)))
            if state["redirect"] and not self.path.endswith("/moved"):
                self.send_response(302)
                self.send_header("Location", state["redirect"])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, length = state["body"], state["length"]
            self.send_response(200)
            if length is None:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            try:
                for start in range(0, len(body), 1 << 16):
                    chunk = body[start : start + (1 << 16)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if length is None else chunk)
                    state["sent"] += len(chunk)
                if length is None:
                    self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what is tested
                pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = SimpleNamespace(headers={"x-hf-authorization": "Bearer hf_NOT_A_REAL_TOKEN"}, cookies=None,
                             ssl_verify=True, httpx_kwargs={"timeout": 10},
                             src_prefixed=f"http://127.0.0.1:{httpd.server_port}/gradio_api/")
    shim = SimpleNamespace(_client=client)
    try:
        state["port"] = httpd.server_port
        yield state, lambda most_bytes: RemoteServer._fetch(shim, {"path": "/tmp/gradio/x/mixed_probs.npy"}, most_bytes)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_an_answer_larger_than_its_request_can_need_is_refused_unread(answering_server):
    """The answer was read whole into memory whatever its size (a server, by mistake or on purpose, could fill the
    client's memory): now refused from its declared length, or once the stream passes what the request needs."""
    import io

    from mixdemo.client import ClientError, answer_bytes_at_most

    state, fetch = answering_server
    shape = (2, 4, 16, 16, 16)
    most = answer_bytes_at_most(shape)
    for dtype in (np.float16, np.float32):  # the wire format's, and float32, are read
        buffer = io.BytesIO()
        np.save(buffer, np.full(shape, 0.25, dtype))
        for length in (len(buffer.getvalue()), None):
            state.update(body=buffer.getvalue(), length=length)
            np.testing.assert_array_equal(fetch(most), np.full(shape, 0.25, dtype))
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 5, 16, 16, 16), np.float32))  # one class more than the request's, in float32
    state.update(body=buffer.getvalue(), length=len(buffer.getvalue()))
    with pytest.raises(ClientError, match="at most 0.1 MiB; it was not read"):
        fetch(most)
    state.update(body=b"\0" * (128 << 20), length=None, sent=0)  # 128 MiB, no length said
    with pytest.raises(ClientError, match="answered with more, where this request's answer needs at most"):
        fetch(most)
    assert state["sent"] < 64 << 20, state["sent"]  # the client stopped reading early (kernel buffers aside)


def test_the_answer_follows_redirects_on_the_server_s_host_only(answering_server):
    """The download followed any redirect, with its headers: the token (x-hf-authorization, which httpx keeps across
    hosts) went wherever the server sent it. On its own host (here 127.0.0.1) it is followed; to another (localhost:
    the same machine under another name) refused before any byte is sent."""
    import io

    from mixdemo.client import ClientError

    state, fetch = answering_server
    buffer = io.BytesIO()
    np.save(buffer, np.full((1, 2, 4, 4, 4), 0.5, np.float16))
    state.update(body=buffer.getvalue(), length=len(buffer.getvalue()))
    state["redirect"] = f"http://127.0.0.1:{state['port']}/gradio_api/moved"
    assert fetch(1 << 20).shape == (1, 2, 4, 4, 4)  # the control: followed on the server's host
    assert [path for _, path, _ in state["heard"]][-1] == "/gradio_api/moved"
    state["heard"].clear()
    state["redirect"] = f"http://localhost:{state['port']}/gradio_api/moved"
    with pytest.raises(ClientError, match=r"another host \(localhost\) for its answer; not followed"):
        fetch(1 << 20)
    assert [host for host, _, _ in state["heard"]] == [f"127.0.0.1:{state['port']}"]  # never reached localhost


def test_the_answer_of_an_https_server_is_never_fetched_over_plain_http():
    """A redirect of the download from an https address to plain http on the same host (a proxy in front of the app
    that writes its own address as http) was followed: the answer, and the headers (the token with
    --send-hf-token), went over the network unencrypted. Refused now before it is sent; http to https is followed."""
    import httpx

    from mixdemo.client import ClientError, same_host_only

    check = same_host_only("server.example", secure=True)
    check(httpx.Request("GET", "https://server.example/gradio_api/file=/tmp/gradio/x/mixed_probs.npy"))  # the control
    with pytest.raises(ClientError, match="plain http"):
        check(httpx.Request("GET", "http://server.example/gradio_api/file=/tmp/gradio/x/mixed_probs.npy"))
    same_host_only("server.example")(httpx.Request("GET", "https://server.example/x"))  # http to https: followed


def test_the_client_follows_the_request_limits_the_server_reports(app_url):
    from mixdemo import server
    from mixdemo.client import RemoteServer

    remote = RemoteServer(app_url)
    try:
        assert remote.per_request((144, 192, 160)) == server.MAX_K
        assert remote.per_request((240, 240, 155)) == server.MAX_REQUEST_VOXELS // (240 * 240 * 155)
    finally:
        remote.close()


@pytest.mark.slow
def test_closing_stops_the_heartbeat_without_waiting_for_it(app_url, monkeypatch):
    """close() asks gradio_client's heartbeat thread to stop and does not wait for it (``Client.close`` waits up to
    1 s for a thread that sees the request only at the server's next message)."""
    from mixdemo.client import RemoteServer

    remote = RemoteServer(app_url)
    heartbeat = remote._client.heartbeat
    assert heartbeat.is_alive()  # the app keeps per-session state, so gradio_client keeps a heartbeat open
    monkeypatch.setattr(heartbeat, "join", lambda *a, **k: pytest.fail("close() waited for the heartbeat thread"))
    remote.close()
    assert remote._client._kill_heartbeat.is_set()


def test_close_client_falls_back_to_close_and_never_raises():
    """A Client without gradio_client 2's heartbeat event is closed with its own close(); a failing close is
    swallowed (closing never fails the caller)."""
    from mixdemo.client import close_client

    class Plain:
        closed = 0

        def close(self):
            Plain.closed += 1
            raise RuntimeError("already closed")

    close_client(Plain())
    assert Plain.closed == 1


def test_make_key_mirrors_every_second_mix_when_asked_with_random_or_given_references():
    from mixdemo.client import make_key

    pool = [f"r{i}" for i in range(5)]
    assert make_key(pool, 3, seed=1, mirror=True).mirrored == (False, True, False)
    assert make_key(pool, 3, reference_ids=["r0", "r2"], alpha=0.4, mirror=True).mirrored == (False, True)
    assert make_key(pool, 3, seed=1, mirror=False).mirrored == make_key(pool, 1, seed=1, mirror=True).mirrored == ()
    assert make_key(pool, 3, seed=1, mirror=True).reference_ids == make_key(pool, 3, seed=1).reference_ids


# ------------------------------------------------------------------------------ main() against a fake server
GRID = (24, 24, 24)  # not the MNI grid: a scan on the references' grid is used as it is, without registration


class FakeRemote:
    """Stands in for RemoteServer in main(): records what was asked of it, answers random probabilities."""

    made: list[str] = []
    requests: list[tuple[int, ...]] = []
    grid: tuple[int, ...] | None = None

    def __init__(self, url, **kwargs):
        FakeRemote.made.append(url)

    def new_session(self):
        pass

    def grid_shape(self):
        return FakeRemote.grid

    def model_sha256(self):
        return None

    def classes(self):
        return ["background", "GM", "WM", "CSF"]

    def per_request(self, shape):
        return 8

    def __call__(self, proxies):
        import torch

        FakeRemote.requests.append(proxies.shape)
        return torch.softmax(torch.randn(len(proxies), 4, *proxies.shape[1:]), dim=1)

    def close(self):
        pass


@pytest.fixture
def fake_main(tmp_path, monkeypatch):
    """main() with a fake server, a bank of three small references on ``GRID`` (counting its loads), no D (naive
    unmixing) and two scans on that grid named like patients; returns the scans, the bank loads and the outputs."""
    import nibabel as nib

    from mixdemo import client, examples
    from mixdemo.pipeline import Reference
    from mixdemo.weights import UNMIXING_ENV, WEIGHTS_DIR_ENV

    (tmp_path / "weights").mkdir()
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    monkeypatch.delenv(UNMIXING_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    bank = [Reference(f"r{i}", rng.random(GRID).astype(np.float32), rng.integers(0, 4, GRID).astype(np.uint8))
            for i in range(3)]
    loads: list[str] = []
    monkeypatch.setattr(examples, "reference_ids", lambda: [r.ref_id for r in bank])
    monkeypatch.setattr(examples, "reference_grid", lambda: GRID)
    monkeypatch.setattr(examples, "reference_bank", lambda progress=None: loads.append("bank") or list(bank))
    monkeypatch.setattr(examples, "load_reference_dir", lambda folder, ids=None, **kw: loads.append("dir") or list(bank))
    monkeypatch.setattr(FakeRemote, "made", [])
    monkeypatch.setattr(FakeRemote, "requests", [])
    monkeypatch.setattr(FakeRemote, "grid", None)
    monkeypatch.setattr(client, "RemoteServer", FakeRemote)
    scans = []
    for name in ("private_name_a", "private_name_b"):
        scans.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(rng.random(GRID).astype(np.float32) + 0.5, np.eye(4)), scans[-1])
    return [str(s) for s in scans], loads, tmp_path / "segs"


def _run_main(argv, capsys) -> tuple[int, str]:
    from mixdemo.client import main

    code = main(argv)
    err = capsys.readouterr().err
    assert "private_name" not in err and "Traceback" not in err  # never a file name, never a traceback
    return code, err


def test_fake_main_segments_both_scans(fake_main, capsys):
    """The fixture's control: with nothing wrong, main() segments and writes each scan."""
    scans, loads, out = fake_main
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880", "--tta", "2"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["private_name_a_seg.nii.gz", "private_name_b_seg.nii.gz"]
    assert loads == ["bank"] and len(FakeRemote.made) == 1 and FakeRemote.requests
    assert "the default client network D (unmixing-p2-96-a35-cal) is not in the weights folder" in err  # no D here
    assert "give --unmixing NAME" in err


def test_a_wildcard_the_shell_left_as_it_is_is_expanded_on_windows(fake_main, capsys, monkeypatch):
    """cmd and PowerShell pass the README's ``scans/*.nii.gz`` to Python as it is, where a POSIX shell expands it: on
    Windows (emulated) the client expands it, sorted; elsewhere an argument stays the file name given."""
    import sys

    scans, loads, out = fake_main
    argv = [str(Path(scans[0]).parent / "private_name_*.nii.gz"), "-o", f"{out}/", "--server", "http://127.0.0.1:7880"]
    code, err = _run_main(argv, capsys)
    assert code == 2 and "could not be found" in err and not out.exists()
    monkeypatch.setattr(sys, "platform", "win32")
    code, err = _run_main(argv, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["private_name_a_seg.nii.gz", "private_name_b_seg.nii.gz"]
    code, err = _run_main([str(Path(scans[0]).parent / "nothing_*.nii.gz"), *argv[1:]], capsys)
    assert code == 2 and "could not be found" in err  # a pattern that matches nothing: said as a missing scan


def test_a_refused_command_line_leaves_no_output_folder_and_one_missing_scan_is_said_before_connecting(
        fake_main, capsys):
    """A command refused by a check that needs no folder makes none; a single scan that is not there is said
    before the client connects or builds the bank; several NIfTI scans asked for SEGs are named in the plural."""
    scans, loads, out = fake_main
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880", "--series", "1"], capsys)
    assert code == 2 and "one input" in err and not out.exists()
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880", "--dicom-seg"], capsys)
    assert code == 2 and "scans 1, 2 of 2 are not a DICOM series" in err and not out.exists()
    code, err = _run_main([scans[0] + ".missing", "-o", str(out / "s.nii.gz"), "--server", "http://127.0.0.1:7880"],
                          capsys)
    assert code == 2 and "could not be found" in err and FakeRemote.made == [] and loads == []
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880", "--unmixing", "nope"], capsys)
    assert code == 2 and "nope" in err and not out.exists()  # a D that is not there: no folder made for nothing


def test_references_given_as_a_file_are_told_to_be_a_folder(tmp_path):
    from mixdemo.examples import load_reference_dir

    (tmp_path / "t1.nii.gz").write_bytes(b"a scan")
    with pytest.raises(ValueError, match="The reference folder is a file: give the folder"):
        load_reference_dir(tmp_path / "t1.nii.gz")
    with pytest.raises(ValueError, match="The reference folder does not exist"):
        load_reference_dir(tmp_path / "missing")


def test_an_alpha_above_one_half_is_warned_of(fake_main, capsys):
    scans, _, out = fake_main
    code, err = _run_main([scans[0], "-o", str(out / "s.nii.gz"), "--server", "http://127.0.0.1:7880", "--alpha", "0.9"],
                          capsys)
    assert code == 0 and "warning: --alpha 0.9 makes the scan outweigh its reference in the proxy" in err
    code, err = _run_main([scans[0], "-o", str(out / "s.nii.gz"), "--server", "http://127.0.0.1:7880", "--alpha", "0.5"],
                          capsys)
    assert code == 0 and "outweigh" not in err


class OracleRemote(FakeRemote):
    """A perfect S for the test's scan: each proxy matched to the bank reference it mixes (Eq. 2 with the test's α,
    whatever the order of the proxies), answered with the exact mixed labels of Eq. 3 for the test's truth."""

    target: np.ndarray | None = None  # the scan as the client normalises it, on the grid
    truth: np.ndarray | None = None
    bank: list = []
    alpha = 0.4
    sent: list[np.ndarray] = []

    def __call__(self, proxies):
        return self.answer(proxies)

    def answer(self, proxies):
        import torch

        from mixdemo.mixing import one_hot

        answers = []
        for proxy in proxies:
            OracleRemote.sent.append(np.array(proxy))
            misfit = [np.abs(proxy - (self.alpha * self.target + (1 - self.alpha) * r.image)).max() for r in self.bank]
            assert min(misfit) < 1e-4, "a request held something else than a proxy of the scan and a bank reference"
            ref = self.bank[int(np.argmin(misfit))]
            answers.append(self.alpha * one_hot(self.truth, 4) + (1 - self.alpha) * one_hot(ref.labels, 4))
        return torch.from_numpy(np.stack(answers).astype(np.float32))


@pytest.mark.parametrize("separate", [False, True])
def test_the_client_writes_the_segmentation_a_perfect_server_implies(fake_main, capsys, monkeypatch, tmp_path, separate):
    """Against a perfect S, naive unmixing (Eq. 4) with each proxy's own reference and α, averaged over K (Eq. 6),
    gives the truth exactly, written voxel for voxel on the input's grid: for a NIfTI and for the same scan as a
    zipped DICOM series, and with each proxy sent alone in shuffled order (``--separate-requests``). Every request
    holds proxies of the scan, never the scan itself."""
    import nibabel as nib

    from mixdemo import client, examples
    from mixdemo.io import normalize_intensity

    scans, _, out = fake_main
    image = nib.load(scans[0])
    truth = np.random.default_rng(5).integers(0, 4, GRID).astype(np.uint8)  # no symmetry: a flip or shift shows
    monkeypatch.setattr(OracleRemote, "target", normalize_intensity(np.asarray(image.dataobj, np.float32)))
    monkeypatch.setattr(OracleRemote, "truth", truth)
    monkeypatch.setattr(OracleRemote, "bank", examples.reference_bank())
    monkeypatch.setattr(OracleRemote, "sent", [])
    monkeypatch.setattr(client, "RemoteServer", OracleRemote)
    if separate:  # the real client's shuffled single-proxy requests, each answered by the oracle
        monkeypatch.setattr(OracleRemote, "__call__", lambda self, p: client_separately(self, p))
    _, archive = _dicom_scans(scans, tmp_path)
    code, err = _run_main([scans[0], str(archive), "-o", str(out), "--server", "http://127.0.0.1:7880",
                           "--alpha", "0.4", "--tta", "3"], capsys)
    assert code == 0, err
    for name in ("private_name_a_seg.nii.gz", "private_name_d_seg.nii.gz"):
        written = nib.load(out / name)
        assert np.array_equal(np.asarray(written.dataobj), truth), name
        assert np.allclose(written.affine, image.affine, atol=1e-4)
    assert len(OracleRemote.sent) == 6  # three proxies a scan
    assert all(np.abs(p - OracleRemote.target).max() > 0.1 for p in OracleRemote.sent)


def test_separate_requests_put_each_answer_back_at_its_proxy_and_send_in_a_shuffled_order():
    """Each proxy goes alone, in a new session, in an order drawn afresh per call; its answer lands at its own index
    (naive unmixing averages the same whatever the order, so only this shows an answer put at the wrong proxy)."""
    from types import SimpleNamespace

    proxies = np.arange(8, dtype=np.float32)[:, None, None, None] * np.ones((8, 2, 2, 2), np.float32)
    orders, sessions = [], []

    def request(one):
        orders[-1].append(int(one[0, 0, 0, 0]))
        return torch.full((1, 4, 2, 2, 2), float(one[0, 0, 0, 0]))  # the answer names its proxy

    shim = SimpleNamespace(separate_requests=True, num_classes=lambda: 4, new_session=lambda: sessions.append(1),
                           _request=request)
    for _ in range(5):
        orders.append([])
        out = RemoteServer.__call__(shim, proxies)
        assert torch.equal(out[:, 0, 0, 0, 0], torch.arange(8, dtype=torch.float32))
        assert sorted(orders[-1]) == list(range(8))
    assert len(sessions) == 40 and len({tuple(o) for o in orders}) > 1 and any(o != sorted(o) for o in orders)


def test_a_request_uploads_only_the_proxies_as_float16_under_a_neutral_name_and_leaves_no_file():
    """What leaves the client in one request: a file named ``proxy.npy`` holding exactly the float16 proxies (no
    pickle, no header but NumPy's), in a temporary folder removed once the answer is in."""
    import io
    from types import SimpleNamespace

    proxies = np.random.default_rng(0).random((2, 16, 16, 16)).astype(np.float32)
    uploaded = {}

    def predict(file, api_name):
        path = Path(file["path"])
        uploaded.update(name=path.name, folder=path.parent, data=path.read_bytes(), api=api_name)
        return "answer"

    shim = SimpleNamespace(_client=SimpleNamespace(predict=predict), num_classes=lambda: 4,
                           _token_kept=contextlib.nullcontext,
                           _fetch=lambda answer, most_bytes: np.full((2, 4, 16, 16, 16), 0.25, np.float32))
    answer = RemoteServer._request(shim, proxies)
    assert answer.shape == (2, 4, 16, 16, 16) and uploaded["api"] == "/segment_proxy"
    assert uploaded["name"] == "proxy.npy" and not uploaded["folder"].exists()
    expected = io.BytesIO()
    np.save(expected, proxies.astype(np.float16), allow_pickle=False)
    assert uploaded["data"] == expected.getvalue()


@pytest.mark.parametrize("bad", [np.nan, -0.5, 1.5])
def test_an_answer_that_is_not_probabilities_is_refused(bad):
    """A NaN answer (a broken model or precision on the server) was unmixed into an empty segmentation and
    written as one; values outside [0, 1] are no softmax either."""
    from types import SimpleNamespace

    from mixdemo.client import ClientError, RemoteServer

    answer = np.full((1, 4, 8, 8, 8), 0.25, np.float16)
    shim = SimpleNamespace(_client=SimpleNamespace(predict=lambda file, api_name: "answer"), num_classes=lambda: 4,
                           _token_kept=contextlib.nullcontext, _fetch=lambda answer_, most_bytes: answer)
    proxies = np.zeros((1, 8, 8, 8), np.float32)
    assert RemoteServer._request(shim, proxies).shape == (1, 4, 8, 8, 8)  # the control
    answer[0, 2, 3, 4, 5] = bad
    with pytest.raises(ClientError, match="not probabilities"):
        RemoteServer._request(shim, proxies)


def client_separately(oracle: OracleRemote, proxies: np.ndarray):
    """``RemoteServer.__call__`` with separate requests (each proxy alone, in a shuffled order), its requests
    answered by ``oracle``."""
    from types import SimpleNamespace

    shim = SimpleNamespace(separate_requests=True, num_classes=lambda: 4, new_session=lambda: None,
                           _request=oracle.answer)
    return RemoteServer.__call__(shim, proxies)  # the class itself: main()'s is the fixture's stand-in


def test_main_refuses_references_whose_labels_the_server_s_classes_do_not_reach(fake_main, capsys, monkeypatch):
    """The bank's labels reach 3; a server that says it gives three classes is refused before any request."""
    scans, _, out = fake_main
    monkeypatch.setattr(FakeRemote, "classes", lambda self: ["background", "GM", "WM"])
    code, err = _run_main([scans[0], "-o", str(out / "s.nii.gz"), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "labels reach 3, but the server's model gives 3 classes (background, GM, WM)" in err
    assert not FakeRemote.requests


def test_a_zipped_dicom_series_is_segmented_like_a_nifti(fake_main, capsys, tmp_path):
    """A DICOM series (a .zip, or its folder) goes in where a NIfTI does; its segmentation is named after it and lies
    on its grid; no file name and no header field (the patient's name) reaches the messages."""
    import nibabel as nib

    from mixdemo.dicom import write_series, zip_series

    scans, _, out = fake_main
    image = nib.load(scans[0])
    files = write_series(np.asarray(image.dataobj), image.affine, tmp_path / "private_name_c", patient_name="private_name")
    archive = zip_series(files, tmp_path / "private_name_d.zip")
    code, err = _run_main([str(archive), str(tmp_path / "private_name_c"), "-o", str(out), "--server",
                           "http://127.0.0.1:7880"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["private_name_c_seg.nii.gz", "private_name_d_seg.nii.gz"]
    for seg in out.iterdir():
        written = nib.load(seg)
        assert written.shape == image.shape and np.allclose(written.affine, image.affine, atol=1e-4)


def _dicom_scans(scans, tmp_path, *, drop_frame_of_reference=False):
    """The fixture's first scan as a series: its files (a folder named like a patient) and their zip."""
    import nibabel as nib
    import pydicom

    from mixdemo.dicom import write_series, zip_series

    image = nib.load(scans[0])
    files = write_series(np.asarray(image.dataobj), image.affine, tmp_path / "private_name_c", patient_name="private_name")
    for f in files:
        ds = pydicom.dcmread(f)
        if drop_frame_of_reference:
            del ds.FrameOfReferenceUID
        ds.save_as(f, enforce_file_format=True)
    return files, zip_series(files, tmp_path / "private_name_d.zip")


def test_a_dicom_series_gets_a_dicom_seg_when_asked(fake_main, capsys, tmp_path):
    """``-o NAME.dcm`` for one series, ``--dicom-seg`` for several: DICOM SEGs that refer to their series' images,
    their segments named by the server's classes; no file name or header field in the messages."""
    import pydicom

    scans, _, out = fake_main
    files, archive = _dicom_scans(scans, tmp_path)
    code, err = _run_main([str(archive), "-o", str(tmp_path / "one.dcm"), "--server", "http://127.0.0.1:7880"],
                          capsys)
    assert code == 0, err
    code, err = _run_main([str(archive), str(tmp_path / "private_name_c"), "-o", str(out), "--dicom-seg",
                           "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["private_name_c_seg.dcm", "private_name_d_seg.dcm"]
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    for seg_path in [tmp_path / "one.dcm", *out.iterdir()]:
        seg = pydicom.dcmread(seg_path)
        assert seg.Modality == "SEG" and [s.SegmentLabel for s in seg.SegmentSequence] == ["GM", "WM", "CSF"]
        referred = {g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                    for g in seg.PerFrameFunctionalGroupsSequence}
        assert referred <= sources and len(referred) > len(sources) // 2


def test_series_picks_one_series_of_a_study_for_the_segmentation_and_its_seg(fake_main, capsys, tmp_path):
    """A study's export holding the scan and a smaller series: refused with the numbered list, then ``--series 1``
    segments the scan (its NIfTI on the scan's grid, its SEG referring to the scan's images, not the other's);
    --series with a NIfTI input, or 0, is refused before any request."""
    import nibabel as nib
    import pydicom

    from mixdemo.dicom import write_series

    scans, _, out = fake_main
    files, _ = _dicom_scans(scans, tmp_path)
    image = nib.load(scans[0])
    other = write_series(np.asarray(image.dataobj)[:, :, :10], image.affine, tmp_path / "private_name_c" / "loc",
                         patient_name="private_name")
    server = ["--server", "http://127.0.0.1:7880"]
    code, err = _run_main([str(tmp_path / "private_name_c"), "-o", str(tmp_path / "seg.nii.gz"), *server], capsys)
    assert code == 2 and "1: 24 axial images" in err and "2: 10 axial images" in err and "--series" in err
    code, err = _run_main([str(tmp_path / "private_name_c"), "-o", str(tmp_path / "seg.nii.gz"), "--series", "1",
                           *server], capsys)
    assert code == 0, err
    assert nib.load(tmp_path / "seg.nii.gz").shape == image.shape
    code, err = _run_main([str(tmp_path / "private_name_c"), "-o", str(tmp_path / "seg.dcm"), "--series", "1",
                           *server], capsys)
    assert code == 0, err
    referred = {g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                for g in pydicom.dcmread(tmp_path / "seg.dcm").PerFrameFunctionalGroupsSequence}
    assert referred <= {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert not referred & {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in other}
    requests = len(FakeRemote.requests)
    code, err = _run_main([scans[1], "-o", str(tmp_path / "n.nii.gz"), "--series", "1", *server], capsys)
    assert code == 2 and "--series picks one series of a DICOM input" in err
    code, err = _run_main([str(tmp_path / "private_name_c"), "-o", str(tmp_path / "n.nii.gz"), "--series", "0",
                           *server], capsys)
    assert code == 2 and "counts from 1" in err and len(FakeRemote.requests) == requests
    code, err = _run_main([str(tmp_path / "private_name_c"), str(tmp_path / "private_name_d.zip"), "-o", str(out),
                           "--series", "1", *server], capsys)  # each study numbers its own series: one input only
    assert code == 2 and "give one input with it" in err and len(FakeRemote.requests) == requests


def test_a_seg_records_the_d_by_its_folder_name_not_the_path_it_was_given_by(monkeypatch):
    """The version a SEG records names S by its checksum and D by its folder's name: the path a user gave
    ``--unmixing`` (their home folder's name) does not go to the PACS."""
    import argparse

    from mixdemo import client

    monkeypatch.setattr(client, "RemoteServer", FakeRemote)
    naming = client._seg_naming(FakeRemote("x"), argparse.Namespace(unmixing="/home/alice.smith/private/unmixing-p4"))
    assert naming["software_version"] == "S unknown; D unmixing-p4"
    assert naming["class_names"] == ["background", "GM", "WM", "CSF"]


def test_a_dicom_seg_for_a_nifti_input_is_refused_before_any_request(fake_main, capsys, tmp_path):
    """... while a missing input is said in its turn, and the others go on (it was called a NIfTI file)."""
    scans, _, out = fake_main
    _, archive = _dicom_scans(scans, tmp_path)
    code, err = _run_main([str(archive), scans[1], "-o", str(out), "--dicom-seg", "--server",
                           "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "scan 2 of 2 is not a DICOM series" in err
    assert not FakeRemote.made and not FakeRemote.requests
    code, err = _run_main([str(tmp_path / "private_name_typo"), str(archive), "-o", str(out), "--dicom-seg",
                           "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "scan 1 of 2: The input scan could not be found" in err and "NIfTI" not in err
    assert [p.name for p in out.iterdir()] == ["private_name_d_seg.dcm"]


def test_a_series_that_cannot_carry_a_seg_costs_no_request(fake_main, capsys, tmp_path):
    """No Frame of Reference: refused before the scan's requests, the message saying to write NIfTI."""
    scans, _, out = fake_main
    _, archive = _dicom_scans(scans, tmp_path, drop_frame_of_reference=True)
    code, err = _run_main([str(archive), "-o", str(tmp_path / "seg.dcm"), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "Frame of Reference" in err and "NIfTI" in err
    assert not FakeRemote.requests and not (tmp_path / "seg.dcm").exists()


def test_a_seg_refused_after_the_work_keeps_it_as_nifti(fake_main, capsys, tmp_path, monkeypatch):
    """A SEG highdicom refuses to build once the server's work is done (simulated: no header met here makes it
    refuse now): the segmentation is written as NIfTI under the same name, and the message says so."""
    import highdicom as hd
    import nibabel as nib

    def refuse(*args, **kwargs):
        raise ValueError("refused")

    scans, _, out = fake_main
    _, archive = _dicom_scans(scans, tmp_path)
    monkeypatch.setattr(hd.seg, "Segmentation", refuse)
    code, err = _run_main([str(archive), "-o", str(tmp_path / "seg.dcm"), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "written as NIfTI instead" in err and FakeRemote.requests
    assert not (tmp_path / "seg.dcm").exists()
    assert nib.load(tmp_path / "seg.nii.gz").shape == nib.load(scans[0]).shape


@pytest.mark.parametrize("k, refs, before_the_bank", [("0", None, True), ("4", None, True), ("0", "DIR", True),
                                                      ("4", "DIR", False)])
def test_a_bad_k_fails_once_before_the_connection(fake_main, capsys, tmp_path, k, refs, before_the_bank):
    """--tta 0, or a K beyond the bank, is one message for a run of two scans, before the connection (and before
    the bank's load where the bank's size is known without it); no scan is tried."""
    scans, loads, out = fake_main
    extra = ["--references", str(tmp_path)] if refs else []
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880", "--tta", k, *extra], capsys)
    assert code == 2 and err.count("error:") == 1 and "got " + k in err
    assert FakeRemote.made == [] and FakeRemote.requests == []
    assert loads == ([] if before_the_bank else ["dir"])


def test_a_d_for_two_references_is_refused_before_any_request(fake_main, capsys, tmp_path):
    from mixdemo.models import UnmixingNet
    from mixdemo.weights import write_training_record

    scans, loads, out = fake_main
    UnmixingNet(n_references=2).save_pretrained(tmp_path / "weights" / "unmixing-2ref")
    write_training_record(tmp_path / "weights" / "unmixing-2ref", {"note": "test"}, "mixdemo.models.UnmixingNet")
    code, err = _run_main([scans[0], "-o", str(out / "s.nii.gz"), "--server", "http://127.0.0.1:7880",
                           "--unmixing", "unmixing-2ref"], capsys)
    assert code == 2 and "'unmixing-2ref' unmixes mixes of 2 references" in err and "one-reference D" in err
    assert FakeRemote.made == [] and FakeRemote.requests == []


def test_references_off_the_server_grid_are_blamed_before_any_request(fake_main, capsys):
    """The server reports its model's grid: references off it are named as the fault (the grid expected and the
    one found), before any scan is sent."""
    scans, loads, out = fake_main
    FakeRemote.grid = (25, 24, 24)
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and err.count("error:") == 1
    assert "The references lie on a 24×24×24 grid, but the server's model works on 25×24×24" in err
    assert FakeRemote.requests == [] and list(out.iterdir()) == []
    assert loads == []  # the public bank is not built for a server that cannot use it


def test_a_scan_off_the_references_grid_is_worded_by_what_the_server_said(tmp_path):
    """Without the server's grid the message does not presume which side is off it; with it, it names the scan."""
    import nibabel as nib

    from mixdemo.client import load_target

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 24, 24)).astype(np.float32), np.eye(4)),
             tmp_path / "scan.nii.gz")
    with pytest.raises(ClientError) as unsure:
        load_target(tmp_path / "scan.nii.gz", grid=GRID)
    assert "20×24×24 is not the references' 24×24×24; both must lie on the server model's grid" in str(unsure.value)
    assert "register it to" not in str(unsure.value)
    with pytest.raises(ClientError, match="register the scan"):
        load_target(tmp_path / "scan.nii.gz", grid=GRID, grid_confirmed=True)


def test_a_server_address_without_scheme_is_refused_up_front(fake_main, capsys):
    from mixdemo.client import check_server_address

    scans, loads, out = fake_main
    code, err = _run_main([scans[0], "-o", str(out / "s.nii.gz"), "--server", "127.0.0.1:7871"], capsys)
    assert code == 2 and "try http://127.0.0.1:7871" in err and "HFValidationError" not in err
    assert loads == [] and FakeRemote.made == []
    for fine in ("http://127.0.0.1:7880", "https://example.org/app/", "owner/a-space"):
        check_server_address(fine)
    for bad, fragment in (("localhost:7860", "try http://localhost:7860"), ("ftp://host", "http:// or https://"),
                          ("http://", "http:// or https://")):
        with pytest.raises(ClientError, match=fragment):
            check_server_address(bad)


def test_a_server_address_with_an_upper_case_scheme_is_told_to_write_it_in_lower_case():
    """``HTTP://host`` does start with http:// to a reader: the message says what is wrong and the address to try."""
    from mixdemo.client import check_server_address

    with pytest.raises(ClientError, match="lower case: try http://127.0.0.1:7871/app"):
        check_server_address("HTTP://127.0.0.1:7871/app")
    with pytest.raises(ClientError, match="lower case: try https://example.org"):
        check_server_address("Https://example.org")


def test_help_names_the_references_folder_dir(capsys):
    from mixdemo.client import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--references DIR" in capsys.readouterr().out


def test_help_survives_a_stdout_that_cannot_encode_it(monkeypatch):
    """Windows writes a piped or redirected stdout (``--help > help.txt``, ``| more``, Git Bash) in the ANSI code page,
    cp1252, strictly; it has no α, ≥ or −, and ``--help`` was a UnicodeEncodeError there: emulated here. Characters
    it lacks are escaped, as Python does on stderr."""
    import io
    import sys

    from mixdemo import client

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="cp1252"))
    with pytest.raises(SystemExit) as exit_:
        client.cli(["--help"])
    assert exit_.value.code == 0
    sys.stdout.flush()
    text = raw.getvalue().decode("cp1252")
    assert "--references DIR" in text and "target weight \\u03b1" in text


@pytest.mark.parametrize("flags, noted", [(["--mirror", "--tta", "1"], True), (["--mirror", "--tta", "2"], False),
                                          (["--tta", "1"], False), (["--no-mirror"], False)])
def test_mirror_with_one_mix_is_noted(fake_main, capsys, flags, noted):
    scans, loads, out = fake_main
    code, err = _run_main([scans[0], "-o", str(out / "s.nii.gz"), "--server", "http://127.0.0.1:7880", *flags], capsys)
    assert code == 0, err
    assert ("note: --mirror mirrors every second mix" in err) is noted
    assert err.count("note: --mirror") <= 1


# ------------------------------------------------------------------------------ RemoteServer without a server
class _FailingClient:
    """A gradio_client Client whose requests raise ``error``."""

    error: BaseException = RuntimeError()

    def __init__(self, *args, httpx_kwargs=None, **kwargs):
        self.httpx_kwargs = dict(httpx_kwargs or {})  # as gradio_client keeps them (RemoteServer sets the timeout)

    def predict(self, *args, **kwargs):
        raise _FailingClient.error


def _lost(cls):
    import httpx

    try:
        raise httpx.ReadError("peer closed")
    except httpx.ReadError as exc:
        raise cls("wrapped") from exc


@pytest.mark.parametrize("make_error", [
    lambda: __import__("concurrent.futures").futures.CancelledError(),
    lambda: __import__("asyncio").CancelledError(),
    lambda: __import__("httpx").ConnectError("All connection attempts failed"),
    lambda: __import__("httpx").RemoteProtocolError("peer closed connection without sending complete message body"),
    lambda: __import__("httpx").ReadError(""),
    lambda: ConnectionResetError(104, "Connection reset by peer"),
    lambda: ValueError("Server stopped."),
])
def test_a_lost_connection_is_said_plainly(monkeypatch, make_error):
    import gradio_client

    from mixdemo.client import CONNECTION_LOST, RemoteServer

    monkeypatch.setattr(gradio_client, "Client", _FailingClient)
    monkeypatch.setattr(_FailingClient, "error", make_error())
    remote = RemoteServer("http://127.0.0.1:7880")
    try:
        with pytest.raises(ClientError) as caught:
            remote(np.zeros((1, 8, 8, 8), np.float32))
    finally:
        remote.close()
    assert str(caught.value) == CONNECTION_LOST
    assert "connection to the server was lost" in CONNECTION_LOST and "try again" in CONNECTION_LOST


def test_a_refusal_keeps_the_server_s_message(monkeypatch):
    """The control: the server's own error (an AppError), or any other, keeps its words; one raised from a lost
    connection reads as that."""
    import gradio_client
    from gradio_client.exceptions import AppError

    from mixdemo.client import CONNECTION_LOST, RemoteServer

    monkeypatch.setattr(gradio_client, "Client", _FailingClient)
    remote = RemoteServer("http://127.0.0.1:7880")
    try:
        for error, said in ((AppError("The request holds too many voxels."),
                             "The server refused or failed the request: The request holds too many voxels."),
                            (RuntimeError(), "The server refused or failed the request: RuntimeError")):
            monkeypatch.setattr(_FailingClient, "error", error)
            with pytest.raises(ClientError) as caught:
                remote(np.zeros((1, 8, 8, 8), np.float32))
            assert str(caught.value) == said
        try:
            _lost(RuntimeError)
        except RuntimeError as wrapped:
            monkeypatch.setattr(_FailingClient, "error", wrapped)
        with pytest.raises(ClientError, match=CONNECTION_LOST[:30]):
            remote(np.zeros((1, 8, 8, 8), np.float32))
    finally:
        remote.close()


# ------------------------------------------------------------------------------ the output folder's check
def test_the_output_folder_is_checked_by_a_real_write(tmp_path, monkeypatch):
    """writable_folder makes and removes a file (os.access says yes to root everywhere, and to /proc); a failure
    is the clear message, before any work, and a good folder is left as it was."""
    import tempfile

    from mixdemo.client import writable_folder

    writable_folder(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", refused)
        with pytest.raises(ClientError, match="cannot be written to"):
            writable_folder(tmp_path / "out")
    if Path("/proc/self").is_dir():
        with pytest.raises(ClientError, match="cannot be written to"):
            writable_folder(Path("/proc"))


def test_ctrl_c_is_one_line_not_a_traceback(monkeypatch, capsys):
    """Ctrl-C while the client waits for the server: a line and exit status 130."""
    from mixdemo import client

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "main", interrupted)
    monkeypatch.setattr(client, "exit_on_sigterm", lambda: None)
    assert client.cli([]) == 130
    err = capsys.readouterr().err
    assert err.strip().startswith("interrupted:") and "Traceback" not in err


def test_a_gradio_app_that_is_not_this_server_is_refused_before_any_work():
    """Another Gradio app at the address: said when the client connects, not after the scan was mixed and sent."""
    import gradio as gr

    from mixdemo.client import RemoteServer

    from .conftest import free_port

    other = gr.Interface(lambda text: text, "text", "text")
    other.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with pytest.raises(ClientError, match="has no segment_proxy endpoint: it is not a Mixup-Privacy server"):
            RemoteServer(other.local_url.rstrip("/"))
    finally:
        other.close()


def test_an_address_that_answers_but_is_no_gradio_app_is_named_so_not_unreachable():
    """A plain web server at the address: "answers (HTTP 200) but is not a Gradio app", not "Could not reach"; an
    address it refuses (401, as a private Space without the token): the status, and what to check."""
    import http.server
    import threading

    from mixdemo.client import RemoteServer, http_status

    from .conftest import free_port

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002 - no access log in the test's output
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.startswith("/private"):
                self.send_error(401)
            else:
                super().do_GET()

    web = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}"
    try:
        assert http_status(url) == 200
        with pytest.raises(ClientError, match=r"answers \(HTTP 200\) but is not a Gradio app"):
            RemoteServer(url, timeout_s=10)
        with pytest.raises(ClientError, match=r"answers HTTP 401: check the address \(a private Space also needs"):
            RemoteServer(f"{url}/private", timeout_s=10)
    finally:
        web.shutdown()
        web.server_close()
    assert http_status(url) is None and http_status("owner/space") is None  # nothing there; a Space id: not probed


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches the child's loaded libraries in /proc")
def test_ctrl_c_while_the_client_still_imports_is_one_line_too(tmp_path):
    """SIGINT to ``python -m mixdemo.client`` as soon as it has loaded numpy (the first import after its Ctrl-C
    handler; torch and MONAI follow, seconds on 2 cores; on a faster machine it then waits on a server that never
    answers): one line, exit status 130, no traceback."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    def loaded_numpy(pid: int) -> bool:
        try:
            return "_multiarray_umath" in Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return False

    silent = socket.socket()  # listens, never accepts: a connection hangs
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "mixdemo.client", "--server",
                                 f"http://127.0.0.1:{silent.getsockname()[1]}", str(tmp_path / "scan.nii.gz"),
                                 "-o", str(tmp_path / "seg.nii.gz")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not loaded_numpy(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        silent.close()
    assert proc.returncode == 130, err
    assert err.strip().startswith("interrupted:") and "Traceback" not in err


def test_a_registration_warning_is_its_own_line_and_the_batch_names_the_scan(fake_main, capsys, monkeypatch):
    """A poor registration's warning is printed on its own line (not as a progress line), the scan's last line says
    to check its segmentation, and a batch ends naming the scans that warned."""
    import dataclasses

    from mixdemo import client

    scans, _, out = fake_main
    load_target = client.load_target

    def warned_first(path, **kwargs):
        target = load_target(path, **kwargs)
        return dataclasses.replace(target, warning="the registration looks poor") if "name_a" in str(path) else target

    monkeypatch.setattr(client, "load_target", warned_first)
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 0
    lines = err.splitlines()
    assert "warning: scan 1 of 2: the registration looks poor" in lines
    assert any(line.startswith("scan 1 of 2: wrote the segmentation") and "check it before use" in line for line in lines)
    assert any(line.startswith("scan 2 of 2: wrote the segmentation") and "check" not in line for line in lines)
    assert lines[-1] == "warning: the registration of scan 1 warned: check its segmentation before use"


def test_a_d_for_other_classes_is_refused_before_the_public_bank_is_built(fake_main, capsys, monkeypatch):
    from mixdemo import client
    from mixdemo.models import UnmixingNet

    scans, loads, out = fake_main
    monkeypatch.setattr(client, "unmixing_model", lambda required=False, name=None: UnmixingNet())
    monkeypatch.setattr(FakeRemote, "classes", lambda self: ["background", "GM", "WM", "CSF", "lesion"])
    code, err = _run_main([scans[0], "-o", str(out / "s.nii.gz"), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "The client's D unmixes 4 classes, but the server's model gives 5 classes" in err
    assert loads == [] and not FakeRemote.requests


# ------------------------------------------------------------------------------ a server of another version
class InfoRemote(RemoteServer):
    """The real RemoteServer (its server_info reading and its answer's check) over a stand-in connection: server_info
    answers ``reported``; segment_proxy answers ``answer_classes`` channels of probabilities for what was sent."""

    reported: object = {}
    answer_classes = 4
    requests: list[tuple[int, ...]] = []
    info_failures = 0  # how many server_info calls fail before one answers
    info_error: type = ConnectionError  # how they fail
    listed: set[str] | None = None  # the endpoints the app lists (None: its API could not be listed)

    def __init__(self, url, **kwargs):
        from types import SimpleNamespace

        self.url, self.separate_requests, self._sent = url, False, None
        self._client = SimpleNamespace(predict=self._predict)
        self._endpoint_names = InfoRemote.listed

    def _predict(self, *args, api_name):
        if api_name == "/server_info":
            if InfoRemote.info_failures:
                InfoRemote.info_failures -= 1
                raise InfoRemote.info_error("the connection dropped")
            return InfoRemote.reported
        self._sent = np.load(args[0]["path"]).shape
        InfoRemote.requests.append(self._sent)
        return {"path": "mixed_probs.npy"}

    def _fetch(self, answer, most_bytes):
        k, *sides = self._sent
        return np.full((k, InfoRemote.answer_classes, *sides), 1 / InfoRemote.answer_classes, np.float16)

    def new_session(self):
        pass

    def close(self):
        pass


@pytest.fixture
def info_main(fake_main, monkeypatch):
    """fake_main with the real RemoteServer's reading of what a server of another version reports."""
    from mixdemo import client

    monkeypatch.setattr(client, "RemoteServer", InfoRemote)
    monkeypatch.setattr(InfoRemote, "requests", [])
    monkeypatch.setattr(InfoRemote, "answer_classes", 4)
    monkeypatch.setattr(InfoRemote, "info_failures", 0)
    monkeypatch.setattr(InfoRemote, "info_error", ConnectionError)
    monkeypatch.setattr(InfoRemote, "listed", None)
    return fake_main


def _version_refusal(fake, capsys, reported) -> str:
    scans, _, out = fake
    InfoRemote.reported = reported
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and err.count("error:") == 1, err
    assert "version" in err and "update" in err, err
    assert InfoRemote.requests == [], err  # refused before any proxy is sent
    return err


def test_a_server_of_this_version_or_an_older_one_is_served(info_main, capsys):
    """The control: today's server_info, and an older server's (no max_request_voxels, no precision), segment."""
    from mixdemo import client
    from mixdemo.server import WIRE_FORMAT

    assert client.WIRE_FORMAT == WIRE_FORMAT  # the client's copy of the server's
    scans, _, out = info_main
    for reported in ({"format": WIRE_FORMAT, "classes": ["background", "GM", "WM", "CSF"], "max_k": 8,
                      "max_request_voxels": 8 * 144 * 192 * 160, "model_sha256": "a" * 64, "precision": "float32"},
                     {"format": WIRE_FORMAT, "classes": ["background", "GM", "WM", "CSF"], "max_k": 8}, {}):
        InfoRemote.reported = reported
        code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
        assert code == 0 and "error" not in err, err


def test_a_server_info_that_fails_is_asked_again_then_refused_not_taken_as_the_phantoms_defaults(info_main, capsys):
    """A listed server_info that failed once was read as a server that says nothing: the phantoms' four classes,
    no grid, this client's limits, and the scans went out to a server of five classes, to fail after its work. Now
    it is asked again; failing twice, nothing is sent."""
    from mixdemo.server import WIRE_FORMAT

    scans, _, out = info_main
    InfoRemote.listed = {"/segment_proxy", "/server_info"}
    InfoRemote.reported = {"format": WIRE_FORMAT, "classes": ["background", "GM", "WM", "CSF", "lesion"]}
    InfoRemote.answer_classes = 5
    InfoRemote.info_failures = 2
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and err.count("error:") == 1 and "server_info failed twice" in err, err
    assert "connection to the server was lost" in err and InfoRemote.requests == [], err
    InfoRemote.info_failures = 1  # once: asked again, and its five classes read (the defaults' four fail the shape)
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 0 and "error" not in err and InfoRemote.requests, err


def test_a_server_that_does_not_list_server_info_is_one_of_an_older_version(info_main, capsys):
    """The control: where the app's API could not be listed, a failing server_info is a server without it, as
    before (an older server of this project, which still segments)."""
    scans, _, out = info_main
    InfoRemote.reported, InfoRemote.info_failures = {}, 5
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 0 and "error" not in err and InfoRemote.requests, err


@pytest.mark.parametrize("reported", [{"format": "mixdemo-proxy-npy/2"}, "a server_info that is no longer a dict"])
def test_a_server_of_another_wire_format_is_refused_naming_the_version_mismatch(info_main, capsys, reported):
    """A server_info this client cannot read, or another wire format, is one message before any proxy is sent (it
    was ignored: the proxies went to a server whose answer this client may misread)."""
    err = _version_refusal(info_main, capsys, reported)
    assert ("'mixdemo-proxy-npy/2', this client 'mixdemo-proxy-npy/1'" in err) == isinstance(reported, dict)


@pytest.mark.parametrize("limits", [{"max_k": None}, {"max_k": "unlimited"}, {"max_request_voxels": [35389440]}])
def test_request_limits_this_client_cannot_read_are_refused_naming_the_version_mismatch(info_main, capsys, limits):
    """Limits of another form were a traceback (None: int() raised a TypeError nobody caught) or a misleading
    message (int()'s "invalid literal" as the scan's error, once per scan)."""
    from mixdemo.server import WIRE_FORMAT

    err = _version_refusal(info_main, capsys, {"format": WIRE_FORMAT, **limits})
    assert next(iter(limits)) in err


@pytest.mark.parametrize("grid", ["240x240x155", {"x": 240, "y": 240, "z": 155}, [240, 240, 155, 1], [0, 24, 24]])
def test_a_grid_this_client_cannot_read_is_refused_naming_the_version_mismatch(info_main, capsys, grid):
    """A server that says its grid in another form was read as one that does not say: the scans went out on the
    references' grid, whatever the server's model works on, and came back as a segmentation."""
    from mixdemo.server import WIRE_FORMAT

    assert "grid_shape" in _version_refusal(info_main, capsys, {"format": WIRE_FORMAT, "grid_shape": grid})


@pytest.mark.parametrize("classes", [[{"name": n} for n in ("background", "GM", "WM", "CSF", "lesion")],
                                     {"0": "background", "1": "GM", "2": "WM", "3": "CSF", "4": "lesion"}, ["all"]])
def test_classes_this_client_cannot_read_are_refused_naming_the_version_mismatch(info_main, capsys, classes):
    """Classes said in another form were read as a server that does not say (the phantoms' four): a server of five
    answered, and each scan failed on "answered with shape (…5…); expected (…4…)", after its requests."""
    from mixdemo.server import WIRE_FORMAT

    InfoRemote.answer_classes = 5
    assert "classes" in _version_refusal(info_main, capsys, {"format": WIRE_FORMAT, "classes": classes})


@pytest.mark.parametrize("sha", [{"S": "b" * 64}, 12345])
def test_a_checksum_this_client_cannot_read_is_refused_naming_the_version_mismatch(info_main, capsys, sha):
    """A model_sha256 that is not a string reached the D's pairing check, which sliced it: a TypeError traceback."""
    from mixdemo.models import UnmixingNet
    from mixdemo.server import WIRE_FORMAT
    from mixdemo.weights import write_training_record

    scans, _, out = info_main
    UnmixingNet().save_pretrained(out.parent / "weights" / "d-a")
    write_training_record(out.parent / "weights" / "d-a", {"mode": "private", "segmentation_sha256": "a" * 64},
                          "mixdemo.models.UnmixingNet")
    InfoRemote.reported = {"format": WIRE_FORMAT, "model_sha256": sha}
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880", "--unmixing", "d-a"], capsys)
    assert code == 2 and err.count("error:") == 1 and "version" in err and "model_sha256" in err, err
    assert InfoRemote.requests == []
    InfoRemote.reported = {"format": WIRE_FORMAT, "model_sha256": "b" * 64}  # the control: a string is read
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880", "--unmixing", "d-a"], capsys)
    assert code == 0 and "was trained with the S aaaaaaaaaaaa…, but the server serves bbbbbbbbbbbb…" in err, err


def test_a_server_whose_queue_is_full_is_named_busy_in_one_line(info_main, capsys):
    """More clients at once than the server's queue holds (max_size 32): a client turned away at its server_info was
    asked again at once (as full) and told "server_info failed twice, so this client does not know its classes, grid
    or limits", read as a faulty server; one turned away at segment_proxy "The server refused or failed the
    request". Both now say the server is busy, in one line, exit status 2, nothing sent."""
    from gradio_client.utils import QueueError

    from mixdemo import client
    from mixdemo.server import WIRE_FORMAT

    scans, _, out = info_main
    InfoRemote.listed = {"/segment_proxy", "/server_info"}
    InfoRemote.reported = {"format": WIRE_FORMAT, "classes": ["background", "GM", "WM", "CSF"]}
    full = "Queue is full! Please try again."  # gradio_client's words for the server's 503 at queue/join
    InfoRemote.info_error, InfoRemote.info_failures = (lambda _msg: QueueError(full)), 1
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and err.count("error:") == 1 and "busy" in err and "failed twice" not in err, err
    assert InfoRemote.requests == [] and InfoRemote.info_failures == 0, err  # asked once, nothing sent
    assert client.request_failure(QueueError(full)) == client.SERVER_BUSY


def test_a_label_map_given_as_the_target_is_refused_before_any_request(tmp_path):
    """The client (and the app, which loads its upload the same way) took a seg.nii.gz for a scan and segmented it."""
    import nibabel as nib

    from mixdemo.client import load_target
    from mixdemo.io import ScanError

    labels = np.zeros((40, 48, 40), np.uint8)
    labels[8:-8, 8:-8, 8:-8] = 2
    labels[14:-14, 14:-14, 14:-14] = 1
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "seg.nii.gz"))
    with pytest.raises(ScanError, match=r"looks like a label map \(3 distinct whole-number values\)"):
        load_target(tmp_path / "seg.nii.gz")


def test_an_unexpected_error_on_one_scan_of_a_batch_lets_the_others_go_on(fake_main, capsys, monkeypatch):
    """A fault that is no refusal (a RuntimeError from a library, say) on one scan ended the whole batch with a
    traceback; it now fails that scan by its type alone (its message may name the file) and the others are written.
    A single scan keeps its traceback, which is what the user then needs."""
    from mixdemo import client

    scans, _, out = fake_main
    real = client.segment_file

    def flaky(scan, *args, **kwargs):
        if scan == scans[0]:
            raise RuntimeError(f"deep inside a library, reading {scan}")
        return real(scan, *args, **kwargs)

    monkeypatch.setattr(client, "segment_file", flaky)
    code, err = _run_main([*scans, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "scan 1 of 2: failed unexpectedly (RuntimeError)" in err
    assert "1 of 2 scans failed (scan 1); the others were written" in err
    assert (out / "private_name_b_seg.nii.gz").is_file() and not (out / "private_name_a_seg.nii.gz").exists()
    with pytest.raises(RuntimeError, match="deep inside"):
        client.main([scans[0], "-o", str(out / "one.nii.gz"), "--server", "http://127.0.0.1:7880"])


def test_a_batch_in_which_every_scan_failed_does_not_say_the_others_were_written(fake_main, capsys):
    """The batch's closing line: 'the others were written' only when some were; when every scan failed (the server
    went down before the first answer, every file missing) it says none was."""
    scans, _, out = fake_main
    missing = [s + ".missing" for s in scans]
    code, err = _run_main([*missing, "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "2 of 2 scans failed (scan 1, 2)" in err
    assert "the others were written" not in err and "none was written" in err
    code, err = _run_main([missing[0], scans[1], "-o", str(out), "--server", "http://127.0.0.1:7880"], capsys)
    assert code == 2 and "1 of 2 scans failed (scan 1); the others were written" in err  # the control
