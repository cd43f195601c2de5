"""One descriptor pool for server reflection that holds both the default pool's services and ours.

grpc's reflection servicer reads a single pool, and the ``inference.*`` stubs live in a private
one (see :mod:`attnserve_server.kserve.pb`); this copies every served file, with its imports,
into a fresh pool.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from attnserve_server.kserve.pb import POOL


def _file_of(service: str) -> FileDescriptor | None:
    for pool in (POOL, descriptor_pool.Default()):
        try:
            return pool.FindFileContainingSymbol(service)
        except KeyError:
            continue
    return None


def reflection_pool(service_names: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A pool with the files that define ``service_names`` and everything they import."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for name in service_names:
        file = _file_of(name)
        if file is not None:
            add(file)
    return pool
