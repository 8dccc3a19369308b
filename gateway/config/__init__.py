"""Configuration: pydantic models and the one loader every source (file, Admin API, etcd) goes through."""

from __future__ import annotations

from gateway.config.loader import ConfigError, load_config, load_document
from gateway.config.models import Config

__all__ = ["Config", "ConfigError", "load_config", "load_document"]
