"""The digits image model (labelops.models.image) on the real UCI scans, and its place in the registry."""

from __future__ import annotations

import io

import numpy as np
import pytest

from labelops.models import registry
from labelops.models.image import ImageModel, image_features
from labelops.storage import S3Store

from digits_data import digits, objects


@pytest.fixture(scope="module")
def split():
    from sklearn.model_selection import train_test_split

    objs = objects()
    train, test = train_test_split(objs, test_size=0.25, stratify=[o[2] for o in objs], random_state=0)
    return train, test


@pytest.fixture(scope="module")
def model(split) -> ImageModel:
    train, _ = split
    return ImageModel().fit([b for _, b, _ in train], [label for *_, label in train])


def test_the_features_are_the_scan_itself(split):
    # a rendered scan (8x8 cells of 8x8 pixels), averaged back to 8x8, is the scan's grey levels: ink / 16
    images, _ = digits()
    got = image_features([b for _, b, _ in objects([0, 1, 2])])
    assert got == pytest.approx(images[:3].reshape(3, 64) / 16, abs=1 / 255 + 1e-9)
    with pytest.raises(ValueError, match="image 1 cannot be decoded"):
        image_features([objects([0])[0][1], b"not a png"])


def test_the_model_learns_the_digits_from_scratch(model, split):
    _, test = split
    classes, probs = model.predict_proba([b for _, b, _ in test])
    accuracy = np.mean([classes[k] == label for k, (*_, label) in zip(probs.argmax(axis=1), test)])
    assert accuracy >= 0.95, accuracy  # measured 0.971
    assert probs.shape == (len(test), 10) and np.allclose(probs.sum(axis=1), 1)
    preds = model.predict([b for _, b, _ in test[:5]])
    assert all(p.label == max(p.probabilities, key=p.probabilities.get) and 0 < p.score <= 1 for p in preds)
    assert sorted(model.labels) == [str(d) for d in range(10)] and model.n_train == len(split[0])


def test_state_round_trips_as_data_and_bad_state_is_refused(model, split):
    _, test = split
    images = [b for _, b, _ in test[:50]]
    again = ImageModel.from_dict(model.to_dict())
    assert np.allclose(again.predict_proba(images)[1], model.predict_proba(images)[1], rtol=0, atol=1e-12)
    for broken in ({**model.to_dict(), "format": "x"}, {**model.to_dict(), "coef": [[0.0] * 64]},
                   {**model.to_dict(), "scale": [0.0] * 64}, {**model.to_dict(), "mean": [float("nan")] * 64}):
        with pytest.raises(ValueError):
            ImageModel.from_dict(broken)
    with pytest.raises(ValueError, match="two classes"):
        ImageModel().fit(images[:2], ["1", "1"])
    with pytest.raises(ValueError, match="not fitted"):
        ImageModel().predict(images[:1])


def test_registry_keeps_image_models_as_checked_json(s3, model, split):
    store = S3Store(s3, "labelops")
    prefix = "image_registry_test/"
    meta = registry.save(store, prefix, model, metrics={"accuracy": 0.97}, dataset_tag=None, kind="image")
    assert meta["artifact"]["format"] == "json" and meta["artifact"]["key"].endswith("/image.json")
    assert meta["labels"] == model.labels
    registry.promote(store, prefix, meta["version"], "first")
    loaded = registry.load_champion(store, prefix, kind="image")
    images = [b for _, b, _ in split[1][:20]]
    assert isinstance(loaded, ImageModel) and loaded.version == meta["version"]
    assert np.allclose(loaded.predict_proba(images)[1], model.predict_proba(images)[1], rtol=0, atol=1e-12)
    assert registry.load_champion(store, prefix, kind="intent") is None
    with pytest.raises(TypeError):
        registry.save(store, prefix, model, metrics={}, dataset_tag=None, kind="intent")
    # a tampered artifact is refused before it is read
    key = meta["artifact"]["key"]
    s3.put_object(Bucket="labelops", Key=key, Body=io.BytesIO(b'{"format": "labelops-image/1"}').read())
    with pytest.raises(registry.ArtifactIntegrityError, match="sha256"):
        registry.load(store, prefix, meta["version"])


def test_a_versions_images_are_read_back_in_order_and_a_missing_one_is_named(s3):
    """The retrain reads the images a dataset version names by s3:// URI (S3Store.get_many, in parallel): in item
    order; an image that is gone, or one outside the project's bucket, stops it with a message naming it."""
    from botocore.exceptions import ClientError

    from labelops.retrain.pipeline import image_bytes

    store = S3Store(s3, "labelops")
    scans = objects(range(20))
    for name, body, _ in scans:
        s3.put_object(Bucket="labelops", Key=f"retrain-images/{name}", Body=body)
    items = [{"image": f"s3://labelops/retrain-images/{name}"} for name, _, _ in reversed(scans)]
    assert image_bytes(store, items) == [body for _, body, _ in reversed(scans)]
    keys = [f"retrain-images/{name}" for name, _, _ in scans[:3]] + ["retrain-images/gone.png"]
    assert store.get_many(keys, missing_ok=True)[3] is None and store.get_many(keys, missing_ok=True)[0] == scans[0][1]
    with pytest.raises(ClientError):
        store.get_many(keys)
    with pytest.raises(RuntimeError, match="retrain-images/gone.png"):
        image_bytes(store, items + [{"image": "s3://labelops/retrain-images/gone.png"}])
    with pytest.raises(RuntimeError, match="outside the project's bucket"):
        image_bytes(store, [{"image": "s3://elsewhere/x.png"}])
