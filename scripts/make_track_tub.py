#!/usr/bin/env python
"""Write a donkeycar v2 tub of procedural-track frames (donkeycar's own ``Tub``), for evaluating
pilots trained on the track (``donkey-saliency evaluate TUB --model PILOT``).

    .venv/bin/python scripts/make_track_tub.py /tmp/track-tub --frames 200

Frames come from a stretch of road the study pilots never trained on (train_demo_pilot's
validation start), with the car displaced and turned like the training data; user/angle and
user/throttle are the track's corrective labels.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from train_demo_pilot import VALIDATION_START  # noqa: E402

from donkey_saliency.compute.track import track_frames  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(args.out, inputs=["cam/image_array", "user/angle", "user/throttle"],
              types=["image_array", "float", "float"])
    for sample in track_frames(args.frames, seed=args.seed, step=1.5, start=VALIDATION_START, offset_spread=0.7,
                               heading_spread=0.25, noise_seed=3000 + args.seed):
        tub.write_record({"cam/image_array": sample.frame, "user/angle": float(sample.angle),
                          "user/throttle": float(sample.throttle)})
    tub.close()
    print("%s: %d records" % (args.out, args.frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
