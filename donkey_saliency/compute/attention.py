"""The attention audit's arithmetic: where the attention mass sits by image row, how much the
steering depends on the top rows, and the ROI_CROP_TOP advice that follows. Pure functions on
arrays (no files, no pilots), NumPy only and valid Python 3.6, so the car's live page can use
``mask_share_above(mask, watch_line(recommended, height))`` on its own masks.

- ``row_share``: a mask's mass per image row, summing to 1 (a blank mask spreads evenly).
- ``share_above`` / ``mask_share_above``: the share of the mass in rows ``0 .. line-1`` (what a
  ROI_CROP_TOP of ``line`` removes); ``watch_line``: the recommended line, or the upper third.
- ``fill_top``: a frame with rows ``0 .. k-1`` replaced by a neutral fill (``audit_run`` passes the
  drive's mean image: it removes what differs from frame to frame and adds no edge or colour the
  pilot never saw; donkeycar's own CROP writes black, which a pilot trained without it never met).
- ``mean_interval``: the mean of per-frame values with a bootstrap interval over frames;
  ``paired_shift_equivalent``: a steering change as "an N px shift of the whole frame", with the
  change and the shift curve resampled on the same frames.
- ``recommend``: the advice and its evidence from the dependence curve (see its docstring).
"""
import numpy as np

CROP_STEP = 10                 # candidate ROI_CROP_TOP values: 10, 20, ... up to half the height
REACTION_PX = 3                # a whole-frame shift this large is "a real steering reaction"
NEGLIGIBLE_FLOOR = 0.01        # steering units: a change below this is nothing, even for a pilot that barely reacts
INTERVAL = 0.90
BOOTSTRAP_DRAWS = 2000
TOP_AREA = 0.15                # the salient region two pilots are compared on


def row_share(masks):
    """(..., H, W) masks -> (..., H) share of each mask's mass per row, summing to 1. A mask with no
    mass (min-max of a constant map) counts as spread evenly, so every frame weighs the same."""
    masks = np.asarray(masks, np.float64)
    rows = np.clip(masks, 0.0, None).sum(axis=-1)
    total = rows.sum(axis=-1, keepdims=True)
    even = np.full(rows.shape, 1.0 / rows.shape[-1])
    return np.where(total > 0, rows / np.where(total > 0, total, 1.0), even)


def share_above(shares, line):
    """The share of attention above row ``line`` (rows 0 .. line-1), from ``row_share`` values (..., H)."""
    return np.asarray(shares)[..., :max(int(line), 0)].sum(axis=-1)


def mask_share_above(mask, line):
    """The share of one (H, W) mask's mass above row ``line``: a float in [0, 1] (the live page's figure)."""
    return float(row_share(mask)[:max(int(line), 0)].sum())


def crop_candidates(height, step=CROP_STEP):
    """ROI_CROP_TOP values worth trying on an image ``height`` rows tall: 10, 20, ... up to half."""
    return list(range(step, height // 2 + 1, step))


def upper_third(height):
    return int(height) // 3


def watch_line(recommended, height):
    """The line whose share above it tells the attention has left the track: the recommended
    ROI_CROP_TOP, or the upper third when no crop is advised (the audit's list, the live page)."""
    return int(recommended) or upper_third(height)


def fill_top(frames, k, fill):
    """``frames`` (..., H, W, C) with rows 0 .. k-1 taken from ``fill`` (H, W, C); a copy."""
    out = np.array(frames, copy=True)
    if k > 0:
        out[..., :k, :, :] = np.asarray(fill, out.dtype)[:k]
    return out


def bootstrap_indexes(count, draws=BOOTSTRAP_DRAWS, seed=0):
    """(draws, count) frame indexes resampled with replacement; the same for every series (paired)."""
    return np.random.RandomState(seed).randint(0, count, (draws, count))


def _tails(values, level):
    tail = 100.0 * (1.0 - level) / 2.0
    return [float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100.0 - tail))]


def mean_interval(values, indexes, level=INTERVAL):
    """(mean, [low, high]): the mean of per-frame ``values`` and its bootstrap interval over the
    resampled frames ``indexes`` (``bootstrap_indexes``)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), _tails(values[indexes].mean(axis=1), level)


def shift_equivalent(change, shift_px, shift_change):
    """The whole-frame shift (px) that moves the steering as much as ``change``, read off the mean
    |change| per shift curve (``shift_px`` ascending; made non-decreasing, through 0 at 0 px); past
    its last point, in proportion. None when the pilot does not react to shifts at all."""
    px = np.concatenate([[0.0], np.asarray(shift_px, np.float64)])
    curve = np.maximum.accumulate(np.concatenate([[0.0], np.asarray(shift_change, np.float64)]))
    if curve[-1] <= 0:
        return None
    if change >= curve[-1]:
        return float(px[-1] * change / curve[-1])
    return float(np.interp(change, curve, px))


def paired_shift_equivalent(changes, shift_changes, shift_px, indexes, level=INTERVAL):
    """(px, [low, high]): ``shift_equivalent`` of the mean of per-frame ``changes`` (N,) against the
    mean shift curve of ``shift_changes`` (N, len(shift_px)), and its interval with both resampled
    on the same frames. None (and [None, None]) when the pilot does not react to shifts."""
    changes = np.asarray(changes, np.float64)
    shift_changes = np.asarray(shift_changes, np.float64)
    value = shift_equivalent(changes.mean(), shift_px, shift_changes.mean(axis=0))
    if value is None:
        return None, [None, None]
    draws = [shift_equivalent(c, shift_px, curve) for c, curve in
             zip(changes[indexes].mean(axis=1), shift_changes[indexes].mean(axis=1))]
    return value, _tails([np.nan if d is None else d for d in draws], level)


def top_area_regions(masks, area=TOP_AREA):
    """bool (N, H, W): each mask's top ``area`` fraction of pixels, exactly that many (ties at the
    threshold go either way)."""
    masks = np.asarray(masks, np.float32)
    flat = masks.reshape(len(masks), -1)
    count = max(int(round(area * flat.shape[1])), 1)
    order = np.argpartition(-flat, count - 1, axis=1)[:, :count]  # linear time: no full sort per frame
    regions = np.zeros(flat.shape, bool)
    np.put_along_axis(regions, order, True, axis=1)
    return regions.reshape(masks.shape)


def iou(first, second):
    """Intersection over union of bool regions, per frame: (N, H, W) x2 -> (N,)."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    axes = tuple(range(1, first.ndim))
    union = np.logical_or(first, second).sum(axis=axes)
    both = np.logical_and(first, second).sum(axis=axes)
    return np.where(union > 0, both / np.maximum(union, 1).astype(np.float64), 1.0)


def largest(values, count):
    """Indexes of the ``count`` largest values, largest first (ties: earlier first)."""
    values = np.asarray(values, np.float64)
    return [int(i) for i in np.argsort(-values, kind="stable")[:count]]


def recommend(height, shares, dependence, shift_px, shift_change):
    """The advice from the crop dependence curve.

    ``shares``: {k: share of attention above row k}; ``dependence``: {k: (mean |change of
    steering| when rows 0..k-1 are filled, [low, high])}; ``shift_px``, ``shift_change``: the mean
    |change| of whole-frame shifts by those pixels (the scale of a real steering reaction, and what
    "as much as an N px shift" is read from, ``shift_equivalent``).

    The rules (in this order):
    1. *uses*: the smallest k within the upper third of the image whose interval's low end reaches
       the change of a REACTION_PX whole-frame shift (and twice the negligible level below): the
       pilot steers by what is up there; crop k and retrain.
    2. *safe*: the largest k for which every k' <= k has its interval's high end below a 1 px
       shift's change (at least NEGLIGIBLE_FLOOR): cropping it changes nothing and makes the
       network smaller.
    3. *keep*: otherwise (the top rows matter a little): no crop advised, 0.
    Returns dict(recommended_roi_crop_top, verdict, advice)."""
    reaction = float(np.interp(REACTION_PX, np.concatenate([[0.0], shift_px]), np.concatenate([[0.0], shift_change])))
    candidates = sorted(dependence)
    negligible = max(reaction / float(REACTION_PX), NEGLIGIBLE_FLOOR)
    strong = max(reaction, 2 * negligible)

    def as_shift(value):
        px = shift_equivalent(value, shift_px, shift_change)
        return "" if px is None else " - as much as a %.0f px shift of the whole frame" % px

    uses = [k for k in candidates if k <= upper_third(height) and dependence[k][1][0] >= strong]
    if uses:
        k = uses[0]
        mean, (low, high) = dependence[k]
        advice = ("rows 0-%d hold %.0f %% of the attention and replacing them moves the steering by %.2f "
                  "(%.2f-%.2f)%s: your pilot uses what is above the track; try ROI_CROP_TOP = %d and retrain"
                  % (k - 1, 100 * shares[k], mean, low, high, as_shift(mean), k))
        return dict(recommended_roi_crop_top=k, verdict="uses", advice=advice)
    safe = 0
    for k in candidates:
        if dependence[k][1][1] >= negligible:
            break
        safe = k
    if safe:
        mean, (low, high) = dependence[safe]
        advice = ("the top %d rows carry %.0f %% of the attention and replacing them changes the steering by "
                  "%.3f (%.3f-%.3f), less than a 1 px shift: cropping them is safe and makes the network smaller; "
                  "ROI_CROP_TOP = %d" % (safe, 100 * shares[safe], mean, low, high, safe))
        return dict(recommended_roi_crop_top=safe, verdict="safe", advice=advice)
    if not candidates:
        return dict(recommended_roi_crop_top=0, verdict="keep", advice="the image is too short to crop")
    k = candidates[0]
    mean, (low, high) = dependence[k]
    advice = ("replacing even the top %d rows (%.0f %% of the attention) moves the steering by %.3f (%.3f-%.3f)%s: "
              "the pilot uses them a little, not enough to call it the background; no crop advised"
              % (k, 100 * shares[k], mean, low, high, as_shift(mean)))
    return dict(recommended_roi_crop_top=0, verdict="keep", advice=advice)
