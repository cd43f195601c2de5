"""Load KServe manifests into the kserve SDK's generated models, refusing any field they don't know.

Run with the interpreter of .venv-kserve (the SDK pins protobuf<7, and the test venv runs protobuf 7):

    .venv-kserve/bin/python tests/deploy/kserve_schema_check.py docker/k8s/kserve/inferenceservice.yaml

The SDK's own ``ApiClient.deserialize`` silently drops keys it does not know, so a misspelt field
would pass. This walks each document against the models' ``openapi_types``/``attribute_map``
(KServe's classes, and the Kubernetes client's for the embedded pod and container specs), rejects
unknown keys and wrongly typed values, and then builds the model objects, whose setters check the
required fields. Exit status 0 when every document loads, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path
from typing import Any

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import yaml
from kserve.models import V1beta1InferenceService

# Types the generated code names but that are plain scalars on the wire.
SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str, datetime.datetime),
    "date": (str, datetime.date),
    # Kubernetes quantities ("500m", "1Gi") and int-or-string fields (ports by number or name).
    "ResourceQuantity": (str, int, float),
    "IntOrString": (str, int),
    "bytes": (str,),
    "object": (object,),
}
# The KServe models spell containers list[X] / dict(str, X); the Kubernetes client's List[X] / Dict[str, X].
LIST = re.compile(r"^(?:list|List)\[(?P<item>.+)\]$")
DICT = re.compile(r"^(?:dict\(str, (?P<paren>.+)\)|Dict\[str, (?P<bracket>.+)\])$")
ROOTS = {"InferenceService": V1beta1InferenceService}


class SchemaError(ValueError):
    """A field the models don't know, or a value of the wrong type, at a path in the document."""


def model_class(type_name: str) -> type:
    for module in (kserve_models, k8s_models):
        klass = getattr(module, type_name, None)
        if isinstance(klass, type):
            return klass
    raise SchemaError(f"the SDK names a type it does not define: {type_name}")


def load(value: Any, type_name: str, path: str) -> Any:
    """``value`` converted to ``type_name``, or SchemaError naming ``path``."""
    if value is None:
        return None
    if type_name in SCALARS:
        allowed = SCALARS[type_name]
        # bool is an int in Python; YAML's `true` is not a number and a number is not a bool.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise SchemaError(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    if match := LIST.match(type_name):
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        return [load(item, match["item"], f"{path}[{i}]") for i, item in enumerate(value)]
    if match := DICT.match(type_name):
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected a mapping, got {type(value).__name__}")
        item_type = match["paren"] or match["bracket"]
        return {key: load(item, item_type, f"{path}.{key}") for key, item in value.items()}
    return load_model(value, model_class(type_name), path)


def load_model(data: Any, klass: type, path: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a {klass.__name__} mapping, got {type(data).__name__}")
    attribute_of = {json_key: attr for attr, json_key in klass.attribute_map.items()}  # type: ignore[attr-defined]
    unknown = sorted(set(data) - set(attribute_of))
    if unknown:
        raise SchemaError(f"{path}: {klass.__name__} has no field(s) {', '.join(unknown)}")
    kwargs = {
        attribute_of[key]: load(value, klass.openapi_types[attribute_of[key]], f"{path}.{key}")  # type: ignore[attr-defined]
        for key, value in data.items()
    }
    try:
        return klass(**kwargs)
    except ValueError as exc:  # the generated setters' own checks (required fields, enums)
        raise SchemaError(f"{path}: {klass.__name__}: {exc}") from exc


def check_file(path: Path) -> list[str]:
    problems = []
    for index, document in enumerate(yaml.safe_load_all(path.read_text())):
        where = f"{path}#{index}"
        kind = document.get("kind") if isinstance(document, dict) else None
        root = ROOTS.get(kind or "")
        if root is None:
            problems.append(f"{where}: kind {kind!r} is not one of {sorted(ROOTS)}")
            continue
        if document.get("apiVersion") != "serving.kserve.io/v1beta1":
            problems.append(f"{where}: apiVersion {document.get('apiVersion')!r} is not serving.kserve.io/v1beta1")
            continue
        try:
            load_model(document, root, kind)
        except SchemaError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def main(argv: list[str]) -> int:
    problems = [problem for name in argv for problem in check_file(Path(name))]
    for problem in problems:
        sys.stdout.write(problem + "\n")
    if not problems:
        sys.stdout.write(f"ok: {len(argv)} file(s) load into the kserve SDK's models\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
