"""``scripts/finetune.py``: supervised Deformable DETR training on COCO-format data, then COCO evaluation.

The training machinery is imported inside the functions that use it (start-up: see ``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from detr_ssl.cli.common import make_accelerator, run_main
from detr_ssl.config import DataConfig, FinetuneConfig, parse_finetune_args, to_plain, with_backbone_init
from detr_ssl.errors import ConfigError, DataError
from detr_ssl.models.config import ModelConfig

if TYPE_CHECKING:
    from detr_ssl.datasets import CocoDetection


def resolve_data(data: DataConfig) -> DataConfig:
    """Fills in the embedded demo set when no training JSON is given; checks the flags belong together."""
    from detr_ssl.datasets import demo_detection_dataset

    if data.train_json is None:
        if data.val_json is not None or data.images is not None:
            raise ConfigError("--val-json/--images given without --train-json")
        paths = demo_detection_dataset()
        return replace(data, train_json=paths.train_json, val_json=paths.val_json, images=paths.image_dir)
    if data.val_json is None or data.images is None:
        raise ConfigError("--train-json needs --val-json and --images too")
    return data


def load_datasets(data: DataConfig) -> tuple[CocoDetection, CocoDetection]:
    from detr_ssl.datasets import CocoDetection, make_eval_transforms, make_train_transforms

    train = CocoDetection(data.train_json, data.images,
                          make_train_transforms(data.train_scales, data.max_size, data.crop),
                          on_invalid_box=data.on_invalid_box)
    val = CocoDetection(data.val_json, data.val_images or data.images,
                        make_eval_transforms(data.eval_size, data.max_size), on_invalid_box=data.on_invalid_box)
    if val.category_ids != train.category_ids:
        raise DataError(f"{data.val_json}: categories {val.category_ids} differ from the training "
                        f"categories {train.category_ids} in {data.train_json}")
    return train, val


def initial_model_config(cfg: FinetuneConfig, pretrained: Any = None) -> ModelConfig:
    """The model config with the initialisation's consequences: backbone weights from --backbone-init,
    and the backbone normalisation the loaded --pretrained checkpoint was trained with (loading frozen-BN
    statistics into GroupNorm layers, or the reverse, would silently compute something else).

    A preset that trains its backbone from scratch (GroupNorm, no frozen stage: the tiny one) given a
    pretrained frozen-BN backbone this way also freezes the stem and layer1, as the released Deformable
    DETR (and DetReg's fine-tuning on it) does with every pretrained backbone."""
    from detr_ssl.engine.checkpoint import checkpoint_backbone_norm

    model = with_backbone_init(cfg.model, cfg.backbone_init)
    if pretrained is not None:
        norm = checkpoint_backbone_norm(pretrained)
        if norm is not None and norm != model.backbone_norm:
            print(f"{cfg.pretrained}: backbone normalisation {norm} (as pretrained) instead of {model.backbone_norm}")
            model = replace(model, backbone_norm=norm)
    from_scratch = cfg.model.backbone_norm == "group_norm" and cfg.model.backbone_frozen_stages == 0
    if from_scratch and model.backbone_norm == "frozen_bn":
        frozen = ModelConfig.backbone_frozen_stages
        stages = ", ".join(f"layer{i}" for i in range(1, frozen + 1))
        print(f"pretrained frozen-BN backbone: the stem and {stages} stay frozen, as in the released Deformable DETR")
        model = replace(model, backbone_frozen_stages=frozen)
    return model


def finetune(cfg: FinetuneConfig, category_groups: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
    """Trains and evaluates; returns the final COCO metrics (on the main process). ``category_groups``
    (e.g. few-shot novel and base category ids) adds each group's metrics as ``"{group}/{metric}"``."""
    from accelerate.utils import set_seed

    from detr_ssl.engine.checkpoint import load_pretrained, loaded_parts
    from detr_ssl.engine.evaluate import make_coco_evaluate
    from detr_ssl.engine.trainer import Trainer
    from detr_ssl.evaluation import write_metrics_json
    from detr_ssl.models.checkpoint_io import load_untrusted
    from detr_ssl.tasks.supervised import build_supervised

    accelerator = make_accelerator(cfg.run, cfg.optim.grad_accum_steps,
                                   find_unused_parameters=not cfg.loss.aux_loss)
    set_seed(cfg.run.seed)
    with accelerator.main_process_first():
        data = resolve_data(cfg.data)
        train_set, val_set = load_datasets(data)
    # Read once: it decides the backbone normalisation and then provides the weights.
    pretrained = load_untrusted(cfg.pretrained) if cfg.pretrained is not None else None
    cfg = replace(cfg, data=data, model=initial_model_config(cfg, pretrained))
    model, task = build_supervised(cfg.architecture, cfg.model, train_set.num_classes, cfg.loss, cfg.pair)
    if cfg.pretrained is not None:
        missing, dropped = load_pretrained(model, cfg.pretrained, pretrained)
        parts = ", ".join(f"{part} ({count})" for part, count in loaded_parts(model, missing).items())
        accelerator.print(f"initialised from {cfg.pretrained}: {parts}; {len(missing)} tensors left at init, "
                          f"{len(dropped)} checkpoint tensors not used" + (f" (e.g. {dropped[:3]})" if dropped else ""))
    accelerator.print(f"training on {len(train_set)} images, evaluating on {len(val_set)} "
                      f"({accelerator.num_processes} processes)")
    evaluate = make_coco_evaluate(accelerator, val_set, cfg.optim.batch_size, cfg.data.num_workers, task.detect,
                                  category_groups, cfg.run.eval_backend)
    trainer = Trainer(
        accelerator, model, task, train_set, cfg.optim, cfg.run, num_workers=cfg.data.num_workers,
        evaluate=evaluate,
        checkpoint_extra={"config": to_plain(cfg), "num_classes": train_set.num_classes,
                          "category_ids": train_set.category_ids, "category_names": train_set.category_names},
    )
    metrics = trainer.fit()
    if metrics is None:  # resumed after the last epoch: nothing trained, nothing evaluated; every process joins
        metrics = evaluate(trainer.model)
    if accelerator.is_main_process:
        write_metrics_json(cfg.run.output_dir / "metrics.json", metrics)
        accelerator.print(f"metrics written to {cfg.run.output_dir / 'metrics.json'}: {json.dumps(metrics)}")
    accelerator.end_training()
    return metrics


def main(argv: list[str]) -> int:
    finetune(parse_finetune_args(argv))
    return 0


def cli() -> int:
    return run_main(main)
