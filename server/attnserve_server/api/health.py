"""grpc.health.v1 as grpc_health's aio servicer serves it, plus ``List`` and Watch streams that end at shutdown.

- ``List`` answers every known service's status (the reference servicer leaves it unimplemented,
  and gRPC logs a traceback for each call).
- A ``Watch`` stream sends NOT_SERVING when shutdown begins and then ends, so an open watcher
  (a load balancer, a sidecar) never holds the server's drain for its whole grace period.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """The aio health servicer with ``List``, and watchers that leave when the server stops."""

    async def List(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for service, status in self._server_status.items():
            response.statuses[service].status = status
        return response

    async def Watch(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> None:
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        last_status = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(service, SERVICE_UNKNOWN)
                    if status != last_status:  # intermediate states may be skipped: peers want the latest
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last_status = status
                    stopped = status == NOT_SERVING or service not in self._server_status
                    if self._gracefully_shutting_down and stopped:
                        return
                    # Woken by a change of status, or by enter_graceful_shutdown once all are down.
                    await condition.wait()
        finally:
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, later ``set`` calls ignored, and every watcher told and let go."""
        await super().enter_graceful_shutdown()
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()
