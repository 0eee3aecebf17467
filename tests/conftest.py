"""Fixtures: fake ComfyUI GPUs on consecutive loopback ports, and a real Cylindria server."""
from __future__ import annotations

import dataclasses
import logging
import uuid

import pytest

from cylindria.config.options import Config
from cylindria.service.server import Service
from tests.backends import KINDS, Backend, close_opened
from tests.fake_comfy import FakeComfy
from tests.helpers import API_KEY, Api, free_ports
from tests.postgres import PostgresCluster
from tests.processes import CylindriaProcess, stop_all

TIME_SCALE = 0.05  # the fake's node sleeps shrink to 5 %: a 4 s "slow" node takes 0.2 s


SOAK_TIMEOUT = 1800  # seconds: a --soak test's hang guard (300 fuzz examples per operation
# take minutes on a loaded 2-core machine, past pytest.ini's 180 s meant for the short forms)


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the long load/fault runs (60 s and more) instead of their short form")
    parser.addoption("--database", choices=("sqlite", "postgresql"), default="sqlite",
                     help="the store of record of the real-process load/fault runs: SQLite in "
                          "the data dir (default) or a fresh database of the run's PostgreSQL")


def pytest_collection_modifyitems(config, items):
    """With --soak, every test's hang guard is SOAK_TIMEOUT: the long runs are long by design."""
    if config.getoption("--soak"):
        for item in items:
            item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT))


@pytest.fixture
def soak(request) -> bool:
    """True when the long runs were asked for with --soak."""
    return request.config.getoption("--soak")


def start_fakes(count: int, time_scale: float = TIME_SCALE) -> list[FakeComfy]:
    """`count` fake ComfyUIs on consecutive ports, like a host's GPUs."""
    for _ in range(20):
        base = free_ports(count)
        fakes = []
        try:
            for n in range(count):
                fake = FakeComfy(port=base + n, time_scale=time_scale)
                fake.start()
                fakes.append(fake)
            return fakes
        except OSError:
            for fake in fakes:
                fake.close()
    raise RuntimeError("could not start the fake GPUs")


@pytest.fixture
def fakes():
    """Two fake ComfyUI instances (GPU 0 and GPU 1)."""
    fakes = start_fakes(2)
    yield fakes
    for fake in fakes:
        fake.close()


@pytest.fixture
def fake(fakes):
    """GPU 0's fake ComfyUI."""
    return fakes[0]


def make_config(fakes, tmp_path, **overrides) -> Config:
    """A Config for a test server on a free loopback port in front of `fakes`."""
    values = dict(host="127.0.0.1", port=0, gpus=len(fakes), comfy_base_url=fakes[0].url,
                  api_keys=(API_KEY,), data_dir=tmp_path / "data", poll_interval=0.5, threads=8,
                  dev_save_dir=tmp_path / "dev")
    values.update(overrides)
    return dataclasses.replace(Config(), **values)


@pytest.fixture(scope="session")
def postgres_cluster():
    """One throwaway PostgreSQL for the whole run, started at the first test that needs it
    (never skipped: without the binaries this fails, saying what to install)."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def database_flags(request) -> tuple[str, ...]:
    """The flags that put a real-process Cylindria (tests.processes) on the run's --database:
    none (SQLite in its data dir), or --database <a fresh database of the session cluster>."""
    if request.config.getoption("--database") != "postgresql":
        yield ()
        return
    cluster = request.getfixturevalue("postgres_cluster")
    name = f"t_{uuid.uuid4().hex}"
    yield ("--database", cluster.create_database(name))
    cluster.drop_database(name)


@pytest.fixture(params=KINDS)
def backend(request, tmp_path) -> Backend:
    """A fresh store of record on each backend in turn: the store-level tests run on both."""
    cluster = request.getfixturevalue("postgres_cluster") if request.param == "postgresql" else None
    backend = Backend(request.param, tmp_path / "data", cluster)
    yield backend
    backend.close()


@pytest.fixture
def database_url():
    """The --database of the `config` fixture's server: None (SQLite in the data dir); a
    test module overrides it to serve from PostgreSQL."""
    return None


@pytest.fixture
def config(fakes, tmp_path, database_url):
    return make_config(fakes, tmp_path, database=database_url)


@pytest.fixture
def service(config):
    """A real Cylindria: waitress on a free port, tracker running."""
    with Service(config) as service:
        yield service


@pytest.fixture
def api(service):
    """A client of `service` that sends the key."""
    return Api(service.url)


@pytest.fixture(autouse=True)
def _close_storages():
    """Every store a test opened with tests.backends.sqlite_storage is closed at its end."""
    yield
    close_opened()


@pytest.fixture(autouse=True)
def _quiet_third_party_logs():
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("websocket").setLevel(logging.CRITICAL)
    yield


FLEET_LEASE = "2s"  # short, so a test sees a killed node's lease run out soon


@pytest.fixture
def fleet_database(postgres_cluster):
    """A fresh database of the session's cluster, dropped after the test."""
    name = f"fleet_{uuid.uuid4().hex}"
    url = postgres_cluster.create_database(name)
    yield url
    postgres_cluster.drop_database(name)


@pytest.fixture
def start_node(fleet_database, tmp_path):
    """start_node(name, *flags, gpus=1): a Cylindria process of the fleet (`--node name`, a
    lease of FLEET_LEASE, its URL advertised) in front of its own fake ComfyUIs (`node.fakes`,
    one per GPU; `node.fake` is GPU 0's); every one started is stopped (and its fakes closed)
    at the end. `start_node.many(names, *flags, gpus=1)`: a node of each name, started at once
    (as a fleet's hosts may be): {name: node}."""
    started = []

    def launch(name: str, *flags: str, gpus: int = 1) -> CylindriaProcess:
        fakes = start_fakes(gpus)
        (tmp_path / name).mkdir()
        node = CylindriaProcess(fakes[0].url, tmp_path / name / "data", gpus=gpus,
                                extra=("--database", fleet_database, "--node", name,
                                       "--node-lease", FLEET_LEASE, *flags))
        node.args += ["--advertise-url", node.url]
        node.fake, node.fakes = fakes[0], fakes
        started.append(node)
        return node.launch()

    def start(name: str, *flags: str, gpus: int = 1) -> CylindriaProcess:
        return launch(name, *flags, gpus=gpus).wait_started()

    def many(names, *flags: str, gpus: int = 1) -> dict[str, CylindriaProcess]:
        nodes = {name: launch(name, *flags, gpus=gpus) for name in names}
        return {name: node.wait_started() for name, node in nodes.items()}

    start.many = many
    yield start
    stop_all(started)
    for node in started:
        for fake in node.fakes:
            fake.close()
