"""How `make test` shares the suite between its two xdist workers (the root conftest.py)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

from gi_utils.paths import REPO_ROOT


def _root_conftest():
    spec = importlib.util.spec_from_file_location("root_conftest", REPO_ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Node:
    """A stand-in xdist worker: records each unit it is sent, here and in the shared ``log``."""

    def __init__(self, name: str, log: list) -> None:
        self.gateway, self.sent, self.shutting_down, self.log = SimpleNamespace(id=name), [], False, log

    def send_runtest_some(self, indices) -> None:
        self.sent.append(list(indices))
        self.log.append(list(indices))

    def shutdown(self) -> None:
        pass


def test_the_longest_scopes_are_handed_out_first_whatever_their_test_count():
    """As under `make test`: a worker collects in pytest's order and sorts LONGEST_FIRST
    first; the scheduler must hand the scopes out in that order (xdist's default re-sorts
    them by test count, which sent the one-test test_gpu_check, about a minute, last to a
    worker alone) and keep every notebook in one unit, in order."""
    conftest = _root_conftest()
    nodeids = ["notebooks/01_eda.ipynb::Cell 0", "notebooks/02_train.ipynb::Cell 0",
               *(f"tests/test_atlas.py::test_{i}" for i in range(6)), "tests/test_gpu_check.py::test_gpu_check_runs_on_cpu",
               *(f"tests/test_many.py::test_{i}" for i in range(8)), "tests/test_notebooks.py::test_n",
               "tests/test_train.py::test_t"]  # fmt: skip  (pytest's order: by path)
    items = [SimpleNamespace(nodeid=n) for n in nodeids]
    conftest.pytest_collection_modifyitems(SimpleNamespace(workerinput={"workercount": 2}), items)
    collection = [item.nodeid for item in items]
    option = SimpleNamespace(dist="load", loadscopereorder=True, tx=["2*popen"])
    config = SimpleNamespace(option=option, getoption=lambda name: getattr(option, name),
                             getvalue=lambda name: getattr(option, name))  # fmt: skip
    scheduler = conftest.pytest_xdist_make_scheduler(config, None)
    log: list[list[int]] = []
    nodes = [_Node("gw0", log), _Node("gw1", log)]
    for node in nodes:
        scheduler.add_node(node)
        scheduler.add_node_collection(node, collection)
    scheduler.schedule()
    units = [[collection[i] for i in unit] for unit in log]  # in the order they were handed out
    handed = [conftest._scope(unit[0]) for unit in units]
    longest = [s for s in conftest.LONGEST_FIRST if any(n.startswith(s) for n in nodeids)]
    assert len(longest) == 4 and len(handed) >= 4
    assert handed[:4] == longest  # test_train, test_notebooks, notebooks, test_gpu_check: before the bigger test_many
    assert [conftest._scope(collection[n.sent[0][0]]) for n in nodes] == longest[:2]  # one each to start
    assert [u for u in units if "ipynb" in u[0]] == [nodeids[:2]]  # every notebook in one unit, in order
    assert conftest.pytest_xdist_make_scheduler(SimpleNamespace(getoption=lambda name: "each"), None) is None
