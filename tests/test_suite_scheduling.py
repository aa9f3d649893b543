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
    def __init__(self, name: str) -> None:
        self.gateway, self.sent, self.shutting_down = SimpleNamespace(id=name), [], False

    def send_runtest_some(self, indices) -> None:
        self.sent.append(list(indices))

    def shutdown(self) -> None:
        pass


def test_the_longest_scopes_are_handed_out_first_whatever_their_test_count():
    """Workers sort their items LONGEST_FIRST; the scheduler must hand the scopes out in
    that order (xdist's default re-sorts them by test count, which sent the one-test
    test_gpu_check, about a minute, last to a worker alone)."""
    conftest = _root_conftest()
    option = SimpleNamespace(dist="load", loadscopereorder=True, tx=["2*popen"])
    config = SimpleNamespace(option=option, getoption=lambda name: getattr(option, name),
                             getvalue=lambda name: getattr(option, name))  # fmt: skip
    scheduler = conftest.pytest_xdist_make_scheduler(config, None)
    collection = ["tests/test_gpu_check.py::test_gpu_check_runs_on_cpu", "tests/test_kaggle_journey.py::test_k",
                  *(f"tests/test_many.py::test_{i}" for i in range(6)), "notebooks/01_eda.ipynb::Cell 0",
                  "notebooks/02_train.ipynb::Cell 0"]  # fmt: skip
    nodes = [_Node("gw0"), _Node("gw1")]
    for node in nodes:
        scheduler.add_node(node)
        scheduler.add_node_collection(node, collection)
    scheduler.schedule()
    first = [[collection[i] for i in node.sent[0]] for node in nodes]
    assert first == [[collection[0]], [collection[1]]]
    sent = [collection[i] for node in nodes for batch in node.sent for i in batch]
    assert sorted(sent) == sorted(collection)
    notebooks = [ids for node in nodes for ids in ([collection[i] for i in b] for b in node.sent) if "ipynb" in ids[0]]
    assert notebooks == [collection[-2:]]  # every notebook in one unit, in order
    assert conftest.pytest_xdist_make_scheduler(SimpleNamespace(getoption=lambda name: "each"), None) is None
