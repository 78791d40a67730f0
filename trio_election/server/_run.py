"""Run one node: the gRPC server, health, reflection and a graceful shutdown."""

from __future__ import annotations

import logging
from typing import Any

import trio
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

from .._bridge import GRPCError, GrpcServer, Status, asyncio_loop, end_streams
from ._auth import Guard
from ._cluster import ClusterNode
from ._cluster_service import ClusterService, RaftTransportService
from ._config import NodeConfig
from ._datadir import DataDirError, DataDirLock, check_kind
from ._listing import SingleNodeClusterService
from ._logs import node_logging
from ._metrics import instrument
from ._metrics_http import serve_metrics
from ._node import Node
from ._security import NO_PEER_AUTH, SecurityConfigError
from ._service import LeaderElectionService

log = logging.getLogger("trio_election.server")


async def serve(
    config: NodeConfig,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one node until cancelled, then shut down gracefully.

    ``task_status.started(port)`` reports the bound client port, so tests can
    run ``port = await nursery.start(serve, NodeConfig(port=0, ...))``. With a
    node id and ``initial_cluster`` or ``join`` (or a data dir that holds a
    Raft log), the node is a member of a Raft cluster, with a second listener
    for its peers; otherwise a single node.

    Health (``grpc.health.v1``, for the whole node and for the election
    service) says SERVING only while the node can serve writes: a single node
    past its start-up grace, a cluster member that knows a Raft leader.

    Raises:
        SecurityConfigError: a cluster member without peer authentication.
        DataDirError: the data dir is in use, or holds another kind of node.
    """
    if config.clustered and config.peer_auth is None:
        raise SecurityConfigError(NO_PEER_AUTH)
    lock = _open_data_dir(config)
    try:
        await _serve(config, task_status)
    finally:
        if lock is not None:
            lock.release()


def _open_data_dir(config: NodeConfig) -> DataDirLock | None:
    """Lock the data dir (before anything in it is read) and check its kind."""
    if config.data_dir is None:
        return None
    if config.node_id is not None and not config.clustered:
        raise DataDirError(
            f"--id {config.node_id}: {config.data_dir} holds no cluster state; give "
            "--initial-cluster or --join to make a member, or drop --id for a single node"
        )
    lock = DataDirLock(config.data_dir)
    try:
        check_kind(config.data_dir, config.node_id)
    except BaseException:
        lock.release()
        raise
    return lock


async def _serve(config: NodeConfig, task_status: trio.TaskStatus[int]) -> None:
    node: Node | ClusterNode
    guard = Guard(config.tokens)
    peer_server: GrpcServer | None = None
    serving = ServiceStatus()
    serving.set(False)
    if config.clustered:
        node = ClusterNode(config)
        transport = RaftTransportService(node)
        client_services: list[Any] = [ClusterService(node, guard)]
        peer_server = GrpcServer(
            [transport, ClusterService(node), Health()],
            ssl=config.peer_auth.server_ssl,
            authorize=config.peer_auth.authorize,
            limits=config.peer_connection_limits,
        )
    else:
        node = Node(config)
        client_services = [SingleNodeClusterService(node, guard)]
    node.on_serving = serving.set
    service = LeaderElectionService(node, guard)
    metrics = instrument(config, node, service)  # None without --metrics-listen
    health = Health({service: [serving]})
    handlers = ServerReflection.extend([service, *client_services, health])
    term = (lambda: node.term) if isinstance(node, ClusterNode) else None
    async with node_logging(config.node_id, term), asyncio_loop(), trio.open_nursery() as nursery:
        if isinstance(node, ClusterNode):
            await node.open()
        else:
            await nursery.start(node.run)
        server = GrpcServer(
            handlers,
            ssl=config.tls,
            authorize=guard.hook(serves_admin=config.clustered),
            limits=config.connection_limits,
        )
        port = await server.start(config.host, config.port)
        if metrics is not None:
            await nursery.start(serve_metrics, metrics, *config.metrics_listen)
        if isinstance(node, ClusterNode):
            assert peer_server is not None
            peer_host, peer_port = node.peer_listen
            peer_port = await peer_server.start(peer_host, peer_port)
            node.listening(f"{peer_host}:{peer_port}")
            await nursery.start(node.run)
            nursery.start_soon(_stop_when_removed, node, nursery.cancel_scope)
            log.info(
                "serving clients on %s:%d, peers on %s:%d (cluster member %s, peers %s)",
                config.host,
                port,
                peer_host,
                peer_port,
                config.node_id,
                config.peer_auth.description,
            )
        else:
            log.info(
                "serving on %s:%d (%s)",
                config.host,
                port,
                f"data dir {config.data_dir}" if config.data_dir else "in memory",
            )
        if config.tls is not None or config.tokens is not None:
            log.info(
                "clients: %s, %s",
                "TLS" if config.tls is not None else "plain text",
                f"{len(config.tokens)} tokens" if config.tokens is not None else "no tokens",
            )
        task_status.started(port)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                streams = [service.streams]
                if isinstance(node, ClusterNode):
                    streams.append(transport.streams)
                await _shutdown(server, service, node, streams, config.shutdown_grace_s)
                if peer_server is not None:
                    with trio.move_on_after(config.shutdown_grace_s):
                        await peer_server.close()
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
