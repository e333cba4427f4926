"""Bounding-box agreement (labelops.agreement.boxes) against cases computed by hand."""

from __future__ import annotations

import pytest

from labelops.agreement.boxes import as_box, box_agreement, box_f1, iou, match_boxes


@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 10, 10, "x"), (0, 0, 10, 10, "x"), 1.0),  # the same box
    ((0, 0, 10, 10, "x"), (5, 0, 10, 10, "x"), 50 / 150),  # half overlap: 50 / (100 + 100 - 50)
    ((0, 0, 10, 10, "x"), (2, 2, 5, 5, "x"), 25 / 100),  # one inside the other
    ((0, 0, 10, 10, "x"), (5, 5, 10, 10, "x"), 25 / 175),  # corner overlap
    ((0, 0, 10, 10, "x"), (10, 0, 10, 10, "x"), 0.0),  # touching edges
    ((0, 0, 10, 10, "x"), (30, 30, 1, 1, "x"), 0.0),  # apart
    ((3, 3, 0, 0, "x"), (3, 3, 0, 0, "x"), 1.0),  # two identical points
    ((3, 3, 0, 0, "x"), (4, 3, 0, 0, "x"), 0.0),
    ((0, 0, 10, 10, "x"), (0, 0, 10, 10, "y"), 1.0),  # IoU is geometry only; matching looks at labels
])
def test_iou_of_hand_computed_cases(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_label_studio_rectangles_are_read_and_bad_boxes_refused():
    value = {"x": 12.5, "y": 20.0, "width": 30.0, "height": 10.0, "rotation": 0, "rectanglelabels": ["digit_7"]}
    assert as_box(value) == (12.5, 20.0, 30.0, 10.0, "digit_7")
    assert as_box({"x": 1, "y": 2, "width": 3, "height": 4, "label": 9}) == (1.0, 2.0, 3.0, 4.0, "9")
    for bad in ({**value, "rotation": 15}, {**value, "rectanglelabels": []}, {**value, "rectanglelabels": ["a", "b"]},
                {**value, "width": -1}, {**value, "x": float("nan")}, {**value, "y": "3"}, {**value, "x": True},
                (1, 2, 3, "label"), (1, 2, 3, 4, None), "box"):
        with pytest.raises(ValueError):
            as_box(bad)


def test_one_to_one_matching_takes_the_most_matches_not_the_best_single_overlap():
    # unit boxes 10 x 10 on one row: IoU at offset d is (10 - d) / (10 + d). a1-b1 overlap best (d = 0.5, 0.905),
    # but taking it leaves a2 with b2 at d = 5.5 (0.29); a1-b2 and a2-b1 (d = 2.5 each, IoU 0.6) match both
    a = [(0, 0, 10, 10, "cat"), (3, 0, 10, 10, "cat")]
    b = [(0.5, 0, 10, 10, "cat"), (-2.5, 0, 10, 10, "cat")]
    pairs = match_boxes(a, b, 0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (1, 0)]
    assert [v for *_, v in pairs] == pytest.approx([0.6, 0.6])
    f = box_f1(a, b)
    assert (f["matched"], f["f1"], f["mean_iou"]) == (2, 1.0, pytest.approx(0.6))
    # at 0.75 only a1-b1 can match
    assert [(i, j) for i, j, _ in match_boxes(a, b, 0.75)] == [(0, 0)]


def test_box_f1_counts_labels_and_thresholds():
    a = [(0, 0, 10, 10, "cat"), (20, 0, 10, 10, "cat")]
    b = [(1, 0, 10, 10, "cat"), (20, 0, 10, 10, "dog")]  # the second has the other label: no match
    f = box_f1(a, b)
    assert (f["matched"], f["n_boxes_a"], f["n_boxes_b"]) == (1, 2, 2)
    assert f["f1"] == 0.5 and f["precision"] == 0.5 and f["recall"] == 0.5
    assert f["mean_iou"] == pytest.approx(90 / 110)
    assert box_f1(a, b, label="dog")["f1"] == 0.0  # a has no dog, b one: 2 * 0 / (0 + 1)
    assert box_f1([], [])["f1"] is None
    assert box_f1(a, b, threshold=0.85)["matched"] == 0  # 90 / 110 = 0.82 is under 0.85


def test_box_agreement_over_items_and_annotator_pairs():
    box = (0, 0, 10, 10, "7")
    shifted = (2, 0, 10, 10, "7")  # IoU 80 / 120 = 2/3 with box: a match at 0.5, not at 0.75
    annotations = {
        "img-1": {"a": [box], "b": [shifted], "c": []},  # c saw nothing to box
        "img-2": {"a": [], "b": []},  # both: nothing (not an F1 event)
        "img-3": {"a": [box]},  # one annotator only
        "img-4": {"a": [box, (50, 50, 5, 5, "1")], "c": [box, (50, 50, 5, 5, "1")]},
    }
    out = box_agreement(annotations)
    assert (out["n_items"], out["n_items_single_annotator"], out["n_item_pairs"], out["n_item_pairs_both_empty"]) \
        == (4, 1, 5, 1)
    # at 0.5: img-1 a-b 1 match of 1+1, a-c 0 of 1+0, b-c 0 of 1+0; img-4 a-c 2 of 2+2 -> 2 * 3 / (5 + 3)
    loose = out["iou>=0.5"]
    assert loose["overall"]["f1"] == pytest.approx(6 / 8)
    assert loose["overall"]["mean_iou"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    pairs = {(p["annotator_a"], p["annotator_b"]): p for p in loose["per_pair"]}
    assert pairs[("a", "b")]["f1"] == 1.0 and pairs[("a", "b")]["n_items"] == 2
    assert pairs[("a", "c")]["f1"] == pytest.approx(4 / 5)  # img-1 0 of 1+0, img-4 2 of 2+2
    assert pairs[("b", "c")]["f1"] == 0.0
    assert loose["per_type"]["1"]["f1"] == 1.0
    # at 0.75 the shifted box no longer matches
    strict = out["iou>=0.75"]
    assert strict["overall"]["f1"] == pytest.approx(4 / 8)
    assert strict["per_type"]["7"]["matched"] == 1
    with pytest.raises(ValueError):
        box_agreement(annotations, thresholds=[0])


# -- the agreement stage on a bounding-box project, with the real Label Studio ------------------------------------


def _rect(x, y, w, h, label, rotation=0):
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 64,
            "original_height": 64, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                                             "rectanglelabels": [label]}}


def _choice(label):
    return {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


@pytest.mark.stack
def test_a_box_project_is_measured_by_iou_from_label_studio_annotations(s3, label_studio):
    """Two annotators box scans in a real Label Studio project whose config has <RectangleLabels>; the agreement
    stage pulls their rectangles and reports IoU agreement equal to the hand computation, in the summary and the
    HTML report; an item with a rotated box is left out and counted."""
    import json
    import sys

    from labelops.agreement import pipeline
    from labelops.agreement.pull import LabelStudioSource
    from labelops.config import Project, ProjectConfig
    from labelops.dispatch.label_studio import label_config_names
    from labelops.storage import S3Store
    from test_ingest_pipeline import PROJECTS, REPO, yaml_demo_image_project

    sys.path.insert(0, str(REPO / "tools"))
    import annotator_sim

    xml = (REPO / "include" / "configs" / "label_configs" / "digits_boxes.xml").read_text()
    raw = yaml_demo_image_project()
    raw["label_studio"] = {"label_config": "label_configs/digits_boxes.xml"}
    project = ProjectConfig(spec=Project.model_validate(raw), labels=tuple(str(i) for i in range(10)),
                            source_file=PROJECTS / "boxes_test.yaml", label_config_xml=xml)
    assert pipeline.box_project(project) and label_config_names(xml).rectangles == "box"
    ls_project = label_studio.projects.create(title=f"{project.name} boxes", label_config=xml)
    for rid in ("r1", "r2", "r3"):
        label_studio.tasks.create(project=ls_project.id, data={
            "image": f"s3://labelops/{project.name}/images/{rid}.png", "labelops_key": f"{project.name}:{rid}",
            "record_id": rid})
    tasks = {t.data["record_id"]: int(t.id) for t in label_studio.tasks.list(project=ls_project.id)}
    users = annotator_sim.ensure_users(label_studio, annotator_sim.parse_profile([
        {"name": "Box Ann", "email": "boxann@sim.labelops.local", "accuracy": 1.0, "lead_time_s": 2},
        {"name": "Box Bob", "email": "boxbob@sim.labelops.local", "accuracy": 1.0, "lead_time_s": 2}]))
    answers = {
        # IoU 360 / 440 = 0.818: matched at 0.5 and at 0.75
        "r1": {"Box Ann": [_rect(10, 10, 20, 20, "digit"), _choice("7")],
               "Box Bob": [_rect(12, 10, 20, 20, "digit"), _choice("7")]},
        # digit boxes at IoU 50 / 150 = 0.333: no match; Ann's smudge has no counterpart
        "r2": {"Box Ann": [_rect(0, 0, 10, 10, "digit"), _rect(50, 50, 10, 10, "smudge")],
               "Box Bob": [_rect(5, 0, 10, 10, "digit")]},
        # a rotated box: the item is left out
        "r3": {"Box Ann": [_rect(0, 0, 10, 10, "digit", rotation=30)], "Box Bob": [_rect(0, 0, 10, 10, "digit")]},
    }
    for rid, by in answers.items():
        for name, result in by.items():
            label_studio.annotations.create(id=tasks[rid], completed_by=users[name], result=result, lead_time=2.0)
    store = S3Store(s3, "labelops")
    source = LabelStudioSource(label_studio, {"main": ls_project.id}, label_config_names(xml))
    pulled = pipeline.pull(store, project, "night1", source)
    assert pulled["rows"] == 6
    pipeline.compute(store, project, "night1")
    paths = pipeline.Paths(project, "night1")
    summary = store.get_json(paths.summary)
    boxes = summary["boxes"]
    assert (boxes["items"], boxes["items_with_rotated_boxes"], boxes["boxes"]) == (2, 1, 5)
    for level in ("iou>=0.5", "iou>=0.75"):
        overall = boxes[level]["overall"]
        assert overall["matched"] == 1 and overall["f1"] == pytest.approx(2 * 1 / 5)
        assert overall["mean_iou"] == pytest.approx(360 / 440)
        assert boxes[level]["per_type"]["digit"]["f1"] == pytest.approx(2 * 1 / 4)
        assert boxes[level]["per_type"]["smudge"]["f1"] == pytest.approx(0.0)
    html = store.get(paths.report).decode()
    assert "Bounding-box agreement (IoU matching)" in html and "0.818" in html
    # the class answers beside the boxes are measured as usual (r1: both said 7)
    assert summary["counts"]["ratings_in_window"] == 6 and json.dumps(summary["worst_items"]) == "[]"
    # the export: r1 (class 7 from both) with its consolidated box, in pixels of the 64x64 scan in the COCO file;
    # r2 and r3 have no class answer: held back
    from labelops.export import pipeline as export

    prepared = export.prepare(store, project, "night1")
    assert (prepared["items"], prepared["boxes"], prepared["held_back_by_reason"]) == (1, 1, {"no_label": 2})
    files = export.Paths(project, "night1").files
    (item,) = [json.loads(line) for line in store.get(files + "dataset.jsonl").splitlines()]
    assert item["label"] == "7" and item["image"] == f"s3://labelops/{project.name}/images/r1.png"
    assert [(b["x"], b["y"], b["width"], b["height"], b["votes"]) for b in item["boxes"]] == [(11.0, 10.0, 20.0,
                                                                                               20.0, 2)]
    coco = json.loads(store.get(files + "detection.coco.json"))
    assert [c["name"] for c in coco["categories"]] == ["digit", "smudge"]
    assert coco["annotations"][0]["bbox"] == [7.04, 6.4, 12.8, 12.8] and coco["images"][0]["width"] == 64
