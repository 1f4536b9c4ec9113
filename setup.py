"""The native kernels (``bptt.native._loops``, ``bptt.native._ctc``): C++20 extensions with OpenMP.

Optional: where they do not build (no compiler), bptt installs without them and
``backend="native"`` says so. The code is compiled for the machine it is built on
(``-march=native``); set ``BPTT_NATIVE_ARCH`` (e.g. ``x86-64-v3``) to build for another.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """build_ext that ends with one line when an optional extension did not build."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:
            self.not_built = [*getattr(self, "not_built", []), ext.name]
            raise

    def run(self):
        super().run()
        if getattr(self, "not_built", None):
            print(f"bptt: notice: {', '.join(self.not_built)} not built (no C++20 compiler?); "
                  f"bptt installs with its NumPy reference (backend='auto' uses it)",
                  file=sys.stderr)


arch = os.environ.get("BPTT_NATIVE_ARCH", "native")
setup(cmdclass={"build_ext": BuildExt}, ext_modules=[Extension(
    "bptt.native._loops",
    sources=["src/bptt/native/_loops.cpp"],
    language="c++",
    extra_compile_args=["-std=c++20", "-O3", f"-march={arch}", "-fopenmp", "-fno-math-errno"],
    extra_link_args=["-fopenmp"],
    optional=True,
), Extension(  # CTC's forward-backward (bptt.native.ctc); bptt.ctc falls back to NumPy without it
    "bptt.native._ctc",
    sources=["src/bptt/native/_ctc.cpp"],
    language="c++",
    extra_compile_args=["-std=c++20", "-O3", f"-march={arch}", "-fopenmp", "-fno-math-errno"],
    extra_link_args=["-fopenmp"],
    optional=True,
)])
