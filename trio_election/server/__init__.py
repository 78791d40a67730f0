"""The trio-election node: gRPC services hosted in Trio."""

from ._config import NodeConfig as NodeConfig
from ._node import Node as Node
from ._run import serve as serve

__all__ = ["Node", "NodeConfig", "serve"]
