"""Project configs: the demo config is valid, and every kind of mistake is refused naming the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from labelops.config import ConfigError, label_config_choices, load_all_projects, load_project

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "include" / "configs" / "projects" / "banking_support.yaml"


def demo_raw() -> dict:
    return yaml.safe_load(DEMO.read_text())


def write(tmp_path: Path, raw: dict, name: str | None = None) -> Path:
    name = name or raw.get("name", "project")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_project_loads_with_the_banking77_taxonomy():
    cfg = load_project(DEMO)
    shared = json.loads((REPO / "data" / "banking77" / "categories.json").read_text())
    assert cfg.name == "banking_support"
    assert list(cfg.labels) == shared and len(cfg.labels) == 77
    assert label_config_choices(cfg.label_config_xml) == shared
    assert cfg.spec.alerts.emails, "the demo names its project leads"
    assert cfg.connection_ids() == {"s3": "aws_default", "smtp": "smtp_default",
                                    "label_studio": "label_studio_default"}
    assert cfg.asset_uri("ingest") == "s3://labelops/banking_support/assets/ingest"
    assert cfg.dag_id("export") == "banking_support__export"


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r.update(colour="blue"), "colour"),
        (lambda r: r["thresholds"].update(min_cohen_kappa=3), "thresholds.min_cohen_kappa"),
        (lambda r: r["thresholds"].update(high_confidence=0.4, low_confidence=0.6), "thresholds"),
        (lambda r: r["alerts"].update(emails=["not-an-address"]), "alerts.emails.0"),
        (lambda r: r["alerts"].update(emails=[]), "alerts.emails"),
        (lambda r: r["storage"].update(source_prefix="../other/"), "storage.source_prefix"),
        (lambda r: r["storage"].update(source_prefix="banking_support/staged/x/"), "storage"),
        (lambda r: r["storage"].update(bucket="Bad_Bucket"), "storage.bucket"),
        (lambda r: r.pop("label_studio"), "(top level)"),
        (lambda r: r.update(task="image_classification"), "(top level)"),
        (lambda r: r["schedules"].update(ingest="every hour"), "schedules.ingest"),
        (lambda r: r.pop("owner"), "owner"),
    ],
)
def test_mistakes_name_file_and_field(tmp_path, mutate, field):
    raw = demo_raw()
    mutate(raw)
    path = write(tmp_path, raw, "banking_support")
    with pytest.raises(ConfigError) as err:
        load_project(path)
    message = str(err.value)
    assert str(path) in message
    assert f"field '{field}'" in message, message


def test_name_must_match_file_name(tmp_path):
    path = write(tmp_path, demo_raw(), "other_name")
    with pytest.raises(ConfigError, match=r"field 'name'.*other_name"):
        load_project(path)


def test_taxonomy_must_match_the_label_config(tmp_path):
    raw = demo_raw()
    raw["taxonomy"] = {"labels": ["card_arrival", "a_label_not_in_the_xml"]}
    with pytest.raises(ConfigError, match=r"label_studio.label_config.*a_label_not_in_the_xml"):
        load_project(write(tmp_path, raw))


def test_referenced_files_must_stay_inside_the_config_root(tmp_path):
    raw = demo_raw()
    raw["taxonomy"] = {"file": "../../../etc/passwd"}
    with pytest.raises(ConfigError, match=r"taxonomy.file.*outside"):
        load_project(write(tmp_path, raw))


def test_not_yaml_and_not_a_mapping(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_project(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_project(bad)


def test_one_broken_file_leaves_the_others_loaded(tmp_path):
    write(tmp_path, demo_raw(), "banking_support")
    second = demo_raw() | {"name": "second_project"}
    second["storage"] = {"bucket": "labelops", "source_prefix": "second/raw/", "project_prefix": "second/"}
    write(tmp_path, second)
    broken = demo_raw() | {"name": "broken_one", "platform": "carrier_pigeon"}
    write(tmp_path, broken)
    good, errors = load_all_projects(tmp_path)
    assert [p.name for p in good] == ["banking_support", "second_project"]
    assert list(errors) == [tmp_path / "broken_one.yaml"]
    assert "field 'platform'" in errors[tmp_path / "broken_one.yaml"]


def test_two_projects_may_not_share_a_prefix(tmp_path):
    write(tmp_path, demo_raw(), "banking_support")
    write(tmp_path, demo_raw() | {"name": "copycat"})
    good, errors = load_all_projects(tmp_path)
    assert [p.name for p in good] == ["banking_support"]
    assert "already used by" in errors[tmp_path / "copycat.yaml"]


@pytest.mark.parametrize("storage, why", [
    # its outputs inside the other project's prefix: it could overwrite the other's manifests, models, state
    ({"source_prefix": "inner/raw/", "project_prefix": "banking_support/inner/"}, "overlaps"),
    # its input inside the other project's input: the same objects ingested twice, by two projects
    ({"source_prefix": "banking_support/raw/2026/", "project_prefix": "second/"}, "overlaps"),
    # it ingests the other project's raw input, or everything the other project wrote
    ({"source_prefix": "banking_support/raw/", "project_prefix": "thief/"}, "already used by"),
    ({"source_prefix": "banking_support/", "project_prefix": "thief/"}, "already used by"),
    ({"source_prefix": "banking_support/state/", "project_prefix": "thief/"}, "overlaps"),
])
def test_a_project_may_not_reach_into_another_projects_prefixes(tmp_path, storage, why):
    write(tmp_path, demo_raw(), "banking_support")
    write(tmp_path, demo_raw() | {"name": "zz_other", "storage": {"bucket": "labelops", **storage}})
    good, errors = load_all_projects(tmp_path)
    assert [p.name for p in good] == ["banking_support"]
    assert why in errors[tmp_path / "zz_other.yaml"] and "banking_support.yaml" in errors[tmp_path / "zz_other.yaml"]
    # the same prefixes in another bucket are another project's own
    write(tmp_path, demo_raw() | {"name": "zz_other", "storage": {"bucket": "elsewhere", **storage}})
    good, errors = load_all_projects(tmp_path)
    assert [p.name for p in good] == ["banking_support", "zz_other"] and errors == {}


@pytest.mark.parametrize("folder", ["state/", "annotations/", "exports/", "dvc/", "gold/", "staged/"])
def test_source_prefix_may_not_be_a_folder_the_pipeline_writes(tmp_path, folder):
    raw = demo_raw()
    raw["storage"] = {"bucket": "labelops", "source_prefix": f"banking_support/{folder}in/",
                      "project_prefix": "banking_support/"}
    with pytest.raises(ConfigError, match="must not overlap the prefixes the pipeline writes"):
        load_project(write(tmp_path, raw))


def test_the_digits_project_and_a_box_config_load_and_a_box_only_config_is_refused(tmp_path):
    """The image demo project loads; with the box label config (rectangles and the class) too, whose <Label>s
    are box labels, not entity labels; a config with rectangles only is refused, naming the field."""
    digits = REPO / "include" / "configs" / "projects" / "digits.yaml"
    cfg = load_project(digits)
    assert (cfg.spec.modality, list(cfg.labels)) == ("image", [str(i) for i in range(10)])
    raw = yaml.safe_load(digits.read_text())
    raw["label_studio"]["label_config"] = "label_configs/digits_boxes.xml"
    boxed = load_project(write(tmp_path, raw, "digits"))
    assert "<RectangleLabels" in boxed.label_config_xml and boxed.entities == ()
    root = tmp_path / "root"
    (root / "label_configs").mkdir(parents=True)
    (root / "label_configs" / "boxes_only.xml").write_text(
        '<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
        '<Label value="digit"/></RectangleLabels></View>')
    raw["label_studio"]["label_config"] = "label_configs/boxes_only.xml"
    with pytest.raises(ConfigError, match=r"label_studio.label_config.*<Choices>"):
        load_project(write(tmp_path, raw, "digits"), config_root=root)
