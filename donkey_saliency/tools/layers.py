"""The layer grid (``donkey-saliency layers``): every conv layer's feature maps for one image,
labelled (layer, output size, filter index), with each layer's averaged map and the final mask -
what ``donkey cnnactivations`` shows, and the VisualBackProp steps on top."""
import collections
import os

import numpy as np

from ..api import Saliency
from ..config import DEFAULT_ALPHA, DEFAULT_COLORMAP
from ..errors import ModelError
from ..compute.frames import fit_to_model
from ..util.images import read_rgb, write_png
from ..util.opencv import import_cv2
from ..compute.methods import describe
from ..compute.overlay import check_style, colorize, mask_to_uint8, overlay, stretch, to_rgb
from .pictures import DARK, RED, SHEET_WIDTH, WHITE, YELLOW, check_output, put_label, put_text

TILE_TARGET_HEIGHT = 56
GAP = 4


def _normalise(array):
    """min-max to uint8; a constant map gives zeros (and is reported as flat)."""
    stretched, flat = stretch(array)
    return mask_to_uint8(stretched), flat


def _tile_scale(hw):
    return max(1, int(round(TILE_TARGET_HEIGHT / float(hw[0]))))


def _grid_section(title, tiles, width):
    """A titled block: tiles (list of (rgb, label, label color)) wrapped into rows."""
    tile_h = max(t[0].shape[0] for t in tiles)
    tile_w = max(t[0].shape[1] for t in tiles)
    width = max(width, tile_w + 2 * GAP)
    columns = max(1, (width - GAP) // (tile_w + GAP))
    rows = -(-len(tiles) // columns)
    header = 24
    block = np.full((header + rows * (tile_h + GAP) + GAP, width, 3), DARK[0], dtype=np.uint8)
    put_text(block, title, (GAP, 17), 0.5)
    for n, (tile, label, color) in enumerate(tiles):
        r, c = divmod(n, columns)
        y, x = header + r * (tile_h + GAP), GAP + c * (tile_w + GAP)
        block[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        if label:
            put_label(block, label, x, y, 0.3, color)
    return block


def _stack(blocks):
    """Blocks one under the other, padded on the right to the widest."""
    width = max(b.shape[1] for b in blocks)
    padded = [np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=DARK[0]) for b in blocks]
    return np.concatenate(padded, axis=0)


def _scaled(image, factor):
    cv2 = import_cv2()

    return cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_NEAREST)


LayerGrid = collections.namedtuple("LayerGrid", "image layers flat")


def layer_grid(saliency, rgb, colormap=DEFAULT_COLORMAP, width=SHEET_WIDTH):
    """The labelled grid (uint8 RGB) for one frame, from a Saliency opened with ``features=True``.
    Returns LayerGrid(image, [(name, (h, w, C))], {name: [indexes of flat maps]})."""
    outputs = saliency.infer([rgb])
    names = saliency.layer_names
    if "features_0" not in outputs:
        raise ModelError("the saliency graph has no feature outputs; export it with --features, or pass the pilot file")
    frame = fit_to_model(rgb, saliency.input_shape)
    mask = saliency.method_masks_of(outputs)[0]
    big = max(1, int(round(2 * TILE_TARGET_HEIGHT * 2 / float(frame.shape[0]))))
    summary = [(_scaled(to_rgb(frame), big), "input %dx%d" % frame.shape[:2], WHITE),
               (_scaled(colorize(mask, colormap), big), "mask", WHITE),
               (_scaled(overlay(frame, mask, DEFAULT_ALPHA, colormap), big), "overlay", WHITE)]
    what = describe(saliency.method, saliency.output)
    blocks = [_grid_section("%s: input, %s mask, overlay" % (os.path.basename(str(saliency.source)), what)
                            if saliency.source else "input, %s mask, overlay" % what, summary, width)]
    layers, flat = [], {}
    for i, name in enumerate(names):
        features = outputs["features_%d" % i][0]  # (C, h, w)
        channels, h, w = features.shape
        layers.append((name, (h, w, channels)))
        factor = _tile_scale((h, w))
        mean_tile, _ = _normalise(outputs["mean_%d" % i][0])
        tiles = [(_scaled(colorize(mean_tile / 255.0, colormap), factor), "mean", WHITE)]
        flat[name] = []
        for c in range(channels):
            tile, is_flat = _normalise(features[c])
            if is_flat:
                flat[name].append(c)
            tiles.append((_scaled(np.repeat(tile[..., None], 3, axis=2), factor), str(c), RED if is_flat else YELLOW))
        title = "%s  output %dx%dx%d  (tile 'mean' = averaged map; red index = flat map)" % (name, h, w, channels)
        blocks.append(_grid_section(title, tiles, width))
    return LayerGrid(_stack(blocks), layers, flat)


def write_layer_grid(model_path, image_path, out_path, backend="auto", colormap=DEFAULT_COLORMAP, force=False):
    check_output(out_path, force, (".png",))
    check_style(DEFAULT_ALPHA, colormap)
    rgb = read_rgb(image_path)
    saliency = Saliency.open(model_path, backend=backend, features=True).activate()
    try:
        grid = layer_grid(saliency, rgb, colormap)
    finally:
        saliency.close()
    write_png(out_path, grid.image)
    return grid
