"""`samlab batch` on dask.distributed: outputs, provenance, reruns, failures, a dying worker."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cohort_helpers import read_labels, write_case, write_cases_csv

from napari_samlab import load_model, read_image
from napari_samlab.cli import main
from napari_samlab.cohort.apply import segment_with_prompts
from napari_samlab.cohort.batch import BatchSettings, run_batch
from napari_samlab.cohort.cases import read_cases
from napari_samlab.cohort.prompts import load_prompts
from napari_samlab.cohort.provenance import REQUIRED_KEYS, file_sha256, read_provenance
from napari_samlab.errors import SamlabError

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    """Two in-process workers: the real scheduler and task path, no process start-up."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture()
def cohort(tmp_path):
    rows = []
    for i in range(4):
        image, prompts = write_case(tmp_path, f"case{i}", seed=10 + i)
        rows.append((f"case{i}", image, prompts))
    return tmp_path, write_cases_csv(tmp_path, rows)


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_batch_outputs_equal_single_case_api_and_rerun_skips(cohort, client):
    folder, csv_path = cohort
    out = folder / "out"
    cases = read_cases(csv_path)
    report = run_batch(cases, out, BatchSettings(), client=client, progress=False)
    assert report.ok and report.done == 4, report.results
    # the model was loaded once for the whole (in-process) cluster, not once per case
    assert max(r["model_loads"] for r in report.results) == 1
    model = load_model(family="classic")
    for case in cases:
        labels = read_labels(out / f"{case.name}.nii.gz")
        expected = segment_with_prompts(read_image(case.image), model, load_prompts(case.prompts))
        np.testing.assert_array_equal(labels, expected)
        assert labels.any()
        rec = read_provenance(out / f"{case.name}.json")
        assert set(REQUIRED_KEYS) <= set(rec)
        assert rec["case"] == case.name and rec["image"] == str(case.image)
        assert rec["image_sha256"] == file_sha256(case.image) and rec["window"] == "auto"
        assert rec["prompts"][0]["propagate"] is True and rec["prompts"][0]["label"] == 1
        assert rec["created"][:4].isdigit() and "T" in rec["created"]
    assert not (out / "failures.csv").exists()

    before = mtimes(out)
    again = run_batch(cases, out, BatchSettings(), client=client, progress=False)
    assert again.ok and again.skipped == 4 and again.done == 0
    assert mtimes(out) == before  # nothing rewritten

    # a changed prompt, a changed window and a removed output: only those are redone
    p = json.loads(cases[1].prompts.read_text())
    p["prompts"][0]["label"] = 5
    cases[1].prompts.write_text(json.dumps(p))
    (out / "case2.nii.gz").unlink()
    third = run_batch(cases, out, BatchSettings(), client=client, progress=False)
    status = {r["case"]: r["status"] for r in third.results}
    assert status == {"case0": "skipped", "case1": "done", "case2": "done", "case3": "skipped"}
    assert set(np.unique(read_labels(out / "case1.nii.gz"))) == {0, 5}
    fourth = run_batch(cases, out, BatchSettings(window="ct-lung"), client=client, progress=False)
    assert fourth.done == 4


def test_failing_cases_are_listed_and_the_others_finish(cohort, client):
    folder, _ = cohort
    good = [(f"case{i}", folder / f"case{i}.nrrd", folder / f"case{i}.prompts.json") for i in range(2)]
    corrupt = folder / "corrupt.nrrd"
    corrupt.write_bytes((folder / "case0.nrrd").read_bytes()[:400])  # header and a few bytes of data
    outside = folder / "outside.json"
    outside.write_text(json.dumps({"prompts": [{"slice": 99, "box": [2, 2, 20, 20]}]}))
    notjson = folder / "notjson.json"
    notjson.write_text("{'prompts': []}")
    csv_path = write_cases_csv(folder, good + [
        ("corrupt", corrupt, folder / "case0.prompts.json"),
        ("missing", folder / "nowhere.nrrd", folder / "case0.prompts.json"),
        ("outside", folder / "case1.nrrd", outside),
        ("notjson", folder / "case1.nrrd", notjson),
        ("noprompts", folder / "case1.nrrd", None),
    ])
    out = folder / "out"
    out.mkdir()
    (out / "failures.csv").write_text("case,error\nold,stale\n")
    report = run_batch(read_cases(csv_path), out, BatchSettings(), client=client, progress=False)
    assert report.done == 2 and not report.ok
    failed = {r["case"]: r["error"] for r in report.failed}
    assert set(failed) == {"corrupt", "missing", "outside", "notjson", "noprompts"}
    assert "does not exist" in failed["missing"] and "slice 99" in failed["outside"]
    assert "not valid JSON" in failed["notjson"] and "needs one" in failed["noprompts"]
    assert all("\n" not in e for e in failed.values())
    rows = (out / "failures.csv").read_text().splitlines()
    assert rows[0] == "case,error" and len(rows) == 6 and "old,stale" not in rows
    names = sorted(p.name for p in out.iterdir())
    assert names == ["case0.json", "case0.nii.gz", "case1.json", "case1.nii.gz", "failures.csv"]


def test_cli_batch_through_a_scheduler_address(cohort, client, capsys):
    """`samlab batch --scheduler`: a failed case is one stderr line and exit 1; fixed, the rerun exits 0."""
    folder, _ = cohort
    rows = [(f"case{i}", folder / f"case{i}.nrrd", folder / f"case{i}.prompts.json") for i in range(2)]
    bad = write_cases_csv(folder, rows + [("lost", folder / "lost.nrrd", folder / "case0.prompts.json")], "bad.csv")
    out = folder / "out"
    address = client.scheduler.address
    code = main(["batch", str(bad), "-o", str(out), "--scheduler", address])
    stdout, err = capsys.readouterr()
    assert code == 1
    assert err.strip().splitlines() == [f"samlab: case lost failed: image {folder / 'lost.nrrd'} does not exist: fix the path in the CSV"]
    assert "Dask dashboard" in stdout and "3 cases: 2 segmented, 0 already done, 1 failed" in stdout
    assert (out / "failures.csv").exists()
    before = mtimes(out)
    good = write_cases_csv(folder, rows, "good.csv")
    code = main(["batch", str(good), "-o", str(out), "--scheduler", address])
    stdout, err = capsys.readouterr()
    assert code == 0 and err == "" and "2 cases: 0 segmented, 2 already done, 0 failed" in stdout
    assert not (out / "failures.csv").exists()  # the stale list is gone
    assert {k: v for k, v in mtimes(out).items()} == {k: v for k, v in before.items() if k != "failures.csv"}


@pytest.mark.parametrize("csv_text, pattern", [
    ("case,image\nc1,a.nrrd\n", "no column prompts"),
    ("case,image,prompts,notes\nc1,a.nrrd,,x\n", "unknown column"),
    ("case,image,prompts\nc1,a.nrrd,\nC1,b.nrrd,\n", "repeats line 2"),
    ("case,image,prompts\n../c1,a.nrrd,\n", "not allowed"),
    ("case,image,prompts\nc/1,a.nrrd,\n", "not allowed"),
    ("case,image,prompts\n..,a.nrrd,\n", "not allowed"),
    ("case,image,prompts\nc1,a.nrrd\n", "fields"),
    ("case,image,prompts\n", "no cases"),
])
def test_bad_csv_is_refused_before_anything_runs(tmp_path, capsys, csv_text, pattern):
    csv_path = tmp_path / "CASES.csv"
    csv_path.write_text(csv_text)
    out = tmp_path / "out"
    code = main(["batch", str(csv_path), "-o", str(out)])
    _, err = capsys.readouterr()
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert pattern.lower() in err.lower(), err
    assert not out.exists()
    with pytest.raises(SamlabError):
        read_cases(csv_path)


def test_unreachable_scheduler_is_one_clear_line(cohort, capsys, monkeypatch):
    from napari_samlab.cohort import batch

    monkeypatch.setattr(batch, "CONNECT_TIMEOUT_S", 1)
    _, csv_path = cohort
    out = csv_path.parent / "out"
    code = main(["batch", str(csv_path), "-o", str(out), "--scheduler", "tcp://127.0.0.1:9"])
    _, err = capsys.readouterr()
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9 within 1 s" in err
    assert not any(out.glob("*.nii.gz"))


class KillArmed(distributed.diagnostics.plugin.WorkerPlugin):
    """Kills the worker process as it starts a case armed by a file ``kill-CASE`` (used up by the kill)."""

    def __init__(self, folder: str):
        self.folder = folder

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "-case-" in str(key):
            case = str(key).split("-case-")[1].split("-")[0]
            armed = os.path.join(self.folder, f"kill-{case}")
            if os.path.exists(armed):
                os.replace(armed, armed + ".done")
                os._exit(1)


def test_a_dying_worker_costs_one_retry(cohort):
    """A real worker process (the CLI's LocalCluster) dies in the middle of case1; its nanny starts a new one."""
    from napari_samlab.cohort import batch

    folder, csv_path = cohort
    out = folder / "out"
    cases = read_cases(csv_path)
    client, cluster = batch.connect(workers=1)
    try:
        client.register_plugin(KillArmed(str(folder)))
        # no retries: the case fails with a clear line, the others finish
        (folder / "kill-case1").touch()
        first = run_batch(cases, out, BatchSettings(), client=client, progress=False, retries=0)
        assert (folder / "kill-case1.done").exists() and not (folder / "kill-case1").exists()
        assert [r["case"] for r in first.failed] == ["case1"] and first.done == 3, first.results
        assert "died 1 times" in first.failed[0]["error"]
        assert (out / "failures.csv").read_text().startswith("case,error\ncase1,")
        assert not (out / "case1.nii.gz").exists() and not (out / "case1.json").exists()
        # one retry: the death costs only that retry; the rerun skips what is done
        (folder / "kill-case1").touch()
        second = run_batch(cases, out, BatchSettings(), client=client, progress=False, retries=1)
        assert not (folder / "kill-case1").exists()  # it died again...
        status = {r["case"]: r["status"] for r in second.results}
        assert status == {"case0": "skipped", "case1": "done", "case2": "skipped", "case3": "skipped"}  # ...and was retried
        assert not (out / "failures.csv").exists()
    finally:
        client.close()
        cluster.close()
    # each worker process loaded the model once, whatever number of cases it ran
    loads = {}
    for r in first.results + second.results:
        if r["status"] != "failed":
            loads[r["pid"]] = max(loads.get(r["pid"], 0), r["model_loads"])
    assert set(loads.values()) == {1}
    np.testing.assert_array_equal(read_labels(out / "case1.nii.gz"),
                                  segment_with_prompts(read_image(cases[1].image), load_model(family="classic"),
                                                       load_prompts(cases[1].prompts)))


@pytest.mark.slow  # three SAMed model loads and 512-px encodes: about 30 s on a busy 2-core machine
def test_samed_cases_run_without_prompts_and_replay(cohort, client, tmp_path_factory):
    """A (small, random) SAMed LoRA checkpoint: empty prompts column, organ classes on every slice."""
    from test_samed import write_base, write_samed

    from napari_samlab.cohort.replay import replay_labels

    import SimpleITK as sitk

    folder, _ = cohort
    ckpt_dir = tmp_path_factory.mktemp("samed")
    lora, base = write_samed(ckpt_dir), write_base(ckpt_dir)
    # two slices: SAMed encodes every slice at 512 px, three times in this test
    sitk.WriteImage(sitk.ReadImage(str(folder / "case0.nrrd"))[:, :, 5:7], str(folder / "two.nrrd"), True)
    csv_path = write_cases_csv(folder, [("s0", folder / "two.nrrd", None)], "samed.csv")
    settings = BatchSettings(checkpoint=str(lora), base_checkpoint=str(base), encoder_backend="torch")
    out = folder / "samed-out"
    report = run_batch(read_cases(csv_path), out, settings, client=client, progress=False)
    assert report.ok, report.results
    rec = read_provenance(out / "s0.json")
    assert rec["model"] == "samed" and rec["prompts"] == []
    assert rec["checkpoint_sha256"] == file_sha256(lora) and rec["base_checkpoint_sha256"] == file_sha256(base)
    assert rec["engine"]["backend"] == "torch"
    model = load_model(lora, family="samed", base_checkpoint=base, encoder_backend="torch")
    from napari_samlab.cohort.apply import segment_without_prompts

    expected = segment_without_prompts(read_image(folder / "two.nrrd"), model)
    labels = read_labels(out / "s0.nii.gz")
    np.testing.assert_array_equal(labels, expected)
    replayed, _, _ = replay_labels(out / "s0.json")
    np.testing.assert_array_equal(replayed, labels)
