"""Bounding-box projects in the export (labelops.export.detection): box consolidation and the COCO file, against
cases computed by hand; and the dataset files of a box project."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from labelops.export.consolidate import write_files
from labelops.export.detection import box_labels, consolidate_boxes, latest_boxes, to_coco


def box(x, y, w, h, label="digit", **extra):
    return {"x": x, "y": y, "width": w, "height": h, "label": label, **extra}


def test_a_box_drawn_by_at_least_half_of_the_annotators_is_kept_as_their_mean():
    got = consolidate_boxes({
        "a": [box(10, 10, 20, 20), box(60, 60, 10, 10, "smudge")],
        "b": [box(12, 10, 20, 20)],                                    # IoU with a's digit 360/440: same box
        "c": [box(14, 10, 20, 20), box(80, 0, 5, 5)],                  # c's second digit: nobody else's
    })
    # the digit: 3 of 3 (mean x of 10, 12 and 14); the smudge and c's lone box: 1 of 3 < 2, dropped
    assert got == [{"x": 12.0, "y": 10.0, "width": 20.0, "height": 20.0, "label": "digit", "votes": 3}]


def test_labels_iou_and_empty_answers_decide_what_merges_and_what_is_kept():
    # same place, other label: two clusters of one vote each; of 2 annotators, one vote is half: both kept
    two = consolidate_boxes({"a": [box(0, 0, 10, 10, "digit")], "b": [box(0, 0, 10, 10, "smudge")]})
    assert [(b["label"], b["votes"]) for b in two] == [("digit", 1), ("smudge", 1)]
    # IoU 50/150 = 0.33 < 0.5: not the same box
    apart = consolidate_boxes({"a": [box(0, 0, 10, 10)], "b": [box(5, 0, 10, 10)], "c": []})
    assert apart == []  # 1 vote each, 2 needed of 3 (c answered "no box")
    # one annotator: the boxes as drawn, with the image size they carried
    one = consolidate_boxes({"a": [box(1, 2, 3, 4, original_width=64, original_height=48)]})
    assert one == [{"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0, "label": "digit", "votes": 1,
                    "original_width": 64, "original_height": 48}]
    assert consolidate_boxes({"a": [], "b": []}) == []
    with pytest.raises(ValueError):
        consolidate_boxes({"a": [box(0, 0, 10, 10, rotation=30)]})


def test_coco_boxes_are_in_pixels_with_categories_from_the_label_config():
    xml = ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
           '<Label value="digit"/><Label value="smudge"/></RectangleLabels></View>')
    cats = box_labels(xml)
    assert cats == ["digit", "smudge"]
    items = [{"item_id": "r2", "image": "s3://b/k2.png", "image_key": "k2.png", "sha256": "h2", "split": "test",
              "boxes": [box(50, 25, 10, 20, "smudge", original_width=200, original_height=100)]},
             {"item_id": "r1", "image": "s3://b/k1.png", "image_key": "k1.png", "sha256": "h1", "split": "train",
              "boxes": [box(10, 10, 20, 20), box(0, 0, 1, 1, "other")]},
             {"item_id": "r3", "image": "s3://b/k3.png", "image_key": "k3.png", "sha256": "h3", "split": "train",
              "boxes": [box(0, 0, 50, 50)]}]                              # no size anywhere
    coco = to_coco(items, cats, sizes={"r1": (64, 64)})
    assert [c["name"] for c in coco["categories"]] == ["digit", "smudge"] and coco["categories"][0]["id"] == 1
    imgs = {i["labelops_item_id"]: i for i in coco["images"]}
    assert (imgs["r1"]["width"], imgs["r1"]["height"], imgs["r1"]["file_name"]) == (64, 64, "k1.png")
    assert (imgs["r2"]["width"], imgs["r2"]["height"]) == (200, 100) and imgs["r3"]["width"] is None
    anns = sorted(coco["annotations"], key=lambda a: a["image_id"])
    # r1: 10% of 64 = 6.4, 20% of 64 = 12.8; the "other" label is not a category; r2: 50% of 200, 25% of 100...
    assert [(a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in anns] == [
        (imgs["r1"]["id"], 1, [6.4, 6.4, 12.8, 12.8], 163.84), (imgs["r2"]["id"], 2, [100.0, 25.0, 20.0, 20.0], 400.0)]
    assert len({a["id"] for a in anns}) == 2 and all(a["iscrowd"] == 0 for a in anns)


def _row(rid, who, spans, updated, cancelled=False, key=None):
    return {"record_id": rid, "annotator": who, "spans": json.dumps(spans), "updated_at": updated,
            "cancelled": cancelled, "task_key": key or f"p:{rid}", "annotation_id": updated, "label": "7"}


def test_latest_boxes_takes_each_annotators_last_answer_and_leaves_out_rotated_boxes():
    rows = [_row("r1", "a", [box(0, 0, 5, 5)], "2026-01-01"),
            _row("r1", "a", [box(1, 1, 5, 5), box(9, 9, 5, 5, rotation=10)], "2026-01-02"),   # a's latest
            _row("r1", "b", [box(7, 7, 5, 5)], "2026-01-01", cancelled=True),                  # skipped
            _row("r1", "x", [box(3, 3, 5, 5)], "2026-01-03", key="p:adjudicate:r1"),
            _row("r2", "b", [{"start": 0, "end": 3, "label": "e"}], "2026-01-01")]              # no box
    answers, rotated = latest_boxes(rows)
    assert answers == {"r1": {"a": [box(1, 1, 5, 5)]}, "r2": {"b": []}} and rotated == 1


def test_a_box_projects_files_hold_the_boxes_and_the_coco_file(tmp_path):
    from test_export_consolidate import row

    uri = "s3://labelops/p/images/a.png"
    rows = [row("r1", "a", "3", text=uri), row("r1", "b", "3", text=uri)]
    from labelops.export.consolidate import consolidate

    items, held = consolidate(rows, gold={}, entity=False)
    boxes = {"r1": consolidate_boxes({"a": [box(10, 10, 20, 20)], "b": [box(12, 10, 20, 20)]})}
    images = {"r1": {"image": uri, "sha256": "ab" * 32}}
    hashes = write_files(tmp_path, items, held, rows, entity=False, images=images, boxes=boxes,
                         box_categories=["digit"], sizes={"r1": (64, 64)})
    assert {"classification.csv", "detection.coco.json"} <= set(hashes)
    got = [json.loads(x) for x in (tmp_path / "dataset.jsonl").read_text().splitlines()]
    assert got[0]["boxes"] == [{"x": 11.0, "y": 10.0, "width": 20.0, "height": 20.0, "label": "digit", "votes": 2,
                                "original_width": None, "original_height": None}]
    assert list(got[0])[:6] == ["item_id", "image", "image_key", "sha256", "label", "boxes"]
    assert pq.read_table(tmp_path / "dataset.parquet").to_pylist() == got
    coco = json.loads((tmp_path / "detection.coco.json").read_text())
    assert coco["annotations"][0]["bbox"] == [7.04, 6.4, 12.8, 12.8]
    assert coco["images"][0]["file_name"] == "p/images/a.png"
