"""Declares the one compiled extension; all metadata lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "gochat.bootnode._fastpath",
                ["gochat/bootnode/_fastpath.pyx"],
                define_macros=[("_GNU_SOURCE", "1")],
                extra_compile_args=["-O2"],
            )
        ],
        compiler_directives={"language_level": "3"},
    )
)
