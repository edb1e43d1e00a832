"""Data protocols for label-efficient benchmarks: semi-supervised label fractions and few-shot COCO."""

from detr_ssl.protocols.few_shot import (
    NOVEL_COCO_IDS,
    KShotSelection,
    base_training_set,
    kshot_document,
    read_selection_json,
    sample_k_shot,
    split_categories,
    write_selection_json,
)
from detr_ssl.protocols.label_fractions import (
    FractionFiles,
    format_percent,
    fraction_run_name,
    read_stac_fold,
    read_ut_id_lists,
    select_image_ids,
    stac_fold_name,
    subset_coco,
    write_fraction,
    write_ut_id_lists,
)

__all__ = [
    "NOVEL_COCO_IDS",
    "KShotSelection",
    "base_training_set",
    "kshot_document",
    "read_selection_json",
    "sample_k_shot",
    "split_categories",
    "write_selection_json",
    "FractionFiles",
    "format_percent",
    "fraction_run_name",
    "read_stac_fold",
    "read_ut_id_lists",
    "select_image_ids",
    "stac_fold_name",
    "subset_coco",
    "write_fraction",
    "write_ut_id_lists",
]
