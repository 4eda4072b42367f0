"""Task suites behind one Task protocol (scrna-denoise, lawbench, trimul): not built yet.

The log foundation and the improvement loop come first (see the open issues); this package
exists so that the layering test and packaging cover it from the start.
"""

__all__: list[str] = []
