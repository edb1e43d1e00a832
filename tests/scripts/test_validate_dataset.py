"""scripts/validate_dataset.py: a clean dataset passes, every broken image is listed, bad JSON is one line."""

from __future__ import annotations

from detr_ssl.cli.common import run_main
from detr_ssl.cli.validate_dataset import main


def _args(files) -> list[str]:
    return ["--annotations", str(files.annotation_file), "--images", str(files.image_dir)]


def test_clean_dataset_reports_counts_and_exits_zero(tiny_coco, capsys) -> None:
    assert run_main(main, _args(tiny_coco)) == 0
    out = capsys.readouterr().out
    assert "3 images (1 without boxes)" in out and "1 crowd" in out and "0 problem(s)" in out


def test_every_broken_image_is_listed(tiny_coco, capsys) -> None:
    (tiny_coco.image_dir / "a.png").unlink()
    (tiny_coco.image_dir / "b.png").write_bytes(b"\x89PNG truncated")
    assert run_main(main, _args(tiny_coco)) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and "a.png" in out and "b.png" in out


def test_malformed_json_is_one_line_naming_the_file(make_coco, coco_document, capsys) -> None:
    coco_document["annotations"][0]["bbox"] = [4, 6, -3, 10]
    files = make_coco(**coco_document)
    assert run_main(main, _args(files)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and files.annotation_file.name in err
