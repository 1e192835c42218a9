"""What the TensorRT decision tests share: a builder config that records the flags it is given (the
builder's own logic under test is ours; TensorRT's config object is only where the flags land)."""


class RecordingConfig(object):
    """The flag calls a build makes on an IBuilderConfig, in order."""

    def __init__(self):
        self.calls = []

    def set_flag(self, flag):
        self.calls.append(("set", flag))

    def clear_flag(self, flag):
        self.calls.append(("clear", flag))

    def flags(self):
        """The flags that end up set."""
        on = set()
        for action, flag in self.calls:
            (on.add if action == "set" else on.discard)(flag)
        return on
