"""hpcgen's version, in a module of its own so that the package's modules can read it without importing
the package root (whose ``arrange`` facade imports most of them)."""

__version__ = "0.1.0"
