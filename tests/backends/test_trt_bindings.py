"""Every TensorRT name the backend uses, checked against NVIDIA's real compiled Python bindings, per
version path: each name must exist in the bindings of every version its path serves, and the
backend's decisions (made by what the bindings have, never by version numbers) must pick the right
path on each.

The bindings come from the package registry (``tensorrt-bindings`` 8.6.1, ``tensorrt-cu12-bindings``
10.3 - JetPack 6's -, 10.16 and 11.4), installed once into cached virtualenvs (``car_envs``). Their
core library (libnvinfer) is not on the registry, so nothing can be built or run: a stand-in shared
library made here with the sonames they link against, each missing function a stub returning NULL,
lets their symbol tables load - for this name check alone. Nothing in it calls into TensorRT.
Where the wheels cannot be installed (no network, no Python 3.11, no gcc), the tests skip and say why.

Paths (``trt_api``, ``trt_engine``) and the versions they serve:
- common: every version;
- tensor API (8.5+): 8.6, 10.x, 11.x;  binding API (8.0-8.4): only 8.6 on the registry still has it;
- weakly typed fp16 (FP16 flag + per-layer fp32 pins; 8.x, 10): 8.6, 10.x;
- strongly typed fp16 (the fp16 graph; 11, and present from 10): 10.x, 11.x.
"""
import ast
import glob
import json
import os
import shutil
import subprocess
import tempfile

import pytest

import car_envs

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
PROJECT = os.path.dirname(HERE)
PYTHON = os.path.join(car_envs.PYENV, "versions", "3.11.7", "bin", "python3.11")

COMMON = [
    "__version__", "Runtime", "Runtime.deserialize_cuda_engine",
    "Builder", "Builder.create_network", "Builder.create_builder_config", "Builder.create_optimization_profile",
    "Builder.build_serialized_network",
    "OnnxParser", "OnnxParser.parse", "OnnxParser.num_errors", "OnnxParser.get_error",
    "IBuilderConfig.add_optimization_profile", "IBuilderConfig.set_flag", "IBuilderConfig.clear_flag",
    "IBuilderConfig.set_memory_pool_limit", "MemoryPoolType.WORKSPACE", "IOptimizationProfile.set_shape",
    "ICudaEngine.create_execution_context",
    "INetworkDefinition.num_layers", "INetworkDefinition.get_layer", "INetworkDefinition.num_outputs",
    "INetworkDefinition.get_output",
    "ILayer.name", "ILayer.num_inputs", "ILayer.get_input", "ILayer.num_outputs", "ILayer.get_output",
    "ITensor.name", "ITensor.dtype",
    "ILogger", "ILogger.Severity.INTERNAL_ERROR", "ILogger.Severity.ERROR", "ILogger.Severity.WARNING",
    "BuilderFlag", "BuilderFlag.TF32", "NetworkDefinitionCreationFlag",
    "DataType.FLOAT", "DataType.HALF", "DataType.INT32", "DataType.INT8", "DataType.BOOL", "DataType.UINT8",
]
TENSOR_API = [
    "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype", "IExecutionContext.set_input_shape", "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3", "TensorIOMode.INPUT",
]
BINDING_API = [
    "ICudaEngine.num_bindings", "ICudaEngine.get_binding_name", "ICudaEngine.binding_is_input",
    "ICudaEngine.get_binding_index", "ICudaEngine.get_binding_dtype", "IExecutionContext.set_binding_shape",
    "IExecutionContext.get_binding_shape", "IExecutionContext.execute_async_v2",
]
WEAK_FP16 = [
    "BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
    "ILayer.precision", "ILayer.set_output_type", "float32", "float16",
]
STRONG_FP16 = ["NetworkDefinitionCreationFlag.STRONGLY_TYPED"]
EXPLICIT_BATCH = ["NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "Builder.max_batch_size"]  # 8.x only

ALL_PATHS = [COMMON, TENSOR_API, BINDING_API, WEAK_FP16, STRONG_FP16, EXPLICIT_BATCH]
# label -> (requirement, paths it serves, the fp16 route the backend must choose there)
BINDINGS = {
    "8.6": ("tensorrt-bindings==8.6.1", [COMMON, TENSOR_API, BINDING_API, WEAK_FP16, EXPLICIT_BATCH], "weak"),
    "10.3": ("tensorrt-cu12-bindings==10.3.0", [COMMON, TENSOR_API, WEAK_FP16, STRONG_FP16], "weak"),
    "10.16": ("tensorrt-cu12-bindings==10.16.1.11", [COMMON, TENSOR_API, WEAK_FP16, STRONG_FP16], "weak"),
    "11.4": ("tensorrt-cu12-bindings==11.4.0.106", [COMMON, TENSOR_API, STRONG_FP16], "strong"),
}
# Probes the code makes with hasattr/getattr and expects absent on some versions (never required).
PROBED = ["DataType.INT64", "BuilderFlag.STRICT_TYPES", "IBuilderConfig.max_workspace_size",
          "Builder.platform_has_fast_fp16"]


def _env(label):
    requirement = BINDINGS[label][0]
    return car_envs.CarEnv("trt-bindings-" + label, PYTHON, [["--no-deps", "numpy<2", requirement]], [])


PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings as trt
from donkey_saliency.backends import trt_api, trt_engine

MISSING = object()

def resolve(dotted):
    value = trt
    for part in dotted.split("."):
        value = getattr(value, part, MISSING)
        if value is MISSING:
            break
    return value

def has(dotted):
    return resolve(dotted) is not MISSING

def bit(dotted):
    return None if resolve(dotted) is MISSING else int(resolve(dotted))

names = json.loads(sys.argv[2])
route = trt_engine.fp16_route(trt.BuilderFlag, trt.ILayer)
log = trt_engine._forwarding_logger_class(trt)()
log.log(trt.ILogger.Severity.ERROR, "probe")
print(json.dumps(dict(
    version=trt.__version__, has={n: has(n) for n in names},
    route="weak" if route == trt_engine.WEAK else "strong",
    attempts=trt_engine.constraint_attempts(trt.BuilderFlag, "fp16", route),
    flags=trt_engine.network_flags(trt.NetworkDefinitionCreationFlag, trt.Builder, route == trt_engine.STRONG),
    explicit_bit=bit("NetworkDefinitionCreationFlag.EXPLICIT_BATCH"),
    strong_bit=bit("NetworkDefinitionCreationFlag.STRONGLY_TYPED"),
    tensor_api=trt_api.uses_tensor_api(trt.ICudaEngine, trt.IExecutionContext),
    uint8=trt_api.supports_uint8_input(trt),
    dtypes={name: str(trt_api.numpy_dtype(getattr(trt.DataType, name)))
            for name in trt_api.NUMPY_DTYPES if hasattr(trt.DataType, name)},
    logger=[log.errors, log.last_error])))
"""


@pytest.fixture(scope="module")
def stand_in_libraries():
    """A directory of stand-in TensorRT core libraries (every soname the bindings link against)."""
    for tool in ("gcc", "nm"):
        if shutil.which(tool) is None:
            pytest.skip("%s is not installed (needed to make the stand-in library for the name check)" % tool)
    directory = tempfile.mkdtemp(prefix="trt-stand-in-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _binding_module(venv):
    found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "tensorrt_bindings", "tensorrt*.so"))
    assert found, "no tensorrt_bindings extension in %s" % venv
    return found[0]


def _make_stand_ins(module, directory):
    """Stub every strong undefined function of ``module`` that no process library provides (the
    libnvinfer/parser/plugin entry points), into one library per soname ``module`` needs."""
    import ctypes

    symbols = subprocess.run(["nm", "-D", "--undefined-only", module], stdout=subprocess.PIPE, check=True,
                             universal_newlines=True).stdout.split("\n")
    process = ctypes.CDLL(None)
    missing = sorted({line.split()[-1] for line in symbols if line.split()[:1] == ["U"] and "@" not in line
                      and not hasattr(process, line.split()[-1])})
    needed = [line.split("[")[1].rstrip("]") for line in subprocess.run(
        ["readelf", "-d", module], stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout.splitlines()
        if "(NEEDED)" in line and "nv" in line]
    source = os.path.join(directory, "stand_in.c")
    with open(source, "w") as handle:
        for index, name in enumerate(missing):
            handle.write('void *stub_%d(void) __asm__("%s");\n' % (index, name))
            handle.write('void *stub_%d(void) { return 0; }\n' % index)
    for soname in needed:
        target = os.path.join(directory, soname)
        if not os.path.exists(target):
            subprocess.run(["gcc", "-shared", "-fPIC", "-o", target, "-Wl,-soname," + soname, source], check=True)
    return missing, needed


def _probe(label, stand_ins):
    why = car_envs.missing(_env(label))
    if why:
        pytest.skip("cannot make the TensorRT %s bindings' env: %s" % (label, why))
    try:
        directory, _ = car_envs.ready(_env(label))
    except subprocess.CalledProcessError as error:
        last = (error.output or b"").decode("utf-8", "replace").strip().splitlines() or ["?"]
        pytest.skip("cannot install %s: %s" % (BINDINGS[label][0], last[-1]))
    venv = os.path.join(directory, "venv")
    libraries = os.path.join(stand_ins, label)
    os.makedirs(libraries, exist_ok=True)
    _make_stand_ins(_binding_module(venv), libraries)
    names = sorted(set(n for path in ALL_PATHS for n in path) | set(PROBED))
    result = subprocess.run([car_envs.python(venv), "-c", PROBE, PROJECT, json.dumps(names)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120,
                            cwd=directory, env=dict(os.environ, LD_LIBRARY_PATH=libraries))
    assert result.returncode == 0, result.stdout[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(BINDINGS))
def test_every_name_exists_on_every_version_its_path_serves(label, stand_in_libraries):
    found = _probe(label, stand_in_libraries)
    assert found["version"].startswith(BINDINGS[label][0].split("==")[1][:4])
    required = sorted(set(n for path in BINDINGS[label][1] for n in path))
    assert [n for n in required if not found["has"][n]] == []
    # The decisions by what the bindings have pick each version's path.
    route = BINDINGS[label][2]
    assert found["route"] == route
    assert found["tensor_api"] and found["uint8"]
    if route == "weak":
        assert found["attempts"] == ["OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    else:
        assert found["attempts"] == [None]
        # What once crashed the fp16 build here: no weak typing at all (trt.float16 itself stays, a DataType).
        gone = [n for n in WEAK_FP16 + BINDING_API + ["BuilderFlag.STRICT_TYPES"] if not n.startswith("float")]
        assert [n for n in gone if found["has"][n]] == []
        assert found["flags"] == 1 << found["strong_bit"]
    if label == "8.6":
        assert found["flags"] == 1 << found["explicit_bit"]  # 8.x: explicit batch is a flag, no strong typing
    elif route == "weak":
        assert found["flags"] == 0  # 10: explicit batch is the only mode
    # Finding 1: the project's own table covers what the engine's tensors can be, whatever nptype does.
    assert {k: found["dtypes"][k] for k in ("FLOAT", "HALF", "INT32", "UINT8")} == dict(
        FLOAT="float32", HALF="float16", INT32="int32", UINT8="uint8")
    assert found["logger"] == [1, "probe"]  # the forwarding logger subclasses the real ILogger


def test_the_name_table_covers_every_module_level_name_the_backend_uses():
    """Every ``trt.<name>`` in the backend's source is in a path's list (or a probe), so a new name
    cannot slip past the check above."""
    listed = set(n.split(".")[0] for paths, _r in [(v[1], v[2]) for v in BINDINGS.values()]
                 for path in paths for n in path) | set(n.split(".")[0] for n in PROBED)
    used = set()
    for path in glob.glob(os.path.join(PROJECT, "donkey_saliency", "backends", "*.py")):
        with open(path) as handle:
            tree = ast.parse(handle.read())
        used.update(node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name) and node.value.id == "trt")
    assert used and sorted(used - listed) == []
