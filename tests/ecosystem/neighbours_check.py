"""Run by tests/ecosystem/test_neighbours.py with the interpreter of an ecosystem venv:

    python tests/ecosystem/neighbours_check.py {tritonclient|kserve} HOST:PORT MODEL

It imports attnserve_client together with the neighbour package and the neighbour's own generated
``inference.*`` stubs, in one process, then calls the server with the attnserve client and with the
neighbour's KServe v2 client, and prints one JSON object of what it saw.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from typing import Any

PROMPT = "To be, or not to be"
NEW_TOKENS = 4


def tritonclient_calls(address: str, model: str) -> dict[str, Any]:
    import numpy as np
    import tritonclient.grpc as triton

    with triton.InferenceServerClient(address) as client:
        metadata = client.get_model_metadata(model)
        prompt = triton.InferInput("text_input", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([PROMPT.encode()], dtype=object))
        result = client.infer(model, [prompt], parameters={"max_tokens": NEW_TOKENS, "temperature": 0.0})
        return {
            "live": client.is_server_live(),
            "metadata": {"name": metadata.name, "inputs": [[i.name, i.datatype] for i in metadata.inputs]},
            "text": result.as_numpy("text_output")[0].decode(),
        }


async def kserve_calls(address: str, model: str) -> dict[str, Any]:
    from kserve import InferenceGRPCClient

    client = InferenceGRPCClient(address, timeout=30, retries=0)
    try:
        return {"live": await client.is_server_live(), "model_ready": await client.is_model_ready(model)}
    finally:
        await client.close()


def main() -> int:
    neighbour, address, model = sys.argv[1:4]
    # Everything is imported before the first call: the neighbour's stubs register inference.* in the
    # default descriptor pool, the client's register attnserve.v1 there, with one protobuf runtime.
    import google.protobuf
    import grpc

    if neighbour == "tritonclient":
        import tritonclient.grpc
        from tritonclient.grpc import service_pb2

        stubs = service_pb2.DESCRIPTOR.name
        assert tritonclient.grpc.InferenceServerClient
    elif neighbour == "kserve":
        import kserve
        from kserve.protocol.grpc import grpc_predict_v2_pb2

        stubs = grpc_predict_v2_pb2.DESCRIPTOR.name
        assert kserve.InferenceGRPCClient
    else:
        raise SystemExit(f"unknown neighbour {neighbour!r}")
    import attnserve_client
    from attnserve_client import Client
    from attnserve_client.pb import text_generation_pb2

    report: dict[str, Any] = {
        "versions": {
            name: importlib.metadata.version(name) for name in ("attnserve-client", neighbour, "protobuf", "grpcio")
        },
        "runtime": {"protobuf": google.protobuf.__version__, "grpcio": grpc.__version__},
        "client_file": attnserve_client.__file__,
        "stubs": [stubs, text_generation_pb2.DESCRIPTOR.name],
    }
    with Client(address) as client:
        generation = client.generate(PROMPT, model=model, max_new_tokens=NEW_TOKENS, temperature=0.0)
        report["attnserve"] = {"models": [m.name for m in client.models()], "text": generation.text}
    if neighbour == "tritonclient":
        report["tritonclient"] = tritonclient_calls(address, model)
    else:
        report["kserve"] = asyncio.run(kserve_calls(address, model))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
