"""The README's tour with the Python client instead of curl: copy it.

    STEPLOG_API_KEY=$(cat .steplog/admin.key) .venv/bin/python examples/client_tour.py

It registers examples/order.asl.json, starts one order that is approved and one that
is rejected, waits for both, and prints their ends, their histories and the live feed
of a third. STEPLOG_URL (default http://127.0.0.1:8080) says where steplog listens.
"""

from __future__ import annotations

import json
from pathlib import Path

from steplog.client import Client, Conflict, json_value

ORDER = json.loads((Path(__file__).parent / "order.asl.json").read_text())


def main() -> None:
    with Client() as steplog:  # STEPLOG_URL and STEPLOG_API_KEY from the environment
        workflow = steplog.register("order", ORDER)
        print(f"registered {workflow.name} version {workflow.version}")

        approved = steplog.start("order", {"order_id": "o-1", "amount": 250}, name="order-o-1")
        # The same name and input give back the same execution; another input is refused.
        again = steplog.start("order", {"order_id": "o-1", "amount": 250}, name="order-o-1")
        print(f"started {approved.execution_id}; again: {again.execution_id}")
        try:
            steplog.start("order", {"order_id": "o-1", "amount": 9}, name="order-o-1")
        except Conflict as refused:
            print(f"same name, other input: {refused.status} {refused.code}")

        rejected = steplog.start("order", {"order_id": "o-2", "amount": 5000})
        for started in (approved, rejected):
            done = steplog.wait(started.execution_id, timeout_s=60)
            print(done.name, done.status, json_value(done.output), done.error or "")
            for event in steplog.history(done.execution_id):
                print(f"  {event.seq:3} {event.type}")

        held = steplog.start("order", {"order_id": "o-3", "amount": 10, "hold_seconds": 1})
        print("live feed of", held.execution_id)
        for event in steplog.events(held.execution_id):
            print(f"  {event.seq:3} {event.timestamp} {event.type}")


if __name__ == "__main__":
    main()
