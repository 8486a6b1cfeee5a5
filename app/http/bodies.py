"""Job request bodies for Litestar handlers: decoded by ``app.jobs.requests`` (whose
error messages are part of the contract), documented from ``JobRequest``'s type.

Litestar decodes a handler's ``data`` through its DTO: these DTOs replace only the
decoding, so a handler declares ``data: JobRequest`` (the OpenAPI document then shows
the body) and still answers a bad body with the node's own ``{"error", "params"}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.dto import MsgspecDTO

from app.http.errors import ApiError
from app.jobs.requests import JobRejected, JobRequest, decode_batch, decode_job_request

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import Reference, Schema
    from litestar.typing import FieldDefinition


class JobRequestBody(MsgspecDTO[JobRequest]):
    """``data: JobRequest``: one job request, or a 400 with the reason."""

    def decode_bytes(self, value: bytes) -> Any:
        try:
            return decode_job_request(value)
        except JobRejected as rejected:
            raise ApiError(400, rejected.error, rejected.params) from None

    @classmethod
    def create_openapi_schema(cls, field_definition: FieldDefinition, handler_id: str,
                              schema_creator: SchemaCreator) -> Reference | Schema:
        """The schema of the annotation itself (``JobRequest``, ``list[JobRequest]``), not
        of a transfer model Litestar would generate and name after the handler."""
        return schema_creator.for_field_definition(field_definition)


class JobBatchBody(JobRequestBody):
    """``data: list[JobRequest]``: each item decoded on its own; an item the node cannot
    decode arrives as a ``JobRejected`` (``decode_batch``) and is answered in place."""

    def decode_bytes(self, value: bytes) -> Any:
        try:
            return decode_batch(value)
        except JobRejected as rejected:
            raise ApiError(400, rejected.error) from None
