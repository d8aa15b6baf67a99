"""Swarm services and tasks -> records, from API answers shaped like a real single-node Swarm's
(Docker 20.10, `docker service create --replicas 2 --network <overlay> --label ...`), and the
reader's mode, cache and change polling against a scripted client. No engine needed."""

from __future__ import annotations

import copy
import threading
from typing import Any

import docker.errors
import pytest
import requests

from labelsync.core.events import DockerEvent, EventKind
from labelsync.core.model import ContainerInfo
from labelsync.core.pools import build_desired
from labelsync.errors import DockerUnavailable
from labelsync.sources.docker import event_from_message
from labelsync.sources.swarm import (
    SwarmReader,
    fingerprint,
    manager_state,
    merge_containers,
    parse_timestamp,
    record_from_task,
    service_target_ports,
    swarm_records,
    task_networks,
)

SERVICE_ID = "40rsptu6xm784ktsq1w3mgczn"
NETWORK_ID = "vbbhk7dzxz3upsq5szayinjfh"
NODE_ID = "1cadm1cf5329z8z1loa8bghou"

SERVICE: dict[str, Any] = {
    "ID": SERVICE_ID,
    "Version": {"Index": 15},
    "CreatedAt": "2026-11-23T00:03:34.864463936Z",
    "UpdatedAt": "2026-11-23T00:03:34.866466225Z",
    "Spec": {
        "Name": "shop_web",
        "Labels": {
            "com.docker.stack.namespace": "shop",
            "labelsync.host": "web.test",
            "labelsync.port": "8080",
        },
        "TaskTemplate": {
            "ContainerSpec": {"Image": "labelsync-test/backend:ec377a0002bf88be"},
            "Networks": [{"Target": NETWORK_ID}],
            "Runtime": "container",
        },
        "Mode": {"Replicated": {"Replicas": 2}},
        "EndpointSpec": {"Mode": "vip"},
    },
    "Endpoint": {
        "Spec": {"Mode": "vip"},
        "VirtualIPs": [{"NetworkID": NETWORK_ID, "Addr": "10.0.1.2/24"}],
    },
}

OVERLAY_ATTACHMENT: dict[str, Any] = {
    "Network": {
        "ID": NETWORK_ID,
        "Spec": {
            "Name": "shop_default",
            "DriverConfiguration": {"Name": "overlay"},
            "Attachable": True,
            "Scope": "swarm",
        },
        "IPAMOptions": {"Configs": [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]},
    },
    "Addresses": ["10.0.1.3/24"],
}

INGRESS_ATTACHMENT: dict[str, Any] = {
    "Network": {
        "ID": "belwtzu7y4f6h5w2vwn05hh2l",
        "Spec": {"Name": "ingress", "Ingress": True, "Scope": "swarm"},
    },
    "Addresses": ["10.0.0.4/24"],
}


def make_task(
    task_id: str = "hk1ceya7bvhrnm0fcls3a0pq4",
    *,
    slot: int | None = 1,
    state: str = "running",
    desired: str = "running",
    container_id: str | None = "34732bf06640" + "0" * 52,
    address: str = "10.0.1.3/24",
    container_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    attachment = copy.deepcopy(OVERLAY_ATTACHMENT)
    attachment["Addresses"] = [address]
    status: dict[str, Any] = {
        "Timestamp": "2026-11-23T00:03:35.831742176Z",
        "State": state,
        "Message": "started",
        "PortStatus": {},
    }
    if container_id is not None:
        status["ContainerStatus"] = {"ContainerID": container_id, "PID": 2284, "ExitCode": 0}
    task: dict[str, Any] = {
        "ID": task_id,
        "Version": {"Index": 21},
        "CreatedAt": "2026-11-23T00:03:34.865386603Z",
        "UpdatedAt": "2026-11-23T00:03:35.870724875Z",
        "Labels": {},
        "Spec": {
            "ContainerSpec": {
                "Image": "labelsync-test/backend:ec377a0002bf88be",
                **({"Labels": container_labels} if container_labels else {}),
            },
            "Networks": [{"Target": NETWORK_ID}],
        },
        "ServiceID": SERVICE_ID,
        "NodeID": NODE_ID,
        "Status": status,
        "DesiredState": desired,
        "NetworksAttachments": [attachment],
    }
    if slot is not None:
        task["Slot"] = slot
    return task


def published_service() -> dict[str, Any]:
    """`--publish target=8080`: the engine fills in the published port."""
    service = copy.deepcopy(SERVICE)
    port = {"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "ingress"}
    service["Spec"]["EndpointSpec"] = {"Mode": "vip", "Ports": [port]}
    service["Endpoint"] = {
        "Spec": {"Mode": "vip", "Ports": [port]},
        "Ports": [{**port, "PublishedPort": 30000}],
    }
    del service["Spec"]["Labels"]["labelsync.port"]
    return service


# -- conversion --------------------------------------------------------------------------------


def test_running_task_becomes_a_member_record_with_the_services_labels() -> None:
    record = record_from_task(SERVICE, make_task())
    assert record == ContainerInfo(
        id="34732bf06640" + "0" * 52,  # the container id: local kill/die events match it
        name="shop_web.1",
        created=parse_timestamp("2026-11-23T00:03:34.865386603Z"),
        labels=SERVICE["Spec"]["Labels"],
        state="running",
        networks={"shop_default": "10.0.1.3"},
        exposed_ports=(),
        compose_project="shop",
        compose_service="web",
    )
    assert record.is_serving


def test_timestamps_keep_microseconds_and_tolerate_absence() -> None:
    assert parse_timestamp("2026-11-23T00:03:34.865386603Z") == pytest.approx(
        1795392214.865386, abs=1e-6
    )
    assert parse_timestamp(None) == 0.0
    assert parse_timestamp("yesterday") == 0.0


def test_service_labels_override_the_task_containers_own() -> None:
    task = make_task(container_labels={"labelsync.host": "old.test", "labelsync.weight": "3"})
    labels = record_from_task(SERVICE, task).labels
    assert labels["labelsync.host"] == "web.test"
    assert labels["labelsync.weight"] == "3"


def test_global_task_is_named_after_its_node() -> None:
    assert record_from_task(SERVICE, make_task(slot=None)).name == f"shop_web.{NODE_ID}"


def test_task_without_a_container_yet_is_listed_under_its_id_and_not_serving() -> None:
    record = record_from_task(SERVICE, make_task("pendingtask", state="pending", container_id=None))
    assert (record.id, record.state, record.is_serving) == ("pendingtask", "pending", False)


def test_running_task_swarm_is_stopping_is_no_member() -> None:
    record = record_from_task(SERVICE, make_task(desired="shutdown"))
    assert record.state == "shutdown"
    assert not record.is_serving


def test_ingress_network_is_left_out_and_prefix_stripped() -> None:
    task = make_task()
    task["NetworksAttachments"].append(copy.deepcopy(INGRESS_ATTACHMENT))
    assert task_networks(task) == {"shop_default": "10.0.1.3"}


def test_published_target_port_is_the_exposed_port() -> None:
    service = published_service()
    assert service_target_ports(service) == (8080,)
    spec_only = copy.deepcopy(service)
    del spec_only["Endpoint"]  # a service just created: only the spec says it yet
    assert service_target_ports(spec_only) == (8080,)
    udp = copy.deepcopy(service)
    udp["Endpoint"]["Ports"][0]["Protocol"] = "udp"
    assert service_target_ports(udp) == ()


def test_service_without_a_task_to_run_still_shapes_its_pool() -> None:
    records = swarm_records([SERVICE], [])
    assert [(r.id, r.name, r.state) for r in records] == [(SERVICE_ID, "shop_web", "shutdown")]
    desired = build_desired(records, prefix="labelsync", default_network=None, dynamic=True)
    assert [(p.shape.hosts, p.members) for p in desired.pools] == [(("web.test",), ())]
    assert not desired.problems


def test_tasks_of_a_service_removed_meanwhile_are_dropped() -> None:
    orphan = make_task()
    orphan["ServiceID"] = "gone"
    assert swarm_records([], [orphan]) == []


def test_replicas_pool_into_one_route_with_a_member_each() -> None:
    tasks = [
        make_task("task1", slot=1, container_id="c1", address="10.0.1.3/24"),
        make_task("task2", slot=2, container_id="c2", address="10.0.1.4/24"),
        make_task("task3", slot=3, state="starting", container_id="c3", address="10.0.1.5/24"),
    ]
    records = swarm_records([published_service()], tasks)
    desired = build_desired(records, prefix="labelsync", default_network=None, dynamic=False)
    assert not desired.problems
    (pool,) = desired.pools
    assert sorted(m.address for m in pool.members) == ["10.0.1.3:8080", "10.0.1.4:8080"]
    assert sorted(m.container_name for m in pool.members) == ["shop_web.1", "shop_web.2"]


def test_local_task_containers_give_way_to_their_tasks() -> None:
    plain = ContainerInfo("plain", "plain", 1.0, {"labelsync.host": "plain.test"})
    local_task = ContainerInfo(
        "c1",
        "shop_web.1.hk1ceya7bvhrnm0fcls3a0pq4",
        1.0,
        {"com.docker.swarm.service.id": SERVICE_ID, "com.docker.swarm.task.id": "task1"},
    )
    task_record = record_from_task(SERVICE, make_task(container_id="c1"))
    assert merge_containers([plain, local_task], [task_record]) == [plain, task_record]


def test_service_events_are_passed_on() -> None:
    message = {
        "Type": "service",
        "Action": "update",
        "Actor": {"ID": SERVICE_ID, "Attributes": {"name": "shop_web"}},
        "scope": "swarm",
        "timeNano": 1795392214865386603,
    }
    assert event_from_message(message) == DockerEvent(
        EventKind.SERVICE, "update", None, 1795392214865386603
    )


# -- fingerprints ------------------------------------------------------------------------------


def test_fingerprint_follows_task_state_and_address_but_not_timestamps() -> None:
    base = fingerprint([SERVICE], [make_task()])
    retimed = make_task()
    retimed["UpdatedAt"] = retimed["Status"]["Timestamp"] = "2026-11-23T00:09:00Z"
    assert fingerprint([SERVICE], [retimed]) == base
    assert fingerprint([SERVICE], [make_task(state="failed")]) != base
    assert fingerprint([SERVICE], [make_task(address="10.0.1.9/24")]) != base
    updated = copy.deepcopy(SERVICE)
    updated["Version"]["Index"] = 16
    assert fingerprint([updated], [make_task()]) != base


# -- the reader, with a scripted client --------------------------------------------------------

ACTIVE_MANAGER = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True}}
WORKER = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": False}}
INACTIVE = {"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}}


class ScriptedClient:
    """Answers `info`, `services` and `tasks` like docker-py's APIClient, and counts calls."""

    def __init__(self, info: dict[str, Any], tasks: list[list[dict[str, Any]]] | None = None):
        self.info_answer = info
        self.task_answers = tasks or [[make_task()]]
        self.calls: dict[str, int] = {"info": 0, "services": 0, "tasks": 0}
        self.not_a_manager = False
        self.closed = False

    def info(self) -> dict[str, Any]:
        self.calls["info"] += 1
        return self.info_answer

    def services(self) -> list[dict[str, Any]]:
        self.calls["services"] += 1
        if self.not_a_manager:
            response = requests.Response()
            response.status_code = 503
            raise docker.errors.APIError("This node is not a swarm manager.", response)
        return [SERVICE]

    def tasks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        assert filters == {"desired-state": "running"}
        index = min(self.calls["tasks"], len(self.task_answers) - 1)
        self.calls["tasks"] += 1
        return self.task_answers[index]

    def close(self) -> None:
        self.closed = True


def test_manager_state_names_why_swarm_is_not_read() -> None:
    assert manager_state(ACTIVE_MANAGER) == (True, "it is an active Swarm manager")
    assert manager_state(WORKER) == (False, "it is a Swarm worker, not a manager")
    assert manager_state(INACTIVE) == (False, "its Swarm state is 'inactive'")
    assert manager_state({}) == (False, "its Swarm state is 'inactive'")


def test_auto_reads_a_manager_and_asks_info_once_until_told_to_forget() -> None:
    reader, client = SwarmReader("auto", "unix:///x.sock"), ScriptedClient(ACTIVE_MANAGER)
    assert [r.name for r in reader.records(client) or []] == ["shop_web.1"]
    assert [r.name for r in reader.records(client) or []] == ["shop_web.1"]
    assert client.calls["info"] == 1
    reader.forget()
    reader.records(client)
    assert client.calls["info"] == 2


@pytest.mark.parametrize("info", [WORKER, INACTIVE])
def test_auto_on_a_node_that_is_no_manager_lists_containers_only(info: dict[str, Any]) -> None:
    client = ScriptedClient(info)
    assert SwarmReader("auto", "unix:///x.sock").records(client) is None
    assert client.calls["services"] == 0


def test_off_never_asks() -> None:
    client = ScriptedClient(ACTIVE_MANAGER)
    assert SwarmReader("off", "unix:///x.sock").records(client) is None
    assert client.calls == {"info": 0, "services": 0, "tasks": 0}


def test_on_insists_on_a_manager_every_time() -> None:
    reader, client = SwarmReader("on", "unix:///x.sock"), ScriptedClient(WORKER)
    for _ in range(2):  # the cached answer is an error too
        with pytest.raises(DockerUnavailable) as caught:
            reader.records(client)
        assert str(caught.value) == (
            "LABELSYNC_SWARM=on, but the Docker engine at unix:///x.sock cannot list Swarm "
            "services: it is a Swarm worker, not a manager; run labelsync against a manager, "
            "or set LABELSYNC_SWARM=auto"
        )
    assert client.calls["info"] == 1


def test_a_node_demoted_since_the_check_falls_back_or_fails_by_mode() -> None:
    auto, on = SwarmReader("auto", "unix:///x.sock"), SwarmReader("on", "unix:///x.sock")
    client = ScriptedClient(ACTIVE_MANAGER)
    auto.records(client)
    on.records(client)
    client.not_a_manager = True
    assert auto.records(client) is None
    with pytest.raises(DockerUnavailable, match="no longer a Swarm manager"):
        on.records(client)


def test_poll_reports_the_first_look_and_then_only_changes() -> None:
    script = [
        [make_task()],
        [make_task()],
        [make_task(), make_task("task2", slot=2, state="starting", container_id="c2")],
        [make_task(), make_task("task2", slot=2, state="starting", container_id="c2")],
        [make_task(), make_task("task2", slot=2, state="running", container_id="c2")],
    ]
    client = ScriptedClient(ACTIVE_MANAGER, script)
    stop = threading.Event()
    changes: list[int] = []

    def on_change() -> None:
        changes.append(client.calls["tasks"])

    def connect() -> ScriptedClient:
        return client

    original_tasks = client.tasks

    def tasks_then_stop(filters: dict[str, str]) -> list[dict[str, Any]]:
        answer = original_tasks(filters)
        if client.calls["tasks"] == len(script):
            stop.set()  # the script is played out: end the poll after this look
        return answer

    client.tasks = tasks_then_stop  # type: ignore[method-assign]
    SwarmReader("auto", "unix:///x.sock").poll(connect, on_change, stop, interval=0.001)
    assert changes == [1, 3, 5]  # first look, the new task, the new task running
    assert client.closed
