"""Inter-annotator agreement (the pure logic of the `<project>__agreement` stage; no Airflow, no I/O).

`stats`: categorical labels (Cohen's kappa per pair with a CI, Fleiss' kappa, Krippendorff's alpha, percent and
per-label agreement, gold accuracy, per-annotator summaries); `spans`: entity-span agreement (exact / overlap F1).
Command line: ``python -m labelops.agreement FILE.csv`` (see ``__main__``).
"""

from labelops.agreement.spans import span_agreement, span_f1
from labelops.agreement.stats import (
    LEVELS,
    AlphaResult,
    DuplicateRatingError,
    FleissResult,
    KappaResult,
    PairKappa,
    Ratings,
    agreement_report,
    alpha_from_coincidences,
    annotator_summary,
    coincidence_matrix,
    cohen_kappa,
    cohen_kappa_pairwise,
    fleiss_kappa,
    fleiss_kappa_table,
    gold_accuracy,
    krippendorff_alpha,
    label_agreement,
    label_values,
    mean_kappa,
    percent_agreement,
)

__all__ = [
    "LEVELS", "AlphaResult", "DuplicateRatingError", "FleissResult", "KappaResult", "PairKappa", "Ratings",
    "agreement_report", "alpha_from_coincidences", "annotator_summary", "coincidence_matrix", "cohen_kappa",
    "cohen_kappa_pairwise", "fleiss_kappa", "fleiss_kappa_table", "gold_accuracy", "krippendorff_alpha",
    "label_agreement", "label_values", "mean_kappa", "percent_agreement", "span_agreement", "span_f1",
]
