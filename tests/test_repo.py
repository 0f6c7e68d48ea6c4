"""The repository keeps its promises: CI runs the README's test command verbatim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mixdemo.weights import sha256_file

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_opens_with_two_commands_run_app_and_run_tests():
    commands = _readme_commands()[:2]
    assert "python app.py" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _readme_commands()[1]
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_requirements_pin_the_cpu_torch_and_everything_else():
    reqs = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert "torch==2.13.0" in reqs
    assert all("==" in line for line in reqs), reqs


def test_every_mixdemo_variable_the_code_reads_is_in_the_readme_and_back():
    """The settings a user can give through the environment: each one the library, the app or the training commands
    name is documented in the README (``$MIXDEMO_CACHE``, where the examples and the public bank are written, was
    not), and each one the README names is read (by the code, or by the tests: the screenshots' folder)."""
    variable = re.compile(r"MIXDEMO_[A-Z][A-Z0-9_]*[A-Z0-9]")
    sources = [*REPO.glob("mixdemo/**/*.py"), *REPO.glob("training/*.py"), REPO / "app.py"]
    read = {name for path in sources for name in variable.findall(path.read_text(encoding="utf-8"))}
    read.discard("MIXDEMO_LAYOUT")  # a Python constant (mixdemo.data), no variable
    tests = {name for path in REPO.glob("tests/*.py") for name in variable.findall(path.read_text(encoding="utf-8"))}
    documented = set(variable.findall((REPO / "README.md").read_text(encoding="utf-8")))
    assert read - documented == set()
    assert documented - read - tests == set()


def test_readme_figures_are_generated_from_results_json():
    from training import report

    assert report.main(["--check"]) == 0, "run python -m training.report"


def test_report_check_fails_on_a_readme_whose_block_differs_or_lost_a_marker_and_writes_nothing(tmp_path, monkeypatch):
    """--check passes the README as rendered; a block with a figure changed, a block with only its spacing changed,
    and a block whose closing marker was lost (nothing would render it again) fail it, and it rewrites none."""
    from training import report

    readme = (REPO / "README.md").read_text()
    monkeypatch.setattr(report, "REPO", tmp_path)  # results/ stay the committed ones
    (tmp_path / "weights").symlink_to(REPO / "weights")  # the blocks that read the shipped models' records
    (tmp_path / "README.md").write_text(readme)
    assert report.main(["--check"]) == 0
    start, end = "<!-- results:bench -->\n", "<!-- /results:bench -->"
    block = readme[readme.index(start):readme.index(end) + len(end)]
    assert "median of 3" in block and " |\n" in block
    for stale in (block.replace("median of 3", "median of 4"), block.replace(" |\n", " | \n", 1),
                  block.replace(end, "")):
        (tmp_path / "README.md").write_text(readme.replace(block, stale))
        assert report.main(["--check"]) == 1
        assert (tmp_path / "README.md").read_text() == readme.replace(block, stale)


def test_every_image_the_readme_shows_is_committed():
    import re

    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (REPO / "README.md").read_text())
    assert "results/segmentation_panels.png" in images
    assert [path for path in images if not (REPO / path).is_file()] == []


def test_the_ds_full_protocol_table_has_the_default_first_and_every_d_of_that_protocol(tmp_path, monkeypatch):
    """The README's table of the Ds on the segmentation table's protocol: the default's row from
    results/segmentation.json first, then one per results/segmentation-<D>.json of the same protocol, best
    Learned + TTA first; a file of another protocol (or another baseline) is left out."""
    import shutil

    from mixdemo.weights import DEFAULT_UNMIXING
    from training import report

    default = json.loads((REPO / "results/segmentation.json").read_text())
    assert default["models"]["unmixing"] == DEFAULT_UNMIXING
    for path in (REPO / "results").glob("segmentation*.json"):
        shutil.copy(path, tmp_path / path.name)
    other = json.loads((tmp_path / "segmentation-unmixing-p4.json").read_text())
    (tmp_path / "segmentation-unmixing-x.json").write_text(json.dumps({**other, "n_volumes": 3}))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    rows = [line for line in report.ds_full_protocol_md(default).splitlines() if line.startswith("| `")]
    files = sorted(p.stem for p in (REPO / "results").glob("segmentation-*.json")
                   if not p.stem.startswith(report.REPLICATION_PREFIX))  # the same networks on other cohorts
    assert len(rows) == 1 + len(files) and rows[0].startswith(f"| `{DEFAULT_UNMIXING}` (default) |")
    assert "`results/segmentation.json`" in rows[0] and not any("unmixing-x" in r for r in rows)
    tta = [float(r.split(" | ")[3]) for r in rows[1:]]
    assert tta == sorted(tta, reverse=True)


def test_default_alpha_range_is_backed_by_the_committed_privacy_sweep():
    """The default α range must buy privacy over the wider U(0.3, 0.7) at a small Dice cost, as measured."""
    from mixdemo.mixing import DEFAULT_ALPHA_RANGE

    sweep = {tuple(r["alpha_range"]): r for r in json.loads((REPO / "results/privacy.json").read_text())["alpha_sweep"]}
    chosen, wider = sweep[tuple(DEFAULT_ALPHA_RANGE)], sweep[(0.3, 0.7)]
    assert max(DEFAULT_ALPHA_RANGE) <= 0.5  # the target never dominates its proxy
    assert chosen["reid_map"] < wider["reid_map"]
    assert chosen["output_leakage_dice"] < wider["output_leakage_dice"]
    assert chosen["dice_learned_tta"] > wider["dice_learned_tta"] - 0.05


def test_the_d_designs_table_shows_the_default_ds_row_measured_on_its_protocol():
    """The default D is not among compare_unmixing's designs (each trained on 32³ patches); the README's
    table takes its row from the record of its training on larger patches (report.D_TRAINED_ON), measured on
    the same protocol, and says so; so does every other shipped D of that registry."""
    from mixdemo.weights import DEFAULT_UNMIXING
    from training.report import D_TRAINED_ON, d_designs_md, d_label

    designs = json.loads((REPO / "results/d_designs.json").read_text())
    trained_on = json.loads((REPO / f"results/{D_TRAINED_ON[DEFAULT_UNMIXING]}.json").read_text())
    assert trained_on["protocol"] == designs["protocol"] and trained_on["after"]["model"] == DEFAULT_UNMIXING
    rows = [line for line in d_designs_md(designs).splitlines() if line.startswith("| `")]
    assert rows[0].startswith(f"| `{DEFAULT_UNMIXING}` (default) |")
    assert rows[0].endswith(f"| {trained_on['after']['learned_tta']['avg']:.3f} | {trained_on['after']['tta_over_baseline']:.3f} |")
    records = [json.loads((REPO / f"results/{n}.json").read_text()) for n in D_TRAINED_ON.values()]
    assert len(rows) == len(designs["rows"]) + sum(bool(r["shipped"]) for r in records)
    assert all(f"results/{n}.json" in d_designs_md(designs) for n in D_TRAINED_ON.values())
    for record in records:  # a shipped D trained on larger patches: its row, from its record
        after = record["after"]
        assert not record["shipped"] or any(r.startswith(f"| {d_label(after['model'])} |")
                                            and f"| {after['learned_tta']['avg']:.3f} |" in r for r in rows)


def test_each_d_card_compares_it_with_the_ds_its_records_name():
    """A D's card sections follow its records: the D designs table for a D other than the default, the record of
    the step that made it from another D (titled with that start) and the table of every D on the full protocol when it
    has a row there, and the table of Ds averaged (results/d_ensembles.json) when it has a row there."""
    from mixdemo.weights import DEFAULT_UNMIXING
    from training.refresh_baseline import default_files
    from training.report import D_TRAINED_ON, ENSEMBLES_SECTION, FULL_PROTOCOL_SECTION, d_comparisons

    default = d_comparisons(DEFAULT_UNMIXING)
    start = json.loads((REPO / f"results/{D_TRAINED_ON[DEFAULT_UNMIXING]}.json").read_text())["before"]["model"]
    made_from = json.loads((REPO / f"weights/{DEFAULT_UNMIXING}/training.json").read_text())["calibration"]["from_model"]
    compared = (f"Against the D it was made from (`{start}`)" if start == made_from  # else the D it replaced
                else f"Against `{start}`, the default D when it was measured (the same proxies)")
    assert list(default) == [compared, FULL_PROTOCOL_SECTION, ENSEMBLES_SECTION]
    assert f"| `{DEFAULT_UNMIXING}` |" in default[ENSEMBLES_SECTION]
    other = next(d for d in D_TRAINED_ON if d != DEFAULT_UNMIXING)  # a D of the registry, not the default
    other_start = json.loads((REPO / f"results/{D_TRAINED_ON[other]}.json").read_text())["before"]["model"]
    sections = d_comparisons(other)
    assert list(sections)[:2] == ["Evaluation against the default D (phantom test set)",
                                  f"Against the D it was made from (`{other_start}`)"]
    assert f"| `{other}` |" in sections["Evaluation against the default D (phantom test set)"]
    full_protocol = d_comparisons("unmixing-p4")[FULL_PROTOCOL_SECTION]  # the one table, its row among them
    assert "| `unmixing-p4` |" in full_protocol and f"| `{DEFAULT_UNMIXING}` (default) |" in full_protocol
    assert FULL_PROTOCOL_SECTION not in d_comparisons("unmixing-p2")  # no results/segmentation-unmixing-p2.json
    assert ENSEMBLES_SECTION not in d_comparisons("unmixing-p2")  # not among the Ds averaged
    files = {p.name for p in default_files()}  # refresh_baseline: every file quoting the baseline beside private nets
    assert {f"{r}.json" for r in D_TRAINED_ON.values()} | {"segmentation.json", "d_designs.json"} <= files
    assert "baseline_large_patches.json" not in files  # trains the baseline itself: its rows are not to be replaced


@pytest.mark.parametrize("name", ["d_trained_on", "s_trained_on", "d_large_patches"])
def test_the_trained_on_records_compare_against_the_shipped_models_and_the_readme_quotes_them(name: str):
    """results/{d,s}_trained_on.json and d_large_patches.json (more training of the end-to-end D, or of S + D):
    their 'before' is that D's row of results/d_designs.json, they started from the shipped S and that D,
    a shipped 'after' is the committed model folder (d_large_patches': unmixing-96, as report.D_TRAINED_ON says),
    and the README's figures are the files'."""
    from training.report import D_TRAINED_ON

    record = json.loads((REPO / f"results/{name}.json").read_text())
    shipped = json.loads((REPO / "weights/unmixing/training.json").read_text())["sha256"]
    seg = json.loads((REPO / "weights/segmentation/training.json").read_text())["sha256"]
    designs = json.loads((REPO / "results/d_designs.json").read_text())
    before_row = next(r for r in designs["rows"] if r["model"] == "unmixing")
    before, after = record["before"], record["after"]
    assert before["weights_sha256"] == shipped == record["training"]["init_from_sha256"]["unmixing"]
    assert record["training"]["init_from_sha256"]["segmentation"] == seg
    assert before["learned_tta"] == before_row["learned_tta"] and before["baseline"] == after["baseline"]
    assert after["weights_sha256"] != shipped and after.get("segmentation_sha256") != seg
    if record["shipped"] is not False:  # shipped beside the default D: its folder holds the compared weights
        folder = REPO / "weights" / after["model"]
        assert record["shipped"].startswith(f"weights/{after['model']},")
        assert json.loads((folder / "training.json").read_text())["sha256"] == after["weights_sha256"]
        assert sha256_file(folder / "model.safetensors") == after["weights_sha256"]
        assert record["commands"][0] == json.loads((folder / "training.json").read_text())["command"]
    trained_on = {record_name: d for d, record_name in D_TRAINED_ON.items()}
    if name in trained_on:  # a D of the registry is the one its record shows gaining
        assert after["model"] == trained_on[name] and record["shipped"].startswith(f"weights/{trained_on[name]},")
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    assert f"Learned {before['learned']['avg']:.3f} → {after['learned']['avg']:.3f}" in readme
    assert f"Learned + TTA {before['learned_tta']['avg']:.3f} → {after['learned_tta']['avg']:.3f}" in readme
    assert f"`results/{name}.json`" in readme
    if name == "s_trained_on":  # S's own gain shows in the naive unmixing
        assert f"Naive + TTA {before['naive_tta']['avg']:.3f} → {after['naive_tta']['avg']:.3f}" in readme


def test_the_s_large_patches_record_starts_from_the_shipped_s_and_default_d_and_the_readme_quotes_it():
    """results/s_large_patches.json (S + unmixing-96, the default D then, trained on together on 64³ patches): it
    started from the shipped S and unmixing-96, its 'before' is that D's row of d_large_patches.json (the same
    protocol), its 'after' is another S and D, and the README's figures are the file's."""
    start_d = "unmixing-96"  # the D it started from (the default D when it ran)

    record = json.loads((REPO / "results/s_large_patches.json").read_text())
    large = json.loads((REPO / "results/d_large_patches.json").read_text())
    shipped = {n: json.loads((REPO / f"weights/{n}/training.json").read_text())["sha256"]
               for n in ("segmentation", start_d)}
    before, after = record["before"], record["after"]
    assert record["training"]["init_from_sha256"] == shipped and record["training"]["init_unmixing"] == start_d
    assert before["weights_sha256"] == shipped[start_d] == large["after"]["weights_sha256"]
    assert before["segmentation_sha256"] == shipped["segmentation"]
    assert all(before[k] == large["after"][k] for k in ("learned", "learned_tta", "naive_tta", "baseline"))
    assert record["protocol"].startswith(large["protocol"].split(" --unmixing")[0])
    assert before["baseline"] == after["baseline"]
    assert after["weights_sha256"] not in shipped.values() and after["segmentation_sha256"] not in shipped.values()
    assert record["shipped"] is False and not (REPO / "weights" / after["model"]).exists()
    assert "--segmentation segmentation-64 --unmixing unmixing-64" in record["commands"][1]
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    for row in ("naive_tta", "learned", "learned_tta"):
        label = {"naive_tta": "Naive + TTA", "learned": "Learned", "learned_tta": "Learned + TTA"}[row]
        assert f"{label} {before[row]['avg']:.3f} → {after[row]['avg']:.3f}" in readme
    assert "`results/s_large_patches.json`" in readme


@pytest.mark.parametrize("record_name, start, patch", [("d_p2_large_patches", "unmixing-p2", 2),
                                                        ("d_p4_large_patches", "unmixing-p4", 4)])
def test_a_patch_ds_large_patches_record_starts_from_the_shipped_design_and_the_readme_quotes_it(record_name, start,
                                                                                                patch):
    """results/d_p{2,4}_large_patches.json (a D on patches trained on 96³ patches): it started from the shipped
    S and that design, its 'before' is the design's row of d_designs.json, a shipped 'after' is the committed
    folder (and not an unshipped one), report.D_TRAINED_ON names it, and the README's figures are the file's."""
    from training.report import D_TRAINED_ON

    record = json.loads((REPO / f"results/{record_name}.json").read_text())
    designs = json.loads((REPO / "results/d_designs.json").read_text())
    shipped = {n: json.loads((REPO / f"weights/{n}/training.json").read_text())["sha256"]
               for n in ("segmentation", start)}
    before, after = record["before"], record["after"]
    assert record["training"]["init_from_sha256"] == shipped
    assert {k: v for k, v in before.items() if k != "source"} == next(r for r in designs["rows"] if r["model"] == start)
    assert record["protocol"] == designs["protocol"] and before["baseline"] == after["baseline"]
    assert after["model"] == f"{start}-96" and after["patch"] == before["patch"] == patch
    assert D_TRAINED_ON[after["model"]] == record_name
    folder = REPO / "weights" / after["model"]
    if record["shipped"]:
        assert sha256_file(folder / "model.safetensors") == after["weights_sha256"]
        assert json.loads((folder / "training.json").read_text())["command"] == record["commands"][0]
    else:
        assert not folder.exists()
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    assert f"Learned {before['learned']['avg']:.3f} → {after['learned']['avg']:.3f}" in readme
    assert f"Learned + TTA {before['learned_tta']['avg']:.3f} → {after['learned_tta']['avg']:.3f}" in readme
    assert f"`results/{record_name}.json`" in readme


def test_the_calibrated_ds_record_starts_from_the_d_it_calibrated_and_the_readme_quotes_it():
    """results/d_p2_calibrated.json (``training.calibrate``'s copy of unmixing-p2-96): its 'before' is
    that D's row on the same protocol (results/d_p2_large_patches.json) on the same proxies, its 'after' the shipped
    folder, its training the folder's calibration record, and the README's figures are the file's."""
    from training.report import D_TRAINED_ON

    record = json.loads((REPO / "results/d_p2_calibrated.json").read_text())
    start = json.loads((REPO / "results/d_p2_large_patches.json").read_text())
    folder = REPO / "weights" / record["after"]["model"]
    calibration = json.loads((folder / "training.json").read_text())["calibration"]
    before, after = record["before"], record["after"]
    assert D_TRAINED_ON[after["model"]] == "d_p2_calibrated" and after["model"] == "unmixing-p2-96-cal"
    assert {k: v for k, v in before.items() if k != "source"} == start["after"] and record["protocol"] == start["protocol"]
    assert before["weights_sha256"] == calibration["from_sha256"] and before["model"] == calibration["from_model"]
    assert before["naive_tta"] == after["naive_tta"] and before["baseline"] == after["baseline"]  # the same proxies
    assert sha256_file(folder / "model.safetensors") == after["weights_sha256"]
    assert record["training"] == calibration and record["commands"][0] == calibration["command"]
    assert f"--models {after['model']} " in record["commands"][1]
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    assert f"Learned {before['learned']['avg']:.3f} → {after['learned']['avg']:.3f}" in readme
    assert f"Learned + TTA {before['learned_tta']['avg']:.3f} → {after['learned_tta']['avg']:.3f}" in readme
    assert "`results/d_p2_calibrated.json`" in readme


def _screened_against_the_default(name: str) -> tuple[dict, dict]:
    """(record, the default D's record) of a candidate D screened on the D designs' protocol: its 'before' is the
    default's row, on the same proxies; its commands name no machine's paths; the README quotes its figures."""
    record = json.loads((REPO / f"results/{name}.json").read_text())
    default = json.loads((REPO / "results/d_p2_calibrated.json").read_text())
    before, after = record["before"], record["after"]
    assert {k: v for k, v in before.items() if k != "source"} == default["after"]
    assert before["naive_tta"] == after["naive_tta"] and record["protocol"] == default["protocol"]
    assert "--init-from weights " in record["commands"][0]
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    assert f"Learned + TTA {before['learned_tta']['avg']:.3f} → {after['learned_tta']['avg']:.3f} " \
           f"({before['learned_tta']['avg']:.4f} → {after['learned_tta']['avg']:.4f})" in readme
    assert f"Learned {before['learned']['avg']:.3f} → {after['learned']['avg']:.3f}" in readme
    return record, default


def test_the_d_second_leg_record_is_screened_against_the_default_and_the_readme_quotes_it():
    """results/d_p2_96_second_leg.json (not shipped): its 'before' is the default D's row on the same protocol and
    proxies, its 'after' other weights, its shipping follows its rule, and the README's figures are the file's."""
    record, default = _screened_against_the_default("d_p2_96_second_leg")
    before, after = record["before"], record["after"]
    assert after["weights_sha256"] not in (before["weights_sha256"], record["calibration"]["from_sha256"])  # calibrated
    assert record["training"]["init_from_sha256"]["unmixing-p2-96"] == default["before"]["weights_sha256"]
    beat = after["learned_tta"]["avg"] > before["learned_tta"]["avg"]
    assert record["shipped"].startswith("no:") and not beat  # the rule: no full run unless it beats the default
    assert "`results/d_p2_96_second_leg.json`" in (REPO / "README.md").read_text()


def test_the_deployment_alpha_d_record_follows_its_rules_and_ships_the_default_d():
    """results/d_p2_96_alpha_deployment.json (D trained on the default α range, then calibrated): its 'before' is the
    D it replaced (unmixing-p2-96-cal) on the same protocol and proxies; it was trained on that range; it passed
    its screen, the full protocol (the shipped table, the same draws as the replaced D's) and the check outside
    that range, so it is the shipped default D; the README and its training note quote the record's figures."""
    from mixdemo.mixing import DEFAULT_ALPHA_RANGE
    from mixdemo.weights import DEFAULT_UNMIXING

    record, default = _screened_against_the_default("d_p2_96_alpha_deployment")
    before, after = record["before"], record["after"]
    assert tuple(record["training"]["alpha_range"]) == tuple(DEFAULT_ALPHA_RANGE)
    assert record["training"]["init_from_sha256"]["unmixing-p2-96"] == default["before"]["weights_sha256"]
    assert record["screen"] == "passed" and after["learned_tta"]["avg"] > before["learned_tta"]["avg"]
    full, outside = record["full_protocol"], record["outside_deployment_range"]
    seg = json.loads((REPO / "results/segmentation.json").read_text())
    replaced = json.loads((REPO / "results/segmentation-unmixing-p2-96-cal.json").read_text())
    for key in ("learned", "learned_tta"):  # the shipped table is the candidate's run, the replaced D's its own
        assert full["candidate"][key] == seg["dice"][key] and full["default"][key] == replaced["dice"][key]
    assert full["candidate"]["icc"] == seg["icc"] and full["default"]["icc"] == replaced["icc"]
    assert full["candidate"]["naive_tta"] == seg["dice"]["naive_tta"] == replaced["dice"]["naive_tta"]  # same draws
    assert full["passes"] == (full["candidate"]["learned_tta"]["avg"] > full["default"]["learned_tta"]["avg"]) is True
    for row in outside["rows"]:
        assert row["candidate"]["naive_tta"] == row["default"]["naive_tta"]  # the same proxies in each range
        diff = row["candidate"]["learned_tta"]["avg"] - row["default"]["learned_tta"]["avg"]
        assert row["difference_learned_tta"] == round(diff, 4)
        lo, hi = row["alpha_range"]
        assert hi <= DEFAULT_ALPHA_RANGE[0] or lo >= DEFAULT_ALPHA_RANGE[1]  # outside the range it was trained on
    assert outside["holds"] == all(r["difference_learned_tta"] >= -0.005 for r in outside["rows"]) is True
    assert record["reproduced"]["same_as_calibration_from_sha256"] is True
    # shipped: the folder holds the compared weights, it is the default, and its start is shipped beside it
    assert record["shipped"].startswith(f"weights/{after['model']},") and DEFAULT_UNMIXING == after["model"]
    folder = REPO / "weights" / after["model"]
    calibration = json.loads((folder / "training.json").read_text())["calibration"]
    assert sha256_file(folder / "model.safetensors") == after["weights_sha256"] == full["candidate"]["weights_sha256"]
    assert calibration == record["calibration"]
    start = REPO / "weights" / calibration["from_model"]
    assert sha256_file(start / "model.safetensors") == calibration["from_sha256"] == record["reproduced"]["first_command_sha256"]
    assert json.loads((start / "training.json").read_text())["command"] == record["commands"][0]
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    assert "`results/d_p2_96_alpha_deployment.json`" in readme
    b, a = full["default"]["learned_tta"]["avg"], full["candidate"]["learned_tta"]["avg"]
    assert f"lifted Learned + TTA {b:.3f} → {a:.3f} against `unmixing-p2-96-cal`" in readme
    note = (folder / "TRAINING_NOTE.md").read_text().replace("\n", " ")
    assert f"Learned + TTA {b:.3f} → {a:.3f}" in note
    for row in outside["rows"]:
        lo, hi = row["alpha_range"]
        assert (f"U({lo:g}, {hi:g}): {row['default']['learned_tta']['avg']:.3f} → "
                f"{row['candidate']['learned_tta']['avg']:.3f}") in note


def _baseline_before_calibration() -> dict:
    """The shipped baseline as trained, before ``training.calibrate`` replaced it in place: the 'after' of
    results/baseline_large_patches.json, whose weights the calibration record names."""
    record = json.loads((REPO / "results/baseline_large_patches.json").read_text())["after"]
    calibration = json.loads((REPO / "weights/baseline/training.json").read_text())["calibration"]
    assert calibration["from_sha256"] == record["weights_sha256"] and calibration["from_model"] == "baseline"
    return record


def test_the_s_alpha_record_is_judged_against_the_shipped_pair_and_not_shipped():
    """results/s_alpha_deployment.json (S and D trained on together at the client's α): each 'default' row is the
    committed row it names (the same protocol and draws), its gates are the rows' comparisons, the shipped S is not
    its S, and the README quotes its figures."""
    from mixdemo.mixing import DEFAULT_ALPHA_RANGE

    record = json.loads((REPO / "results/s_alpha_deployment.json").read_text())
    deploy = json.loads((REPO / "results/d_p2_96_alpha_deployment.json").read_text())
    seg = json.loads((REPO / "results/segmentation.json").read_text())
    screen, full = record["screen"], record["full_protocol"]
    assert tuple(record["training"]["s_and_d"]["alpha_range"]) == tuple(DEFAULT_ALPHA_RANGE)
    assert record["training"]["s_and_d"]["init_from_sha256"]["segmentation"] == seg["weights_sha256"]["segmentation"]
    assert {k: screen["default"][k] for k in ("learned", "learned_tta", "naive_tta")} == \
        {k: deploy["after"][k] for k in ("learned", "learned_tta", "naive_tta")}
    assert screen["candidate"]["baseline"] == screen["default"]["baseline"]  # the same volumes
    for key in ("learned", "learned_tta", "naive_tta", "baseline"):
        assert full["default"][key] == seg["dice"][key]
    assert full["candidate"]["baseline"] == seg["dice"]["baseline"]  # the same volumes and baseline
    assert full["ratio_to_baseline"]["default"] == seg["ratio_to_baseline"]["learned_tta"]
    for gate in (screen, full):
        assert gate["passed"] == (gate["candidate"]["learned_tta"]["avg"] > gate["default"]["learned_tta"]["avg"])
    prior = {tuple(r["alpha_range"]): r["candidate"] for r in deploy["outside_deployment_range"]["rows"]}
    for row in record["outside_deployment_range"]["rows"]:
        assert row["default"] == prior[tuple(row["alpha_range"])]
        diff = row["candidate"]["learned_tta"]["avg"] - row["default"]["learned_tta"]["avg"]
        assert row["difference_learned_tta"] == round(diff, 4)
    # not shipped: the shipped S is not the candidate's, and the table is still the shipped pair's
    assert record["shipped"].startswith("no:")
    assert sha256_file(REPO / "weights/segmentation/model.safetensors") == seg["weights_sha256"]["segmentation"]
    assert record["weights_sha256"]["segmentation-a35"] != seg["weights_sha256"]["segmentation"]
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    assert "`results/s_alpha_deployment.json`" in readme
    d, c = full["default"], full["candidate"]
    assert f"Naive + TTA {d['naive_tta']['avg']:.3f} → {c['naive_tta']['avg']:.3f}" in readme
    assert f"Learned {d['learned']['avg']:.3f} → {c['learned']['avg']:.3f}, Learned + TTA " \
           f"{d['learned_tta']['avg']:.3f} → {c['learned_tta']['avg']:.3f} " \
           f"({d['learned_tta']['avg']:.4f} → {c['learned_tta']['avg']:.4f})" in readme
    ratios = full["ratio_to_baseline"]
    assert f"the ratio {ratios['default']['ratio']:.3f} → {ratios['candidate']['ratio']:.3f}" in readme
    assert ", ".join(f"{k} {d['icc'][k]['icc']:.3f} → {c['icc'][k]['icc']:.3f}" for k in ("GM", "WM", "CSF")) in readme
    for row in record["outside_deployment_range"]["rows"]:
        lo, hi = row["alpha_range"]
        assert f"{row['difference_learned_tta']:+.4f} (U({lo:g}, {hi:g}))".replace("-", "−") in readme


def test_the_baseline_record_names_the_shipped_baseline_its_start_and_the_readme_quotes_it():
    """results/baseline_large_patches.json: its 'after' is the weights weights/baseline was calibrated from, its
    'before' the weights that training started from; every segmentation table's baseline row is the calibrated
    baseline's, and the README quotes the training's and the calibration's figures."""
    record = json.loads((REPO / "results/baseline_large_patches.json").read_text())
    trained = json.loads((REPO / "weights/baseline/training.json").read_text())
    before, after = record["before"], _baseline_before_calibration()
    shipped = sha256_file(REPO / "weights/baseline/model.safetensors")
    assert shipped == trained["sha256"] != after["weights_sha256"]
    assert before["weights_sha256"] == trained["init_from_sha256"]["baseline"] != after["weights_sha256"]
    assert record["commands"][0] == trained["command"] and record["shipped"].startswith("weights/baseline,")
    seg = json.loads((REPO / "results/segmentation.json").read_text())
    assert seg["weights_sha256"]["baseline"] == shipped and seg["dice"]["baseline"]["avg"] > after["baseline"]["avg"]
    for name in ("d_designs", "d_large_patches", "segmentation-unmixing", "segmentation-unmixing-p4"):
        doc = json.loads((REPO / f"results/{name}.json").read_text())
        assert doc["baseline_refresh"]["baseline_sha256"] == shipped, name
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    b, a, c = before["baseline"], after["baseline"], seg["dice"]["baseline"]
    assert f"average Dice {b['avg']:.3f} → {a['avg']:.3f}" in readme
    assert f"CSF {b['CSF']:.3f} → {a['CSF']:.3f}" in readme and "`results/baseline_large_patches.json`" in readme
    assert f"the baseline {a['avg']:.3f} → {c['avg']:.3f} (CSF {a['CSF']:.3f} → {c['CSF']:.3f})" in readme


def test_the_calibrated_d_is_judged_against_its_start_and_the_readme_quotes_it():
    """unmixing-p2-96-cal (the default D before the α leg) is ``training.calibrate``'s copy of another shipped D:
    its record names that D's weights, and the README's before → after is that D's full-protocol row
    (results/segmentation-<start>.json) against its own (results/segmentation-unmixing-p2-96-cal.json)."""
    name = "unmixing-p2-96-cal"
    calibration = json.loads((REPO / f"weights/{name}/training.json").read_text())["calibration"]
    start = calibration["from_model"]
    assert sha256_file(REPO / f"weights/{start}/model.safetensors") == calibration["from_sha256"]
    before = json.loads((REPO / f"results/segmentation-{start}.json").read_text())
    after = json.loads((REPO / f"results/segmentation-{name}.json").read_text())
    assert before["models"]["unmixing"] == start and after["models"]["unmixing"] == name
    assert after["weights_sha256"][name] == sha256_file(REPO / f"weights/{name}/model.safetensors")
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    b, a = before["dice"]["learned_tta"]["avg"], after["dice"]["learned_tta"]["avg"]
    assert f"D's Learned + TTA {b:.3f} → {a:.3f}" in readme


def test_the_baseline_second_leg_record_starts_from_the_trained_baseline_and_the_readme_quotes_it():
    """results/baseline_second_leg.json (not shipped): its 'before' is the shipped baseline as trained (before its
    calibration) with its figures then, its 'after' other weights whose figures the README quotes."""
    record = json.loads((REPO / "results/baseline_second_leg.json").read_text())
    before, after = record["before"], record["after"]
    trained = _baseline_before_calibration()
    assert before["weights_sha256"] == trained["weights_sha256"] == record["training"]["init_from_sha256"]["baseline"]
    assert after["weights_sha256"] != trained["weights_sha256"] and record["shipped"].startswith("no:")
    assert all(before[k] == trained[k] for k in ("baseline", "baseline_3_volumes"))
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    b, a = before["baseline"], after["baseline"]
    assert f"average {b['avg']:.3f} → {a['avg']:.3f} (CSF {b['CSF']:.3f} → {a['CSF']:.3f})" in readme
    assert "`results/baseline_second_leg.json`" in readme
    note = (REPO / "weights/baseline/TRAINING_NOTE.md").read_text().replace("\n", " ")  # the card's training history
    assert f"average Dice to {a['avg']:.3f} and was not shipped (`results/baseline_second_leg.json`)" in note


def test_the_augment_and_precise_bn_record_starts_from_the_trained_baseline_and_the_readme_quotes_it():
    """results/baseline_augment_precise_bn.json (none shipped): its 'before' is the shipped baseline as trained
    (before its calibration) with its figures then; each candidate has other weights, its own commands, and the
    figures the README quotes."""
    record = json.loads((REPO / "results/baseline_augment_precise_bn.json").read_text())
    before, candidates = record["before"], {c["name"]: c for c in record["candidates"]}
    trained = _baseline_before_calibration()
    shipped = trained["weights_sha256"]
    assert before["weights_sha256"] == shipped == candidates["B"]["precise_bn_from_sha256"]
    assert candidates["C"]["precise_bn_from_sha256"] == candidates["A"]["weights_sha256"]
    assert all(before[k] == trained[k] for k in ("baseline", "baseline_3_volumes"))
    best = max(candidates.values(), key=lambda c: c["baseline"]["avg"])
    assert record["shipped"].startswith("no:") == (best["baseline"]["avg"] <= before["baseline"]["avg"])
    readme = (REPO / "README.md").read_text().replace("\n", " ")
    note = (REPO / "weights/baseline/TRAINING_NOTE.md").read_text().replace("\n", " ")
    for c in candidates.values():
        assert c["weights_sha256"] != shipped and len(c["commands"]) == 2
        assert "refresh_baseline" in c["commands"][1] and "ln -s /tmp/" in c["commands"][1]
        assert f"{c['baseline']['avg']:.3f}" in readme and f"CSF {c['baseline']['CSF']:.3f}" in readme
        assert f"{c['baseline']['avg']:.3f}" in note
    assert "`results/baseline_augment_precise_bn.json`" in readme and "`results/baseline_augment_precise_bn.json`" in note


def test_a_recorded_command_is_the_one_given_else_the_processs(monkeypatch):
    """Results and training records name the arguments a run was given (called as a function too)."""
    from training import command_line

    assert command_line("training.evaluate", ["--out", "a b.json"]) == "python -m training.evaluate --out 'a b.json'"
    monkeypatch.setattr("sys.argv", ["evaluate.py", "--quick"])
    assert command_line("training.evaluate", None) == "python -m training.evaluate --quick"


def test_a_quick_run_writes_under_results_quick_and_a_full_run_the_committed_file():
    """A smoke run without ``--out`` must not overwrite a committed results file (the README's tables come from
    them): every training command with ``--quick``, found by scanning training/ so that a new one is covered,
    parses ``--quick`` to ``results/quick/<name>`` (git-ignored) and no arguments to the committed ``results/<name>``."""
    import importlib

    takes_quick = ('"--quick"', "add_table_draw_options(p)")  # its own option, or the shared ones of training.evaluate
    modules = sorted(p.stem for p in (REPO / "training").glob("*.py") if any(t in p.read_text() for t in takes_quick))
    assert {"evaluate", "evaluate_privacy", "mirror_tta", "tta_aggregation", "reference_choice", "reliability",
            "throughput", "compare_unmixing"} <= set(modules)
    assert "/results/quick/" in (REPO / ".gitignore").read_text().splitlines()
    in_repo = lambda path: path.relative_to(REPO) if path.is_absolute() else path  # noqa: E731 - reliability's
    for module in modules:
        parse = importlib.import_module(f"training.{module}").parse_args
        full, quick = in_repo(parse([]).out), in_repo(parse(["--quick"]).out)
        assert full.parent == Path("results") and (REPO / full).is_file(), f"{module}: --out defaults to {full}"
        assert quick == Path("results", "quick", full.name), f"{module} --quick: --out defaults to {quick}"
        assert parse(["--quick", "--out", "x.json"]).out == Path("x.json"), module


def test_the_bfloat16_record_compares_the_shipped_table_and_sets_the_default_precision():
    """results/s_bfloat16.json (the segmentation table's protocol with S and the baseline in bfloat16): its float32
    side is the shipped table, the bfloat16 run used the same weights, its decision follows its rule (every average
    Dice row within 0.001), the default precision is that decision, and the README shows the record."""
    from mixdemo import weights

    record = json.loads((REPO / "results/s_bfloat16.json").read_text())
    seg = json.loads((REPO / "results/segmentation.json").read_text())
    assert record["float32"]["dice"] == seg["dice"] and record["float32"]["icc"] == seg["icc"]
    assert record["bfloat16"]["weights_sha256"] == seg["weights_sha256"]
    assert record["commands"][0].startswith("MIXDEMO_PRECISION=bfloat16 python -m training.evaluate ")
    within = all(abs(record["bfloat16"]["dice"][k]["avg"] - seg["dice"][k]["avg"]) <= 0.001 for k in seg["dice"])
    assert record["within_0_001"] == within
    assert weights.DEFAULT_PRECISION == ("auto" if within else "float32")
    assert "<!-- results:s_bfloat16 -->" in (REPO / "README.md").read_text()


def test_the_d_bfloat16_record_compares_the_shipped_default_and_sets_ds_default_precision():
    """results/d_bfloat16.json (the segmentation table's protocol with D's blocks in bfloat16, S in bfloat16 as shipped):
    its float32 side is results/s_bfloat16.json's bfloat16 run (S in bfloat16, D in float32), the same weights, the
    decision follows its rule (every average Dice row within 0.001), D's default precision is that decision, and the
    README shows the record."""
    from mixdemo import weights

    record = json.loads((REPO / "results/d_bfloat16.json").read_text())
    shipped = json.loads((REPO / "results/s_bfloat16.json").read_text())["bfloat16"]
    assert record["float32"]["dice"] == shipped["dice"] and record["float32"]["icc"] == shipped["icc"]
    assert record["bfloat16"]["weights_sha256"] == shipped["weights_sha256"]
    assert record["commands"][0].startswith("MIXDEMO_PRECISION=bfloat16 MIXDEMO_UNMIXING_PRECISION=bfloat16 "
                                            "python -m training.evaluate ")
    assert record["bfloat16"]["protocol"]["unmixing_precision"] == record["bfloat16"]["protocol"]["s_precision"] == "bfloat16"
    assert record["commands"][1].startswith("python -m training.d_precision_record ")  # the command that wrote it
    within = all(abs(record["bfloat16"]["dice"][k]["avg"] - shipped["dice"][k]["avg"]) <= 0.001 for k in shipped["dice"])
    assert record["within_0_001"] == within
    assert weights.DEFAULT_UNMIXING_PRECISION == ("auto" if within else "float32")
    assert "<!-- results:d_bfloat16 -->" in (REPO / "README.md").read_text()


def test_the_d_ensembles_record_repeats_the_shipped_tables_default_row_and_the_readme_shows_it():
    """results/d_ensembles.json runs the segmentation table's protocol: its default D's row and baseline are the
    table's Learned + TTA and baseline (same weights, volumes, references and α), and the README shows it."""
    from mixdemo.weights import DEFAULT_UNMIXING

    record = json.loads((REPO / "results/d_ensembles.json").read_text())
    seg = json.loads((REPO / "results/segmentation.json").read_text())
    (default,) = [r for r in record["rows"] if r["models"] == [DEFAULT_UNMIXING]]
    assert default["learned_tta"] == seg["dice"]["learned_tta"] and record["baseline"] == seg["dice"]["baseline"]
    for name, sha in seg["weights_sha256"].items():
        assert record["weights_sha256"][name] == sha
    assert record["command"].startswith("python -m training.compare_unmixing --ensembles ")
    assert "<!-- results:d_ensembles -->" in (REPO / "README.md").read_text()


def test_every_replication_of_the_segmentation_table_is_in_its_block():
    """A replication file of another protocol or other networks would be left out of the README's block silently."""
    from training import report

    table = json.loads((REPO / "results/segmentation.json").read_text())
    files = sorted((REPO / "results").glob(f"{report.REPLICATION_PREFIX}*.json"))
    assert [n for n, _ in report.replications(table)[1:]] == [p.stem for p in files]


PLACEHOLDERS = {"LO HI": "0.1 0.3", "$seed": "1", "<n>": "1", "[--dry-run]": "--dry-run"}
"""The README's placeholders for values, replaced by values of their type before parsing."""


def readme_invocations() -> list[tuple[str, list[str], bool]]:
    """(module, its arguments, whether it is a whole command) of every ``python -m <module>``, ``torchrun ... -m
    <module>`` and ``python app.py`` the README gives, pytest's excepted: in ```bash blocks (whole commands, their
    line continuations joined) and in inline code (which may name just a module or an option, so the options
    it gives are checked but not that it gives every required one)."""
    import shlex

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.+?)\n```", text, re.S)
    inline = re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"```.+?```", "", text, flags=re.S))
    found = []
    for spans, whole in ((blocks, True), (inline, False)):
        for span in spans:
            span = span.replace("\\\n", " ") if whole else span.replace("\n", " ")
            for m in re.finditer(r"(?:python|torchrun(?: --[\w=]+)*) (-m [\w.]+|app\.py)([^\n]*)", span):
                module = "app" if m.group(1) == "app.py" else m.group(1)[3:]
                tail = re.split(r"&&|;|\||#|\)", m.group(2))[0]
                for placeholder, value in PLACEHOLDERS.items():
                    tail = tail.replace(placeholder, value)
                if module != "pytest":
                    found.append((module, shlex.split(tail), whole))
    return found


class _Parsed(Exception):
    """Raised once a command's arguments parsed, so that nothing runs."""


def test_every_command_the_readme_gives_parses_with_its_modules_own_options(monkeypatch):
    """A renamed or removed option must not leave the README giving a command that stops at its first word."""
    import argparse
    import importlib

    parse = argparse.ArgumentParser.parse_args
    whole_command = [True]

    def parse_then_stop(self, args=None, namespace=None):
        if not whole_command[0]:
            for action in self._actions:
                action.required = False
        parse(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    from mixdemo.oneshot import gradio_cache_dir

    # importing app.py points GRADIO_TEMP_DIR at the app's own cache when it is unset: kept to the cache this
    # process's Gradio already uses (and unset again after), or later uploads here would be refused as foreign
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_cache_dir()))
    invocations = readme_invocations()
    assert len({m for m, _, _ in invocations}) >= 15 and ("app", ["--host", "0.0.0.0", "--server-only"], True) in invocations
    assert sum(whole for _, _, whole in invocations) >= 30
    failures = []
    for module, argv, whole in invocations:
        whole_command[0] = whole
        try:
            importlib.import_module(module).main(argv)
        except _Parsed:
            continue
        except SystemExit as exc:  # argparse's exit: 0 after --help, 2 on an unknown or ill-typed option
            if exc.code == 0:
                continue
            failures.append(f"python -m {module} {' '.join(argv)}: exit {exc.code}")
        else:
            failures.append(f"python -m {module} {' '.join(argv)}: ran without parsing its arguments")
    assert not failures, "\n".join(failures)


def test_the_gpu_run_is_recorded_as_the_gpu_wrote_it_and_nothing_of_it_is_shipped():
    """results/gpu-h200/: each model trained on the GPU, the evaluation scored those very weights, the CUDA tests
    passed there, and no shipped folder holds any of them (the run made no better weights: README)."""
    from training.report import GPU_MODELS, GPU_RUN

    folder = REPO / "results" / GPU_RUN
    trained = {m: json.loads((folder / f"training-{m}.json").read_text()) for m in GPU_MODELS}
    assert all(t["device"] == "cuda" and "NVIDIA" in t["hardware"] for t in trained.values())
    evaluation = json.loads((folder / "segmentation.json").read_text())
    scored = evaluation["weights_sha256"]
    assert scored["segmentation"] == trained["segmentation"]["sha256"]
    assert scored["baseline"] == trained["baseline"]["sha256"]
    assert scored[evaluation["models"]["unmixing"]] == trained[evaluation["models"]["unmixing"]]["sha256"]
    shipped = {sha256_file(p) for p in (REPO / "weights").glob("*/model.safetensors")}
    assert shipped and not shipped & {t["sha256"] for t in trained.values()}
    log = (folder / "cuda_tests.log").read_text()
    assert re.search(r"\b\d+ passed\b", log) and "failed" not in log and "rc=0" in log


def test_the_gpu_follow_up_scored_the_gpus_s_its_d_trained_on_and_the_shipped_baseline():
    """The follow-up (results/gpu-h200/, declared in followup_rule.md before it ran): the evaluation scored the
    GPU's S, a D trained on from the GPU's D against that S, and the shipped baseline; nothing of it is shipped."""
    from training.report import GPU_FOLLOWUP, GPU_RUN

    folder = REPO / "results" / GPU_RUN
    run = json.loads((folder / f"{GPU_FOLLOWUP}.json").read_text())
    d_name = run["models"]["unmixing"]
    d = json.loads((folder / f"training-{d_name}.json").read_text())
    gpu_s = json.loads((folder / "training-segmentation.json").read_text())
    gpu_d = json.loads((folder / "training-unmixing-p2-96-a35.json").read_text())
    assert run["weights_sha256"] == {"segmentation": gpu_s["sha256"], d_name: d["sha256"],
                                     "baseline": sha256_file(REPO / "weights" / "baseline" / "model.safetensors")}
    assert d["init_from_sha256"] == {"segmentation": gpu_s["sha256"], "unmixing-p2-96-a35": gpu_d["sha256"]}
    assert d["calibration"]["from_sha256"] != d["sha256"]  # trained on, then calibrated
    assert d["sha256"] not in {sha256_file(p) for p in (REPO / "weights").glob("*/model.safetensors")}
    assert (folder / "followup_rule.md").exists()
    for name, record in (("segmentation", gpu_s), ("unmixing-p2-96-a35", gpu_d), (d_name, d)):  # committed, to redo it
        assert sha256_file(folder / "weights" / name / "model.safetensors") == record["sha256"]
        assert json.loads((folder / "weights" / name / "training.json").read_text()) == record


def test_the_reference_choice_record_scores_the_shipped_networks_by_its_rule_and_the_readme_quotes_it():
    """results/reference_choice.json: its random references are the D designs' protocol's (its row is the default D's
    row there, same weights), its verdict follows its rule, and the README shows it."""
    from mixdemo.weights import DEFAULT_UNMIXING

    record = json.loads((REPO / "results/reference_choice.json").read_text())
    deployment = json.loads((REPO / "results/d_p2_96_alpha_deployment.json").read_text())["after"]
    assert deployment["model"] == DEFAULT_UNMIXING
    assert record["random"]["learned_tta"] == deployment["learned_tta"] and record["random"]["learned"] == deployment["learned"]
    assert record["weights_sha256"][DEFAULT_UNMIXING] == deployment["weights_sha256"]
    seg = json.loads((REPO / "results/segmentation.json").read_text())
    for name in ("segmentation", "baseline"):
        assert record["weights_sha256"][name] == seg["weights_sha256"][name]
    gain = round(record["similar"]["learned_tta"]["avg"] - record["random"]["learned_tta"]["avg"], 4)
    assert record["learned_tta_gain"] == gain and record["passes_rule"] == (gain >= 0.003)
    assert record["command"].startswith("python -m training.reference_choice")
    assert "<!-- results:reference_choice -->" in (REPO / "README.md").read_text()


def test_records_that_linked_a_now_shipped_folder_into_weights_say_to_drop_the_link():
    """``ln -s /tmp/x/NAME weights/ && …`` fails once ``weights/NAME`` ships; the README says so where it quotes it."""
    from training.report import linked_folders_note

    shipped = "ln -s /tmp/cal3/unmixing-p2-96-a35-cal weights/ && python -m training.evaluate --unmixing unmixing-p2-96-a35-cal"
    scratch = "ln -s /tmp/cal2/unmixing-p2-96-2-cal weights/ && python -m training.compare_unmixing"
    assert "`weights/unmixing-p2-96-a35-cal` ship now" in linked_folders_note([shipped, scratch])
    assert "unmixing-p2-96-2-cal" not in linked_folders_note([shipped, scratch])
    assert linked_folders_note([scratch]) == ""


def test_the_reference_bank_s_grid_is_the_phantoms():
    """examples.reference_grid (torch-free, known before the bank is built) says what the bank is built on."""
    from mixdemo.examples import reference_grid
    from mixdemo.phantoms import GRID_SHAPE

    assert reference_grid() == GRID_SHAPE


def test_what_the_readme_s_client_commands_write_is_git_ignored():
    """A segmentation holds the patient's anatomy (a DICOM SEG their header fields too): each output the README's
    client commands write at the repository root is git-ignored, so that a Space upload of the folder (`hf upload
    USER/NAME . . --repo-type space`, which skips ignored files) does not publish it."""
    import subprocess

    outputs = set(re.findall(r"mixdemo\.client [^`\n]*? -o ([^\s`]+)", (REPO / "README.md").read_text()))
    assert {"seg.nii.gz", "seg.dcm", "segs/", "segs-dicom/"} <= outputs
    for out in sorted(outputs):
        probe = out + "x_seg.nii.gz" if out.endswith("/") else out  # a file inside a folder output
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", probe], cwd=REPO).returncode == 0
        assert ignored, f"{out} (written by a README client command) is not git-ignored"


def test_the_class_balanced_lesion_block_sets_each_row_beside_the_label_centred_run(tmp_path, monkeypatch):
    """Each Dice of the class-balanced run beside the label-centred one's, and the better private run of the two
    against the baseline that learned lesions; without the other run's file, the block is its own table alone."""
    from training import report

    balanced = json.loads((REPO / "results/lesion_cohort_balanced.json").read_text())
    labelled = json.loads(json.dumps(balanced))
    for row in labelled["dice"].values():
        row.update({c: round(v / 2, 4) for c, v in row.items()})
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    alone = report.lesions_balanced_md(balanced)
    assert "→" not in alone and "--patch-centres classes" in alone
    (tmp_path / "lesion_cohort.json").write_text(json.dumps(labelled))
    text = report.lesions_balanced_md(balanced)
    assert text.startswith(alone)
    lesion = balanced["dice"]["learned_tta"]["lesion"]
    assert f"{lesion / 2:.3f} → {lesion:.3f}" in text
    ratio = balanced["dice"]["learned_tta"]["avg"] / balanced["dice"]["baseline"]["avg"]
    assert f"The better Learned + TTA of the two (class-balanced patches) reaches {ratio:.3f} ×" in text
    with pytest.raises(ValueError, match="name the commands that trained them there"):  # a run the block does not name
        report.lesions_balanced_md({**balanced, "weights_dir": "/elsewhere/weights"})


def test_the_second_seed_of_the_class_balanced_run_is_set_beside_the_first_and_must_share_its_baseline():
    from training import report

    balanced = json.loads((REPO / "results/lesion_cohort_balanced.json").read_text())
    seed = json.loads((REPO / f"results/{report.LESION_SEED_RUN[0]}.json").read_text())
    lines = report.lesion_seed_lines(balanced)
    ltta = [line for line in lines if line.startswith("| Learned + TTA |")]
    assert ltta and f"{balanced['dice']['learned_tta']['lesion']:.3f} → {seed['dice']['learned_tta']['lesion']:.3f}" in ltta[0]
    assert not any(line.startswith("| Baseline") for line in lines)  # one baseline, the first run's
    other = {**balanced, "weights_sha256": {**balanced["weights_sha256"], "baseline": "0" * 64}}
    with pytest.raises(ValueError, match="its baseline: the class-balanced run's"):
        report.lesion_seed_lines(other)


def test_the_consistency_record_is_judged_on_the_table_s_draws_and_its_rule_decides_the_default():
    """results/d_consistency.json (a D trained on with --consistency): the evaluation is the segmentation table's
    protocol with the same S, baseline, proxies and references (its baseline and naive rows are the table's), the
    gates are the default's figures, its training used the consistency loss from the default's start, and the
    default D is the candidate exactly when every gate held; the README renders it."""
    from mixdemo.weights import DEFAULT_UNMIXING
    from training.report import PROTOCOL_KEYS, consistency_gates

    record = json.loads((REPO / "results/d_consistency.json").read_text())
    seg = json.loads((REPO / "results/segmentation.json").read_text())
    ev = record["evaluation"]
    assert {k: ev[k] for k in PROTOCOL_KEYS} == {k: seg[k] for k in PROTOCOL_KEYS}
    for row in ("baseline", "naive", "naive_tta"):  # S, proxies, references and α: the table's
        assert ev["dice"][row] == seg["dice"][row]
    for model in ("segmentation", "baseline"):
        assert ev["weights_sha256"][model] == seg["weights_sha256"][model]
    gates = record["gates"]
    assert gates["default"] == seg["models"]["unmixing"] or gates["default"] == DEFAULT_UNMIXING
    assert record["training"]["consistency"] == 2.0 and record["training"]["init_unmixing"] == "unmixing-p2-96-a35"
    assert record["calibration"]["from_model"] == "unmixing-p2-96-a35-cons"
    candidate = ev["models"]["unmixing"]
    adopted = all(consistency_gates(record).values())
    assert (DEFAULT_UNMIXING == candidate) == adopted
    assert (REPO / "weights" / candidate).exists() == adopted
    if not adopted:
        assert gates["learned_tta_avg_at_least"] == seg["dice"]["learned_tta"]["avg"]
        assert gates["csf_icc_above"] == seg["icc"]["CSF"]["icc"]
    readme = (REPO / "README.md").read_text()
    assert "<!-- results:d_consistency -->" in readme and "`results/d_consistency.json`" in readme


def test_the_learned_inversion_never_trained_on_the_demo_bank_and_its_record_scored_those_weights() -> None:
    """weights/inversion's server subjects are training subjects outside the demo client's bank, and the privacy
    record's inversion section scored those very weights against that bank."""
    from mixdemo import examples
    from mixdemo.weights import read_training_record, sha256_file

    record = read_training_record(REPO / "weights" / "inversion")
    assert record["client_bank_subjects"] == examples.reference_subjects()
    assert not set(record["server_subjects"]) & set(record["client_bank_subjects"])
    assert set(record["server_subjects"]) <= set(examples._split()["train"])
    privacy = json.loads((REPO / "results" / "privacy.json").read_text())
    assert privacy["weights_sha256"]["inversion"] == sha256_file(REPO / "weights" / "inversion" / "model.safetensors")
    section = privacy["inversion"]
    assert section["trained"] and not section["references_among_server_scans"]
    assert (section["steps"], section["client_bank_subjects"]) == (record["steps"], len(record["client_bank_subjects"]))


def test_each_card_s_usage_snippet_loads_its_model_on_the_device_pick_device_names(monkeypatch):
    """The cards said the model runs on CUDA when present beside a snippet that left it on the CPU. PyTorch's meta
    device stands in for the GPU that ``pick_device`` would name."""
    import re

    import torch

    from mixdemo import models

    monkeypatch.setattr(models, "pick_device", lambda prefer=None: torch.device("meta"))
    cards = [c for c in sorted(REPO.glob("weights/*/README.md")) if "## How to use" in c.read_text()]  # report's cards
    assert len(cards) >= 3
    for card in cards:
        snippet = re.search(r"## How to use\n\n```python\n(.*?)```", card.read_text(), re.S)
        assert snippet, card
        namespace: dict = {}
        exec(snippet.group(1), namespace)  # noqa: S102 - the repository's own card
        assert next(namespace["model"].parameters()).device.type == "meta", card


def test_the_privacy_section_quotes_the_chained_attack_s_three_scores_from_its_record():
    from training.report import privacy_md

    doc = json.loads((REPO / "results" / "privacy.json").read_text())
    doc["inversion"]["tta_request"] = {
        "network": {"msssim_mean": 0.7771, "reid_map": 0.6661}, "closed_form": {"msssim_mean": 0.5551, "reid_map": 0.4441},
        "average": {"msssim_mean": 0.3331, "reid_map": 0.2221}, "k": 7, "n_draws": 3, "n_targets": 12}
    line = next(ln for ln in privacy_md(doc).splitlines() if ln.startswith("The two chained"))
    assert "K = 7 proxies" in line and "MS-SSIM 0.777 and re-identification mAP 0.666, against 0.555 and 0.444" in line
    assert "and 0.333 and 0.222 for the average itself, on the same 3 draws of the 12 test scans'" in line


def test_the_alpha_sweep_table_gives_the_learned_inversion_s_column_by_range_from_its_record():
    from training.report import privacy_md

    doc = json.loads((REPO / "results" / "privacy.json").read_text())
    ranges = [tuple(r["alpha_range"]) for r in doc["alpha_sweep"]]
    doc["inversion"]["alpha_sweep"] = [{"alpha_range": list(r), "estimate_reid_map": 0.1 + i / 10,
                                        "proxy_reid_map": 0.05 + i / 10, "n_draws": 3} for i, r in enumerate(ranges[1:])]
    table = [ln for ln in privacy_md(doc).splitlines() if ln.startswith("| [")][:len(ranges)]
    assert table[0].endswith("| — |")  # a range the inversion was not run at
    lo, hi = ranges[1]
    assert table[1].startswith(f"| [{lo:.2f}, {hi:.2f}]") and table[1].endswith("| 0.100 [0.050] |")
    del doc["inversion"]["alpha_sweep"]
    assert "learned inversion mAP" not in privacy_md(doc)


def test_the_readme_s_contents_list_every_section_and_each_link_finds_its_heading():
    """The contents under the introduction link every ## and ### heading, in order, by the anchors GitHub and the
    Hub give them (lower case, punctuation dropped, spaces as hyphens)."""
    text = (REPO / "README.md").read_text()
    contents = text[text.index("Contents:"):text.index("## How it fits together")]
    links = re.findall(r"^ *- \[(.+)\]\(#([^)]+)\)$", contents, re.M)
    headings = re.findall(r"^#{2,3} (.+)$", text, re.M)
    slug = lambda heading: re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")  # noqa: E731
    assert [title for title, _ in links] == headings
    assert [anchor for _, anchor in links] == [slug(h) for h in headings]
