"""Hungarian matching between a detector's queries and the ground-truth boxes of each image.

DETR-style detectors predict a *set*: each target box is assigned to exactly one query by minimising a
matching cost, and the loss is then computed on those pairs (every other query should predict "nothing").
The cost is the same weighted sum the loss uses (focal class cost, L1 and GIoU box costs), so matching
picks the pairs that would give the smallest loss.

What runs where, and why:

- **CPU** (:meth:`HungarianMatcher.match_stacked`): every target is costed against its own image's
  queries only, all images stacked into one ``(sum K_i, Q)`` matrix (no padding, no query costed against
  another image's targets), computed with NumPy in cache-sized chunks of rows that may span images (so
  the number of calls does not grow with the batch). The cost is a chain of about fifty elementwise
  operations on arrays of a few thousand elements; at that size a PyTorch call spends most of its time
  dispatching rather than computing, and a NumPy call costs a fraction of that. NumPy also runs on the
  calling thread only, so the cost is not slowed by an intra-op thread pool that other processes keep
  busy. The values are those of :meth:`HungarianMatcher.cost_matrix` (tests hold the two to float32
  rounding).
- **Other devices** (:meth:`HungarianMatcher.match_padded`): one ``(B, Q, K_max)`` batch from
  :meth:`HungarianMatcher.cost_matrix` (targets padded per image), so the number of kernel launches does
  not grow with the batch, copied to the host once.
- **Assignment**, on the host for both: lapx's ``lapjvr`` (a Jonker-Volgenant solver with a native
  rectangular path) when the optional ``lapx`` package is installed, else
  ``scipy.optimize.linear_sum_assignment``; both return an optimal assignment (equal total cost; ties may
  pick different pairs).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from detr_ssl.box_ops import AREA_EPS, cxcywh_to_xyxy, generalized_box_iou
from detr_ssl.errors import NonFiniteError
from detr_ssl.losses.focal import FocalParams, focal_terms
from detr_ssl.losses.output import MatchIndices

try:  # optional: several times faster than scipy on the tall rectangular costs of matching
    from lap import lapjvr as _lapjvr
except ImportError:  # pragma: no cover - depends on the environment
    _lapjvr = None

__all__ = ["ASSIGNMENT_SOLVER", "HungarianMatcher", "MatchIndices"]

#: The solver :func:`_solve` uses in this environment.
ASSIGNMENT_SOLVER = "scipy linear_sum_assignment" if _lapjvr is None else "lapx lapjvr"

_NON_FINITE = "non-finite matching cost: the predicted logits or boxes contain NaN or inf"


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of targets to queries, per image.

    The cost of giving target ``k`` (class ``c_k``, box ``b_k``) to query ``q`` is::

        cost_class * (focal_pos(q, c_k) - focal_neg(q, c_k)) + cost_bbox * |box_q - b_k|_1
            - cost_giou * GIoU(box_q, b_k)

    :meth:`forward` picks the path by the predictions' device (see the module docstring): on CPU the
    stacked NumPy cost (:meth:`match_stacked`), elsewhere the padded PyTorch batch (:meth:`match_padded`).
    Both return optimal assignments in the same form (equal total cost; a tie may pick different pairs).

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three costs (the loss weights, by default).
        focal_alpha, focal_gamma: focal shape; available as :attr:`focal` so the criterion uses the same.

    >>> matcher = HungarianMatcher()
    >>> logits, boxes = torch.zeros(1, 3, 2), torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2],
    ...                                                      [0.5, 0.5, 0.9, 0.9]]])
    >>> matcher(logits, boxes, [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}])
    [(tensor([1]), tensor([0]))]
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        if any(value < 0 for value in costs.values()) or not any(costs.values()):
            raise ValueError(f"matching costs must be >= 0 and not all 0, got {costs}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal = FocalParams(focal_alpha, focal_gamma)

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
                f"focal={self.focal}")

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor) -> Tensor:
        """Matching cost of every (query, target) pair.

        Args:
            logits: ``(N, C)`` pre-sigmoid scores of ``N`` queries.
            boxes: ``(N, 4)`` predicted cxcywh boxes.
            labels: ``(K,)`` int64 target classes.
            target_boxes: ``(K, 4)`` target cxcywh boxes.
            (Or each with a leading batch dimension ``B``: one cost matrix per batch element.)
        Returns:
            ``(N, K)`` (or ``(B, N, K)``) float32 costs (lower is a better pair).
        """
        boxes, target_boxes = boxes.float(), target_boxes.float()
        l1_cost = torch.cdist(boxes, target_boxes, p=1)
        giou_cost = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes))
        return (self.cost_class * self.class_cost(logits, labels) + self.cost_bbox * l1_cost
                + self.cost_giou * giou_cost)

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Unweighted focal class cost ``focal_pos(q, c_k) - focal_neg(q, c_k)`` of every (query, target) pair:
        what giving target ``k``'s class to query ``q`` changes in the loss.

        ``logits`` ``(..., N, C)`` pre-sigmoid scores, ``labels`` ``(..., K)`` int64 -> ``(..., N, K)`` float32.
        """
        positive, negative = focal_terms(class_logits(logits, labels), self.focal)
        return positive - negative

    def forward(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> MatchIndices:
        """Matches each image's targets to its queries.

        Args:
            logits: ``(B, Q, C)`` pre-sigmoid class scores.
            boxes: ``(B, Q, 4)`` predicted cxcywh boxes in ``[0, 1]``.
            targets: ``B`` dicts with ``labels`` int64 ``(K_i,)`` and ``boxes`` ``(K_i, 4)`` cxcywh; ``K_i`` may be 0.
        Returns:
            per image ``(query_idx, target_idx)``, int64 CPU tensors of length ``min(Q, K_i)``, sorted by
            query index (``target_idx[j]`` is the target matched to query ``query_idx[j]``).
        Raises:
            ValueError: mismatched shapes, invalid boxes, or a non-finite cost (NaN/inf predictions).
        """
        if logits.device.type == "cpu":
            return self.match_stacked(logits, boxes, targets)
        return self.match_padded(logits, boxes, targets)

    @torch.no_grad()
    def match_padded(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> MatchIndices:
        """:meth:`forward` through one padded ``(B, Q, K_max)`` :meth:`cost_matrix` on the predictions'
        device (what ``forward`` runs off the CPU; it works on CPU too)."""
        logits, boxes = logits.float(), boxes.float()  # autocast outputs: costs (and padded targets) in float32
        sizes = _check_batch(logits, boxes, targets)
        if sum(sizes) == 0:
            return assign_padded(logits.new_zeros(len(sizes), logits.shape[1], 0), sizes)
        labels, target_boxes = padded_targets(targets, boxes)
        return assign_padded(self.cost_matrix(logits, boxes, labels, target_boxes).cpu(), sizes)

    def match_stacked(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> MatchIndices:
        """:meth:`forward` through :meth:`stacked_cost` (what ``forward`` runs on CPU; predictions on another
        device are copied to the host first)."""
        sizes = _check_batch(logits, boxes, targets)
        if sum(sizes) == 0:
            return [_no_match() for _ in sizes]
        cost = self.stacked_cost(logits, boxes, targets)
        num_queries = cost.shape[1]
        if not np.isfinite(cost).all():
            raise NonFiniteError(_NON_FINITE)
        matches, start = [], 0
        for size in sizes:
            if size == 0:
                matches.append(_no_match())
                continue
            target_idx, query_idx = _solve(cost[start:start + size])  # rows: targets, sorted
            start += size
            by_query = np.argsort(query_idx)
            # With every target matched (K_i <= Q), target_idx is 0..K_i-1, so target_idx[by_query] is by_query.
            matched = by_query if size <= num_queries else target_idx[by_query]
            matches.append((torch.from_numpy(query_idx[by_query]), torch.from_numpy(matched)))
        return matches

    def stacked_cost(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> np.ndarray:
        """Every target's cost against its own image's queries: a float32 NumPy array ``(sum K_i, Q)`` whose
        ``i``-th block of ``K_i`` rows is image ``i``'s :meth:`cost_matrix`, transposed.

        Rows (targets) come first so that each image's block is contiguous and every broadcast runs along
        the long query axis. The box quantities the costs need are computed once per query and once per
        target; then one chain of NumPy operations covers a chunk of rows, whatever images they belong to
        (each row gathers its own image's query quantities), in a few buffers that every chunk reuses.

        It reads detached host copies only, so neither it nor :meth:`match_stacked` (nor :meth:`forward`,
        whose other path :meth:`match_padded` is decorated) enters ``torch.no_grad()``: switching the grad
        mode costs a visible share of a small batch's matching.

        Raises:
            ValueError: a predicted or target box with a negative width or height.
        """
        labels = torch.cat([target["labels"] for target in targets]).cpu().numpy()
        image = np.repeat(np.arange(len(targets)), [len(target["labels"]) for target in targets])
        batch, num_queries = boxes.shape[:2]
        predicted = batch * num_queries
        all_boxes = torch.cat([boxes.detach().reshape(predicted, 4).cpu()]
                              + [target["boxes"].detach().cpu() for target in targets]).float().numpy()
        class_logits_np = logits.detach().float().cpu().numpy().transpose(0, 2, 1)  # (B, C, Q)
        cost = np.empty((len(image), num_queries), np.float32)
        rows = max(1, _CHUNK_ELEMENTS // max(1, num_queries))
        scratch = np.empty((_FEATURES, min(rows, len(image)), num_queries), np.float32)  # reused by every chunk
        with np.errstate(invalid="ignore"):  # inf in logits or boxes gives NaN, which the caller reports
            features = _box_features(all_boxes)  # (features, B * Q + T)
            smallest_area, smallest_width, smallest_height = features[_AREA:].min(axis=1, initial=np.inf)
            if min(smallest_width, smallest_height) < 0:
                raise ValueError("predicted or target boxes are not valid cxcywh boxes: they have a negative width "
                                 "or height")
            floor_areas = smallest_area < AREA_EPS
            features[:4] *= np.float32(self.cost_bbox)
            per_image = features[:, :predicted].reshape(_FEATURES, batch, num_queries)
            for start in range(0, len(image), rows):
                part = slice(start, start + rows)
                rows_image = image[part]
                self._cost_rows(class_logits_np[rows_image, labels[part]], per_image, rows_image,
                                features[:, predicted:][:, part, None], floor_areas, cost[part],
                                scratch[:, :len(rows_image)])
        return cost

    def _cost_rows(self, x: np.ndarray, per_image: np.ndarray, image: np.ndarray, target: np.ndarray,
                   floor_areas: bool, out: np.ndarray, scratch: np.ndarray) -> None:
        """Writes the costs of ``R`` targets against ``Q`` queries into ``out`` ``(R, Q)``.

        ``x``: each target's class logit of each query (overwritten); ``per_image`` ``(features, B, Q)`` the
        queries' and ``target`` ``(features, R, 1)`` the targets' :func:`_box_features`, the first four scaled
        by ``cost_bbox``; ``image`` ``(R,)`` each target's image; ``scratch``: ``(features, R, Q)``. Every step
        writes into these arrays, and quantities that undergo the same operation go through one call together.
        """
        # cost_class * (focal_pos - focal_neg) = cost_class * (alpha * (1 - p)**gamma * -log p
        #     - (1 - alpha) * p**gamma * -log(1 - p)), from the stable -log p = max(-x, 0) + log(1 + exp(-|x|))
        # and -log(1 - p) = max(x, 0) + log(1 + exp(-|x|)), with (1 - p)**gamma = exp(-gamma * -log(1 - p))
        # and p**gamma = exp(-gamma * -log p). Planes 0 and 1 of scratch hold the two -log, 2 and 3 the powers.
        neg_log, power = scratch[:2], scratch[2:4]
        magnitude, log_term = power
        np.abs(x, out=magnitude)
        np.negative(magnitude, out=log_term)
        np.exp(log_term, out=log_term)
        np.log1p(log_term, out=log_term)
        np.add(magnitude, x, out=neg_log[0])
        np.subtract(magnitude, x, out=neg_log[1])
        neg_log *= np.float32(0.5)  # max(x, 0), max(-x, 0)
        neg_log += log_term  # -log(1 - p), -log p
        np.multiply(neg_log, np.float32(-self.focal.gamma), out=power)
        np.exp(power, out=power)  # (1 - p)**gamma, p**gamma
        power *= neg_log[::-1]
        power[0] *= np.float32(self.cost_class * self.focal.alpha)  # cost_class * focal_pos
        power[1] *= np.float32(self.cost_class * (1.0 - self.focal.alpha))  # cost_class * focal_neg
        np.subtract(power[0], power[1], out=out)
        # Each target row's query features; then cost_bbox * L1, from the scaled (cx, cy, w, h)
        np.take(per_image, image, axis=1, out=scratch, mode="clip")
        l1 = scratch[:4]
        np.subtract(target[:4], l1, out=l1)
        np.abs(l1, out=l1)
        out += np.add.reduce(l1, axis=0, out=x)
        giou = _giou_into(scratch, target, floor_areas, enclosing=x)
        giou *= np.float32(self.cost_giou)
        out -= giou


#: Most (target, query) pairs :meth:`HungarianMatcher.stacked_cost` computes at once: its thirteen ``(rows, Q)``
#: float32 planes (64 KiB each) then fit in a core's L2 cache, which a whole large batch's would not.
_CHUNK_ELEMENTS = 16384
#: Rows of :func:`_box_features` after ``(cx, cy, w, h)``: the corners ``x1, y1, -x0, -y0`` (so that one
#: minimum gives both the smaller right/bottom and, negated, the larger left/top edge), area, width, height.
_CORNERS, _AREA, _WIDTH, _HEIGHT = slice(4, 8), 8, 9, 10
_FEATURES = 11
#: :func:`_box_features` as a matrix applied to ``(cx, cy, w, h)`` (the area row, 0 here, is filled after).
_LINEAR_FEATURES = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                             [1, 0, 0.5, 0], [0, 1, 0, 0.5], [-1, 0, 0.5, 0], [0, -1, 0, 0.5],
                             [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)


def _box_features(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` cxcywh boxes -> ``(11, N)`` float32: ``cx, cy, w, h``, ``x1, y1, -x0, -y0``, area, width, height.

    All but the area are linear in ``(cx, cy, w, h)``: one small matrix product gives them.
    """
    features = _LINEAR_FEATURES @ boxes.T
    np.multiply(features[_WIDTH], features[_HEIGHT], out=features[_AREA])
    return features


def _giou_into(query: np.ndarray, target: np.ndarray, floor_areas: bool, enclosing: np.ndarray) -> np.ndarray:
    """GIoU of ``query`` ``(features, R, Q)`` :func:`_box_features` (clobbered: the work is done in its planes)
    against ``target``'s ``(features, R, 1)``, float32; ``enclosing`` is one more ``(R, Q)`` buffer. Returns a
    plane of ``query``.

    The formula of :func:`detr_ssl.box_ops.generalized_box_iou`, written for NumPy:
    ``IoU - (enclosing - union) / enclosing = inter / union + union / enclosing - 1``. Its floor on the
    union and enclosing areas can only act when some box's area is below it, so it is applied only then
    (``floor_areas``). ``max(v, 0)`` is ``(v + |v|) / 2`` (exact, and faster than a broadcast maximum).
    """
    edges = np.minimum(query[_CORNERS], target[_CORNERS], out=query[_CORNERS])  # min x1, min y1, -max x0, -max y0
    overlap = np.add(edges[:2], edges[2:], out=edges[:2])  # (x, y); negative when disjoint
    sums = np.add(query[_AREA:], target[_AREA:], out=query[_AREA:])  # area, width, height of both boxes
    extent = sums[1:]
    extent -= overlap  # of the enclosing box
    np.multiply(extent[0], extent[1], out=enclosing)
    overlap += np.abs(overlap, out=edges[2:])  # 2 * max(overlap, 0)
    intersection = np.multiply(overlap[0], overlap[1], out=edges[2])
    intersection *= np.float32(0.25)
    union = sums[0]
    union -= intersection
    if floor_areas:
        np.maximum(union, np.float32(AREA_EPS), out=union)
        np.maximum(enclosing, np.float32(AREA_EPS), out=enclosing)
    intersection /= union
    union /= enclosing
    intersection += union
    intersection -= np.float32(1.0)
    return intersection


def _check_batch(logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> list[int]:
    """Each image's target count; ValueError unless logits, boxes and targets describe one batch."""
    if (logits.dim() != 3 or boxes.shape != (*logits.shape[:2], 4) or len(targets) != logits.shape[0]):
        raise ValueError(f"logits {tuple(logits.shape)}, boxes {tuple(boxes.shape)} and {len(targets)} "
                         "targets do not describe the same batch")
    return [len(target["boxes"]) for target in targets]


def _no_match() -> tuple[Tensor, Tensor]:
    return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)


def _solve(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal assignment of a finite 2-D cost: int64 ``(rows, cols)``, rows sorted (lapx or scipy)."""
    if _lapjvr is not None:
        return _lapjvr(cost, extend_cost=True, return_cost=False)
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64, copy=False), cols.astype(np.int64, copy=False)


def class_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Each query's logit for each target's class: ``(..., N, C)``, ``(..., K)`` -> ``(..., N, K)``."""
    return logits.gather(-1, labels.unsqueeze(-2).expand(*logits.shape[:-1], labels.shape[-1]))


def padded_targets(targets: list[dict[str, Tensor]], like: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's labels ``(B, K_max)`` and cxcywh boxes ``(B, K_max, 4)`` (dtype and device of ``like``),
    padded to the batch's largest count.

    One ``(B, Q, K_max)`` cost then holds every image's own matrix, and no query is costed against another
    image's targets (B times less work than costing the concatenated targets). The padding is a valid box
    and class 0, so its costs are finite; :func:`assign_padded` slices it away.
    """
    labels = pad_sequence([target["labels"] for target in targets], batch_first=True)
    boxes = pad_sequence([target["boxes"].to(like) for target in targets], batch_first=True, padding_value=0.5)
    return labels.to(like.device), boxes


def assign_padded(cost: Tensor, sizes: list[int]) -> MatchIndices:
    """Per-image optimal assignment from padded CPU costs ``(B, Q, K_max)``: image ``i`` uses ``[:, :sizes[i]]``.

    Returns per image (query indices, target indices), int64, sorted by query; empty when ``K_i == 0``.
    Raises NonFiniteError on NaN or infinite costs in an image's block.
    """
    matches = []
    for image, size in enumerate(sizes):
        if size == 0:
            matches.append(_no_match())
            continue
        block = cost[image, :, :size].numpy()
        if not np.isfinite(block).all():
            raise NonFiniteError(_NON_FINITE)
        query_idx, target_idx = _solve(block)
        matches.append((torch.from_numpy(query_idx), torch.from_numpy(target_idx)))
    return matches
