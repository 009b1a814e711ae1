"""Fixtures of the gRPC tests: the Python module tests' real redis-server fixture
(tests/python/conftest.py), shared rather than written twice."""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "sluice_python_fixtures", pathlib.Path(__file__).parents[1] / "python" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

free_port = _fixtures.free_port
redis_port = _fixtures.redis_port
