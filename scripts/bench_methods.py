#!/usr/bin/env python
"""Historical (issue 12): what a gradient method would add, estimated in TensorFlow before the graph had
its backward pass. `donkey-saliency bench` now times every method in the graph itself (``methods_ms``).

    .venv/bin/python scripts/bench_methods.py [PILOT.h5] [--frames 200]

Times, per frame (medians, one thread): today's fused graph (batch 1) (uint8 frame -> mask) on
ONNX Runtime, the conv trunk in TensorFlow, and in TensorFlow the extra work of
the gradient x activation map at conv level L: from that level's activations, the pilot's deeper
layers forward and the backward pass to level L, then |sum_c A x dA|. (tf2onnx cannot convert the
gradient ops, so the extra is measured in TensorFlow and expressed as a share of TensorFlow's own
trunk.) In a fused head the deeper forward is already done by the trunk, so this overestimates.
The rest of a variant (one more multiply in the VisualBackProp product) is negligible.
"""
import argparse
import os
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from donkey_saliency.pilots import reference

TF_BATCH = 32  # TensorFlow's per-call overhead would swamp one frame's work
TF_ROUNDS = 12
DEMO = os.path.join(os.path.dirname(HERE), "donkey_saliency", "data", "demo_pilot.h5")


def median_ms(run, frames, warmup=10):
    for x in frames[:warmup]:
        run(x)
    times = []
    for x in frames:
        started = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(times))


def tail_model(tf, model, tensor, output):
    """A Keras model from a new input standing for ``tensor`` to ``output``: the pilot's layers that
    follow it re-applied in order (a Keras sub-model from an inner tensor would not be connected)."""
    start = tf.keras.Input(tensor.shape[1:])
    mapped = {id(tensor): start}
    for layer in model.layers:
        inbound = layer._inbound_nodes[0].input_tensors if layer._inbound_nodes else None
        if inbound is None or isinstance(inbound, (list, tuple)):
            continue  # input layers, and multi-input merges (not on the image path of these pilots)
        if id(inbound) in mapped and id(layer.output) not in mapped:
            mapped[id(layer.output)] = layer(mapped[id(inbound)])
    return tf.keras.Model(start, mapped[id(output)])


def relevance_function(model, pilot, steering, level):
    """A tf.function: level ``level``'s activations (1, h, w, C) -> relevance (1, h, w): the pilot's
    deeper layers forward, the backward pass to that level, |sum_c A x dA|."""
    import tensorflow as tf

    handle = reference.map_tensors(model, pilot.trunk)[level]
    head = tail_model(tf, model, handle, model.outputs[steering.angle_output])
    bins = tf.constant(np.linspace(-1, 1, 15), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None] + [int(v) for v in handle.shape[1:]], tf.float32)])
    def relevance(activations):
        # tf.gradients on an identity: a GradientTape watching a tf.function input through a
        # Keras model call gives None here.
        inner = tf.identity(activations)
        out = head(inner, training=False)
        steer = tf.reduce_sum(out * bins, axis=-1) if steering.categorical else out[:, 0]
        grad = tf.gradients(tf.reduce_sum(steer), inner)[0]
        return tf.abs(tf.reduce_sum(inner * grad, axis=-1))

    return relevance, tuple(int(v) for v in handle.shape[1:])


def keras_layout(model):
    """Where a Keras pilot's image input and angle output are, and whether the angle is 15 bins."""
    sizes = [int(np.prod(t.shape[1:])) for t in model.outputs]
    categorical = 15 in sizes
    return types.SimpleNamespace(image_input=[len(t.shape) for t in model.inputs].index(4), categorical=categorical,
                                 angle_output=sizes.index(15) if categorical else 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default=DEMO)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnxruntime as ort

    from donkey_saliency.compute.graph import graph_for
    from donkey_saliency.compute.methods import deep_level, middle_level
    from donkey_saliency.pilots import load_pilot

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    graph = graph_for(args.model)
    session = ort.InferenceSession(graph.onnx_bytes, options, providers=["CPUExecutionProvider"])
    rng = np.random.RandomState(0)
    frames = rng.randint(0, 256, (args.frames, 1) + graph.input_shape).astype(np.uint8)
    pilot = load_pilot(args.model)
    model = reference.keras_model(args.model)
    steering = keras_layout(model)
    trunk = tf.function(tf.keras.Model(model.inputs[steering.image_input], reference.map_tensors(model, pilot.trunk)))
    levels = len(pilot.trunk.map_sources)
    extras = []
    for name, level in (("mid", middle_level(levels)), ("deep", deep_level(levels))):
        function, shape = relevance_function(model, pilot, steering, level)
        extras.append((name, level, function, rng.uniform(0, 1, (TF_ROUNDS, TF_BATCH) + shape).astype(np.float32)))
    batches = rng.randint(0, 256, (TF_ROUNDS, TF_BATCH) + graph.input_shape).astype(np.float32)
    # Interleaved rounds, medians of medians: the machine's load drifts.
    rounds = {"ort": [], "tf_trunk": []}
    for _ in range(3):
        rounds["ort"].append(median_ms(lambda x: session.run(["mask"], {graph.input_name: x}), frames))
        rounds["tf_trunk"].append(median_ms(lambda x: trunk(tf.constant(x) / 255.0), batches, 3) / TF_BATCH)
        for name, level, function, maps in extras:
            rounds.setdefault(name, []).append(median_ms(lambda a: function(tf.constant(a)), maps, 3) / TF_BATCH)
    today, tf_trunk = np.median(rounds["ort"]), np.median(rounds["tf_trunk"])
    print("%s (1 thread, medians)" % args.model)
    print("  fused graph on ONNX Runtime (trunk + VisualBackProp head, today's mask): %.3f ms" % today)
    print("  the conv trunk in TensorFlow (tf.function, batches of %d, per frame):   %.3f ms" % (TF_BATCH, tf_trunk))
    for name, level, _, _ in extras:
        ms = np.median(rounds[name])
        print("  + relevance at level %d (%s) in TensorFlow, per frame: %.3f ms = +%.0f %% of TensorFlow's trunk" % (
            level, name, ms, 100.0 * ms / tf_trunk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
