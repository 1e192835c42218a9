#!/usr/bin/env python
"""Train the demo's pilot: donkeycar's own linear model (KerasLinear) on the procedural track.

    .venv/bin/python scripts/train_demo_pilot.py            # writes donkey_saliency/data/demo_pilot.h5

Frames come from ``donkey_saliency.compute.track`` with the car displaced sideways and turned, labelled
with the steering that brings it back to the road, so the pilot learns to correct, not only to
follow. Validation uses a stretch of road the training never saw. Seeded: the same command gives
the same data and, with TensorFlow's deterministic ops, the same weights on the same machine.
A few minutes on two CPU cores; the result is committed so the demo starts in seconds.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from donkey_saliency.compute.track import track_frames  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "donkey_saliency", "data", "demo_pilot.h5")
VALIDATION_START = 5000.0  # metres along the road: far from anything trained on
MAX_BYTES = 5 * 1024 * 1024


def make_set(n, seed, start, noise_seed):
    frames = np.empty((n, 120, 160, 3), np.uint8)
    labels = np.empty((n, 2), np.float32)
    for i, sample in enumerate(track_frames(n, seed=seed, start=start, offset_spread=0.7,
                                            heading_spread=0.25, noise_seed=noise_seed)):
        frames[i] = sample.frame
        labels[i] = sample.angle, sample.throttle
    return frames, labels


def dataset(tf, frames, labels, batch, shuffle_seed=None):
    data = tf.data.Dataset.from_tensor_slices((frames, (labels[:, 0], labels[:, 1])))
    if shuffle_seed is not None:
        data = data.shuffle(len(frames), seed=shuffle_seed, reshuffle_each_iteration=True)
    # KerasPilot.run feeds img / 255 of the uint8 RGB frame: train on exactly that.
    return data.batch(batch).map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)).prefetch(2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=3000, help="training frames")
    parser.add_argument("--val-frames", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="track and training seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    tic = time.time()
    train_x, train_y = make_set(args.frames, args.seed, 0.0, noise_seed=1000 + args.seed)
    val_x, val_y = make_set(args.val_frames, args.seed, VALIDATION_START, noise_seed=2000 + args.seed)
    print("generated %d + %d frames in %.1f s; steering label std %.3f" % (
        len(train_x), len(val_x), time.time() - tic, train_y[:, 0].std()))

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from donkeycar.parts.interpreter import KerasInterpreter
    from donkeycar.parts.keras import KerasLinear

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    # A fresh interpreter: KerasLinear's default argument is one instance shared by every pilot.
    pilot = KerasLinear(interpreter=KerasInterpreter(), input_shape=(120, 160, 3))
    model = pilot.interpreter.model
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="mse")
    tic = time.time()
    model.fit(dataset(tf, train_x, train_y, args.batch, shuffle_seed=args.seed),
              validation_data=dataset(tf, val_x, val_y, args.batch), epochs=args.epochs, verbose=2)
    print("trained in %.0f s" % (time.time() - tic))

    angle, throttle = model.predict(val_x.astype(np.float32) / 255.0, batch_size=args.batch, verbose=0)
    angle, throttle = angle[:, 0], throttle[:, 0]
    print("validation (unseen road): steering MAE %.3f, RMSE %.3f, correlation %.3f; throttle MAE %.3f" % (
        np.abs(angle - val_y[:, 0]).mean(), np.sqrt(((angle - val_y[:, 0]) ** 2).mean()),
        np.corrcoef(angle, val_y[:, 0])[0, 1], np.abs(throttle - val_y[:, 1]).mean()))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model.save(args.out, include_optimizer=False, save_format="h5")
    size = os.path.getsize(args.out)
    print("saved %s (%.2f MB)" % (args.out, size / 1e6))

    # It must load both ways the demo and a car would load it, and give the same answer.
    reloaded = tf.keras.models.load_model(args.out, compile=False)
    via_donkey = KerasLinear(interpreter=KerasInterpreter())
    via_donkey.load(args.out)
    direct = [float(o[0, 0]) for o in reloaded.predict(val_x[:1].astype(np.float32) / 255.0, verbose=0)]
    donkey = [float(v) for v in via_donkey.run(val_x[0])]
    print("reloaded: keras %s, KerasLinear.run %s" % (np.round(direct, 4), np.round(donkey, 4)))
    if not np.allclose(direct, donkey, atol=1e-4) or size > MAX_BYTES:
        print("FAILED: reload mismatch or file larger than 5 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
