"""The effective settings for ``jobnode config check``, every secret hidden."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy.engine import make_url

from app.config.settings import Settings

#: Shown as ``"***"`` by ``masked`` (``jobnode config check``) when set; so are a
#: container's ``bearer`` and ``env`` values and the database URL's password.
SECRET_KEYS = ("server.operator_token", "docker.password", "webhooks.secret")
MASK = "***"


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON-ready data with every secret shown as ``"***"``
    (unset ones stay ``null``, so that one sees whether they are set)."""
    raw: dict[str, Any] = msgspec.to_builtins(settings)
    raw.pop("ignored_keys", None)
    raw["scheduler"]["node_id"] = settings.node_id
    for key in SECRET_KEYS:
        section, name = key.split(".")
        if raw[section][name] is not None:
            raw[section][name] = MASK
    raw["database"]["url"] = make_url(settings.database.url).render_as_string(hide_password=True)
    for container in raw["containers"]:
        if container.get("bearer") is not None:
            container["bearer"] = MASK
        container["env"] = dict.fromkeys(container.get("env", {}), MASK)
    return raw
