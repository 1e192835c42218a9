"""``donkey-saliency audit``: one or two pilots over a drive, with the attention arithmetic of
``audit.py``, written out by ``audit_report.py``.

Each pilot runs as the project's whole-pilot graph (``api.PilotPass``: the pilot's outputs and the
mask from one pass, no TensorFlow), so an audit needs no car and no TensorFlow for
the default method. Two passes over the tub:
1. every audited frame (``--frames``: spread evenly over the live records, default all): the mask and
   the steering of each pilot; per frame the row shares, the top-15 % region (two pilots), and the
   sums for the drive's average map and mean image. Frames are read in batches, never all held.
2. up to ``dependence_frames`` of them, spread evenly: the steering with rows 0..k-1 replaced by
   the drive's mean image (``audit.fill_top``) for each candidate k, and with the whole frame
   shifted sideways by ``evaluate.SHIFTS`` (the scale of a real steering reaction).
"""
import os

import numpy as np

from ..compute import attention as audit
from ..api import PilotPass
from .audit_report import attention_picture, record_picture_name, REVIEW_URL, write_outputs
from ..config import AUDIT_DEPENDENCE_FRAMES
from ..util.console import Progress
from ..errors import InputError
from .evaluate import SHIFTS, shift_image
from ..compute.frames import prepare_batch
from ..util.images import read_rgb
from ..keys import CAMERA_KEY
from ..compute.methods import DEFAULT_METHOD, check_method
from ..compute.overlay import overlay, resize_to
from ..pilots import require_model_file
from ..tubs.read import open_tub, require_field

BATCH = 32   # frames per inference: 64 costs ~160 MiB more of ONNX Runtime buffers for two pilots, no faster
OFF_TRACK_COUNT = 12
# Under 1 % above the line is no look away: the masks' 3x3 de-gridding spills a row's worth over it.
OFF_TRACK_MIN_SHARE = 0.01
DISAGREE_COUNT = 12
MAX_PILOTS = 2
FILL = "the drive's mean image (per pixel, over the audited frames)"


class DriveSums(object):
    """What pass 1 keeps of one pilot: per frame the row shares and steering, the sums of masks and
    frames, and the frames the dependence test will use."""

    def __init__(self, input_shape):
        height, width, channels = input_shape
        self.mask_sum = np.zeros((height, width), np.float64)
        self.frame_sum = np.zeros((height, width, channels), np.float64)
        self.row_shares, self.steering, self.kept = [], [], []
        self.count = 0

    def add(self, x, masks, steering, keep):
        self.mask_sum += masks.sum(axis=0)
        self.frame_sum += x.sum(axis=0)
        self.row_shares.append(audit.row_share(masks).astype(np.float32))
        self.steering.append(steering)
        self.kept.extend(x[i].copy() for i in keep)  # a copy: a view would keep the whole batch alive
        self.count += len(x)

    def done(self):
        self.row_shares = np.concatenate(self.row_shares)
        self.steering = np.concatenate(self.steering)
        self.kept = np.stack(self.kept)
        return self

    @property
    def mean_image(self):
        return np.clip(self.frame_sum / self.count + 0.5, 0, 255).astype(np.uint8)


def spread(count, chosen):
    """``chosen`` positions out of ``count``, spread evenly (all when ``chosen`` >= ``count``)."""
    if chosen >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, chosen).round().astype(int))


def check_arguments(models, frames, dependence_frames, out_dir):
    if not 1 <= len(models) <= MAX_PILOTS:
        raise InputError("give one or two --model pilots, not %d" % len(models))
    if frames is not None and frames < 1:
        raise InputError("--frames must be at least 1")
    if dependence_frames < 2:
        raise InputError("--dependence-frames must be at least 2")
    if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError("--out %s exists and is not a directory" % out_dir)
    for model in models:
        require_model_file(model)


def run_audit(tub, models, frames=None, out_dir=None, backend="auto", method=None,
              dependence_frames=AUDIT_DEPENDENCE_FRAMES, image_key=CAMERA_KEY, review_url=None, progress=True):
    """Audit ``models`` (one or two pilot files) over ``tub``; the report (audit.json's content),
    and DIR/audit.json, PNGs and audit.html when ``out_dir`` is given."""
    check_arguments(models, frames, dependence_frames, out_dir)
    method = check_method(method or DEFAULT_METHOD)
    source = open_tub(tub)
    require_field(source, image_key)
    entries = [e for e in source.live_entries if image_key in e.images]
    if not entries:
        raise InputError("%s has no live records with a %s image" % (source.path, image_key))
    source.check_images([image_key])  # a missing file fails now, not minutes in
    entries = [entries[i] for i in spread(len(entries), frames or len(entries))]
    pilots = []
    try:
        for model in models:
            pilots.append(PilotPass(model, backend, masks=True, method=method, batch=BATCH))
        sums, ious = _first_pass(pilots, entries, image_key, dependence_frames, progress)
        report = dict(tub=source.path, image_key=image_key, frames=len(entries), method=method, fill=FILL,
                      interval=audit.INTERVAL, bootstrap_draws=audit.BOOTSTRAP_DRAWS, shifts_px=list(SHIFTS),
                      reaction_px=audit.REACTION_PX, top_area=audit.TOP_AREA,
                      review_url=review_url or REVIEW_URL, pilots=[])
        pictures = {}
        for number, (pilot, drive) in enumerate(zip(pilots, sums)):
            summary = _pilot_summary(pilot, drive, entries, progress)
            report["pilots"].append(summary)
            pictures.update(_pilot_pictures(number, pilot, drive, summary, entries, image_key))
        if len(pilots) == 2:
            report["comparison"] = _comparison(sums, ious, entries)
            pictures.update(_comparison_pictures(pilots, report["comparison"], entries, image_key))
    finally:
        for pilot in pilots:
            pilot.close()
    if out_dir:
        write_outputs(out_dir, report, pictures)
    return report


def _first_pass(pilots, entries, image_key, dependence_frames, progress):
    kept = set(int(i) for i in spread(len(entries), dependence_frames))
    sums = [DriveSums(p.input_shape) for p in pilots]
    ious = []
    bar = Progress(len(entries), "audit: attention", enabled=progress)
    for start in range(0, len(entries), BATCH):
        batch = entries[start:start + BATCH]
        images = [read_rgb(entry.images[image_key]) for entry in batch]
        keep = [i - start for i in range(start, start + len(batch)) if i in kept]
        regions = []
        for pilot, drive in zip(pilots, sums):
            x = prepare_batch(images, pilot.input_shape)
            masks, steering = pilot.masks_and_steering(x)
            drive.add(x, masks, steering, keep)
            if len(pilots) == 2:
                if regions:  # compare at the first pilot's size
                    height, width = regions[0].shape[1:]
                    masks = np.stack([resize_to(m, (height, width)) for m in masks])
                regions.append(audit.top_area_regions(masks))
        if regions:
            ious.append(audit.iou(regions[0], regions[1]))
        bar.update(len(batch))
    bar.close()
    return [s.done() for s in sums], (np.concatenate(ious) if ious else None)


def _pilot_summary(pilot, drive, entries, progress):
    height = pilot.input_shape[0]
    row_share = drive.row_shares.mean(axis=0)
    candidates = audit.crop_candidates(height)
    shares = {k: float(audit.share_above(row_share, k)) for k in [0] + candidates}
    test = _dependence(pilot, drive.kept, drive.mean_image, candidates, progress)
    shift_change = [mean for mean, _ in test["shift"]]
    advice = audit.recommend(height, shares, {k: test["crop"][k] for k in candidates}, test["shift_px"],
                             shift_change)
    line = audit.watch_line(advice["recommended_roi_crop_top"], height)
    scores = audit.share_above(drive.row_shares, line)
    off_track = [dict(index=int(entries[i].index), share_above=round(float(scores[i]), 4),
                      steering=round(float(drive.steering[i]), 4)) for i in audit.largest(scores, OFF_TRACK_COUNT)
                 if scores[i] > OFF_TRACK_MIN_SHARE]  # a pilot that never looks above the line has none
    dependence = []
    for k in [0] + candidates:
        mean, interval = test["crop"][k]
        px, px_interval = test["as_shift"][k]
        dependence.append(dict(k=k, share_above=round(shares[k], 4), mean_abs_change=round(mean, 5),
                               interval_90=[round(v, 5) for v in interval],
                               as_shift_px=_rounded(px), as_shift_px_90=[_rounded(v) for v in px_interval]))
    return dict(path=pilot.path, input_shape=list(pilot.input_shape), method=pilot.saliency.method,
                row_share=[round(float(v), 6) for v in row_share],
                share_above={str(k): round(v, 4) for k, v in shares.items()},
                dependence_frames=len(drive.kept), crop_dependence=dependence,
                shift_reference=[dict(px=px, mean_abs_change=round(mean, 5), interval_90=[round(v, 5) for v in interval])
                                 for px, (mean, interval) in zip(test["shift_px"], test["shift"])],
                recommended_roi_crop_top=advice["recommended_roi_crop_top"], verdict=advice["verdict"],
                advice=advice["advice"], off_track_line=line, off_track_records=off_track,
                steering_mean=round(float(drive.steering.mean()), 4),
                steering_spread=round(float(drive.steering.std()), 4))


def _rounded(value):
    return None if value is None or not np.isfinite(value) else round(float(value), 2)


def _dependence(pilot, frames, fill, candidates, progress):
    """Pass 2 for one pilot: per-frame |steering change| for each crop and each whole-frame shift,
    summarised with paired bootstrap intervals over the same resampled frames."""
    bar = Progress(len(candidates) + 1 + len(SHIFTS), "audit: dependence", unit="variants", enabled=progress)
    base = pilot.steering(frames)
    crop = {}
    for k in [0] + candidates:
        crop[k] = np.abs(pilot.steering(audit.fill_top(frames, k, fill)) - base)
        bar.update(1)
    shifted = []
    for d in SHIFTS:
        shifted.append(pilot.steering(np.stack([shift_image(f, d) for f in frames])) - base)
        bar.update(1)
    bar.close()
    shifted = np.abs(np.stack(shifted, axis=1))  # (n, shifts)
    # |change| per shift size: left and right shifts of d pixels averaged
    sizes = sorted(set(abs(d) for d in SHIFTS))
    curve = np.stack([shifted[:, [SHIFTS.index(-d), SHIFTS.index(d)]].mean(axis=1) for d in sizes], axis=1)
    indexes = audit.bootstrap_indexes(len(frames))
    return dict(crop={k: audit.mean_interval(v, indexes) for k, v in crop.items()},
                as_shift={k: audit.paired_shift_equivalent(v, curve, sizes, indexes) for k, v in crop.items()},
                shift_px=sizes, shift=[audit.mean_interval(curve[:, j], indexes) for j in range(len(sizes))])


def _comparison(sums, ious, entries):
    first, second = sums[0].steering, sums[1].steering
    difference = np.abs(first - second)
    indexes = audit.bootstrap_indexes(len(ious))
    mean_iou, iou_interval = audit.mean_interval(ious, indexes)
    spread_ok = first.std() > 0 and second.std() > 0
    worst = audit.largest(difference, DISAGREE_COUNT)
    return dict(steering_mean_abs_difference=round(float(difference.mean()), 5),
                steering_correlation=round(float(np.corrcoef(first, second)[0, 1]), 4) if spread_ok else None,
                steering_within_0_1=round(float((difference <= 0.1).mean()), 4),
                top_area_iou=round(mean_iou, 4), top_area_iou_90=[round(v, 4) for v in iou_interval],
                disagreements=[dict(index=int(entries[i].index), steering=[round(float(first[i]), 4),
                                                                          round(float(second[i]), 4)],
                                    difference=round(float(difference[i]), 4), top_area_iou=round(float(ious[i]), 4))
                               for i in worst])


# --- pictures: numbered by pilot, named by record ---------------------------------------------------
def _masked_frames(pilot, images):
    x = prepare_batch(images, pilot.input_shape)
    return x, pilot.masks_and_steering(x)[0]


def _records(entries, wanted, image_key):
    by_index = dict((e.index, e) for e in entries)
    return [read_rgb(by_index[i].images[image_key]) for i in wanted]


def _pilot_pictures(number, pilot, drive, summary, entries, image_key):
    average = drive.mask_sum / max(drive.count, 1)
    pictures = {"attention_%d.png" % number: attention_picture(drive.mean_image, average, summary["row_share"],
                                                               summary["recommended_roi_crop_top"])}
    wanted = [r["index"] for r in summary["off_track_records"]]
    if wanted:
        x, masks = _masked_frames(pilot, _records(entries, wanted, image_key))
        for index, frame, mask in zip(wanted, x, masks):
            pictures[record_picture_name(number, index)] = overlay(frame, mask)
    return pictures


def _comparison_pictures(pilots, comparison, entries, image_key):
    wanted = [d["index"] for d in comparison["disagreements"]]
    pictures = {}
    if wanted:
        images = _records(entries, wanted, image_key)
        for number, pilot in enumerate(pilots):
            x, masks = _masked_frames(pilot, images)
            for index, frame, mask in zip(wanted, x, masks):
                pictures.setdefault(record_picture_name(number, index), overlay(frame, mask))
    return pictures
