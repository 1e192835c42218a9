#!/usr/bin/env python
"""Train small categorical, inferred and memory pilots (donkeycar's own architectures) on the
procedural track, for `donkey-saliency evaluate`'s mask study (issue 12).

    .venv/bin/python scripts/train_study_pilots.py --out /tmp/study-pilots

Same data as ``train_demo_pilot.py`` (displaced and turned car, corrective steering labels),
fewer frames and epochs: these pilots only need to steer from the road, not to drive well.
Writes categorical.h5, inferred.h5, memory.h5 and a .tflite of the categorical one.
The conv trunk starts from the demo pilot's weights (donkey's five convs have the same kernel
shapes in every model type; categorical's conv4 has stride 2, so its maps differ) and its first
three convs stay frozen: on two shared CPU cores, a pilot trained from scratch in minutes does not
learn to steer. conv4, conv5 and the dense head are trained per pilot. The memory pilot is trained with its memory input set to the current label plus noise on half the
frames and zeros on the other half, so it must still read the image when memory says nothing.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from train_demo_pilot import VALIDATION_START, make_set  # noqa: E402


FROZEN = ("conv2d_1", "conv2d_2", "conv2d_3")  # with --init: only conv4, conv5 and the head train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for the pilots")
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--types", default="categorical,inferred,memory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init", default=os.path.join(os.path.dirname(HERE), "donkey_saliency", "data",
                                                       "demo_pilot.h5"),
                        help="pilot whose conv weights start the trunk ('' for random)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from donkeycar.parts.interpreter import KerasInterpreter
    from donkeycar.parts.keras import KerasCategorical, KerasInferred, KerasMemory
    from donkeycar.utils import linear_bin

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(0)
    os.makedirs(args.out, exist_ok=True)
    x, y = make_set(args.frames, 0, 0.0, noise_seed=1000)
    vx, vy = make_set(300, 0, VALIDATION_START, noise_seed=2000)
    x, vx = x.astype(np.float32) / 255.0, vx.astype(np.float32) / 255.0  # KerasPilot feeds img / 255
    rng = np.random.RandomState(0)
    init_weights = {}
    if args.init:
        source = tf.keras.models.load_model(args.init, compile=False)
        init_weights = {layer.name: layer.get_weights() for layer in source.layers if layer.name.startswith("conv2d_")}

    for kind in args.types.split(","):
        tic = time.time()
        if kind == "categorical":
            pilot = KerasCategorical(interpreter=KerasInterpreter(), input_shape=(120, 160, 3))
            targets = [np.stack([linear_bin(a) for a in y[:, 0]]),
                       np.stack([linear_bin(t, N=20, offset=0, R=0.5) for t in np.clip(y[:, 1], 0, 0.5)])]
            loss = "categorical_crossentropy"
            inputs = x
        elif kind == "inferred":
            pilot = KerasInferred(interpreter=KerasInterpreter(), input_shape=(120, 160, 3))
            targets, loss, inputs = [y[:, 0]], "mse", x
        elif kind == "memory":
            pilot = KerasMemory(interpreter=KerasInterpreter(), input_shape=(120, 160, 3), mem_length=3)
            memory = np.tile(y, (1, 3)) + rng.normal(0, 0.15, (len(y), 6)).astype(np.float32)
            memory[rng.rand(len(y)) < 0.5] = 0.0
            targets, loss, inputs = [y[:, 0], y[:, 1]], "mse", [x, memory]
        else:
            raise SystemExit("unknown type %s" % kind)
        model = pilot.interpreter.model
        if args.init:
            copied = [layer.name for layer in model.layers
                      if layer.name.startswith("conv2d_") and layer.name in init_weights
                      and not layer.set_weights(init_weights[layer.name])]
            for layer in model.layers:
                if layer.name in FROZEN:
                    layer.trainable = False
            print("%s: conv weights from %s: %s; %s frozen" % (kind, args.init, ", ".join(copied), ", ".join(FROZEN)),
                  flush=True)
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=loss)
        model.fit(inputs, targets, batch_size=64, epochs=args.epochs, verbose=2, shuffle=True)
        path = os.path.join(args.out, kind + ".h5")
        model.save(path, include_optimizer=False, save_format="h5")
        val_inputs = vx if kind != "memory" else [vx, np.zeros((len(vx), 6), np.float32)]
        out = model.predict(val_inputs, verbose=0)
        out = out if isinstance(out, list) else [out]
        angle = (out[0] @ np.linspace(-1, 1, 15)) if kind == "categorical" else out[0][:, 0]
        print("%s: %.0f s, validation steering correlation %.3f -> %s" % (
            kind, time.time() - tic, np.corrcoef(angle, vy[:, 0])[0, 1], path), flush=True)
        if kind == "categorical":
            tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
            with open(os.path.join(args.out, kind + ".tflite"), "wb") as f:
                f.write(tflite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
