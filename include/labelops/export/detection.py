"""Bounding-box projects in the export: one consolidated box set per item, and the COCO detection file. Pure
Python (+ scipy through `agreement.boxes`); no Airflow, no I/O.

Boxes are what the agreement pull reads from Label Studio rectangles: ``{x, y, width, height, label}`` in percent
of the image (top-left corner), with ``original_width`` / ``original_height`` in pixels when Label Studio gave
them (it does for every rectangle drawn in its editor).

Consolidation (`consolidate_boxes`), the rule of entity spans applied to boxes: the annotators' latest box sets of
an item are clustered annotator by annotator (in name order): each annotator's boxes are matched one to one to
the clusters so far (same label, IoU with the cluster's mean box >= 0.5, the most matches and then the largest
total IoU: `agreement.boxes.match_boxes`); a box left unmatched starts a cluster. A cluster drawn by at least
half of the item's annotators (an annotator who answered with no box counts) is kept, as the mean of its boxes;
``votes`` says by how many. With one annotator, their boxes are kept as drawn.

COCO (`to_coco`): the detection format of the COCO data set (``images``, ``annotations``, ``categories``; a
``bbox`` is ``[x, y, width, height]`` in pixels from the top-left corner, ``area`` its width times height,
``iscrowd`` 0); an image's ``file_name`` is its S3 key and ``coco_url`` its s3:// URI, so the file refers to the
images where they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from xml.etree import ElementTree as ET

COORDS = ("x", "y", "width", "height")


def box_labels(label_config_xml: str) -> list[str]:
    """The <Label> values of the label config's <RectangleLabels> controls, in order (the COCO categories)."""
    root = ET.fromstring(label_config_xml)
    out: list[str] = []
    for control in root.iter("RectangleLabels"):
        for el in control.iter("Label"):
            if "value" in el.attrib and el.attrib["value"] not in out:
                out.append(el.attrib["value"])
    return out


def _mean(boxes: Sequence[Mapping]) -> dict:
    return {k: sum(float(b[k]) for b in boxes) / len(boxes) for k in COORDS}


def consolidate_boxes(answers: Mapping[str, Sequence[Mapping]], threshold: float = 0.5) -> list[dict]:
    """The consolidated boxes of one item (see the module doc). ``answers``: annotator -> that annotator's boxes
    on the item (an empty list: answered, no box). Each box returned is ``{x, y, width, height, label, votes}``
    (coordinates rounded to 4 decimals) plus ``original_width`` / ``original_height`` when its boxes had them;
    sorted by (label, y, x). Rotated boxes are refused (ValueError), as in the agreement."""
    from labelops.agreement.boxes import as_box, match_boxes

    clusters: list[list[Mapping]] = []
    for annotator in sorted(answers):
        boxes = list(answers[annotator] or [])
        for b in boxes:
            as_box(b)  # refuses a rotated or malformed box
        reps = [{**_mean(c), "label": c[0]["label"]} for c in clusters]
        matched = {j: i for i, j, _ in match_boxes(reps, boxes, threshold)}
        for j, b in enumerate(boxes):
            if j in matched:
                clusters[matched[j]].append(b)
            else:
                clusters.append([b])
    need = math.ceil(len(answers) / 2)
    out = []
    for c in clusters:
        if len(c) < need:
            continue
        box = {k: round(v, 4) for k, v in _mean(c).items()}
        box.update(label=str(c[0]["label"]), votes=len(c))
        for dim in ("original_width", "original_height"):
            sizes = [b[dim] for b in c if b.get(dim)]
            if sizes:
                box[dim] = int(sizes[0])
        out.append(box)
    return sorted(out, key=lambda b: (b["label"], b["y"], b["x"], b["width"], b["height"]))


def to_coco(items: Iterable[Mapping], categories: Sequence[str], sizes: Mapping[str, tuple[int, int]] | None = None,
            description: str = "") -> dict:
    """The COCO detection document of the items that have boxes or are images of the version (every item is an
    image; one without a box is an image with no annotation). ``items``: image items with ``item_id``, ``image``,
    ``image_key``, ``sha256``, ``split`` and ``boxes``; ``categories``: the box labels (ids 1..K in this order;
    a box of another label is left out); ``sizes``: item id -> (width, height) in pixels, for items whose boxes
    do not carry the image size. An image whose size is unknown has width and height None and its boxes are
    left out (their pixels cannot be computed)."""
    ids = {name: n for n, name in enumerate(categories, 1)}
    images, annotations = [], []
    for n, it in enumerate(sorted(items, key=lambda i: i["item_id"]), 1):
        boxes = [b for b in (it.get("boxes") or []) if b["label"] in ids]
        size = (sizes or {}).get(it["item_id"])
        if size is None:
            known = [b for b in boxes if b.get("original_width") and b.get("original_height")]
            size = (known[0]["original_width"], known[0]["original_height"]) if known else None
        images.append({"id": n, "file_name": it.get("image_key"), "coco_url": it.get("image"),
                       "width": size[0] if size else None, "height": size[1] if size else None,
                       "labelops_item_id": it["item_id"], "sha256": it.get("sha256"), "split": it.get("split")})
        if size is None:
            continue
        w, h = size
        for b in boxes:
            bbox = [round(b["x"] * w / 100, 2), round(b["y"] * h / 100, 2), round(b["width"] * w / 100, 2),
                    round(b["height"] * h / 100, 2)]
            annotations.append({"id": len(annotations) + 1, "image_id": n, "category_id": ids[b["label"]],
                                "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
                                "votes": b.get("votes")})
    return {"info": {"description": description}, "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": ""} for name, i in ids.items()]}


def latest_boxes(rows: Iterable[Mapping]) -> tuple[dict[str, dict[str, list[dict]]], int]:
    """item id -> annotator -> their latest boxes, from annotation rows (``spans`` holding the boxes; skipped and
    adjudication rows left out), and how many rotated boxes were left out (COCO's boxes are axis-aligned)."""
    import json

    from labelops.agreement.pipeline import is_adjudication
    from labelops.export.consolidate import answer_order

    out: dict[str, dict[str, list[dict]]] = {}
    rotated: dict[tuple[str, str], int] = {}
    for r in sorted(rows, key=answer_order):
        if r.get("cancelled") or is_adjudication(r) or not r.get("record_id"):
            continue
        marks = [m for m in json.loads(r.get("spans") or "[]") if isinstance(m, dict) and "x" in m]
        key = (r["record_id"], str(r["annotator"]))
        rotated[key] = sum(1 for m in marks if m.get("rotation"))
        out.setdefault(r["record_id"], {})[key[1]] = [m for m in marks if not m.get("rotation")]
    return out, sum(rotated.values())
