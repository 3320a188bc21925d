"""The environment the soak brings staging up with: the controllers' incident rate limit over a
window short enough for the soak's compressed schedule, unless the caller chose one, and a
fresh API token unless the caller gave one. (That the compose file passes the variable to every
controller is tests/test_staging_compose.py's.)"""

from __future__ import annotations

from chaos.soak import SOAK_RATE_LIMIT_WINDOW, compose_environment


def test_the_soak_shortens_the_rate_limit_window_below_the_default() -> None:
    env = compose_environment({})
    assert float(env["RQ_RATE_LIMIT_WINDOW"]) == SOAK_RATE_LIMIT_WINDOW < 600


def test_a_rate_limit_window_set_by_the_caller_is_kept() -> None:
    assert compose_environment({"RQ_RATE_LIMIT_WINDOW": "600"})["RQ_RATE_LIMIT_WINDOW"] == "600"


def test_a_token_set_by_the_caller_is_kept_and_none_is_made_up() -> None:
    token = "soak-by-hand-token-0123456789"
    assert compose_environment({"LAZARUS_API_TOKEN": token})["LAZARUS_API_TOKEN"] == token
    assert len(compose_environment({})["LAZARUS_API_TOKEN"]) >= 16
