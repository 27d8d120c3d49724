"""Training slots on a real (temporary) Prefect server: cells contending for one slot each get
it in turn, a wait gives up after resources.slot_timeout_s naming the limit, and no attempt
leaves a slot taken once everyone is done."""

import threading
import time

import pytest

pytestmark = pytest.mark.integration


def test_contending_cells_take_the_one_slot_in_turn_and_leave_it_free():
    from prefect import get_client
    from prefect.testing.utilities import prefect_test_harness

    from orpo.config import Experiment
    from tasks.train import SlotTimeout, training_slot, training_slots
    from tests.micro import MICRO

    exp = Experiment.model_validate(
        {**MICRO, "name": "slots", "resources": {"max_parallel_cells": 1, "slot_timeout_s": 60}}
    )
    holding, overlaps, errors = [], [], []

    def cell(name: str) -> None:
        try:
            with training_slot(exp, name, lambda _: None):
                holding.append(name)
                overlaps.append(len(holding))
                time.sleep(0.7)
                holding.remove(name)
        except Exception as err:  # reported below, with the thread's name
            errors.append(f"{name}: {err!r}")

    with prefect_test_harness(server_startup_timeout=90):
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(training_slots("slots"), 1)
        threads = [threading.Thread(target=cell, args=(f"cell-{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        assert overlaps == [1, 1, 1, 1]  # each held it alone, and each got it

        short = exp.model_copy(update={"resources": exp.resources.model_copy(
            update={"slot_timeout_s": 2.0})})  # fmt: skip
        hog = threading.Thread(target=cell, args=("hog",))
        with training_slot(short, "holder", lambda _: None):
            started = time.monotonic()
            with pytest.raises(SlotTimeout, match="slot_timeout_s=2 s"):
                with training_slot(short, "waiter", lambda _: None):
                    pass
            assert time.monotonic() - started < 10
        hog.start()
        hog.join(timeout=60)
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(training_slots("slots"))
        assert limit.active_slots == 0
