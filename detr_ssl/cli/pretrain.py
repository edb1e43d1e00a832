"""``scripts/pretrain.py``: pretrain the whole Deformable DETR with a pretext task on unlabeled images.

The parser needs only the torch-free task options (``detr_ssl/tasks/options``); the training machinery is
imported inside :func:`pretrain` (start-up: see ``detr_ssl/cli/common.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from detr_ssl.cli.common import make_accelerator, run_main
from detr_ssl.config import (
    PRETRAIN_PRESETS,
    PRETRAINED_FILE,
    PretrainConfig,
    flag_value,
    parse_with_presets,
    to_plain,
    with_backbone_init,
)
from detr_ssl.tasks import get_task, task_options


def parse_pretrain_args(argv: list[str]) -> PretrainConfig:
    """The pretraining config of the task named by ``--task`` (default: DetReg): the shared options plus
    that task's own groups, so ``--task X --help`` shows X's options. The task adjusts the preset's
    defaults first (:meth:`~detr_ssl.tasks.base.PretextTask.defaults`); the flags given still win."""
    options = task_options(flag_value(argv, "--task") or PretrainConfig.task)
    presets = {name: lambda preset=preset: options.with_options(preset()) for name, preset in PRETRAIN_PRESETS.items()}
    return parse_with_presets(options.config_class(), presets, "--data", argv, options.defaults)


def pretrain(cfg: PretrainConfig) -> Path:
    """Runs the pretext task; returns the exported weights (``OUTPUT/pretrained.pth``), which
    ``scripts/finetune.py --pretrained`` loads (pretext-only heads are not in it)."""
    from accelerate.utils import set_seed

    from detr_ssl.datasets import ImageFolderDataset, demo_unlabeled_images, make_train_transforms
    from detr_ssl.engine.trainer import Trainer

    task_cls = get_task(cfg.task)
    cfg = task_cls.configure(replace(cfg, model=with_backbone_init(cfg.model, cfg.backbone_init)))
    accelerator = make_accelerator(cfg.run, cfg.optim.grad_accum_steps,
                                   find_unused_parameters=task_cls.find_unused_parameters(cfg))
    set_seed(cfg.run.seed)
    task = task_cls(cfg)
    with accelerator.main_process_first():
        source = cfg.data.data or demo_unlabeled_images()
        images = ImageFolderDataset(source, image_dir=cfg.data.image_dir)
    model = task.build_model()
    dataset = task.build_dataset(images, make_train_transforms(cfg.data.train_scales, cfg.data.max_size, cfg.data.crop))
    accelerator.print(f"pretraining with {cfg.task} on {len(dataset)} images from {source} "
                      f"({accelerator.num_processes} processes)")
    trainer = Trainer(accelerator, model, task, dataset, cfg.optim, cfg.run, num_workers=cfg.data.num_workers,
                      checkpoint_extra={"config": to_plain(cfg), "task": cfg.task}, collate_fn=task.collate_fn)
    trainer.fit()
    files = [Path(cfg.run.output_dir) / PRETRAINED_FILE]
    if accelerator.is_main_process:
        files = task.export(accelerator.unwrap_model(trainer.model), Path(cfg.run.output_dir))
        accelerator.print("pretrained weights written to " + ", ".join(map(str, files)))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return files[0]


def main(argv: list[str]) -> int:
    pretrain(parse_pretrain_args(argv))
    return 0


def cli() -> int:
    return run_main(main)
