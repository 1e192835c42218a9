"""The audit's outputs: DIR/audit.json, the PNG pictures and DIR/audit.html, a page that needs no
network (pictures are files beside it, curves are inline SVG). Written after everything is computed,
each file atomically."""
import html
import json
import os

import numpy as np

from ..util.fileio import atomic_write
from ..util.images import write_png
from ..util.opencv import import_cv2
from ..compute.overlay import colorize, overlay
from ..web.review import DEFAULT_PORT, PREFIX

REVIEW_URL = "http://127.0.0.1:%d%s" % (DEFAULT_PORT, PREFIX)  # where `donkey-saliency review TUB` serves
PICTURE_SCALE = 3
PROFILE_WIDTH = 150
LINE_COLOR = (255, 255, 255)
PILOT_COLORS = ("#1f77b4", "#d62728")


def record_link(review_url, index):
    """The review page at record ``index`` (the page reads ``#record=N``)."""
    return "%s#record=%d" % (review_url, index)


def record_picture_name(pilot_number, index):
    return "record_%d_%d.png" % (pilot_number, index)


def attention_picture(mean_image, average_mask, row_share, line, scale=PICTURE_SCALE):
    """The drive's average attention over its mean image, the recommended crop line across it, and
    beside it the share of attention per row as bars (uint8 RGB)."""
    cv2 = import_cv2()

    average = np.asarray(average_mask, np.float32)
    spread = float(average.max() - average.min())
    picture = overlay(mean_image, (average - average.min()) / spread if spread > 0 else average * 0)
    height, width = picture.shape[:2]
    picture = cv2.resize(picture, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)
    profile = np.full((height * scale, PROFILE_WIDTH, 3), 32, np.uint8)
    shares = np.asarray(row_share, np.float64)
    peak = shares.max() if shares.max() > 0 else 1.0
    colors = colorize((shares / peak)[:, None])[:, 0]
    for row, (share, color) in enumerate(zip(shares, colors)):
        length = int(round((PROFILE_WIDTH - 4) * share / peak))
        cv2.rectangle(profile, (0, row * scale), (length, row * scale + scale - 1), tuple(int(c) for c in color), -1)
    joined = np.concatenate([picture, profile], axis=1)
    if line:
        cv2.line(joined, (0, line * scale), (joined.shape[1] - 1, line * scale), LINE_COLOR, 2)
        cv2.putText(joined, "ROI_CROP_TOP %d" % line, (4, max(line * scale - 4, 10)), 0, 0.4, LINE_COLOR, 1,
                    cv2.LINE_AA)
    return joined


def write_outputs(out_dir, report, pictures):
    """PNG pictures, audit.json and audit.html into ``out_dir`` (created when missing)."""
    os.makedirs(out_dir, exist_ok=True)
    for name, image in sorted(pictures.items()):
        write_png(os.path.join(out_dir, name), image)
    atomic_write(os.path.join(out_dir, "audit.json"), (json.dumps(report, indent=1) + "\n").encode("utf-8"))
    atomic_write(os.path.join(out_dir, "audit.html"), page(report, set(pictures)).encode("utf-8"))


# --- the page -----------------------------------------------------------------------------------
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 16px; color: #1d1f23; background: #f6f7f9; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 18px 0 6px; }
.dim { color: #5f6670; } .columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
.pilot { background: #fff; border-radius: 8px; padding: 12px; box-shadow: 0 1px 3px #0002; }
.advice { border-left: 4px solid var(--c); background: #eef3fb; padding: 8px 10px; margin: 8px 0; font-weight: 600; }
img { max-width: 100%; image-rendering: pixelated; display: block; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 6px 0; }
td, th { padding: 2px 8px; text-align: right; border-bottom: 1px solid #e3e6ea; } th { font-weight: 600; }
tr.chosen td { background: #fff4cc; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; }
.thumbs a { text-decoration: none; color: inherit; font-size: 12px; } .thumbs img { width: 160px; }
.pair { display: flex; gap: 2px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""


def _e(value):
    return html.escape(str(value), quote=True)


def dependence_svg(pilot, width=420, height=190):
    """Inline SVG: mean |steering change| against the crop k with its 90 % band, and the change of a
    whole-frame shift of ``px`` pixels as a dashed line."""
    rows = pilot["crop_dependence"]
    reference = pilot["shift_reference"]
    ks = [r["k"] for r in rows]
    highs = [r["interval_90"][1] for r in rows] + [reference[0]["interval_90"][1]]
    top = max(max(highs), 1e-6) * 1.1
    left, bottom, right, upper = 46, height - 28, width - 10, 10

    def x(k):
        return left + (right - left) * k / float(max(ks[-1], 1))

    def y(v):
        return bottom - (bottom - upper) * v / top

    band = " ".join("%.1f,%.1f" % (x(r["k"]), y(r["interval_90"][1])) for r in rows)
    band += " " + " ".join("%.1f,%.1f" % (x(r["k"]), y(r["interval_90"][0])) for r in reversed(rows))
    curve = " ".join("%.1f,%.1f" % (x(r["k"]), y(r["mean_abs_change"])) for r in rows)
    parts = ['<svg width="%d" height="%d" role="img" aria-label="crop dependence">' % (width, height),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>' % (left, bottom, right, bottom),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>' % (left, upper, left, bottom),
             '<polygon points="%s" fill="#1f77b433"/>' % band,
             '<polyline points="%s" fill="none" stroke="#1f77b4" stroke-width="2"/>' % curve,
             ]
    for shift in reference:  # the whole-frame shifts that fit in the chart, as dashed lines
        level = y(shift["mean_abs_change"])
        if level >= upper:
            parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#d62728" stroke-dasharray="5,4"/>'
                         '<text x="%d" y="%.1f" text-anchor="end">%d px shift</text>' % (
                             left, level, right, level, right, level - 3, shift["px"]))
    for k in ks:
        parts.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x(k), bottom + 14, k))
    for v in (0.0, top / 2, top / 1.1):
        parts.append('<text x="%d" y="%.1f" text-anchor="end">%.3f</text>' % (left - 4, y(v) + 4, v))
    parts.append('<text x="%d" y="%d" text-anchor="middle">rows 0..k-1 replaced (k)</text>' % (
        (left + right) // 2, height - 2))
    parts.append('<text x="4" y="%d">|&#916; steering|</text>' % (upper + 2))
    parts.append("</svg>")
    return "".join(parts)


def _dependence_table(pilot):
    lines = ["<table><tr><th>k</th><th>attention above</th><th>|&#916; steering|</th><th>90 %</th>"
             "<th>as a shift</th></tr>"]
    for row in pilot["crop_dependence"]:
        chosen = ' class="chosen"' if row["k"] and row["k"] == pilot["recommended_roi_crop_top"] else ""
        px = "%.1f px" % row["as_shift_px"] if row["as_shift_px"] is not None else "n/a"
        lines.append("<tr%s><td>%d</td><td>%.1f %%</td><td>%.4f</td><td>%.4f&#8211;%.4f</td><td>%s</td></tr>" % (
            chosen, row["k"], 100 * row["share_above"], row["mean_abs_change"], row["interval_90"][0],
            row["interval_90"][1], px))
    lines.append("</table>")
    return "".join(lines)


def _thumb(name, pictures, alt):
    return '<img src="%s" alt="%s">' % (_e(name), _e(alt)) if name in pictures else ""


def _pilot_column(number, pilot, report, pictures):
    shifts = " / ".join("%d" % r["px"] for r in pilot["shift_reference"])
    changes = " / ".join("%.3f" % r["mean_abs_change"] for r in pilot["shift_reference"])
    parts = ['<section class="pilot" style="--c: %s" data-pilot="%d">' % (PILOT_COLORS[number], number),
             "<h2>%s</h2>" % _e(os.path.basename(pilot["path"])),
             '<p class="dim">%s; input %s; %d frames for the dependence test</p>' % (
                 _e(pilot["path"]), "&#215;".join(str(v) for v in pilot["input_shape"]), pilot["dependence_frames"]),
             '<p class="advice" data-roi-crop-top="%d">%s</p>' % (pilot["recommended_roi_crop_top"],
                                                                   _e(pilot["advice"])),
             "<h3>Where the attention goes</h3>",
             _thumb("attention_%d.png" % number, pictures, "average attention and row shares"),
             '<p class="dim">The drive\'s average map over its mean image; right: the share of the attention '
             'in each row; the line: %s.</p>' % (
                 "ROI_CROP_TOP = %d" % pilot["recommended_roi_crop_top"] if pilot["recommended_roi_crop_top"]
                 else "none advised"),
             "<h3>How much the steering depends on the top rows</h3>", dependence_svg(pilot),
             '<p class="dim">Rows 0..k-1 replaced by %s; dashed: a whole-frame shift sideways of %s px changes '
             'the steering by %s.</p>' % (_e(report["fill"]), shifts, changes),
             _dependence_table(pilot),
             "<h3>Where the attention leaves the track</h3>",
             '<p class="dim">%s</p>' % (
                 ("Records with the largest share of attention above row %d." if pilot["off_track_records"] else
                  "No frame puts any attention above row %d.") % pilot["off_track_line"]),
             '<div class="thumbs">']
    for record in pilot["off_track_records"]:
        parts.append('<a href="%s">%s#%d &#183; %.0f %% above</a>' % (
            _e(record_link(report["review_url"], record["index"])),
            _thumb(record_picture_name(number, record["index"]), pictures, "record %d" % record["index"]),
            record["index"], 100 * record["share_above"]))
    parts.append("</div></section>")
    return "".join(parts)


def _comparison_section(report, pictures):
    comparison = report["comparison"]
    names = [_e(os.path.basename(p["path"])) for p in report["pilots"]]
    correlation = comparison["steering_correlation"]
    parts = ['<section class="pilot" id="comparison" style="--c: #555"><h2>%s vs %s</h2>' % tuple(names),
             "<table><tr><th>steering: mean |difference|</th><td>%.4f</td></tr>" % comparison[
                 "steering_mean_abs_difference"],
             "<tr><th>steering: correlation</th><td>%s</td></tr>" % (
                 "%.3f" % correlation if correlation is not None else "n/a"),
             "<tr><th>frames within 0.1</th><td>%.1f %%</td></tr>" % (100 * comparison["steering_within_0_1"]),
             "<tr><th>top-%d %% regions: mean IoU</th><td>%.3f (%.3f&#8211;%.3f)</td></tr></table>" % (
                 round(100 * report["top_area"]), comparison["top_area_iou"], comparison["top_area_iou_90"][0],
                 comparison["top_area_iou_90"][1]),
             "<h3>Where they disagree most</h3><div class=\"thumbs\">"]
    for record in comparison["disagreements"]:
        pair = "".join(_thumb(record_picture_name(n, record["index"]), pictures, "pilot %d" % n) for n in (0, 1))
        parts.append('<a href="%s"><span class="pair">%s</span>#%d &#183; %+.2f vs %+.2f &#183; IoU %.2f</a>' % (
            _e(record_link(report["review_url"], record["index"])), pair, record["index"], record["steering"][0],
            record["steering"][1], record["top_area_iou"]))
    parts.append("</div></section>")
    return "".join(parts)


def page(report, pictures):
    """audit.html as a string: one column per pilot, then the comparison of two."""
    columns = "".join(_pilot_column(n, p, report, pictures) for n, p in enumerate(report["pilots"]))
    comparison = _comparison_section(report, pictures) if "comparison" in report else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Attention audit</title>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>%s</style></head><body>"
            "<h1>Attention audit</h1><p class=\"dim\">%s &#183; %d frames &#183; method %s &#183; the record links open "
            "%s: start <code>donkey-saliency review %s</code> first</p><div class=\"columns\">%s</div>%s</body></html>\n"
            % (STYLE, _e(report["tub"]), report["frames"], _e(report["method"]), _e(report["review_url"]),
               _e(report["tub"]), columns, comparison))
