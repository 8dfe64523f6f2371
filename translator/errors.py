"""The one error type of the translator: a resource that cannot be turned into tables."""

from __future__ import annotations


class TranslationError(ValueError):
    """A resource that fails validation or translation.

    ``where`` names the resource (``RouteConfiguration 'http.80'``), ``detail`` the field path
    and the problem (``virtual_hosts[0].routes[2].match.safe_regex.regex: invalid regex ...``).
    The message is what an xDS NACK carries in ``error_detail``.
    """

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where} {detail}")
        self.where = where
        self.detail = detail


def resource_label(kind: str, name: str) -> str:
    """``<kind> '<name>'`` as used in every error message."""
    return f"{kind} '{name}'"
