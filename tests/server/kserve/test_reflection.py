"""Server reflection lists and describes the v2 service next to the attnserve ones."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def test_reflection_describes_the_inference_service(image_server_address: str) -> None:
    with grpc.insecure_channel(image_server_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=30))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "inference.GRPCInferenceService",
        "attnserve.v1.ImageClassificationService",
        "attnserve.v1.EmbeddingService",
    } <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    service = next(f for f in files if f.name == "inference/grpc_service.proto")
    assert "ModelInfer" in {m.name for m in service.service[0].method}
    assert "inference/model_config.proto" in {f.name for f in files} | set(service.dependency)
