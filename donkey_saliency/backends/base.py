"""The backend interface: one lifecycle (activate -> infer -> close), a context manager.

A backend runs a :class:`~donkey_saliency.compute.graph.SaliencyGraph` (the fused ONNX graph: uint8
frames in, ``mask`` and per-layer maps out). Subclasses fill in ``_activate``, ``_infer`` and
``_close``; heavy libraries are imported inside them, never at module import.
"""
import threading
from typing import Dict, Tuple

import numpy as np


class Backend(object):
    name = "base"

    def __init__(self, graph, **options):
        self.graph = graph
        self.options = options
        self._active = False
        self._thread = None

    # --- what a subclass provides -------------------------------------------------------
    @classmethod
    def availability(cls):
        # type: () -> Tuple[bool, str]
        """(usable here, reason). Cheap: must not build anything."""
        return True, ""

    def _activate(self):
        raise NotImplementedError

    def _infer(self, frames, extra=None):
        # type: (np.ndarray, Dict[str, np.ndarray]) -> Dict[str, np.ndarray]
        raise NotImplementedError

    def _close(self):
        pass

    # --- the lifecycle ---------------------------------------------------------------------
    def activate(self):
        """Load/compile. The part calls it in its worker thread, which then runs ``infer``; the TensorRT
        backend pushes its CUDA context around each call, so ``close`` may come from any thread."""
        if not self._active:
            self._activate()
            self._active = True
            self._thread = threading.current_thread()
        return self

    def infer(self, frames, extra=None):
        # type: (np.ndarray, Dict[str, np.ndarray]) -> Dict[str, np.ndarray]
        """frames: uint8 (N, H, W, C) at the graph's input size (float32 in [0, 1] for a float-input
        graph). ``extra``: a whole-pilot graph's other inputs by name. Returns every output by name."""
        if not self._active:
            self.activate()
        return self._infer(frames, extra) if extra else self._infer(frames)

    def close(self):
        if self._active:
            self._active = False
            self._close()

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.close()
        return False

    def describe(self):
        # type: () -> str
        return self.name
