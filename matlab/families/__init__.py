"""Nested-architecture families: one module each, registered by the config's model_type."""

from matlab.families.base import Family, family_for_config, register_family, unregister_family
from matlab.families.gemma3n import GEMMA3N

register_family(GEMMA3N)

__all__ = ["Family", "GEMMA3N", "family_for_config", "register_family", "unregister_family"]
