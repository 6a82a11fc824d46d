import pytest  # noqa: F401

# Fixtures that start real services live in tests/fixtures/ and are imported by the tests that use them.
pytest_plugins = ["tests.fixtures.certs"]
