"""Run one node: the gRPC server, health, reflection and a graceful shutdown."""

from __future__ import annotations

import logging

import trio
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

from .._bridge import GRPCError, GrpcServer, Status, asyncio_loop, end_streams
from ._config import NodeConfig
from ._node import Node
from ._service import LeaderElectionService

log = logging.getLogger("trio_election.server")


async def serve(
    config: NodeConfig,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one node until cancelled, then shut down gracefully.

    ``task_status.started(port)`` reports the bound port, so tests can run
    ``port = await nursery.start(serve, NodeConfig(port=0, ...))``.
    """
    node = Node(config)
    service = LeaderElectionService(node)
    handlers = ServerReflection.extend([service, Health()])
    async with asyncio_loop(), trio.open_nursery() as nursery:
        await nursery.start(node.run)
        server = GrpcServer(handlers)
        port = await server.start(config.host, config.port)
        log.info(
            "serving on %s:%d (%s)",
            config.host,
            port,
            f"data dir {config.data_dir}" if config.data_dir else "in memory",
        )
        task_status.started(port)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await _shutdown(server, service, node, config.shutdown_grace_s)
            nursery.cancel_scope.cancel()
    log.info("stopped")


async def _shutdown(
    server: GrpcServer, service: LeaderElectionService, node: Node, grace_s: float
) -> None:
    """Stop accepting, end streams with a status, let unary calls finish, close."""
    server.stop_accepting()
    node.begin_close()
    await end_streams(service.streams, GRPCError(Status.UNAVAILABLE, "the node is shutting down"))
    idle = trio.Event()
    service.on_idle = idle.set
    if service.active == 0:
        idle.set()
    with trio.move_on_after(grace_s):
        await idle.wait()
    with trio.move_on_after(grace_s):
        await server.close()
