"""The native kernels (``bptt.native._loops``, ``bptt.native._ctc``): C++20 extensions with OpenMP.

Optional: where they do not build (no compiler), bptt installs without them and
``backend="native"`` says so. The code is compiled for the machine it is built on
(``-march=native``); set ``BPTT_NATIVE_ARCH`` (e.g. ``x86-64-v3``) to build for another.
"""

import os

from setuptools import Extension, setup

arch = os.environ.get("BPTT_NATIVE_ARCH", "native")
setup(ext_modules=[Extension(
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
