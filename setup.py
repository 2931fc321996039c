"""Declares the one compiled extension; all metadata lives in pyproject.toml.

The extension is optional at build time (as msgpack's is): where no C compiler works,
the build says so in a warning and the package installs with the pure-Python twin of
the fast path (``gochat.bootnode.fastpath.IMPLEMENTATION`` tells which one runs; the
bootnode logs it at start). ``make`` and the Dockerfile insist on the compiled one.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extension if a compiler works; otherwise warn and go on without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all: setuptools fails before optional= applies
            self._warn(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        import sys

        print(
            "WARNING: gochat's compiled fast path could not be built "
            f"({type(exc).__name__}: {exc}); installing the pure-Python fallback, which is about "
            "5x slower per heartbeat. Install a C compiler and the Python headers to build it.",
            file=sys.stderr,
        )


setup(
    cmdclass={"build_ext": OptionalBuildExt},
    ext_modules=cythonize(
        [
            Extension(
                "gochat.bootnode._fastpath",
                ["gochat/bootnode/_fastpath.pyx"],
                define_macros=[("_GNU_SOURCE", "1")],
                extra_compile_args=["-O2"],
                optional=True,
            )
        ],
        compiler_directives={"language_level": "3"},
    ),
)
