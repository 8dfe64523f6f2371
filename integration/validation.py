"""The translator as the xDS client's validator: what turns a response into an ACK or a NACK.

``sockmesh xds-dump --validate`` and the peer tests plug it into ``XdsClient``; the agent
validates through its TableBuilder instead (integration/agent.py: only the resources a
response changes, with the cross-resource checks).  integration is the one package that
knows both the client and the translator.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

from translator import validate_resource


def translator_validator(type_url: str, resources: Mapping[str, Message]) -> None:
    """The xDS client's validator hook backed by the translator: the first resource it
    rejects makes the whole response a NACK, its message the error_detail."""
    for msg in resources.values():
        validate_resource(type_url, msg)
