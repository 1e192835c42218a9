"""Pilots built in a test: donkeycar's architectures, small custom trunks, .tflite conversions, and a
Python with TensorFlow blocked (the car's case)."""
import os
import subprocess
import sys
import textwrap


# Installed as the first import hook of the subprocess: these imports fail there, as on a car.
BLOCK_TENSORFLOW = textwrap.dedent("""
    import sys

    class BlockTensorFlow(object):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tf2onnx", "keras", "tf_keras", "tflite_runtime"):
                raise ImportError("%s is blocked in this test (a car without TensorFlow)" % name)

    sys.meta_path.insert(0, BlockTensorFlow())
""")


def layers():
    import tensorflow as tf

    return tf.keras.layers


def saved(model, suffix=".h5"):
    """``model`` written as a pilot file (what a car reads) in a fresh temp folder."""
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="pilot-"), "pilot" + suffix)
    model.save(path)
    return path


def donkey_models():
    from donkeycar.parts import keras as dk

    shape = (120, 160, 3)
    return {
        "linear": lambda: dk.default_n_linear(2, shape),
        "categorical": lambda: dk.default_categorical(shape),
        "inferred": lambda: dk.default_n_linear(1, shape),
        "memory": lambda: dk.default_memory(shape, mem_length=3, mem_depth=0),
        "behavior": lambda: dk.default_bhv(3, shape),
        "localizer": lambda: dk.default_loc(8, shape),
        "imu": lambda: dk.default_imu(2, 6, shape),
    }


def build(shape, body):
    import tensorflow as tf

    inp = layers().Input(shape, name="img_in")
    x = body(inp)
    x = layers().Flatten()(x)
    return tf.keras.Model(inp, layers().Dense(2)(x))


def keras_to_tflite(model, path, data_gen=None):
    from donkeycar.parts.interpreter import keras_to_tflite as convert

    convert(model, str(path), data_gen)
    return str(path)


def run_without_tensorflow(script, timeout=600):
    """Run ``script`` in a fresh interpreter where TensorFlow cannot be imported; its stdout."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW + textwrap.dedent(script)],
                            capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def activations_model(last="swish"):
    """Every activation donkey pilots use, as conv settings and as separate layers."""
    import tensorflow as tf

    layers = tf.keras.layers
    inp = layers.Input((60, 80, 3), name="img_in")
    x = layers.Conv2D(6, 3, strides=2, activation="elu")(inp)
    x = layers.Conv2D(6, 3, activation="tanh")(x)
    x = layers.Conv2D(6, 3, activation="sigmoid")(x)
    x = layers.Conv2D(6, 3)(x)
    x = layers.LeakyReLU(0.1)(x)
    x = layers.Conv2D(6, 3, strides=2)(x)
    x = layers.ReLU(max_value=6.0)(x)
    x = layers.Conv2D(6, 3, activation="linear")(x)
    x = layers.Conv2D(6, 3, activation=last)(x)
    x = layers.Flatten()(x)
    return tf.keras.Model(inp, layers.Dense(2, name="n_outputs0")(x))


def to_tflite(h5_path):
    from donkeycar.parts.interpreter import keras_model_to_tflite

    tflite_path = os.path.splitext(h5_path)[0] + ".tflite"
    keras_model_to_tflite(h5_path, tflite_path)
    return tflite_path


def same_padding(x):
    L = layers()
    x = L.Conv2D(8, 5, strides=2, padding="same", activation="relu")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    return L.Conv2D(8, 3, strides=1, padding="same", activation="relu")(x)


def pooling(x):
    L = layers()
    x = L.Conv2D(8, 3, activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(8, 3, activation="relu")(x)
    x = L.AveragePooling2D(3, strides=2, padding="same")(x)
    return L.Conv2D(8, 3, activation="relu")(x)


def cropping(x):
    L = layers()
    x = L.Cropping2D(((40, 0), (0, 0)))(x)  # donkey's ROI crop of the sky
    x = L.Conv2D(8, 5, strides=2, activation="relu")(x)
    x = L.Cropping2D(((1, 2), (3, 0)))(x)
    return L.Conv2D(8, 3, strides=2, activation="relu")(x)


def separate_bn_relu(x):
    L = layers()
    x = L.Conv2D(8, 5, strides=2)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.Dropout(0.2)(x)
    x = L.Conv2D(8, 3, strides=2)(x)
    x = L.BatchNormalization()(x)
    return L.Activation("relu")(x)


def one_conv(x):
    return layers().Conv2D(4, 3, strides=2, activation="relu")(x)


def seven_convs(x):
    L = layers()
    for i in range(7):
        x = L.Conv2D(6, 3, strides=2 if i % 2 == 0 else 1, padding="same" if i > 3 else "valid",
                     activation="relu")(x)
    return x


def zero_padding_and_dilation(x):
    L = layers()
    x = L.ZeroPadding2D(((2, 1), (1, 2)))(x)
    x = L.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = L.Conv2D(8, 3, dilation_rate=2, activation="relu")(x)
    return L.Conv2D(8, 1, strides=2, padding="same", activation="relu")(x)


CUSTOM = {
    "same_padding": ((120, 160, 3), same_padding),
    "pooling": ((120, 160, 3), pooling),
    "cropping": ((120, 160, 3), cropping),
    "separate_bn_relu": ((120, 160, 3), separate_bn_relu),
    "one_conv": ((120, 160, 3), one_conv),
    "seven_convs": ((120, 160, 3), seven_convs),
    "zero_padding_dilation": ((120, 160, 3), zero_padding_and_dilation),
    "square_input": ((96, 96, 3), same_padding),
    "non_standard_input": ((66, 200, 3), pooling),  # the PilotNet size
    "grayscale": ((120, 160, 1), one_conv),
}
