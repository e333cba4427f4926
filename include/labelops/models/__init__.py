"""Models that pre-annotate records and learn from the labels: an intent classifier (`IntentModel`), a baseline
entity-span tagger (`EntityModel`), a CRF entity tagger (`CrfEntityModel`), their registry in S3
(`labelops.models.registry`) and their evaluation (`labelops.models.evaluate`). Pure logic: no Airflow;
scikit-learn, skops and python-crfsuite are imported only when a model is trained or (de)serialised."""

from labelops.models.crf import CrfEntityModel
from labelops.models.entities import EntityModel
from labelops.models.intent import IntentModel

__all__ = ["CrfEntityModel", "EntityModel", "IntentModel"]
