import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run slow checks: image build, boot test, soak")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        unbounded = pytest.mark.timeout(0)   # image builds and boots take their time
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(unbounded)
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
