"""trio-election: leader election and leases for microservices, on Trio and gRPC.

The public API is the client library; the server runs as ``trio-election node``.
"""

from ._errors import (
    DeadlineExceeded as DeadlineExceeded,
)
from ._errors import (
    ElectionError as ElectionError,
)
from ._errors import (
    InvalidArgument as InvalidArgument,
)
from ._errors import (
    LeadershipLost as LeadershipLost,
)
from ._errors import (
    NotElected as NotElected,
)
from ._errors import (
    Superseded as Superseded,
)
from ._errors import (
    Unavailable as Unavailable,
)
from .client import (
    Attempt as Attempt,
)
from .client import (
    Client as Client,
)
from .client import (
    EventKind as EventKind,
)
from .client import (
    Leader as Leader,
)
from .client import (
    LeaderEvent as LeaderEvent,
)
from .client import (
    Leadership as Leadership,
)
from .client import (
    open_client as open_client,
)

__all__ = [
    "Attempt",
    "Client",
    "DeadlineExceeded",
    "ElectionError",
    "EventKind",
    "InvalidArgument",
    "Leader",
    "LeaderEvent",
    "Leadership",
    "LeadershipLost",
    "NotElected",
    "Superseded",
    "Unavailable",
    "open_client",
]
