"""Our inference.* proto files against the descriptors that ship inside tritonclient.

Ours are compiled from proto/inference/ into a separate descriptor pool (tritonclient's stubs
own the ``inference.*`` names in the default pool), then every message, field, enum value and
RPC is compared by name and number.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from grpc_tools import protoc  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2, service_pb2

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "proto"


@pytest.fixture(scope="module")
def our_pool() -> descriptor_pool.DescriptorPool:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            "inference/grpc_service.proto",
            "inference/model_config.proto",
        ]
        assert protoc.main(args) == 0
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def _messages(container: FileDescriptor | Descriptor) -> Iterator[Descriptor]:
    children = (
        container.message_types_by_name.values() if isinstance(container, FileDescriptor) else (container.nested_types)
    )
    for message in children:
        yield message
        yield from _messages(message)


def _enums(file: FileDescriptor) -> Iterator[EnumDescriptor]:
    yield from file.enum_types_by_name.values()
    for message in _messages(file):
        yield from message.enum_types


def _field_facts(field: FieldDescriptor) -> tuple[object, ...]:
    kind = field.message_type.full_name if field.message_type else field.enum_type.full_name if field.enum_type else ""
    oneof = field.containing_oneof.name if field.containing_oneof else ""
    return (field.number, field.type, field.is_repeated, kind, oneof)


def _compare(ours: FileDescriptor, theirs: FileDescriptor, *, complete: bool) -> list[str]:
    problems = []
    their_messages = {m.full_name: m for m in _messages(theirs)}
    our_messages = {m.full_name: m for m in _messages(ours)}
    if complete:
        problems += [f"missing message {name}" for name in sorted(set(their_messages) - set(our_messages))]
    for name, message in our_messages.items():
        reference = their_messages.get(name)
        if reference is None:
            problems.append(f"message {name} is not in the reference")
            continue
        for field in message.fields:
            ref_field = reference.fields_by_name.get(field.name)
            if ref_field is None:
                problems.append(f"{name}.{field.name} is not in the reference")
            elif _field_facts(field) != _field_facts(ref_field):
                problems.append(f"{name}.{field.name}: ours {_field_facts(field)}, reference {_field_facts(ref_field)}")
        if complete:
            missing = set(reference.fields_by_name) - set(message.fields_by_name)
            problems += [f"missing field {name}.{f}" for f in sorted(missing)]
    their_enums = {e.full_name: e for e in _enums(theirs)}
    for enum in _enums(ours):
        ref_enum = their_enums.get(enum.full_name)
        if ref_enum is None:
            problems.append(f"enum {enum.full_name} is not in the reference")
            continue
        ours_values = {v.name: v.number for v in enum.values}
        theirs_values = {v.name: v.number for v in ref_enum.values}
        if ours_values != theirs_values:
            problems.append(f"enum {enum.full_name}: ours {ours_values}, reference {theirs_values}")
    return problems


def test_grpc_service_matches_tritonclient_message_for_message(our_pool: descriptor_pool.DescriptorPool) -> None:
    ours = our_pool.FindFileByName("inference/grpc_service.proto")
    assert ours.package == "inference"
    assert _compare(ours, service_pb2.DESCRIPTOR, complete=True) == []


def test_model_config_subset_agrees_with_tritonclient(our_pool: descriptor_pool.DescriptorPool) -> None:
    ours = our_pool.FindFileByName("inference/model_config.proto")
    assert _compare(ours, model_config_pb2.DESCRIPTOR, complete=False) == []
    # The fields that ModelConfig responses must carry are all there.
    config = our_pool.FindMessageTypeByName("inference.ModelConfig")
    assert {"name", "platform", "max_batch_size", "input", "output", "version_policy"} <= set(config.fields_by_name)


def test_service_has_every_rpc_with_the_same_types_and_streaming(our_pool: descriptor_pool.DescriptorPool) -> None:
    ours = our_pool.FindServiceByName("inference.GRPCInferenceService")
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]

    def facts(service: object) -> dict[str, tuple[str, str, bool, bool]]:
        return {
            m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
            for m in service.methods  # type: ignore[attr-defined]
        }

    assert facts(ours) == facts(theirs)


def test_a_changed_field_number_is_caught(our_pool: descriptor_pool.DescriptorPool) -> None:
    """The comparison itself can fail: renumber one field in a copy and it reports it."""
    proto = descriptor_pb2.FileDescriptorProto()
    our_pool.FindFileByName("inference/grpc_service.proto").CopyToProto(proto)
    request = next(m for m in proto.message_type if m.name == "ModelInferRequest")
    next(f for f in request.field if f.name == "raw_input_contents").number = 8
    pool = descriptor_pool.DescriptorPool()
    config = descriptor_pb2.FileDescriptorProto()
    our_pool.FindFileByName("inference/model_config.proto").CopyToProto(config)
    pool.Add(config)
    pool.Add(proto)
    problems = _compare(pool.FindFileByName("inference/grpc_service.proto"), service_pb2.DESCRIPTOR, complete=True)
    assert problems == [
        "inference.ModelInferRequest.raw_input_contents: ours (8, 12, True, '', ''), reference (7, 12, True, '', '')"
    ]
