"""scripts/fewshot_coco.py at tiny scale: a COCO-layout folder made of demo images, K=1, one seed, one epoch
per stage."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch import run_captured

from detr_ssl.cli.common import run_main
from detr_ssl.cli.fewshot import FewShotBenchmark, main, parse_fewshot_args
from detr_ssl.engine.checkpoint import load_pretrained
from detr_ssl.evaluation import METRIC_NAMES
from detr_ssl.models.config import model_preset
from detr_ssl.models.deformable_detr import build_model
from detr_ssl.protocols import NOVEL_COCO_IDS

REPO = Path(__file__).resolve().parents[2]
NOVEL = set(NOVEL_COCO_IDS)
TINY = ["--shots", "1", "--seeds", "0", "--base-epochs", "1", "--fewshot-epochs", "1", "--preset", "demo",
        "--model-size", "tiny", "--batch-size", "4", "--num-workers", "0"]


def make_coco_root(root: Path, demo_data, num_train: int, num_val: int) -> Path:
    """The COCO 2017 layout holding the first demo training and validation images."""
    (root / "annotations").mkdir(parents=True)
    for split, source, count in (("train2017", demo_data.train_json, num_train),
                                 ("val2017", demo_data.val_json, num_val)):
        document = json.loads(source.read_text())
        document["images"] = document["images"][:count]
        kept = {image["id"] for image in document["images"]}
        document["annotations"] = [a for a in document["annotations"] if a["image_id"] in kept]
        (root / split).mkdir()
        for image in document["images"]:
            shutil.copy(demo_data.image_dir / image["file_name"], root / split / image["file_name"])
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return root


@pytest.fixture(scope="module")
def fewshot_run(demo_data, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(COCO root, output folder, stdout) of one finished tiny benchmark."""
    root = make_coco_root(tmp_path_factory.mktemp("coco"), demo_data, num_train=16, num_val=8)
    out = tmp_path_factory.mktemp("fewshot") / "out"
    code, stdout = run_captured(main, ["--coco-root", str(root), *TINY, "--output-dir", str(out)])
    assert code == 0, stdout
    return root, out, stdout


def test_results_report_novel_and_base_ap(fewshot_run) -> None:
    _, out, stdout = fewshot_run
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert (run["shots"], run["seed"], run["dir"]) == (1, 0, "1shot_seed0")
    assert set(run["metrics"]) == {"all", "novel", "base"}
    assert all(set(run["metrics"][group]) == set(METRIC_NAMES) for group in run["metrics"])
    assert results["novel_category_ids"] == [1, 3, 7] and results["base_category_ids"] == [8, 12]
    (entry,) = results["summary"]
    assert entry["shots"] == 1 and entry["seeds"] == [0]
    assert entry["metrics"]["novel"]["AP"]["mean"] == pytest.approx(run["metrics"]["novel"]["AP"])
    assert results["base_training"]["metrics"]["AP"] >= 0
    table = (out / "results.md").read_text()
    assert "| K | seeds | novel AP | novel AP50 | novel AP75 | base AP |" in table
    assert f"| 1 | 1 | {100 * run['metrics']['novel']['AP']:.1f} |" in table
    assert "[1/2] stage 1: base training: running" in stdout and "[2/2] stage 2: K=1, seed 0: done" in stdout


def test_selection_is_recorded_next_to_the_run(fewshot_run) -> None:
    root, out, _ = fewshot_run
    train = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    selection = json.loads((out / "1shot_seed0" / "selection.json").read_text())
    assert (selection["k"], selection["seed"]) == (1, 0)
    assert set(selection["annotation_ids"]) <= {a["id"] for a in train["annotations"]}
    assert set(selection["image_ids"]) <= {image["id"] for image in train["images"]}
    assert all(count <= 1 for count in selection["per_class_counts"].values())
    record = next(run for run in json.loads((out / "results.json").read_text())["runs"] if run["dir"] == "1shot_seed0")
    assert (record["num_images"], record["num_annotations"]) == (len(selection["image_ids"]),
                                                                 len(selection["annotation_ids"]))
    kshot = json.loads((out / "1shot_seed0" / "train_1shot_seed0.json").read_text())
    assert sorted(a["id"] for a in kshot["annotations"]) == selection["annotation_ids"]
    assert kshot["categories"] == train["categories"]


def test_stage_one_trains_without_novel_annotations(fewshot_run) -> None:
    root, out, _ = fewshot_run
    train = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert any(a["category_id"] in NOVEL for a in train["annotations"])  # there was something to remove
    for name in ("base_train.json", "base_val.json"):
        document = json.loads((out / "base_training" / name).read_text())
        assert not any(a["category_id"] in NOVEL for a in document["annotations"]), name
        assert [c["id"] for c in document["categories"]] == [8, 12]
    assert len(json.loads((out / "base_training" / "base_train.json").read_text())["images"]) == 16


def test_stage_two_starts_from_stage_one_with_a_new_class_head(fewshot_run) -> None:
    _, out, stdout = fewshot_run
    stage1 = torch.load(out / "base_training" / "checkpoint.pth", map_location="cpu", weights_only=True)
    stage2 = torch.load(out / "1shot_seed0" / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert (stage1["num_classes"], stage2["num_classes"]) == (2, 5)
    reshaped = {k for k, v in stage1["model"].items() if stage2["model"][k].shape != v.shape}
    assert reshaped and all(stage1["model"][k].shape[0] == 2 and stage2["model"][k].shape[0] == 5 for k in reshaped)
    # What load_pretrained did for stage 2: only the class head (the tensors sized by the class count) dropped.
    _, dropped = load_pretrained(build_model(model_preset("tiny"), 5), out / "base_training" / "checkpoint.pth")
    assert set(dropped) == reshaped
    assert f"initialised from {out / 'base_training' / 'checkpoint.pth'}" in stdout


def test_a_worker_gets_the_benchmark_without_the_training_document(fewshot_run) -> None:
    root, out, _ = fewshot_run
    benchmark = FewShotBenchmark(parse_fewshot_args(["--coco-root", str(root), *TINY, "--output-dir", str(out)]))
    document = benchmark.train_document
    assert "train_document" not in benchmark.__getstate__()  # COCO's is hundreds of MB
    copy = pickle.loads(pickle.dumps(benchmark))
    assert copy.train_document == document and copy.groups == benchmark.groups


def test_rerun_skips_finished_runs(fewshot_run) -> None:
    root, out, _ = fewshot_run
    watched = [out / "base_training" / "checkpoint.pth", out / "1shot_seed0" / "checkpoint.pth",
               out / "1shot_seed0" / "fewshot_metrics.json"]
    before = [path.stat().st_mtime_ns for path in watched]
    runs = json.loads((out / "results.json").read_text())["runs"]
    code, stdout = run_captured(main, ["--coco-root", str(root), *TINY, "--output-dir", str(out)])
    assert code == 0
    assert stdout.count("finished before, skipped") == 2 and "running" not in stdout
    assert [path.stat().st_mtime_ns for path in watched] == before
    assert json.loads((out / "results.json").read_text())["runs"] == runs


def test_a_trained_but_unscored_run_is_only_scored(fewshot_run) -> None:
    root, out, _ = fewshot_run
    checkpoint = out / "1shot_seed0" / "checkpoint.pth"
    before = checkpoint.stat().st_mtime_ns
    (out / "1shot_seed0" / "fewshot_metrics.json").unlink()
    code, stdout = run_captured(main, ["--coco-root", str(root), *TINY, "--output-dir", str(out)])
    assert code == 0 and "K=1, seed 0: done" in stdout and "resumed from" in stdout
    assert checkpoint.stat().st_mtime_ns == before
    assert (out / "1shot_seed0" / "fewshot_metrics.json").is_file()


def test_missing_coco_file_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "annotations").mkdir()
    code = run_main(main, ["--coco-root", str(tmp_path), *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "instances_train2017.json" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "--coco-root"), (["--demo", "--coco-root", "x"], "--coco-root"),
     (["--demo", "--pretrained", "a.pth", "--backbone-init", "b.pth"], "not both"),
     (["--demo", "--shots", "0"], "--shots")],
)  # fmt: skip
def test_bad_configuration_is_one_line(argv: list[str], message: str, capsys) -> None:
    code = run_main(main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err


def test_help_documents_the_flags(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "fewshot_coco.py"), "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    for flag in ("--coco-root", "--demo", "--shots", "--seeds", "--pretrained", "--output-dir", "--base-epochs",
                 "--fewshot-epochs", "--fewshot-lr-drop", "--model-size"):
        assert flag in result.stdout, flag
