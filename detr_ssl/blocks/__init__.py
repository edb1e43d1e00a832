"""Building blocks shared by the dense self-supervised pretext tasks (DenseCL, PixPro, LC-loss, DenseSiam,
RegionCL, CCOP, DetCo, MCL, SCFS), each written and tested once:

- :mod:`~detr_ssl.blocks.geometry`: where cells and pixels of two augmented views lie in the image and in
  each other (cell centres, PixPro's positive mask, point mapping, crop overlap).
- :mod:`~detr_ssl.blocks.momentum`: momentum (EMA) encoders and BYOL's cosine momentum schedule.
- :mod:`~detr_ssl.blocks.queue`: a ring-buffer queue of negative keys shared by all processes.
- :mod:`~detr_ssl.blocks.heads`: the projector / predictor MLPs (linear or 1x1 conv).
- :mod:`~detr_ssl.blocks.pooling`: masked average pooling and one-box-per-image RoIAlign.
- :mod:`~detr_ssl.blocks.jigsaw`: a view cut into a grid of cells, one patch per cell (DetCo's local view).
- :mod:`~detr_ssl.blocks.montage`: images downsampled and tiled into montages, and the bookkeeping that finds
  each image's cells again (MCL).
- :mod:`~detr_ssl.blocks.pyramid`: the trunk's stages and the detector's multi-scale levels (``input_proj``),
  which pyramid pretexts train and export.

The losses built from them live in :mod:`detr_ssl.losses.contrastive`.
"""
