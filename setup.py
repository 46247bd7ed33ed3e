"""Everything else is in setup.cfg; setuptools has no declarative form for a C extension."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # The fan-out write loop (wschat/server/output.py falls back to Python without it). Optional: an
        # install on a machine without a C compiler still works, only slower.
        Extension("wschat.server._sendmany", ["wschat/server/_sendmany.c"], optional=True),
    ],
)
