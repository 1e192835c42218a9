"""Car-like virtualenvs for tests/platforms/test_platforms.py, built once and cached between runs.

Each ``CarEnv`` is what a Donkey owner's guide installs on one platform, in the guide's order,
before anyone installs donkey-saliency: the car's packages. ``ready(env)`` returns the cached
virtualenv, building it first when absent. The cache directory is keyed by a hash of everything the
env installs (interpreter, every pip step, the donkeycar source tarball), so a changed recipe gets a
new directory and a warm machine reuses the old one.

A virtualenv and an editable install record absolute paths, so an env cannot be built in a temp dir
and renamed: it is built in place under a lock (two test runs never build the same env at once), and
only a finished build gets its ``.complete`` marker; a directory without one is removed and rebuilt.

The tests never change a cached env: ``clone(env, dest)`` copies it (``python -m pip`` in the copy
installs into the copy; only console-script shebangs keep the old path, and the tests call modules).

Run as a script to build (or time) the envs:  python tests/car_envs.py [nano|pi ...]
"""
import collections
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
VENDOR = os.path.join(PROJECT, "..", "shared", "vendor")
DONKEYCAR_451 = os.path.join(VENDOR, "donkeycar-4.5.1.tar.gz")
PYENV = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pip")
RECIPE_VERSION = 1  # bump to rebuild every env after a change to how envs are built

CarEnv = collections.namedtuple("CarEnv", "name python steps sources")
CarEnv.__doc__ = """name: cache key prefix; python: interpreter path; steps: pip install argument lists run in
order ("{src}" is replaced with the extracted source directory); sources: tarballs extracted into src/."""

PY = {v.rsplit(".", 1)[0]: os.path.join(PYENV, "versions", v, "bin", "python" + v.rsplit(".", 1)[0])
      for v in ("3.6.15", "3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0")}
# A step starting with HIDDEN installs its packages where Python imports them but pip cannot see them:
# JetPack's system OpenCV (built with GStreamer for the CSI camera; a pip OpenCV would shadow it).
HIDDEN = "--hidden"

ENVS = {
    # Jetson Nano, JetPack 4.6: Python 3.6; donkeycar's guide upgrades pip, then installs donkeycar
    # 4.5.1 editable from the release source. The camera's OpenCV is already there (JetPack's; here a
    # cp36 opencv-python-headless stands in for it) and so is tornado 6.1.
    "nano": CarEnv(
        "nano-py36-dk451", PY["3.6"],
        [["pip==21.3.1", "setuptools==59.6.0", "wheel==0.37.1"],
         ["numpy==1.19.0", "opencv-python-headless==4.5.5.64", "tornado==6.1"],
         ["-e", "{src}/donkeycar-4.5.1"]],
        [DONKEYCAR_451]),
    # Raspberry Pi 4/5, Bookworm: Python 3.11; donkeycar 5.3.0 with what its [pi] extra brings for
    # the pilot and the camera: tflite-runtime (no TensorFlow), OpenCV 4.9, numpy<2 first.
    "pi": CarEnv(
        "pi-py311-dk53", PY["3.11"],
        [["numpy<2"],
         ["donkeycar==5.3.0", "tflite-runtime", "opencv-contrib-python-headless==4.9.*", "flatbuffers==24.3.*"]],
        []),
    # Raspberry Pi, Bookworm/Trixie, donkeycar 5.4 (what 'pip install donkeycar' gives today): its
    # [pi] extra's pilot and camera parts: ai-edge-litert, OpenCV, numpy 2.
    "pi54-312": CarEnv(
        "pi-py312-dk54", PY["3.12"],
        [["donkeycar==5.4.0", "ai-edge-litert>=2.1.4", "opencv-contrib-python-headless"]], []),
    "pi54-313": CarEnv(
        "pi-py313-dk54", PY["3.13"],
        [["donkeycar==5.4.0", "ai-edge-litert>=2.1.4", "opencv-contrib-python-headless"]], []),
    # Raspberry Pi, Bullseye: Python 3.9 with Debian's pip 20.3.4; donkeycar 5.0 and TensorFlow 2.9
    # (the guide's aarch64 wheel, which needs protobuf<3.20).
    "bullseye": CarEnv(
        "pi-py39-dk50-tf29", PY["3.9"],
        [["pip==20.3.4"],
         ["donkeycar==5.0.0", "tensorflow==2.9.3", "protobuf<3.20", "numpy<2",
          "opencv-contrib-python-headless==4.6.0.66"]],
        []),
    # Xavier NX / Orin, JetPack 5: Python 3.8 with Ubuntu 20.04's pip 20.0.2, numpy 1.21.1, NVIDIA's
    # TensorFlow 2.9 (protobuf<3.20), donkeycar 5.0, and JetPack's OpenCV 4.5 where pip cannot see it.
    # The 'current pip' row is this env with pip upgraded in the test's copy (TensorFlow built once).
    "jetpack5": CarEnv(
        "jp5-py38-dk50-tf29", PY["3.8"],
        [["pip==20.0.2"],
         [HIDDEN, "--no-deps", "opencv-python-headless==4.5.4.60"],
         ["numpy==1.21.1", "tensorflow==2.9.3", "protobuf<3.20", "donkeycar==5.0.0"]],
        []),
    # Orin, JetPack 6: Python 3.10 with Ubuntu 22.04's pip 22.0.2, donkeycar 5.0, JetPack's OpenCV.
    "jetpack6": CarEnv(
        "jp6-py310-dk50", PY["3.10"],
        [["pip==22.0.2"],
         [HIDDEN, "--no-deps", "opencv-python-headless==4.8.0.76"],
         ["numpy<2", "donkeycar==5.0.0"]],
        []),
    # A laptop (simulator, training) on donkeycar 5.4's [pc] extra: TensorFlow 2.19 (Keras 3) and tf-keras.
    "laptop54": CarEnv(
        "laptop-py312-dk54", PY["3.12"],
        [["donkeycar==5.4.0", "tensorflow==2.19.*", "tf-keras==2.19.*", "opencv-python-headless"]], []),
}


def cache_root():
    return os.environ.get("DONKEY_SALIENCY_TEST_ENVS") or os.path.join(
        os.path.expanduser("~"), ".cache", "donkey_saliency-test-envs")


def missing(env):
    """Why ``env`` cannot be built here (None when it can)."""
    if not os.access(env.python, os.X_OK):
        return "%s is absent (pyenv's interpreter; install it with 'pyenv install %s')" % (
            env.python, os.path.basename(os.path.dirname(os.path.dirname(env.python))))
    for source in env.sources:
        if not os.path.isfile(source):
            return "%s is absent (it exists only in the project's CI and dev machines)" % os.path.normpath(source)
    return None


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def key(env):
    """Hash of everything the env installs."""
    recipe = dict(recipe=RECIPE_VERSION, python=env.python, steps=env.steps,
                  sources=[_digest(s) for s in env.sources],
                  interpreter=subprocess.check_output([env.python, "-c", "import sys; print(sys.version)"]).decode())
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def python(venv):
    return os.path.join(venv, "bin", "python")


def pip(venv, *args):
    """``python -m pip ARGS`` in ``venv``; its output, or CalledProcessError with pip's output.
    pip's own cache stays the user's (the tests point XDG_CACHE_HOME at a temp dir)."""
    command = [python(venv), "-m", "pip", "--disable-pip-version-check", "--no-input"] + list(args)
    # PyPI alone, as on a car: a local mirror's index pages without Requires-Python would make the
    # old pips of Bullseye and JetPack 5 pick releases that dropped the car's Python.
    environment = dict(os.environ, PIP_CACHE_DIR=PIP_CACHE, PIP_EXTRA_INDEX_URL=" ", PIP_FIND_LINKS=" ")
    # Outside the checkout: 'python -m' puts the cwd on sys.path, and old pips then list an editable
    # install's donkey_saliency.egg-info there as installed in the car.
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment,
                            cwd=os.path.dirname(os.path.abspath(venv)))
    if result.returncode:
        raise subprocess.CalledProcessError(result.returncode, command, output=result.stdout)
    return result.stdout.decode("utf-8", "replace")


def freeze(venv):
    """{distribution name (normalised): version} of everything installed (pip freeze's facts, as
    ``pip list`` gives them on every pip from 21 on, editable installs included)."""
    return {_normal(p["name"]): p["version"] for p in json.loads(pip(venv, "list", "--format=json"))}


def _normal(name):
    return name.strip().lower().replace("_", "-").replace(".", "-")


@contextlib.contextmanager
def _locked(path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ready(env, log=None):
    """The cached env's directory (``venv/`` and ``src/`` inside), built first when absent.
    Returns (directory, seconds spent building: 0.0 when it was cached)."""
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    directory = os.path.join(root, "%s-%s" % (env.name, key(env)))
    marker = os.path.join(directory, ".complete")
    with _locked(directory + ".lock"):
        if os.path.exists(marker):
            return directory, 0.0
        started = time.monotonic()
        shutil.rmtree(directory, ignore_errors=True)  # an interrupted build
        os.makedirs(os.path.join(directory, "src"))
        for source in env.sources:
            with tarfile.open(source) as archive:
                archive.extractall(os.path.join(directory, "src"))
        venv = os.path.join(directory, "venv")
        subprocess.run([env.python, "-m", "venv", venv], check=True)
        for step in env.steps:
            arguments = [a.replace("{src}", os.path.join(directory, "src")) for a in step]
            if log:
                log("%s: pip install %s" % (env.name, " ".join(arguments)))
            if arguments[0] == HIDDEN:
                _install_hidden(venv, os.path.join(directory, "system-packages"), arguments[1:])
            else:
                pip(venv, "install", *arguments)
        packages = freeze(venv)
        seconds = time.monotonic() - started
        with open(marker + ".tmp", "w") as handle:
            json.dump(dict(packages=packages, build_seconds=round(seconds, 1)), handle, indent=1, sort_keys=True)
        os.rename(marker + ".tmp", marker)
        return directory, seconds


def _install_hidden(venv, target, arguments):
    """Install into ``target``, importable through a .pth file but without the metadata pip reads:
    what a system package (JetPack's cv2 in /usr/lib/python3/dist-packages) looks like to pip."""
    pip(venv, "install", "--target", target, *arguments)
    for name in os.listdir(target):
        if name.endswith((".dist-info", ".egg-info")):
            shutil.rmtree(os.path.join(target, name))
    site = subprocess.check_output([python(venv), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    with open(os.path.join(site.decode().strip(), "system-packages.pth"), "w") as handle:
        handle.write(target + "\n")


def clone(directory, dest):
    """A private copy of a cached env's virtualenv at ``dest`` (symlinks kept: the interpreter)."""
    subprocess.run(["cp", "-a", os.path.join(directory, "venv"), dest], check=True)
    return dest


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(ENVS):
        why = missing(ENVS[name])
        if why:
            print("%s: cannot build: %s" % (name, why))
            continue
        where, took = ready(ENVS[name], log=print)
        print("%s: %s (%s)" % (name, where, "built in %.0f s" % took if took else "cached"))
