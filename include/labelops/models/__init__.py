"""Models that pre-annotate records and learn from the labels: an intent classifier (`IntentModel`), a baseline
entity-span tagger (`EntityModel`) and their registry in S3 (`labelops.models.registry`). Pure logic: no Airflow;
scikit-learn and skops are imported only when a model is trained or (de)serialised."""

from labelops.models.entities import EntityModel
from labelops.models.intent import IntentModel

__all__ = ["EntityModel", "IntentModel"]
