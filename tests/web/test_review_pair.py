"""``donkey-saliency review TUB --model A --model B`` on the real Pi tub with its owner's two real
.tflite pilots (whole-pilot graphs on ONNX Runtime, no TensorFlow): the CLI's server read by
http.client (meta, timeline bytes, records, both pilots' pictures) and the page in headless Chromium
(camera | A | B, both curves, the list of records where A and B disagree most)."""
import json
import os
import subprocess

import numpy as np
import pytest

from browser import ARTIFACTS, DevTools, chromium_or_skip, crop
from helpers import CLI, DOCS, pi_data_or_skip, PI_PILOTS, PI_TUB, wait_for
from web_helpers import decode_jpeg, get

BASE = "/saliency/review"


def test_three_models_is_one_line_and_exit_2(tmp_path):
    pi_data_or_skip()
    result = subprocess.run(CLI + ["review", PI_TUB] + ["--model", PI_PILOTS[0]] * 3, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "at most two pilots" in result.stderr


PAGE = """JSON.stringify((function () {
  function box(e) { var r = e.getBoundingClientRect();
                    return [Math.round(r.left), Math.round(r.top), Math.round(r.width), Math.round(r.height)]; }
  var b = document.body.dataset, first = document.querySelector("#pair-disagreements button");
  return { index: +b.index, camera: +b.camera, overlay: b.overlay, pilotB: b.pilotB, record: +b.record,
           captionA: document.getElementById("overlay-caption").textContent,
           captionB: document.getElementById("pilot-b-caption").textContent,
           a: document.getElementById("f-a-angle").textContent, b: document.getElementById("f-b-angle").textContent,
           note: document.getElementById("pair-note").textContent,
           first: first ? +first.dataset.index : null, firstBox: first ? box(first) : null,
           cameraBox: box(document.getElementById("camera")), aBox: box(document.getElementById("overlay")),
           bBox: box(document.getElementById("pilot-b")), timelineBox: box(document.getElementById("timeline")),
           pageWidth: document.documentElement.scrollWidth, viewportWidth: window.innerWidth };
})())"""


@pytest.mark.slow
@pytest.mark.browser
def test_review_two_real_pilots_served_and_in_chromium(tmp_path):
    pi_data_or_skip()
    chromium_or_skip()
    process = subprocess.Popen(CLI + ["review", PI_TUB, "--model", PI_PILOTS[0], "--model", PI_PILOTS[1],
                                      "--port", "0", "--backend", "onnxruntime"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    browser = None
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, process.stderr.read() if process.poll() is not None else "")
        port = int(line.split()[-1].split(":")[2].split("/")[0])
        meta = {}

        def computed():
            meta.update(json.loads(get(port, BASE + "/meta")[1]))
            return meta["pair"]["state"] == "computed"

        assert wait_for(computed, timeout=300), meta
        pair, count = meta["pair"], meta["count"]
        assert pair["names"] == ["A: mypilot.tflite", "B: OFFICIAL_DEMO_MODEL.tflite"]
        assert "|steering A - steering B|" in pair["ranked_by"]
        assert meta["layout"][-2:] == ["A/angle", "B/angle"]
        status, timeline = get(port, BASE + "/timeline")
        assert status == 200 and len(timeline) == len(meta["layout"]) * count
        a_q, b_q = (np.frombuffer(timeline, np.int8, count, k * count) for k in (len(meta["layout"]) - 2,
                                                                                  len(meta["layout"]) - 1))
        # The list: largest |A - B| first, separate moments, each score the records' own difference.
        tops = pair["disagreements"]
        scores = [d["score"] for d in tops]
        assert len(tops) >= 5 and scores == sorted(scores, reverse=True)
        indexes = sorted(d["index"] for d in tops)
        assert min(np.diff(indexes)) >= 10
        for d in tops[:3]:
            record = json.loads(get(port, BASE + "/record/%d" % d["index"])[1])
            assert abs(record["A/angle"] - record["B/angle"]) == pytest.approx(d["score"], abs=1e-3)
            for key, sent in (("A/angle", a_q), ("B/angle", b_q)):  # the timeline clips to [-1, 1]
                assert np.clip(record[key], -1, 1) == pytest.approx(sent[d["index"]] / 127.0, abs=0.005)
        assert np.abs(a_q.astype(int) - b_q.astype(int)).max() / 127.0 <= scores[0] + 0.01
        # The two pilots look at the frame differently: two different overlays of the same camera.
        top = tops[0]["index"]
        top_record = json.loads(get(port, BASE + "/record/%d" % top)[1])
        pictures = [decode_jpeg(get(port, BASE + "/frame/%d/%s.jpg" % (top, view))[1])
                    for view in ("camera", "pilotA", "pilotB")]
        assert np.mean(np.abs(pictures[1].astype(int) - pictures[0])) > 15
        assert np.mean(np.abs(pictures[1].astype(int) - pictures[2])) > 3

        browser = DevTools(str(tmp_path / "profile"), str(tmp_path / "chromium.log"), 1280, 900)
        browser.open("http://127.0.0.1:%d%s" % (port, BASE), 1280, 900, mobile=False)
        state = {}

        def shows(index):
            def done():
                state.update(json.loads(browser.evaluate(PAGE) or "{}"))
                return (state.get("index") == index and state.get("camera") == index and state.get("record") == index
                        and state.get("overlay") == str(index) and state.get("pilotB") == str(index)
                        and state.get("first") is not None)
            return wait_for(done, timeout=60)

        assert shows(0), state
        assert state["first"] == top
        x, y, w, h = state["firstBox"]
        browser.click(x + w // 2, y + h // 2)
        assert shows(top), state
        os.makedirs(ARTIFACTS, exist_ok=True)
        png = browser.screenshot(os.path.join(DOCS, "review-two-pilots.png"))
    finally:
        if browser is not None:
            browser.close()
        process.terminate()
        process.wait(30)
    record = json.loads(json.dumps(state))
    assert record["captionA"] == pair["names"][0] and record["captionB"] == pair["names"][1]
    assert "|steering A - steering B|" in record["note"]
    assert float(record["a"]) == pytest.approx(top_record["A/angle"], abs=0.006)
    assert float(record["b"]) == pytest.approx(top_record["B/angle"], abs=0.006)
    # camera | A | B side by side, and the page fits its width.
    assert state["cameraBox"][1] == state["aBox"][1] == state["bBox"][1]
    assert state["cameraBox"][0] < state["aBox"][0] < state["bBox"][0]
    assert state["pageWidth"] <= state["viewportWidth"]
    shown_a, shown_b = crop(png, state["aBox"]), crop(png, state["bBox"])
    assert np.mean(np.abs(shown_a.astype(int) - shown_b)) > 2  # the two pictures differ
    timeline = crop(png, state["timelineBox"])
    orange = (timeline[..., 0] > 200) & (timeline[..., 1] > 120) & (timeline[..., 1] < 190) & (timeline[..., 2] < 80)
    magenta = (timeline[..., 0] > 180) & (timeline[..., 1] < 120) & (timeline[..., 2] > 200)
    assert orange.sum() > 100 and magenta.sum() > 100  # both pilots' curves drawn


def test_one_pilot_has_no_pilot_pictures():
    pi_data_or_skip()
    from donkey_saliency.web.review_model import NotFound, Review

    review = Review(PI_TUB)
    try:
        assert review.meta()["pair"] is None and review.layout()[-1] == "deleted"
        with pytest.raises(NotFound, match="two --model"):
            review.picture(0, "pilotB")
    finally:
        review.close()
