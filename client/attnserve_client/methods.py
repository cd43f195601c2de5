"""The gRPC method paths that the client calls, read from the generated descriptors.

The client builds its callables with ``channel.unary_unary(path, ...)`` rather than through
the generated ``*_grpc`` stubs, which are untyped: this keeps every call typed end to end.
"""

from __future__ import annotations

from google.protobuf.descriptor import FileDescriptor

from attnserve_client.pb import image_classification_pb2, models_pb2, text_generation_pb2

__all__ = ["CLASSIFY", "GENERATE", "GENERATE_STREAM", "GET_MODEL", "LIST_MODELS"]


def _path(file: FileDescriptor, service: str, method: str) -> str:
    descriptor = file.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name[method].name}"


GENERATE = _path(text_generation_pb2.DESCRIPTOR, "TextGenerationService", "Generate")
GENERATE_STREAM = _path(text_generation_pb2.DESCRIPTOR, "TextGenerationService", "GenerateStream")
LIST_MODELS = _path(models_pb2.DESCRIPTOR, "ModelService", "ListModels")
GET_MODEL = _path(models_pb2.DESCRIPTOR, "ModelService", "GetModel")
CLASSIFY = _path(image_classification_pb2.DESCRIPTOR, "ImageClassificationService", "Classify")
