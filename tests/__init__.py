"""The test suite.  A package so that the shared helpers import by name (``tests.helpers``),
with the repository root on ``sys.path`` from ``[tool.pytest.ini_options] pythonpath``."""
