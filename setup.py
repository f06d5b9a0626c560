# Everything about the package is in pyproject.toml. This shim exists only
# because cffi's `cffi_modules` (which compiles native/ into
# appliance._engine_cffi during `pip install`) has no pyproject.toml key.
from setuptools import setup

setup(cffi_modules=["native/build_engine.py:ffibuilder"])
