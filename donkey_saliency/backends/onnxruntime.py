"""ONNX Runtime backend: the CPU everywhere, or any execution provider the installed build has."""
from .base import Backend
from ..errors import BackendUnavailable, MissingLibrary
from ..util.deps import require


class OnnxRuntimeBackend(Backend):
    """Options: ``providers`` (list, default CPU only), ``threads`` (intra-op threads, 0 = ORT's choice)."""

    name = "onnxruntime"

    @classmethod
    def availability(cls):
        try:
            require("onnxruntime")
        except MissingLibrary as error:
            return False, str(error)
        return True, ""

    def _activate(self):
        ort = require("onnxruntime")
        wanted = list(self.options.get("providers") or ["CPUExecutionProvider"])
        have = ort.get_available_providers()
        missing = [p for p in wanted if p not in have]
        if missing:
            raise BackendUnavailable("this onnxruntime build lacks %s (it has %s)" % (", ".join(missing), ", ".join(have)))
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = int(self.options.get("threads", 0) or 0)
        session_options.log_severity_level = 3
        self._session = ort.InferenceSession(self.graph.onnx_bytes, sess_options=session_options, providers=wanted)
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _infer(self, frames, extra=None):
        feed = {self.graph.input_name: frames}
        feed.update(extra or {})
        values = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, values))

    def _close(self):
        self._session = None

    def describe(self):
        providers = self.options.get("providers") or ["CPUExecutionProvider"]
        return "onnxruntime (%s)" % ", ".join(p.replace("ExecutionProvider", "") for p in providers)
