"""How input is checked and described before anything uses it: the URL fields every loader and
settings model shares (parsed as redis-py and httpx will, at load), and the one describer of
validation problems."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from common.errors import InvalidSetting
from common.etcd_client import EtcdClient
from common.validation import HttpUrlText, RedisUrlText, quoted, validated
from lazarus_lite.settings import ControllerSettings
from ratequeue.config import ServiceSettings

TOKEN = "a-token-of-sixteen-chars"


class Urls(BaseModel):
    redis: RedisUrlText = "redis://127.0.0.1"
    http: HttpUrlText = "http://127.0.0.1"


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380", "redis://:pw@[::1]:7000/2",
     "unix:///run/redis.sock", "redis://x"],
)  # fmt: skip
def test_a_redis_url_redis_py_can_use_is_kept_unchanged(url: str) -> None:
    assert Urls(redis=url).redis == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/v1", "https://x", "http://[::1]:1"])
def test_an_http_url_with_a_host_and_a_port_in_range_is_kept_unchanged(url: str) -> None:
    assert Urls(http=url).http == url


def test_a_service_control_url_with_a_port_out_of_range_is_refused_naming_the_setting() -> None:
    with pytest.raises(InvalidSetting, match=r"setting 'control_url': .* 1 to 65535"):
        ServiceSettings.parse(control_url="redis://127.0.0.1:70000")


def test_a_controller_peer_whose_port_is_not_a_number_is_refused_naming_the_setting() -> None:
    with pytest.raises(InvalidSetting, match=r"setting 'peers\.0': .*not a usable URL"):
        ControllerSettings.parse(node_id="n", control_url="redis://127.0.0.1:1", api_token=TOKEN,
                                 peers=["http://127.0.0.1:port"])  # fmt: skip


@pytest.mark.parametrize("token", ["clé-of-sixteen-chars", "a token with spaces in it"],
                         ids=["non-ascii", "spaces"])  # fmt: skip
def test_a_controller_token_a_header_cannot_carry_is_refused_naming_api_token(token: str) -> None:
    with pytest.raises(InvalidSetting, match="setting 'api_token': must be visible ASCII"):
        ControllerSettings.parse(node_id="n", control_url="redis://127.0.0.1:1", api_token=token)


def test_a_controller_on_etcd_without_endpoints_is_refused_naming_etcd_endpoints() -> None:
    with pytest.raises(InvalidSetting, match=r"^setting 'etcd_endpoints': required"):
        ControllerSettings.parse(node_id="n", control_url="redis://127.0.0.1:1", api_token=TOKEN,
                                 coordination_backend="etcd")  # fmt: skip


def test_a_controller_on_etcd_keeps_its_endpoints() -> None:
    endpoints = "http://127.0.0.1:2379,http://127.0.0.1:2381"
    settings = ControllerSettings.parse(node_id="n", control_url="redis://127.0.0.1:1",
                                        api_token=TOKEN, coordination_backend="etcd",
                                        etcd_endpoints=endpoints)  # fmt: skip
    assert settings.etcd_endpoints == endpoints


def test_an_etcd_client_of_a_malformed_endpoints_setting_is_refused_naming_the_setting() -> None:
    with pytest.raises(InvalidSetting, match=r"^etcd_endpoints: endpoint 'ftp://x:1'"):
        EtcdClient.from_setting("http://127.0.0.1:2379,ftp://x:1")


def test_an_etcd_client_of_an_endpoints_setting_uses_every_endpoint() -> None:
    client = EtcdClient.from_setting(" http://127.0.0.1:2379/, http://127.0.0.1:2381 ")
    assert client.settings.endpoints == ["http://127.0.0.1:2379", "http://127.0.0.1:2381"]


def test_an_integer_too_long_to_print_is_quoted_by_its_size() -> None:
    # A YAML hex literal has no digit cap; its decimal repr would raise ValueError mid-message.
    assert quoted([10**5000, -(10**5000), 3]) == (
        "[<an integer of 4153 hex digits>, <an integer of 4153 hex digits>, 3]"
    )


class Step(BaseModel):
    target: Urls
    duration: float = 1.0


def test_a_renamed_location_names_what_the_person_wrote_and_keeps_the_rest_of_the_path() -> None:
    with pytest.raises(ValueError, match=r"^step: argument 'url_of_redis': .*redis://") as refused:
        validated(Step, {"target": {"redis": "http://x"}}, "step", error=ValueError,
                  what="argument", renamed={"target.redis": "url_of_redis"})  # fmt: skip
    assert "target" not in str(refused.value)


def test_a_location_not_renamed_is_named_as_the_model_has_it() -> None:
    with pytest.raises(ValueError, match=r"^step: field 'duration': "):
        validated(Step, {"target": {}, "duration": "x"}, "step", error=ValueError,
                  renamed={"target": "t"})  # fmt: skip
