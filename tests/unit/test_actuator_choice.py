"""Which actuator a controller node uses, from its settings: `actuator` when given, else the
local one when an actuator_dir is given, else none; a local actuator without its directory is
refused naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import InvalidSetting
from lazarus_lite.actuators import LocalProcessActuator
from lazarus_lite.controller import chosen_actuator
from lazarus_lite.docker_actuator import DockerActuator
from lazarus_lite.settings import ControllerSettings

BASE = {"node_id": "n1", "control_url": "redis://10.1.2.3:6379/0", "api_token": "x" * 16}


def test_docker_actuator_is_chosen_by_name_with_the_given_networks() -> None:
    settings = ControllerSettings.parse(**BASE, actuator="docker", docker_peer_network="p")
    actuator = chosen_actuator(settings)
    assert isinstance(actuator, DockerActuator)
    assert actuator.settings.peer_network == "p"
    assert actuator.settings.control_url == BASE["control_url"]  # its sensors' control store


def test_docker_actuator_of_controllers_on_etcd_gives_its_sensors_the_etcd_members() -> None:
    members = "http://10.1.2.7:2379,http://10.1.2.8:2379,http://10.1.2.9:2379"
    settings = ControllerSettings.parse(
        **BASE, actuator="docker", coordination_backend="etcd", etcd_endpoints=members
    )
    actuator = chosen_actuator(settings)
    assert isinstance(actuator, DockerActuator)
    assert actuator.settings.etcd_endpoints == members
    assert actuator.settings.control_url == BASE["control_url"]  # the event stream stays there


def test_docker_actuator_of_controllers_on_redis_gives_its_sensors_no_etcd_members() -> None:
    # Endpoints set but unused (backend redis): the sensors read the topology in the control store.
    settings = ControllerSettings.parse(
        **BASE, actuator="docker", etcd_endpoints="http://10.1.2.7:2379"
    )
    actuator = chosen_actuator(settings)
    assert isinstance(actuator, DockerActuator)
    assert actuator.settings.etcd_endpoints is None


def test_an_actuator_dir_alone_chooses_the_local_actuator(tmp_path: Path) -> None:
    settings = ControllerSettings.parse(**BASE, actuator_dir=tmp_path)
    assert isinstance(chosen_actuator(settings), LocalProcessActuator)


def test_no_actuator_setting_means_none() -> None:
    assert chosen_actuator(ControllerSettings.parse(**BASE)) is None


def test_local_actuator_without_its_directory_is_refused_naming_it() -> None:
    with pytest.raises(InvalidSetting, match="actuator"):
        ControllerSettings.parse(**BASE, actuator="local")


def test_an_unknown_actuator_is_refused_naming_it() -> None:
    with pytest.raises(InvalidSetting, match="actuator"):
        ControllerSettings.parse(**BASE, actuator="kubernetes")
