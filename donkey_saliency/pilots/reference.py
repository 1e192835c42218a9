"""The pilot's own framework computing the trunk's maps: the independent side of every
graph-versus-reference test, and the bench's eager-TensorFlow baseline. Needs TensorFlow; the car
never imports this module.
"""
import numpy as np

from ..errors import ModelError, first_line
from ..util.deps import require


def keras_model(path):
    tf = require("tensorflow")
    try:
        return tf.keras.models.load_model(path, compile=False)
    except Exception as error:
        raise ModelError("cannot read %s as a Keras pilot: %s" % (path, first_line(error)))


def map_tensors(model, trunk):
    """The Keras tensors of each conv step's post-activation map (N, h, w, C), shallow to deep."""
    return [model.get_layer(name).output for name in trunk.map_sources]


def keras_submodel(model, trunk):
    """A Keras model from the image input to each conv step's post-activation map."""
    tf = require("tensorflow")
    return tf.keras.Model(model.get_layer(trunk.input_source).output, map_tensors(model, trunk))


def tflite_interpreter(path):
    """tf.lite.Interpreter keeping every tensor. It does not verify the flatbuffer (a damaged file can
    crash it): open only files that ``pilots.load_pilot`` has read."""
    tf = require("tensorflow")
    interpreter = tf.lite.Interpreter(model_path=path, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter


def feature_maps(pilot, frames, model=None):
    """Post-activation maps (N, h, w, C) of each conv step for uint8 frames (N, H, W, C), computed by
    the pilot's own framework with donkey's img/255 input (``model``: the Keras model, if loaded)."""
    x = np.asarray(frames, dtype=np.float32) / 255.0
    trunk = pilot.trunk
    if pilot.format == "keras":
        maps = keras_submodel(model or keras_model(pilot.path), trunk)(x, training=False)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        return [np.asarray(m) for m in maps]
    interpreter = tflite_interpreter(pilot.path)
    maps = [[] for _ in trunk.map_sources]
    for frame in x:  # converted pilots have batch 1
        for detail in interpreter.get_input_details():  # other inputs do not reach the conv trunk
            value = frame[None] if detail["index"] == trunk.input_source else np.zeros(detail["shape"],
                                                                                         detail["dtype"])
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        for store, index in zip(maps, trunk.map_sources):
            store.append(np.array(interpreter.get_tensor(index), dtype=np.float32))
    return [np.concatenate(store, axis=0) for store in maps]
