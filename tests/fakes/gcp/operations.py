"""Compute operations: mutations start one whose effect is applied when it turns DONE, so a
client that does not wait for its operation sees the old state; tests can plan operations
that stay RUNNING for a number of polls or end with an error."""

from __future__ import annotations

import re
import secrets
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

    def matches(self, method: str, path: str) -> bool:
        return method == self.method.upper() and bool(self.pattern.search(path))


class OperationsApi(FakeCore):
    """Global and zone operations get/wait, and how mutations start operations."""

    _plans: list[OperationPlan]

    def plan_operations(
        self,
        method: str,
        path: str,
        *,
        running_polls: int = 0,
        error: dict[str, Any] | None = None,
        times: int | None = 1,
    ) -> None:
        """Operations started by matching requests come back RUNNING and turn DONE on the
        `running_polls`-th get/wait; with ERROR (`{"code","message","http_status"}`) they end
        DONE with that error and without their effect."""
        with self.lock:
            self._plans.append(
                OperationPlan(method.upper(), re.compile(path), running_polls, error, times)
            )

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
            "startTime": rfc3339(now),
            "selfLink": f"{GOOGLE_LINK_BASE}{scope}/operations/{name}",
        }
        if zone:
            body["zone"] = f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}"
        op = FakeOperation(
            body=body,
            remaining_polls=plan.running_polls if plan else 0,
            effect=effect,
            error=plan.error if plan else None,
            zone=zone,
        )
        self.state.operations[name] = op
        if op.remaining_polls > 0:
            body["status"] = "RUNNING"
        else:
            self._finish_operation(op)
        return dict(body)

    def _finish_operation(self, op: FakeOperation) -> None:
        op.body["status"] = "DONE"
        op.body["progress"] = 100
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

    def _operation_poll(
        self, request: RecordedRequest, project: str, op: str, zone: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        operation = self.state.operations.get(op)
        if operation is None or operation.zone != zone:
            raise ApiError(404, "notFound", f"The resource '{request.path}' was not found")
        if operation.body["status"] != "DONE":
            operation.remaining_polls -= 1
            if operation.remaining_polls <= 0:
                self._finish_operation(operation)
        return 200, dict(operation.body)
