"""The 64-bit broker: routing core, socket loop, supervisor, configuration, ``Pool``."""

from .config import PoolConfig, ServiceConfig, load_config
from .core import Action, BrokerCore, KillWorker, ServicePolicy, ToClient, ToWorker
from .locations import default_config_path
from .loop import BrokerLoop
from .pool import DEFAULT_BROKER, BrokerKind, Pool
from .supervisor import Exit, Supervisor

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
