"""The 64-bit broker: routing core, socket loop, supervisor, configuration, ``Pool``.

The names below load when first used (:func:`__getattr__`): a broker process imports its first module before the
rest of the package, to start its zygote meanwhile (:mod:`broker.early`).
"""

from typing import TYPE_CHECKING

from protocol.lazy import on_first_use

if TYPE_CHECKING:
    from .config import PoolConfig, ServiceConfig, load_config
    from .core import Action, BrokerCore, KillWorker, ServicePolicy, ToClient, ToWorker
    from .locations import default_config_path
    from .loop import BrokerLoop
    from .pool import DEFAULT_BROKER, BrokerKind, Pool
    from .supervisor import Exit, Supervisor

_ON_FIRST_USE = {
    **dict.fromkeys(("PoolConfig", "ServiceConfig", "load_config"), "config"),
    **dict.fromkeys(("Action", "BrokerCore", "KillWorker", "ServicePolicy", "ToClient", "ToWorker"), "core"),
    "default_config_path": "locations",
    "BrokerLoop": "loop",
    **dict.fromkeys(("DEFAULT_BROKER", "BrokerKind", "Pool"), "pool"),
    **dict.fromkeys(("Exit", "Supervisor"), "supervisor"),
}

__getattr__, __dir__ = on_first_use(__name__, _ON_FIRST_USE)

__all__ = [
    "DEFAULT_BROKER",
    "Action",
    "BrokerCore",
    "BrokerKind",
    "BrokerLoop",
    "Exit",
    "KillWorker",
    "Pool",
    "PoolConfig",
    "ServiceConfig",
    "ServicePolicy",
    "Supervisor",
    "ToClient",
    "ToWorker",
    "default_config_path",
    "load_config",
]
