"""Run one node: the gRPC server, health, reflection and a graceful shutdown."""

from __future__ import annotations

import logging
from typing import Any

import trio
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

from .._bridge import GRPCError, GrpcServer, Status, asyncio_loop, end_streams
from ._cluster import ClusterNode
from ._cluster_service import ClusterService, RaftTransportService
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
    ``port = await nursery.start(serve, NodeConfig(port=0, ...))``. With a node
    id and ``initial_cluster`` or ``join`` (or a data dir that holds a Raft
    log), the node is a member of a Raft cluster; otherwise a single node.
    """
    node: Node | ClusterNode
    services: list[Any]
    if config.clustered:
        node = ClusterNode(config)
        services = [ClusterService(node), RaftTransportService(node)]
    else:
        node = Node(config)
        services = []
    service = LeaderElectionService(node)
    handlers = ServerReflection.extend([service, *services, Health()])
    async with asyncio_loop(), trio.open_nursery() as nursery:
        if isinstance(node, ClusterNode):
            await node.open()
        else:
            await nursery.start(node.run)
        server = GrpcServer(handlers)
        port = await server.start(config.host, config.port)
        if isinstance(node, ClusterNode):
            node.advertise = config.advertise or f"{config.host}:{port}"
            await nursery.start(node.run)
            nursery.start_soon(_stop_when_removed, node, nursery.cancel_scope)
        log.info(
            "serving on %s:%d (%s)",
            config.host,
            port,
            f"cluster member {config.node_id}"
            if isinstance(node, ClusterNode)
            else f"data dir {config.data_dir}"
            if config.data_dir
            else "in memory",
        )
        task_status.started(port)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                streams = [service.streams, *(getattr(s, "streams", ()) for s in services)]
                await _shutdown(server, service, node, streams, config.shutdown_grace_s)
            nursery.cancel_scope.cancel()
    log.info("stopped")


async def _stop_when_removed(node: ClusterNode, scope: trio.CancelScope) -> None:
    await node.removed.wait()
    log.info("this node was removed from the cluster; stopping")
    scope.cancel()


async def _shutdown(
    server: GrpcServer,
    service: LeaderElectionService,
    node: Node | ClusterNode,
    streams: list[set[Any]],
    grace_s: float,
) -> None:
    """Stop accepting, end streams with a status, let unary calls finish, close."""
    server.stop_accepting()
    node.begin_close()
    for group in streams:
        await end_streams(group, GRPCError(Status.UNAVAILABLE, "the node is shutting down"))
    idle = trio.Event()
    service.on_idle = idle.set
    if service.active == 0:
        idle.set()
    with trio.move_on_after(grace_s):
        await idle.wait()
    with trio.move_on_after(grace_s):
        await server.close()
