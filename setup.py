"""The one compiled piece (src/zorba/core/_rng_native.c, docs/performance.md): optional, so that an
install without a C compiler still succeeds and rng.py runs its torch path, with the same bits."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("zorba.core._rng_native", ["src/zorba/core/_rng_native.c"], extra_compile_args=["-O3"], optional=True)])
