"""Consumers: who a request is, found by the credential an authentication plugin extracted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel


@dataclass(frozen=True)
class Consumer:
    username: str
    group_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    # Validated plugin configs: auth plugins' credentials and any plugin that runs for this consumer.
    plugins: Mapping[str, BaseModel] = field(default_factory=dict)


class ConsumerIndex:
    """Consumers by name and, per authentication plugin, by credential; built once per config."""

    def __init__(self, consumers: Iterable[Consumer], credentials: Mapping[str, Mapping[str, Consumer]]) -> None:
        self.by_name: dict[str, Consumer] = {c.username: c for c in consumers}
        self._credentials = {plugin: dict(index) for plugin, index in credentials.items()}

    def find(self, plugin: str, credential: str) -> Consumer | None:
        """The consumer whose `plugin` credential is `credential`, or None."""
        return self._credentials.get(plugin, {}).get(credential)

    def credentials(self, plugin: str) -> Mapping[str, Consumer]:
        """All credentials of one plugin (for plugins that must compare each in constant time)."""
        return self._credentials.get(plugin, {})


EMPTY_CONSUMERS = ConsumerIndex((), {})
