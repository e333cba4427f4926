"""`ImageModel`: a small CPU image classifier trained from scratch (no pretrained weights), for the digits project.

Features: the image in grey levels, reduced to 8 x 8 by area averaging (PIL's BOX filter), as ink amounts 0-1
(1 = black): 64 numbers. That is the resolution of the UCI digit scans the demo project shows (rendered 8x
bigger), and a tiny image's layout is enough to tell digits apart; it is no model for photographs.
Classifier: multinomial logistic regression (scikit-learn, lbfgs, C=1) on the features standardised. Its
probabilities are the pre-annotation scores; they are calibrated by the model itself (log loss), no temperature.

Measured on scikit-learn's digits (1,797 scans rendered by tools/digits_data.py; stratified 75/25 split, seed 0):
accuracy 0.971 on the held-out 450 trained on the other 1,347 (fit 0.3 s), 0.909 trained on 150 of them.
tests/test_models_image.py asserts >= 0.95 on that split.

The fitted state is plain numbers (`to_dict` / `from_dict`: classes, scaler, weights), stored by the registry as
JSON and checked by its hash like the entity model; prediction is numpy only.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from labelops.dispatch.tasks import Prediction
from labelops.models.intent import _softmax, top_predictions

FORMAT = "labelops-image/1"
SIZE = 8  # features: SIZE x SIZE grey levels
UNREGISTERED = "unregistered"


def image_features(images: Sequence[bytes]) -> np.ndarray:
    """(n, SIZE * SIZE) ink amounts 0-1 of encoded images (PNG, JPEG ...): grey, area-averaged to SIZE x SIZE.
    ValueError names the first image that cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    out = np.zeros((len(images), SIZE * SIZE))
    for i, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as im:
                small = im.convert("L").resize((SIZE, SIZE), Image.Resampling.BOX)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"image {i} cannot be decoded: {exc}") from exc
        out[i] = 1.0 - np.asarray(small, dtype=np.float64).ravel() / 255.0
    return out


class ImageModel:
    """``fit(images, labels)`` on encoded images, then ``predict_proba`` / ``predict`` / ``features``."""

    def __init__(self, *, C: float = 1.0) -> None:
        self.C = C
        self.version: str = UNREGISTERED
        self.classes: list[str] = []
        self.n_train = 0
        self.mean = self.scale = self.coef = self.intercept = None

    @property
    def labels(self) -> list[str]:
        """The classes (what the registry records of a model)."""
        return list(self.classes)

    def fit(self, images: Sequence[bytes], labels: Sequence[str]) -> ImageModel:
        from sklearn.linear_model import LogisticRegression

        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images for {len(labels)} labels")
        y = [str(v) for v in labels]
        if len(set(y)) < 2:
            raise ValueError("an image model needs at least two classes")
        X = image_features(images)
        self.mean = X.mean(axis=0)
        self.scale = np.where(X.std(axis=0) > 1e-9, X.std(axis=0), 1.0)
        clf = LogisticRegression(C=self.C, max_iter=2000).fit((X - self.mean) / self.scale, y)
        self.classes = [str(c) for c in clf.classes_]
        coef, intercept = clf.coef_, clf.intercept_
        if len(self.classes) == 2:  # one column for the positive class: as two, softmax gives the same probability
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        self.coef, self.intercept = coef, intercept
        self.n_train = len(y)
        return self

    def _check(self) -> None:
        if self.coef is None:
            raise ValueError("the image model is not fitted")

    def features(self, images: Sequence[bytes]) -> np.ndarray:
        """The standardised features (for diversity in selection)."""
        self._check()
        return (image_features(images) - self.mean) / self.scale

    def predict_proba(self, images: Sequence[bytes]) -> tuple[list[str], np.ndarray]:
        return self.proba_of_features(self.features(images))

    def proba_of_features(self, x: np.ndarray) -> tuple[list[str], np.ndarray]:
        """`predict_proba` from `features` already computed (a caller that needs both decodes each image once)."""
        self._check()
        return list(self.classes), _softmax(x @ self.coef.T + self.intercept)

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        classes, probs = self.predict_proba(images)
        return top_predictions(classes, probs, self.version)

    # -- persistence ----------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        self._check()
        return {"format": FORMAT, "size": SIZE, "C": self.C, "classes": self.classes, "n_train": self.n_train,
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ImageModel:
        if d.get("format") != FORMAT or d.get("size") != SIZE:
            raise ValueError(f"not an image model of format {FORMAT} and size {SIZE}")
        m = cls(C=float(d["C"]))
        m.classes = [str(c) for c in d["classes"]]
        m.n_train = int(d.get("n_train", 0))
        m.mean, m.scale = np.asarray(d["mean"], float), np.asarray(d["scale"], float)
        m.coef, m.intercept = np.asarray(d["coef"], float), np.asarray(d["intercept"], float)
        k, f = len(m.classes), SIZE * SIZE
        if m.coef.shape != (k, f) or m.intercept.shape != (k,) or m.mean.shape != (f,) or m.scale.shape != (f,):
            raise ValueError("image model arrays do not fit its classes and size")
        if not all(np.isfinite(a).all() for a in (m.coef, m.intercept, m.mean, m.scale)) or (m.scale <= 0).any():
            raise ValueError("image model holds non-finite numbers or a non-positive scale")
        return m
