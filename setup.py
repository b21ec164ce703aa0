"""Build rechat's one optional C extension; everything else is in pyproject.toml.

`rechat._fused` (rechat/_fused.c) is the SSE stream rewriter's per-event fused path. It is
optional: when no C compiler is at hand the install goes on and rechat/rewrite.py uses its
pure-Python path, which gives the same bytes.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("rechat._fused", ["rechat/_fused.c"], optional=True)])
