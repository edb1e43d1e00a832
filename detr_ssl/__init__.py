"""detr-ssl: self-supervised pretraining and label-efficient fine-tuning of Deformable DETR."""

__version__ = "0.1.0"
