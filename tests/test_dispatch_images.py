"""Image projects through ingest and dispatch on real servers: real handwritten digits (scikit-learn's UCI scans,
rendered by tools/digits_data.py) uploaded to moto's S3, ingested, dispatched to the real Label Studio; every
task holds the image's s3:// URI (no bytes copied into Label Studio), and the URL Label Studio gives for it
serves the image's bytes, through a presigned URL or streamed by Label Studio."""

from __future__ import annotations

import httpx
import pytest

from labelops.config import Project, ProjectConfig
from labelops.dispatch import pipeline
from labelops.dispatch.label_studio import KEY_FIELD, LabelStudioPlatform, marker
from labelops.storage import S3Store

from digits_data import objects
from test_ingest_pipeline import PROJECTS, REPO, ingest, put, staged_rows, yaml_demo_image_project

pytestmark = pytest.mark.stack


def digits_project(image_urls: str) -> ProjectConfig:
    raw = yaml_demo_image_project()
    name = raw["name"]
    raw["ingest"]["image_near_duplicate_distance"] = 2  # distinct 8x8 scans are often within 6 (README)
    raw["label_studio"].update(project_title=f"{name} digits", image_urls=image_urls, presign_ttl_minutes=5)
    raw["dispatch"] = {"batch_size": 12, "overlap_share": 0.25, "chunk_size": 5}
    xml = (REPO / "include" / "configs" / "label_configs" / "digits_image.xml").read_text()
    return ProjectConfig(spec=Project.model_validate(raw), labels=tuple(str(i) for i in range(10)),
                         source_file=PROJECTS / f"{name}.yaml", label_config_xml=xml)


def s3_access(s3) -> dict[str, str]:
    """The AWS connection as the DAG hands it to the platform (tests/conftest.py's moto server and keys)."""
    return {"AWS_ENDPOINT_URL": s3.meta.endpoint_url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.mark.parametrize("image_urls", ["presign", "proxy"])
def test_image_tasks_show_their_images_from_s3_without_copying_them(s3, label_studio, label_studio_endpoint,
                                                                    image_urls):
    project = digits_project(image_urls)
    pngs = {name: body for name, body, _ in objects(range(0, 400, 20))}  # 20 scans, every class
    for name, body in pngs.items():
        put(s3, project, name, body)
    manifest = ingest(s3, project, "ingest1")
    assert (manifest["records_read"], manifest["records_staged"]) == (20, 20), manifest
    staged = {r["record_id"]: r for r in staged_rows(s3, manifest)}
    store = S3Store(s3, "labelops")
    plan = pipeline.plan(store, project, "dispatch1")
    assert len(plan["tasks"]) == 12 and {t["route"] for t in plan["tasks"]} >= {"overlap"}
    for t in plan["tasks"]:
        assert t["image_url"] == f"s3://labelops/{staged[t['record_id']]['image_key']}" and t["text"] is None
    platform = LabelStudioPlatform(label_studio, project, store, pipeline.Paths(project, "dispatch1"),
                                   s3_access=s3_access(s3))
    result = pipeline.run(store, project, "dispatch1", platform)
    assert result["tasks_created"] == 12, result
    base, token = label_studio_endpoint
    http = httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, follow_redirects=True,
                        timeout=30)
    by_key = {t["key"]: t for t in plan["tasks"]}
    seen = 0
    for queue, info in result["per_queue"].items():
        pid = info["project_id"]
        storages = [st for st in label_studio.import_storage.s3.list(project=pid)
                    if marker(project.name, queue) in (st.description or "")]
        assert len(storages) == 1 and storages[0].presign == (image_urls == "presign")
        for task in label_studio.tasks.list(project=pid, page_size=100, fields="all"):
            planned = by_key[task.data[KEY_FIELD]]
            # Label Studio stores the URI only: what an export of the task gives back is the s3:// URI
            stored = http.get(f"/api/projects/{pid}/export", params={"exportType": "JSON", "ids[]": task.id,
                                                                          "download_all_tasks": "true"}).json()
            assert [t["data"]["image"] for t in stored] == [planned["image_url"]]
            # the task as the labelling UI loads it: a URL that Label Studio resolves through its S3 storage
            shown = http.get(f"/api/tasks/{task.id}").json()["data"]["image"]
            assert not shown.startswith("s3://") and "/resolve/" in shown, shown
            got = http.get(shown)
            assert got.status_code == 200, (got.status_code, got.text[:300])
            if image_urls == "presign":  # the browser was sent to S3 itself
                assert got.history and got.history[0].status_code == 303 and got.url.host == "127.0.0.1"
                assert str(got.url).startswith(s3.meta.endpoint_url)
            else:  # Label Studio streamed the bytes
                assert not got.history
            key = staged[planned["record_id"]]["image_key"]
            assert got.content == pngs[key.rsplit("/", 1)[1]] == s3.get_object(Bucket="labelops",
                                                                              Key=key)["Body"].read()
            seen += 1
    assert seen == 12
    # a second dispatch run of the same tasks finds the projects and their storages again: nothing new
    rerun = pipeline.run(store, project, "dispatch1", LabelStudioPlatform(
        label_studio, project, store, pipeline.Paths(project, "dispatch1"), s3_access=s3_access(s3)))
    assert rerun["tasks_created"] == 12  # the finished run's manifest, unchanged
    for queue, info in result["per_queue"].items():
        assert len([st for st in label_studio.import_storage.s3.list(project=info["project_id"])
                    if marker(project.name, queue) in (st.description or "")]) == 1


def test_an_image_project_without_the_aws_connection_is_refused_before_any_task(s3, label_studio):
    project = digits_project("presign")
    for name, body, _ in objects(range(3)):
        put(s3, project, name, body)
    ingest(s3, project, "ingest1")
    store = S3Store(s3, "labelops")
    pipeline.plan(store, project, "dispatch1")
    with pytest.raises(ValueError, match="AWS connection"):
        pipeline.run(store, project, "dispatch1",
                     LabelStudioPlatform(label_studio, project, store, pipeline.Paths(project, "dispatch1")))
    assert not [p for p in label_studio.projects.list(page_size=100) if project.name in (p.description or "")]


def test_image_tasks_are_pre_annotated_by_the_champion_image_model_with_gold_among_them(s3, label_studio):
    from labelops.models import registry
    from labelops.models.image import ImageModel

    project = digits_project("proxy")
    store = S3Store(s3, "labelops")
    prefix = project.spec.storage.project_prefix
    train = objects(range(1000, 1797))  # the champion learnt on other scans than those to annotate
    model = ImageModel().fit([b for _, b, _ in train], [label for *_, label in train])
    meta = registry.save(store, prefix, model, metrics={}, dataset_tag=None, kind="image")
    registry.promote(store, prefix, meta["version"], "test seed")
    pool = objects(range(0, 300, 10))  # 30 scans to annotate
    truth = {}
    for name, body, label in pool:
        truth[put(s3, project, name, body)] = label
    gold = objects(range(900, 920))  # known answers, under the gold prefix's own images
    for name, body, _ in gold:
        s3.put_object(Bucket="labelops", Key=f"{prefix}gold-images/{name}", Body=body)
    s3.put_object(Bucket="labelops", Key=f"{prefix}gold/gold.jsonl", Body="".join(
        f'{{"image_key": "{prefix}gold-images/{name}", "label": "{label}"}}\n' for name, _, label in gold).encode())
    ingest(s3, project, "ingest1")
    plan = pipeline.plan(store, project, "dispatch1")
    assert plan["model_version"] == f"image:{meta['version']}"
    tasks = plan["tasks"]
    golds = [t for t in tasks if t["selection"] == "gold"]
    assert len(tasks) == 12 + len(golds) and golds
    assert all(t["image_url"].startswith(f"s3://labelops/{prefix}gold-images/") for t in golds)
    # every task carries the model's class and score; on scans it never saw the model is mostly right
    assert all(t["prediction"]["label"] in project.labels and 0 < t["prediction"]["score"] <= 1 for t in tasks)
    records = [t for t in tasks if t["selection"] != "gold"]
    right = sum(t["prediction"]["label"] == truth[t["image_url"].split("/", 3)[3]] for t in records)
    assert right >= 0.75 * len(records), (right, len(records))
    result = pipeline.run(store, project, "dispatch1", LabelStudioPlatform(
        label_studio, project, store, pipeline.Paths(project, "dispatch1"), s3_access=s3_access(s3)))
    assert result["tasks_created"] == len(tasks)
    by_key = {t["key"]: t for t in tasks}
    for queue, info in result["per_queue"].items():
        for task in label_studio.tasks.list(project=info["project_id"], page_size=100, fields="all"):
            planned = by_key[task.data[KEY_FIELD]]
            assert "label" not in task.data and "gold" not in str(task.data)  # gold does not stand out
            (pred,) = label_studio.predictions.list(task=task.id)
            choice = [r["value"]["choices"] for r in pred.result if r["type"] == "choices"]
            assert choice == [[planned["prediction"]["label"]]]
            assert pred.score == pytest.approx(planned["prediction"]["score"])
            assert pred.model_version == plan["model_version"]
