"""``donkey-saliency evaluate``: how much of the pilot's steering a saliency mask explains.

Three measures, on the same frames for every method, with the pilot's own steering:
- **Shift test** (PilotNet, Bojarski et al. 2017, arXiv 1704.07911). The salient region is the top
  ``area`` fraction of the mask, ranked after a light blur so it is made of blobs, exactly the same
  pixel count for every method. The image is split in two layers: the region, and the background
  behind it (the region inpainted). Three variants are shifted sideways by d in SHIFTS pixels: the
  region alone over the background, the background alone under the region, and the whole image;
  edges are replicated at the border. Per frame, the steering change is fitted against d (slope
  through 0); ``salient_over_whole`` = mean |slope of the salient shift| / mean |slope of the whole
  shift| over frames (near 1: the region explains the steering), ``background_over_whole`` the same
  for the background (near 0 is good).
- **Deletion / insertion** (Petsiuk et al. 2018, RISE). Pixels in mask order (most salient first)
  are replaced by a blurred copy in 5 % steps up to 50 %; deletion_auc is the mean |steering
  change| over those steps (high: the mask found what matters). Insertion starts from the blurred
  image and puts the original pixels back in the same order; insertion_auc is the mean |steering -
  the original steering| (low is good).
- **Paired bootstrap**: frames resampled with replacement, the same draws for every method;
  the 90 % interval of (method - default method) for each figure, and of (method - tub-mean).
- **Sanity check** (Adebayo et al. 2018, "Sanity checks for saliency maps"): the pilot's dense layers
  re-drawn at random (then, cascading, its conv layers from the deepest down); per method the mean
  Spearman rank correlation of the masks with the original ones (``randomized_head_spearman``,
  ``cascade_spearman``). A mask that explains the decision must change: low is good.

Every method's masks come from the fused graph's one run (its backward pass, no TensorFlow).

The pilot's steering comes from its whole graph too (``api.PilotPass``: the car's own way to run the
pilot, no TensorFlow); a categorical pilot's two ways: the expected value over its bins (primary) and
donkeycar's ``linear_unbin`` (the arg-max it drives by). Pure functions first (they take arrays and
return arrays), then the runner.
"""
import copy
import os

import numpy as np

from ..api import PilotPass, Saliency
from ..compute import methods
from ..compute.graph import export, graph_for
from ..config import EVALUATE_AREA, EVALUATE_FRAMES
from ..util.console import Progress, table_lines
from ..errors import InputError
from ..util.fileio import atomic_write, json_bytes
from ..compute.frames import fit_to_model
from ..util.images import write_png
from ..compute.methods import DEFAULT_METHOD, DEFAULT_OUTPUT, check_method, check_output
from ..util.deps import require
from ..util.opencv import import_cv2
from ..compute.overlay import overlay, side_by_side
from ..pilots import load_pilot, require_model_file
from ..pilots.network import Network
from ..pilots.trunk import Conv
from ..tubs.read import open_tub, tub_frames

SHIFTS = (-12, -9, -6, -3, 3, 6, 9, 12)
FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 11))  # 5 % .. 50 %
RANK_BLUR_SIGMA = 1.0      # the light blur before ranking: blob-like regions, not scattered pixels
DELETE_BLUR_SIGMA = 5.0    # the "deleted" pixels' values: a heavily blurred copy
BOOTSTRAP_DRAWS = 2000
INTERVAL = 0.90
EXAMPLE_SHIFT = 9
EXAMPLES = 3
RANDOM_METHOD = "random-smooth"
MEAN_METHOD = "tub-mean"
METRICS = ("salient_over_whole", "background_over_whole", "deletion_auc", "insertion_auc")
# The shift test moves frames up to max(SHIFTS) px sideways: a frame must be wider than twice that (and
# as tall) to keep anything of itself in view; a smaller camera frame upscaled to the pilot's input
# holds no more than its own few pixels (a 1x1 frame: a constant image, every figure undefined).
MIN_FRAME_SIDE = 2 * max(abs(d) for d in SHIFTS) + 1
PILOT_NOTES = {  # how the report reads each kind of pilot's steering
    "categorical": "angle from the 15-bin softmax: expected value over bins (primary) and "
                   "donkeycar.utils.linear_unbin (argmax)",
    "memory": "memory input (previous angle/throttle) all zeros, donkeycar's start memory",
}
HIGHER_IS_BETTER = dict(salient_over_whole=True, background_over_whole=False, deletion_auc=True,
                        insertion_auc=False)


# --- pure functions: regions, shifts, curves, statistics -------------------------------------------
def ranking(mask, sigma=RANK_BLUR_SIGMA):
    """Pixel indexes of an (H, W) mask, most salient first, after a light Gaussian blur (ties:
    row-major order, so a constant mask gives the same order for every method)."""
    cv2 = import_cv2()

    smooth = cv2.GaussianBlur(np.asarray(mask, np.float32), (0, 0), sigma) if sigma else np.asarray(mask)
    return np.argsort(-smooth.ravel(), kind="stable")


def top_region(mask, area=EVALUATE_AREA, sigma=RANK_BLUR_SIGMA):
    """bool (H, W): exactly round(area x H x W) pixels, the top of ``ranking``."""
    mask = np.asarray(mask)
    region = np.zeros(mask.size, bool)
    region[ranking(mask, sigma)[:int(round(area * mask.size))]] = True
    return region.reshape(mask.shape)


def shift_image(image, d):
    """Shift (H, W[, C]) sideways by ``d`` pixels (positive: right), replicating the edge column."""
    width = image.shape[1]
    columns = np.clip(np.arange(width) - int(d), 0, width - 1)
    return image[:, columns]


def shift_region(region, d):
    """Shift a bool (H, W) region sideways; what leaves the image is gone, nothing is replicated."""
    out = np.zeros_like(region)
    d = int(d)
    if d > 0:
        out[:, d:] = region[:, :-d]
    elif d < 0:
        out[:, :d] = region[:, -d:]
    else:
        out[:] = region
    return out


def background_layer(image, region):
    """The image with ``region`` inpainted: the layer behind the salient pixels (uint8 RGB)."""
    cv2 = import_cv2()

    return cv2.inpaint(np.ascontiguousarray(image), region.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)


def shift_variants(image, region, background, d):
    """(salient only, background only, whole) shifted by ``d``: the same hole filling for all three
    (the inpainted background layer behind the region, edge replication at the border)."""
    whole = shift_image(image, d)
    moved = shift_region(region, d)[..., None]
    salient = np.where(moved, whole, background)
    rest = np.where(region[..., None], image, shift_image(background, d))
    return salient, rest, whole


def slopes(deltas, shifts=SHIFTS):
    """Least-squares slope through 0 of steering change against shift: (..., len(shifts)) -> (...)."""
    d = np.asarray(shifts, np.float64)
    return np.asarray(deltas, np.float64) @ d / (d @ d)


def fill_in_order(image, other, order, fraction):
    """``image`` with its first ``fraction`` of pixels in ``order`` taken from ``other``."""
    height, width = image.shape[:2]
    flat = image.reshape(height * width, -1).copy()
    chosen = order[:int(round(fraction * height * width))]
    flat[chosen] = other.reshape(height * width, -1)[chosen]
    return flat.reshape(image.shape)


def blurred(image, sigma=DELETE_BLUR_SIGMA):
    cv2 = import_cv2()

    return cv2.GaussianBlur(image, (0, 0), sigma)


def curve_auc(values):
    """Mean over the steps of a per-frame curve (..., steps) -> (...): the area under it per unit
    of deleted fraction (steps are equal)."""
    return np.asarray(values, np.float64).mean(axis=-1)


def ratio_of_means(numerator, denominator):
    den = float(np.mean(denominator))
    return float(np.mean(numerator)) / den if den > 0 else float("nan")


def metric_values(per_frame, index=None):
    """The four figures from per-frame arrays (optionally resampled by ``index``)."""
    pick = (lambda a: a) if index is None else (lambda a: a[index])
    return dict(
        salient_over_whole=ratio_of_means(pick(per_frame["salient"]), pick(per_frame["whole"])),
        background_over_whole=ratio_of_means(pick(per_frame["background"]), pick(per_frame["whole"])),
        deletion_auc=float(np.mean(pick(per_frame["deletion"]))),
        insertion_auc=float(np.mean(pick(per_frame["insertion"]))))


def paired_intervals(per_frame, reference, draws=BOOTSTRAP_DRAWS, level=INTERVAL, seed=0):
    """{metric: [low, high]}: the ``level`` bootstrap interval of (metric of ``per_frame`` - metric
    of ``reference``), both computed on the same resampled frames each draw."""
    count = len(per_frame["whole"])
    rng = np.random.RandomState(seed)
    diffs = {name: [] for name in METRICS}
    for _ in range(draws):
        index = rng.randint(0, count, count)
        ours, theirs = metric_values(per_frame, index), metric_values(reference, index)
        for name in METRICS:
            diffs[name].append(ours[name] - theirs[name])
    tail = 100.0 * (1.0 - level) / 2.0
    return {name: [float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100.0 - tail))]
            for name, v in diffs.items()}


# --- the runner -----------------------------------------------------------------------------------
def check_frame_size(shape, what):
    """InputError unless an (H, W, ...) frame is large enough for the shift test."""
    if min(shape[:2]) < MIN_FRAME_SIDE:
        raise InputError("%s is %dx%d pixels; the shift test moves frames up to %d px sideways, so they must be at "
                         "least %dx%d" % (what, shape[1], shape[0], max(SHIFTS), MIN_FRAME_SIDE, MIN_FRAME_SIDE))


def _frames(tub, count, input_shape):
    check_frame_size(input_shape, "the pilot's input")
    frames = tub_frames(tub, count)
    for frame in frames:
        check_frame_size(frame.shape, "a frame of %s" % tub)
    return np.stack([fit_to_model(f, input_shape) for f in frames])


def graph_outputs(graph, frames, backend="auto", batch=64):
    """Every output of ``graph`` for uint8 ``frames`` at its input size, batched (the pilot's other
    inputs held at zeros, as ``api.Saliency`` holds them)."""
    outputs = {}
    with Saliency(graph, backend) as saliency:
        for i in range(0, len(frames), batch):
            for name, value in saliency.infer(frames[i:i + batch]).items():
                outputs.setdefault(name, []).append(value)
    return {name: np.concatenate(v) for name, v in outputs.items()}


def method_masks(model_path, frames, backend="auto", output=DEFAULT_OUTPUT, level=None,
                 default_method=DEFAULT_METHOD):
    """{method: (N, H, W) masks} for every method evaluate compares (all of ``methods.METHODS``, each
    from the graph's one run with its backward pass, plus the random and tub-mean baselines)."""
    outputs = graph_outputs(graph_for(model_path, output=output), frames, backend)
    steps = load_pilot(model_path).trunk.steps
    masks = {method: methods.compute(method, outputs, steps, level) for method in methods.METHODS}
    masks[RANDOM_METHOD] = methods.smooth_random_masks(len(frames), frames.shape[1:3])
    masks[MEAN_METHOD] = methods.mean_masks(masks[default_method])
    return masks


# --- the sanity check (Adebayo et al. 2018) ----------------------------------------------------------
def randomized_pilot(pilot, convs=0, seed=0):
    """A copy of ``pilot`` (read with its network) with every dense layer's weights re-drawn (Gaussian,
    each layer's own spread, zero bias), and the ``convs`` deepest conv layers' too."""
    rng = np.random.RandomState(seed)

    def redraw(weight):
        return (rng.standard_normal(weight.shape) * max(float(np.std(weight)), 1e-3)).astype(np.float32)

    layers = [layer._replace(params=(redraw(layer.params[0]), np.zeros_like(layer.params[1])))
              if layer.kind == "dense" else layer for layer in pilot.network.layers]
    network = Network(pilot.network.inputs, pilot.network.image, layers, pilot.network.outputs)
    trunk = copy.copy(pilot.trunk)
    conv_indexes = [i for i, step in enumerate(trunk.steps) if step.kind == "conv"]
    steps = list(trunk.steps)
    for index in conv_indexes[len(conv_indexes) - convs:] if convs else []:
        old = steps[index].compute
        new = Conv(redraw(old.weight), np.zeros_like(old.bias), old.dilation, old.groups)
        new.map_at = old.map_at
        steps[index] = steps[index]._replace(compute=new)
    trunk.steps = steps
    return type(pilot)(pilot.path, trunk, pilot.format, network)


def ranks(values):
    """Ranks of a 1-D array, ties sharing their mean rank (what Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(ordered))[0] + 1, [len(values)]])
    mean_rank = np.repeat((starts[:-1] + starts[1:] - 1) / 2.0, np.diff(starts))
    out = np.empty(len(values))
    out[order] = mean_rank
    return out


def spearman(a, b):
    """Mean over frames of the rank correlation of two (N, H, W) mask stacks (a constant mask: 0)."""
    rhos = []
    for x, y in zip(np.asarray(a, np.float64), np.asarray(b, np.float64)):
        rx, ry = ranks(x.ravel()), ranks(y.ravel())
        rx, ry = rx - rx.mean(), ry - ry.mean()
        scale = np.sqrt((rx * rx).sum() * (ry * ry).sum())
        rhos.append(float((rx * ry).sum() / scale) if scale > 0 else 0.0)
    return float(np.mean(rhos))


def sanity_check(model_path, frames, masks, backend="auto", output=DEFAULT_OUTPUT, level=None, seed=0):
    """{method: {'randomized_head_spearman': rho, 'cascade_spearman': [rho with the dense layers and the
    k deepest convs re-drawn, k = 1..]}}: a mask that explains the decision must change (rho low)."""
    pilot = load_pilot(model_path, whole=True)
    steps = pilot.trunk.steps
    result = {method: dict(randomized_head_spearman=None, cascade_spearman=[]) for method in methods.METHODS}
    for convs in range(len(pilot.trunk.convs) + 1):
        outputs = graph_outputs(export(randomized_pilot(pilot, convs, seed), output=output), frames, backend)
        for method in methods.METHODS:
            rho = round(spearman(masks[method], methods.compute(method, outputs, steps, level)), 4)
            if convs == 0:
                result[method]["randomized_head_spearman"] = rho
            else:
                result[method]["cascade_spearman"].append(rho)
    return result


def evaluate_frame(image, masks, steering, area=EVALUATE_AREA):
    """Per-method figures for one frame: {decoding: {method: {...}}} plus the images of the shift
    test at EXAMPLE_SHIFT (for the example picture)."""
    base_images = [image, blurred(image)] + [shift_image(image, d) for d in SHIFTS]
    batches, examples = [], {}
    for method, mask in masks.items():
        region = top_region(mask, area)
        background = background_layer(image, region)
        order = ranking(mask)
        variants = [shift_variants(image, region, background, d) for d in SHIFTS]
        examples[method] = (region,) + shift_variants(image, region, background, EXAMPLE_SHIFT)
        batch = [v[0] for v in variants] + [v[1] for v in variants]
        batch += [fill_in_order(image, base_images[1], order, f) for f in FRACTIONS]
        batch += [fill_in_order(base_images[1], image, order, f) for f in FRACTIONS]
        batches.append(batch)
    flat = base_images + [img for batch in batches for img in batch]
    predicted = steering(np.stack(flat))
    n, k, shifts = len(SHIFTS), len(FRACTIONS), len(base_images)
    results = {}
    for decoding, values in predicted.items():
        original = values[0]
        whole = slopes(values[2:shifts] - original)
        per_method = {}
        for j, method in enumerate(masks):
            v = values[shifts + j * (2 * n + 2 * k): shifts + (j + 1) * (2 * n + 2 * k)] - original
            deletion = np.abs(v[2 * n:2 * n + k])
            insertion = np.abs(np.concatenate([[values[1] - original], v[2 * n + k:]]))
            per_method[method] = dict(salient=abs(slopes(v[:n])), background=abs(slopes(v[n:2 * n])),
                                      whole=abs(whole), deletion_curve=deletion, insertion_curve=insertion)
        results[decoding] = per_method
    return results, examples


def _stack_frames(per_frame_results, decoding, method):
    rows = [r[decoding][method] for r in per_frame_results]
    deletion = np.stack([r["deletion_curve"] for r in rows])
    insertion = np.stack([r["insertion_curve"] for r in rows])
    return dict(salient=np.array([r["salient"] for r in rows]), background=np.array([r["background"] for r in rows]),
                whole=np.array([r["whole"] for r in rows]), deletion=curve_auc(deletion),
                insertion=curve_auc(insertion[:, 1:]), deletion_curve=deletion.mean(axis=0),
                insertion_curve=insertion.mean(axis=0))


def summarize(per_frame_results, methods_order, default_method, draws=BOOTSTRAP_DRAWS):
    """{decoding: {method: figures + paired intervals against the default}}."""
    out = {}
    for decoding in per_frame_results[0]:
        stacked = {m: _stack_frames(per_frame_results, decoding, m) for m in methods_order}
        table = {}
        for method in methods_order:
            figures = metric_values(stacked[method])
            figures["whole_slope"] = float(np.mean(stacked[method]["whole"]))
            figures["deletion_curve"] = [0.0] + [round(float(v), 5) for v in stacked[method]["deletion_curve"]]
            figures["insertion_curve"] = [round(float(v), 5) for v in stacked[method]["insertion_curve"]]
            if method != default_method:
                figures["minus_default_90"] = paired_intervals(stacked[method], stacked[default_method], draws)
            if method != MEAN_METHOD and MEAN_METHOD in stacked:  # does the per-frame mask add anything?
                figures["minus_tub_mean_90"] = paired_intervals(stacked[method], stacked[MEAN_METHOD], draws)
            table[method] = figures
        out[decoding] = table
    return out


def run_evaluate(tub, model_path, frames=EVALUATE_FRAMES, area=EVALUATE_AREA, out_dir=None, backend="auto",
                 method=None, output=DEFAULT_OUTPUT, level=None, draws=BOOTSTRAP_DRAWS, progress=True, sanity=True):
    """Evaluate every method on ``frames`` frames of ``tub``; write DIR/evaluate.json and PNGs when
    ``out_dir`` is given. Returns the report (the JSON's content)."""
    # Everything a user can get wrong is checked before the pilot is read.
    if not 0.0 < area <= 0.5:
        raise InputError("--area must be in (0, 0.5]")
    if frames < 1:
        raise InputError("--frames must be at least 1")
    require_model_file(model_path)
    default_method = check_method(method or DEFAULT_METHOD)
    if check_output(output) != "steering":
        raise InputError("evaluate measures the pilot's steering; --output %s is not measured yet" % output)
    open_tub(tub)
    with PilotPass(model_path, backend) as pilot:
        images = _frames(tub, frames, pilot.input_shape)
        masks = method_masks(model_path, images, backend=backend, output=output, level=level,
                             default_method=default_method)
        order = [default_method] + [m for m in masks if m != default_method]
        bar = Progress(len(images), "evaluate", enabled=progress)
        per_frame, examples = [], []
        for index, image in enumerate(images):
            result, pictures = evaluate_frame(image, {m: masks[m][index] for m in order}, pilot.steering_decodings,
                                              area)
            per_frame.append(result)
            if len(examples) < EXAMPLES and index % max(len(images) // EXAMPLES, 1) == 0:
                examples.append((image, masks[default_method][index], pictures[default_method]))
            bar.update(1)
        bar.close()
        kind = pilot.kind
    tables = summarize(per_frame, order, default_method, draws)
    if sanity:
        checks = sanity_check(model_path, images, masks, backend=backend, output=output, level=level)
        for table in tables.values():
            for method, figures in checks.items():
                table[method].update(figures)
    primary = next(iter(tables))
    report = dict(frames=len(images), default_method=default_method, methods=tables[primary],
                  pilot=dict(path=model_path, kind=kind, steering=PILOT_NOTES.get(kind, "angle output as is"),
                             decoding=primary),
                  tub=tub, area=area, shifts_px=list(SHIFTS), fractions=list(FRACTIONS), interval=INTERVAL,
                  bootstrap_draws=draws, output=output,
                  by_decoding={name: t for name, t in tables.items() if name != primary})
    if out_dir:
        write_outputs(out_dir, report, examples)
    return report


# --- output ----------------------------------------------------------------------------------------
def _cell(figures, name, default_method, method):
    value = figures[name]
    if method == default_method:
        return "%.3f" % value
    low, high = figures["minus_default_90"][name]
    return "%.3f [%+.3f,%+.3f]" % (value, low, high)


def format_table(report):
    """The stdout table: one row per method, per decoding; brackets: paired 90 % interval of the
    difference to the default method."""
    lines = ["%d frames, %s pilot (%s), salient area %.0f %%, default method %s" % (
        report["frames"], report["pilot"]["kind"], report["pilot"]["steering"], 100 * report["area"],
        report["default_method"])]
    tables = [(report["pilot"]["decoding"], report["methods"])] + sorted(report["by_decoding"].items())
    header = ("method", "salient/whole ^", "background/whole v", "deletion AUC ^", "insertion AUC v",
              "random-head rho v")
    for decoding, table in tables:
        rows = [header]
        for method, figures in table.items():
            rho = figures.get("randomized_head_spearman")
            rows.append((method,) + tuple(_cell(figures, n, report["default_method"], method) for n in METRICS)
                        + ("-" if rho is None else "%.2f" % rho,))
        lines.append("steering: %s   (^ higher is better, v lower; [90 %% interval of method - %s])" % (
            decoding, report["default_method"]))
        lines.extend(table_lines(rows))
    return "\n".join(lines)


def curves_png(report):
    """RGB image: mean deletion and insertion curves per method, and the shift-test ratios."""
    require("matplotlib").use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=80)
    x = [0.0] + list(report["fractions"])
    for method, figures in report["methods"].items():
        axes[0].plot(x, figures["deletion_curve"], marker=".", label=method)
        axes[1].plot(x, figures["insertion_curve"], marker=".", label=method)
    axes[0].set(title="deletion (higher is better)", xlabel="fraction replaced by blur",
                ylabel="|steering change|")
    axes[1].set(title="insertion (lower is better)", xlabel="fraction restored", ylabel="|steering - original|")
    names = list(report["methods"])
    positions = np.arange(len(names))
    axes[2].bar(positions - 0.2, [report["methods"][m]["salient_over_whole"] for m in names], 0.4,
                label="salient/whole")
    axes[2].bar(positions + 0.2, [report["methods"][m]["background_over_whole"] for m in names], 0.4,
                label="background/whole")
    axes[2].set_xticks(positions)
    axes[2].set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    axes[2].set(title="shift test (%d%% area)" % round(100 * report["area"]))
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def example_png(image, mask, pictures, scale=2):
    """One row: overlay of the mask with the salient region outlined | salient-only shift |
    background-only shift | whole shift (EXAMPLE_SHIFT px)."""
    cv2 = import_cv2()

    region, salient, background, whole = pictures
    marked = overlay(image, mask)
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(marked, contours, -1, (255, 255, 255), 1)
    tiles = [cv2.resize(t, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
             for t in (marked, salient, background, whole)]
    return side_by_side(*tiles)


def write_outputs(out_dir, report, examples):
    os.makedirs(out_dir, exist_ok=True)
    for i, (image, mask, pictures) in enumerate(examples):
        write_png(os.path.join(out_dir, "example_%d.png" % i), example_png(image, mask, pictures))
    write_png(os.path.join(out_dir, "curves.png"), curves_png(report))
    atomic_write(os.path.join(out_dir, "evaluate.json"), json_bytes(report))  # an undefined figure: null
