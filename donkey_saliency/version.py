"""The package's version: its one home (setup.cfg and the graphs' metadata read it here)."""
__version__ = "0.1.0"
