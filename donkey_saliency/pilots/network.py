"""The whole pilot: its inputs, the layers past the conv trunk, and its outputs, format-free.

The trunk (:mod:`.trunk`) ends where the image chain ends (donkey's Flatten). What follows is a
small DAG of :class:`Layer` over named tensors, in an order where every input exists before it is
read: the image chain's end is the tensor :data:`TRUNK_END`, each other pilot input its own name.
Outputs are listed in the order donkeycar's interpreter returns them (KerasInterpreter: the model's
``output_names``; TfLite: the signature's outputs).

Only what donkey's 2-D pilots use is described; readers refuse anything else naming the layer.
"""
from collections import namedtuple

import numpy as np

from ..errors import ModelError

TRUNK_END = "trunk_end"

Layer = namedtuple("Layer", "kind name inputs params")
Layer.__doc__ = """One layer past the trunk.

kind    'flatten'    the 4-D image chain end -> (N, h*w*C) in NHWC order, as Keras and TFLite flatten
        'dense'      params (weight (in, out) float32, bias (out,) float32)
        'concat'     along the last axis
        'activation' params: an Activation (trunk.py) or 'softmax'
name    the layer's tensor name (inputs of later layers refer to it)
inputs  names of the tensors it reads
"""

Input = namedtuple("Input", "name shape")  # shape without the batch, e.g. (120, 160, 3) or (6,)


class Network(object):
    """The pilot past its trunk: ``inputs`` (every pilot input, in the interpreter's order),
    ``image`` (the name of the image input), ``layers`` and ``outputs`` ([(output name, tensor)])."""

    def __init__(self, inputs, image, layers, outputs):
        self.inputs = list(inputs)
        self.image = image
        self.layers = list(layers)
        self.outputs = list(outputs)
        self._check()

    @property
    def extra_inputs(self):
        return [i for i in self.inputs if i.name != self.image]

    @property
    def output_names(self):
        return [name for name, _ in self.outputs]

    def _check(self):
        known = {TRUNK_END} | {i.name for i in self.inputs}
        for layer in self.layers:
            missing = [name for name in layer.inputs if name not in known]
            if missing:
                raise ModelError("layer %s reads %s, which the pilot computes on a path saliency does not follow"
                                 % (layer.name, ", ".join(missing)))
            known.add(layer.name)
        for name, tensor in self.outputs:
            if tensor not in known:
                raise ModelError("the pilot's output %s comes from a path saliency does not follow" % name)


def dense(name, inputs, weight, bias):
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    bias = np.zeros(weight.shape[1], np.float32) if bias is None else np.asarray(bias, np.float32)
    return Layer("dense", name, list(inputs), (weight, bias))


def append(layers, layer, applied=None):
    """Append ``layer`` and, when it applies one, its activation as a layer of its own that takes the
    layer's name (what later layers read)."""
    if applied is None:
        layers.append(layer)
        return
    linear = layer.name + "/linear"
    layers.append(layer._replace(name=linear))
    layers.append(Layer("activation", layer.name, [linear], applied))


def refuse(layer, kind):
    """The one line for a layer outside what donkey pilots use."""
    raise ModelError("layer %s is a %s, which saliency's whole-pilot graph does not support (it reads Flatten, "
                     "Dense, Dropout, Concatenate, Reshape and activations past the conv trunk)" % (layer, kind))
