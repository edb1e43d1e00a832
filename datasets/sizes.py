"""The image sizes of the training recipes (no torch here: the command-line presets read them before
anything heavy is imported)."""

#: DETR / Deformable DETR training: short side 480..800 step 32, long side <= 1333, crop branch 384..600.
PAPER_TRAIN_SCALES: tuple[int, ...] = tuple(range(480, 801, 32))
PAPER_MAX_SIZE = 1333
PAPER_CROP = (384, 600)
PAPER_EVAL_SIZE = 800

#: DetReg / UP-DETR pretraining (their released loaders): short side from this list, long side <= 600; the
#: crop branch is the same 384..600 one.
PRETRAIN_TRAIN_SCALES: tuple[int, ...] = (320, 336, 352, 368, 400, 416, 432, 448, 464, 480)
PRETRAIN_MAX_SIZE = 600

#: The same recipe scaled to the 128x128 demo images (sizes / 800 * 128, long side ratio kept).
DEMO_TRAIN_SCALES: tuple[int, ...] = (96, 104, 112, 120, 128)
DEMO_MAX_SIZE = 213
DEMO_CROP = (64, 96)
DEMO_EVAL_SIZE = 128
