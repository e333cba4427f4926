"""The `digits` demo project's raw images: scikit-learn's bundled copy of the UCI handwritten digits (1,797 real
8x8 scans of 10 classes, values 0-16), each rendered as a PNG a person can see (dark ink on white, upscaled with
square pixels), keyed without its class (annotators must not read the answer in a file name).

License and citation: data/digits/SOURCE.md. ``python tools/digits_data.py OUT_DIR`` writes the PNGs and a
labels file (for the simulated annotators and the gold set, never uploaded beside the images).
"""

from __future__ import annotations

import io
import json
import sys
from functools import cache
from pathlib import Path

SCALE = 8  # 8x8 scans -> 64x64 pixels


@cache
def digits() -> tuple:
    """(images (1797, 8, 8) float 0-16, targets (1797,) int) from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def render(image, scale: int = SCALE) -> bytes:
    """One 8x8 scan (values 0-16, 16 = ink) as a grayscale PNG, ink dark on white, each cell scale x scale."""
    import numpy as np
    from PIL import Image

    gray = (255 - np.asarray(image, float) * (255 / 16)).round().clip(0, 255).astype(np.uint8)
    big = np.kron(gray, np.ones((scale, scale), np.uint8))
    out = io.BytesIO()
    Image.fromarray(big, mode="L").save(out, format="PNG", optimize=True)
    return out.getvalue()


def key_of(index: int) -> str:
    return f"digit-{index:04d}.png"


def objects(indices=None) -> list[tuple[str, bytes, str]]:
    """(file name, PNG bytes, class) of the scans at ``indices`` (default: all 1,797), in index order."""
    images, targets = digits()
    idx = range(len(images)) if indices is None else indices
    return [(key_of(i), render(images[i]), str(int(targets[i]))) for i in idx]


# The demo's split of the 1,797 scans (seeded, fixed): a labelled seed slice for the first champion
# (tools/seed_model.py), gold items (known answers mixed into the batches), and the unlabelled raw input.
DEMO_SEED = 8
DEMO_SEED_ITEMS = 60
DEMO_GOLD_ITEMS = 50


def demo_split() -> dict[str, list[int]]:
    """{"seed", "gold", "input"}: disjoint, sorted scan indices covering all 1,797 scans."""
    import numpy as np

    perm = np.random.default_rng(DEMO_SEED).permutation(len(digits()[0])).tolist()
    seed, gold = perm[:DEMO_SEED_ITEMS], perm[DEMO_SEED_ITEMS:DEMO_SEED_ITEMS + DEMO_GOLD_ITEMS]
    return {"seed": sorted(seed), "gold": sorted(gold), "input": sorted(perm[DEMO_SEED_ITEMS + DEMO_GOLD_ITEMS:])}


def truth() -> dict[str, dict]:
    """record id (as ingest derives it from the PNG's bytes) -> {"label", "spans": []}, for every scan: the
    simulated annotators' answer key (tools/annotator_sim.py)."""
    import hashlib

    from labelops.ingest.dedup import image_record_id

    return {image_record_id(hashlib.sha256(body).hexdigest()): {"label": label, "spans": []}
            for _, body, label in objects()}


def manifest(keys_sources: list[tuple[str, str]]) -> bytes:
    """An image manifest (JSON Lines: key, source) as a user's cloud-storage manifest lists images."""
    return "".join(json.dumps({"key": k, "source": s}) + "\n" for k, s in keys_sources).encode()


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = []
    for name, body, label in objects():
        (out / name).write_bytes(body)
        labels.append({"key": name, "label": label})
    (out / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    print(f"{len(labels)} digits written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "digits"))
