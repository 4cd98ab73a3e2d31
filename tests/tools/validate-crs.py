#!/usr/bin/env python3
"""Validates custom resources against the CRDs rendered with them.

Usage: validate-crs.py FILE...  (multi-document YAML or JSON streams)

Every object whose apiVersion group is served by a CustomResourceDefinition in
the same files is validated against that CRD version's openAPIV3Schema
(jsonschema, Draft 7; Kubernetes' x-kubernetes-* keywords are ignored).
A custom resource of a kind that no file defines is an error too, unless
--known GROUP/KIND names it. Prints one line per resource; exits 1 on any
problem.
"""
import sys

import jsonschema
import yaml


def main(argv):
    known = set()
    files = []
    it = iter(argv)
    for a in it:
        if a == "--known":
            known.add(next(it))
        else:
            files.append(a)
    docs = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for d in yaml.safe_load_all(fh):
                if d:
                    docs.append((f, d))
    schemas = {}
    for _, d in docs:
        if d.get("kind") != "CustomResourceDefinition":
            continue
        spec = d["spec"]
        for v in spec["versions"]:
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            if schema is not None:
                schemas[(spec["group"], v["name"], spec["names"]["kind"])] = schema
    problems = 0
    checked = 0
    for f, d in docs:
        api = d.get("apiVersion", "")
        if "/" not in api:
            continue
        group, version = api.split("/", 1)
        if d.get("kind") == "CustomResourceDefinition":
            continue
        key = (group, version, d.get("kind"))
        what = f"{f}: {d.get('kind')} {d.get('metadata', {}).get('name')}"
        if key not in schemas:
            builtin = "." not in group or group.endswith(".k8s.io")
            if not builtin and f"{group}/{d.get('kind')}" not in known:
                print(f"ERROR {what}: no CRD in these files defines {group}/{version} {d.get('kind')}")
                problems += 1
            continue
        errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(d), key=str)
        checked += 1
        if errors:
            problems += 1
            for e in errors:
                print(f"ERROR {what}: {'.'.join(map(str, e.path))}: {e.message}")
        else:
            print(f"valid {what} against its CRD")
    print(f"custom resources: {checked} checked, {problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
