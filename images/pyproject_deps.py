"""Print the pinned requirements of app/pyproject.toml, one per line, for the image's dependency layer.

    python3 pyproject_deps.py PYPROJECT [--extra NAME]... [--replace DIST=REQUIREMENT]...

Installing the dependencies from pyproject.toml alone (before the package's code is copied) keeps
that large layer cached across code changes. ``--replace onnxruntime=onnxruntime-gpu==X`` swaps a
distribution (the GPU variant: both wheels ship the ``onnxruntime`` module and must not coexist).
"""

import argparse
import re
import tomllib

parser = argparse.ArgumentParser()
parser.add_argument("pyproject")
parser.add_argument("--extra", action="append", default=[])
parser.add_argument("--replace", action="append", default=[])
args = parser.parse_args()

with open(args.pyproject, "rb") as f:
    project = tomllib.load(f)["project"]
reqs = list(project["dependencies"])
for extra in args.extra:
    if extra:
        reqs += project["optional-dependencies"][extra]
replace = dict(r.split("=", 1) for r in args.replace if r)


def dist(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


for req in reqs:
    print(replace.get(dist(req), req))
