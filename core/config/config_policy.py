"""What production refuses to start with: the kernel's rules.

Managers add their own rules (``Manager.production_problems``: a signing key, a pepper, a
shared store); ``load_config`` reports every refusal at once, each naming the setting and
the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.base.errors import Problem

if TYPE_CHECKING:
    from core.config.config import Config


def kernel_problems(config: Config) -> list[Problem]:
    """The kernel's refusals: debug mode and a wildcard CORS origin."""
    problems = []
    if config["app.debug"]:
        problems.append(
            Problem("debug mode exposes internals: set app.debug to false", field="app.debug")
        )
    if "*" in config["http.cors_origins"]:
        problems.append(
            Problem(
                "a wildcard CORS origin lets any site call the API with the "
                "user's credentials: list the allowed origins in "
                "http.cors_origins",
                field="http.cors_origins",
            )
        )
    return problems
