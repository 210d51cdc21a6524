"""Compute operations as the real API runs them: a mutation answers at once with an operation
in PENDING, which turns RUNNING and then DONE with time, whether or not anyone polls; its
effect (the rule appears, the metadata changes) is applied only when it is DONE.

`operations.wait` blocks until the operation is DONE or `wait_max_s` passed (the real one
blocks up to about 2 minutes, best effort); `wait_returns_at_once` makes it answer at once
with whatever status the operation has, as the real one may. A retried mutation that carries
the same `requestId` gets the same operation back. Tests can also plan operations that stay
RUNNING for a number of polls, for a time, or end DONE with an error.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

from tests.fakes.gcp.state import FakeCore, FakeOperation
from tests.fakes.gcp.wire import GOOGLE_LINK_BASE, ApiError, RecordedRequest, rfc3339


@dataclass
class OperationPlan:
    """How operations started by matching requests behave."""

    method: str
    pattern: re.Pattern[str]
    running_polls: int = 0
    error: dict[str, Any] | None = None
    times: int | None = 1
    seconds: float | None = None

    def matches(self, method: str, path: str) -> bool:
        return method == self.method.upper() and bool(self.pattern.search(path))


class OperationsApi(FakeCore):
    """Global and zone operations get/wait, and how mutations start operations."""

    _plans: list[OperationPlan]
    # Seconds an unplanned operation takes from insert to DONE (the real API: 5-20 s for a
    # firewall insert; tests keep it short).
    operation_seconds: float
    # How long operations.wait blocks at most, and whether it answers at once instead.
    wait_max_s: float
    wait_returns_at_once: bool
    # (method, path, requestId) -> operation name
    _request_ids: dict[tuple[str, str, str], str]

    def plan_operations(
        self,
        method: str,
        path: str,
        *,
        running_polls: int = 0,
        seconds: float | None = None,
        error: dict[str, Any] | None = None,
        times: int | None = 1,
    ) -> None:
        """Operations started by matching requests stay PENDING/RUNNING until the
        `running_polls`-th get/wait, or for SECONDS (whichever is set; with both, until both
        passed); with ERROR (`{"code","message","http_status"}`) they end DONE with that
        error and without their effect."""
        with self.lock:
            self._plans.append(
                OperationPlan(
                    method.upper(), re.compile(path), running_polls, error, times, seconds
                )
            )

    def operation_in_flight(self, target_suffix: str, operation_type: str | None = None) -> bool:
        """Whether an operation on a target whose link ends with TARGET_SUFFIX is not DONE."""
        with self.lock:
            self._advance_operations()
            return any(
                op.body["status"] != "DONE"
                and op.body["targetLink"].endswith(target_suffix)
                and (operation_type is None or op.body["operationType"] == operation_type)
                for op in self.state.operations.values()
            )

    def max_in_flight(self, operation_type: str) -> int:
        """The most operations of OPERATION_TYPE (`setMetadata`, `insert`, ...) that were in
        flight (started, not yet DONE) at the same moment, over the fake's whole life."""
        with self.lock:
            self._advance_operations()
            events: list[tuple[float, int]] = []
            for op in self.state.operations.values():
                if op.body["operationType"] != operation_type:
                    continue
                events.append((op.started_at, 1))
                if op.finished_at is not None:
                    events.append((op.finished_at, -1))
        most = current = 0
        for _, step in sorted(events):  # an end before a start at the same moment
            current += step
            most = max(most, current)
        return most

    def _replayed_operation(self, request: RecordedRequest) -> dict[str, Any] | None:
        """The operation an earlier request with this requestId started, if any."""
        request_id = (request.query.get("requestId") or [""])[0]
        if not request_id:
            return None
        name = self._request_ids.get((request.method, request.path, request_id))
        if name is None:
            return None
        self._advance_operations()
        return dict(self.state.operations[name].body)

    def _start_operation(
        self,
        request: RecordedRequest,
        *,
        project: str,
        operation_type: str,
        target_link: str,
        effect: Callable[[], None] | None,
        zone: str | None = None,
    ) -> dict[str, Any]:
        plan = next((p for p in self._plans if p.matches(request.method, request.path)), None)
        if plan is not None and plan.times is not None:
            plan.times -= 1
            if plan.times <= 0:
                self._plans.remove(plan)
        now = datetime.now(timezone.utc)
        op_id = next(self._ids)
        name = f"operation-{int(now.timestamp() * 1000)}-{secrets.token_hex(6)}"
        scope = f"projects/{project}/zones/{zone}" if zone else f"projects/{project}/global"
        body: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(op_id),
            "name": name,
            "operationType": operation_type,
            "targetLink": target_link,
            "targetId": str(op_id + 1),
            "status": "PENDING",
            "user": "fake@dojangkok-ai.iam.gserviceaccount.com",
            "progress": 0,
            "insertTime": rfc3339(now),
            "selfLink": f"{GOOGLE_LINK_BASE}{scope}/operations/{name}",
        }
        if zone:
            body["zone"] = f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}"
        seconds = plan.seconds if plan and plan.seconds is not None else None
        if seconds is None:
            seconds = 0.0 if plan and plan.running_polls else self.operation_seconds
        started = time.monotonic()
        op = FakeOperation(
            body=body,
            remaining_polls=plan.running_polls if plan else 0,
            effect=effect,
            error=plan.error if plan else None,
            zone=zone,
            running_at=started + min(seconds / 4, 0.5),
            done_at=started + seconds,
            started_at=started,
        )
        self.state.operations[name] = op
        request_id = (request.query.get("requestId") or [""])[0]
        if request_id:
            self._request_ids[(request.method, request.path, request_id)] = name
        self._advance_operations()
        return dict(body)

    def _advance_operations(self) -> None:
        """Move every operation along its clock (called under the lock, by each request and
        by the fake's ticker thread)."""
        now = time.monotonic()
        for op in list(self.state.operations.values()):
            if op.body["status"] == "DONE":
                continue
            if op.remaining_polls <= 0 and now >= op.done_at:
                self._finish_operation(op)
            elif op.body["status"] == "PENDING" and now >= op.running_at:
                op.body["status"] = "RUNNING"
                op.body["startTime"] = rfc3339(datetime.now(timezone.utc))
                op.body["progress"] = 50

    def _finish_operation(self, op: FakeOperation) -> None:
        op.finished_at = time.monotonic()
        op.body["status"] = "DONE"
        op.body["progress"] = 100
        op.body.setdefault("startTime", rfc3339(datetime.now(timezone.utc)))
        op.body["endTime"] = rfc3339(datetime.now(timezone.utc))
        if op.error is not None:
            op.body["error"] = {
                "errors": [
                    {"code": op.error.get("code", "INTERNAL_ERROR"), "message": op.error["message"]}
                ]
            }
            op.body["httpErrorStatusCode"] = op.error.get("http_status", 400)
            op.body["httpErrorMessage"] = HTTPStatus(op.body["httpErrorStatusCode"]).phrase.upper()
        elif op.effect is not None:
            op.effect()

    def _operation(
        self, request: RecordedRequest, project: str, op: str, zone: str | None
    ) -> FakeOperation:
        self._check_project(project)
        operation = self.state.operations.get(op)
        if operation is None or operation.zone != zone:
            raise ApiError(404, "notFound", f"The resource '{request.path}' was not found")
        return operation

    def _operation_poll(
        self, request: RecordedRequest, project: str, op: str, zone: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """operations.get: the operation as it is now (a get counts as a poll)."""
        operation = self._operation(request, project, op, zone)
        if operation.body["status"] != "DONE":
            operation.remaining_polls -= 1
        self._advance_operations()
        return 200, dict(operation.body)

    def _operation_wait(
        self, request: RecordedRequest, project: str, op: str, zone: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """operations.wait: blocks (without the fake's lock) until DONE or `wait_max_s`."""
        with self.lock:
            operation = self._operation(request, project, op, zone)
            if operation.body["status"] != "DONE":
                operation.remaining_polls -= 1
            self._advance_operations()
        deadline = time.monotonic() + (0.0 if self.wait_returns_at_once else self.wait_max_s)
        while True:
            with self.lock:
                self._advance_operations()
                if operation.body["status"] == "DONE" or time.monotonic() >= deadline:
                    return 200, dict(operation.body)
                # An operation that ends only when polled cannot end while this wait blocks.
                if operation.remaining_polls > 0:
                    return 200, dict(operation.body)
            time.sleep(0.01)
