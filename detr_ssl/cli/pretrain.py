"""``scripts/pretrain.py``: pretrain the whole Deformable DETR with a pretext task on unlabeled images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from accelerate.utils import set_seed

from detr_ssl.cli.common import make_accelerator, run_main
from detr_ssl.config import PretrainConfig, parse_pretrain_args, to_plain, with_backbone_init
from detr_ssl.datasets import ImageFolderDataset, demo_unlabeled_images, make_train_transforms
from detr_ssl.engine.trainer import Trainer
from detr_ssl.tasks import get_task
from detr_ssl.tasks.base import PRETRAINED_FILE


def pretrain(cfg: PretrainConfig) -> Path:
    """Runs the pretext task; returns the exported weights (``OUTPUT/pretrained.pth``), which
    ``scripts/finetune.py --pretrained`` loads (pretext-only heads are not in it)."""
    task_cls = get_task(cfg.task)
    cfg = task_cls.configure(replace(cfg, model=with_backbone_init(cfg.model, cfg.backbone_init)))
    accelerator = make_accelerator(cfg.run, cfg.optim.grad_accum_steps, find_unused_parameters=not cfg.loss.aux_loss)
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
