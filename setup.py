"""The native kernels (``bptt.native._loops``): a C++20 extension with OpenMP.

Optional: where it does not build (no compiler), bptt installs without it and
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
)])
