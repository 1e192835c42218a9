"""How much a pilot file may make the readers read."""
from ..errors import ModelError
from ..util.fileio import size_text

# Bounds on what a pilot file makes us read (a Donkeycar pilot is a few MB; its config some KB): a
# damaged or hostile file (a zip bomb, a compressed HDF5 dataset of any declared shape) is refused
# from its declared sizes, before anything is inflated.
MAX_PILOT_BYTES = 1 << 30
MAX_CONFIG_BYTES = 16 << 20


def check_size(path, what, size, limit):
    """ModelError unless ``size`` bytes (``what`` of the pilot file, as the file declares it) fit ``limit``."""
    if size > limit:
        raise ModelError("%s: %s would take %s, over the %s a pilot may hold; refusing to read it (damaged or "
                         "not a pilot)" % (path, what, size_text(size), size_text(limit)))
