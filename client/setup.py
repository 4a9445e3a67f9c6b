"""Build hook: the gRPC stubs are generated from the repository's protos/ whenever they are there (a
checkout), before setuptools looks at the packages, so a wheel or an editable install never carries
stale or missing stubs; an sdist carries the stubs it was made with, since it has no protos/ beside it."""

import importlib.util
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("gen_stubs", HERE / "gen_stubs.py")
gen_stubs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_stubs)

if (gen_stubs.DEFAULT_PROTOS / gen_stubs.PROTO).is_file():
    gen_stubs.generate()
elif not gen_stubs.stubs_present():
    raise SystemExit("batchgate-client: no protos/ beside client/ and no generated stubs to package")

setup()
