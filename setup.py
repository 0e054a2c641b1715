"""Build script: everything is in setup.cfg except capar's optional compiled core.

``capar/ca/_core.c`` is compiled where a C compiler exists; where none does (or it fails), the build goes
on without it and capar runs its pure-ctypes path (same results; ``capar.ca.accelerated()`` says which).
It is plain C loaded with ctypes: no Python or EPICS headers, no link against libca.
"""
import os

from setuptools import Extension, setup

core = Extension(
    "capar.ca._core",
    sources=["capar/ca/_core.c"],
    extra_compile_args=["-O2", "-std=c99", "-D_POSIX_C_SOURCE=200809L", "-ffp-contract=off"],  # no FMA: same floats as numpy
    extra_link_args=["-pthread"],
    optional=True,  # a failed compile is a warning, not an error
)

setup(ext_modules=[core] if os.name == "posix" and os.environ.get("CAPAR_CORE", "") != "0" else [])
