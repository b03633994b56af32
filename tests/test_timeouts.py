"""Every test runs under a hard timeout decided as it starts (tests/conftest.py).

Issue 16: a hung child process ate CI's 90 minutes. These check that the
policy reaches real tests: the budget is on the test while it runs, a
test's own marker is its budget, and a shared fixture's first user pays
for its set-up, the next one does not.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import FIXTURE_ALLOWANCE_S, HOST_TIMEOUT_S


def _budget(request: pytest.FixtureRequest) -> int:
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None, "no timeout on this test"
    return int(marker.args[0])


def test_a_host_test_gets_the_host_budget(request: pytest.FixtureRequest) -> None:
    assert _budget(request) == HOST_TIMEOUT_S


@pytest.mark.timeout(17)
def test_a_test_s_own_timeout_is_its_budget(request: pytest.FixtureRequest) -> None:
    assert _budget(request) == 17


@pytest.fixture(scope="module")
def shared_thing() -> str:
    return "set up once"


def test_the_first_user_of_a_shared_fixture_pays_for_its_set_up(
    request: pytest.FixtureRequest, shared_thing: str
) -> None:
    assert _budget(request) == HOST_TIMEOUT_S + FIXTURE_ALLOWANCE_S


def test_the_next_user_does_not(request: pytest.FixtureRequest, shared_thing: str) -> None:
    assert _budget(request) == HOST_TIMEOUT_S


pytest_plugins = ["pytester"]


def test_pytest_timeout_enforces_the_budget_set_as_the_test_starts(
    pytester: pytest.Pytester,
) -> None:
    """In a child pytest with this conftest and a 1 s host budget, a hang fails fast."""
    conftest = (Path(__file__).parent / "conftest.py").read_text()
    pytester.makeconftest(conftest.replace("HOST_TIMEOUT_S = 300", "HOST_TIMEOUT_S = 1"))
    pytester.makepyfile(
        test_hang="import time\n\ndef test_hangs():\n    time.sleep(60)\n",
    )
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-q")  # pytest-timeout loads as a plugin
    assert time.monotonic() - started < 30
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Timeout (>1.0s)*"])
