"""Turn a CustomResourceDefinition YAML into the JSON schema of one served version.

    python deploy/schemas/extract_crd_schema.py CRD.yaml VERSION OUT.json

Writes spec.versions[VERSION].schema.openAPIV3Schema unchanged except that the
`description` texts are dropped (they are most of the size). tests/test_deploy.py
validates the custom resources in deploy/k8s against these files, rejecting
unknown fields as the API server's strict field validation does.
"""

from __future__ import annotations

import json
import sys

import yaml


def strip_descriptions(node):
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items()
                if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main(crd_path: str, version: str, out: str) -> None:
    with open(crd_path) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d)
    assert crd["kind"] == "CustomResourceDefinition", crd["kind"]
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strip_descriptions(ver["schema"]["openAPIV3Schema"])
    schema["x-olica-source"] = {
        "crd": crd["metadata"]["name"], "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"], "version": version,
    }
    with open(out, "w") as f:
        json.dump(schema, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
