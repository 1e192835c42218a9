"""util.deps.require: the one way optional libraries are imported, each with the same style of hint."""
import sys

import pytest

from donkey_saliency.errors import MissingLibrary, SaliencyError
from donkey_saliency.util.deps import HINTS, require


def test_a_present_library_is_the_module():
    assert require("json") is sys.modules["json"]


@pytest.mark.parametrize("module", sorted(HINTS))
def test_a_missing_library_is_one_line_saying_what_and_how(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as on a machine without it
    with pytest.raises(MissingLibrary) as caught:
        require(module)
    what, how = HINTS[module]
    line = str(caught.value)
    assert line.startswith(what + " is not importable (") and line.endswith("); " + how) and "\n" not in line
    assert isinstance(caught.value, SaliencyError) and isinstance(caught.value, ImportError)


def test_a_hint_given_by_the_caller_replaces_the_table(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingLibrary, match=r"; use the car's own$"):
        require("cv2", "use the car's own")
