"""The services a node runs next to networking (expert, HTTP API, storage, ...).

:func:`default_services` builds the list ``python -m node start`` runs, in start
order; which services are in it follows the config.  A service is anything matching
:class:`node.app.Service`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import NodeConfig

if TYPE_CHECKING:
    from .app import Service


def default_services(config: NodeConfig) -> list[Service]:
    services: list[Service] = []
    # Storage first: the expert (started later) may await ensure_local() for --model/--adapter CIDs.
    from .storage import StorageService

    services.append(StorageService.from_config(config))
    if config.expert.enabled:
        from .expert import ExpertService  # light import: torch loads when the service starts

        services.append(ExpertService(config.expert))
    from .coordinator.service import QueryService  # every peer coordinates queries

    queries = QueryService()
    services.append(queries)
    if config.http.enabled:
        from .api.service import HttpService

        services.append(HttpService(config.http, queries=queries))
    from .control import ControlService  # local `publish`/`pin` reach the node through it

    services.append(ControlService())
    return services
