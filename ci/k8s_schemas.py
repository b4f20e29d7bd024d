"""Lay out the built-in Kubernetes JSON schemas of a kubernetes-validate wheel for kubeconform.

    python ci/k8s_schemas.py WHEEL K8S_VERSION OUT_DIR

The wheel carries ``kubernetes-json-schema/<version>-local-strict/<kind>-<group>-<version>.json``
files (``additionalProperties: false`` throughout) whose ``$ref``s point at
``/api/_definitions.json`` under an ``https://kubernetes.io`` ``$id``. kubeconform would try to
fetch those URLs, so we drop ``$id`` and make every ``$ref`` relative to the file's own folder.
The result lands in OUT_DIR with kubeconform's naming
(``{{ .ResourceKind }}{{ .KindSuffix }}.json``) plus ``_definitions.json``.
Offline, standard library only.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path


def _relativise(node):
    if isinstance(node, dict):
        node.pop("$id", None)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("/api/"):
            node["$ref"] = ref[len("/api/"):]
        for value in node.values():
            _relativise(value)
    elif isinstance(node, list):
        for value in node:
            _relativise(value)
    return node


def main(wheel: str, version: str, out: str) -> int:
    prefix = f"kubernetes_validate/kubernetes-json-schema/{version}-local-strict/"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.startswith(prefix) or not name.endswith(".json"):
                continue
            schema = _relativise(json.loads(archive.read(name)))
            (out_dir / name[len(prefix):]).write_text(json.dumps(schema))
            count += 1
    if not (out_dir / "_definitions.json").exists() or count < 100:
        print(f"{wheel}: no usable {version} schemas ({count} files)", file=sys.stderr)
        return 1
    print(f"{count} schemas for {version} in {out_dir}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
