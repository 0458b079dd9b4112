"""Checks the service's OpenAPI document.

1. The document is valid OpenAPI (openapi-spec-validator).
2. Every example in it matches the schema it illustrates.
3. Optionally, real answers of the service (a JSON list of {"method", "path", "status", "body"}
   given with --samples) match the schema the document gives for that operation and status.

Run through scripts/validate-openapi.sh, which provides the packages. Exit status 0 when all
checks pass, 1 with one line per problem otherwise.
"""

import argparse
import json
import sys

from jsonschema.exceptions import best_match
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_URI = "urn:openapi-document"


def pointer(parts):
    return "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class Checker:
    def __init__(self, doc):
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)
        self.problems = []

    def validator(self, parts):
        """A validator for the schema found at `parts` inside the document."""
        return OAS31Validator(
            {"$ref": f"{DOC_URI}#/{pointer(parts)}"}, registry=self.registry
        )

    def check(self, value, schema_parts, what):
        error = best_match(self.validator(schema_parts).iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            self.problems.append(f"{what}: at {where}: {error.message}")

    def resolve(self, parts):
        """Follows local `$ref`s; returns the location of the referenced object."""
        node = self.get(parts)
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"non-local $ref {ref!r} at {pointer(parts)}")
            parts = [p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]
            node = self.get(parts)
        return parts

    def get(self, parts):
        node = self.doc
        for p in parts:
            node = node[p]
        return node

    # -- examples ------------------------------------------------------------------------

    def examples(self):
        for name, schema in self.doc.get("components", {}).get("schemas", {}).items():
            self.schema_examples(["components", "schemas", name], schema)
        for path, item in self.doc.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                here = ["paths", path, method]
                if "requestBody" in op:
                    self.media_examples(here + ["requestBody"], f"{method.upper()} {path} request")
                for status in op["responses"]:
                    self.media_examples(
                        here + ["responses", status], f"{method.upper()} {path} {status}"
                    )
        for name in self.doc.get("components", {}).get("responses", {}):
            self.media_examples(["components", "responses", name], f"response {name}")

    def schema_examples(self, parts, schema):
        """The `example`/`examples` of a schema and of its properties, recursively."""
        if not isinstance(schema, dict):
            return
        what = f"example of {pointer(parts)}"
        if "example" in schema:
            self.check(schema["example"], parts, what)
        for i, ex in enumerate(schema.get("examples", []) if isinstance(schema.get("examples"), list) else []):
            self.check(ex, parts, f"{what} #{i}")
        for key in ("properties",):
            for name, sub in schema.get(key, {}).items():
                self.schema_examples(parts + [key, name], sub)
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                self.schema_examples(parts + [key], schema[key])
        for key in ("oneOf", "anyOf", "allOf"):
            for i, sub in enumerate(schema.get(key, [])):
                self.schema_examples(parts + [key, i], sub)

    def media_examples(self, parts, what):
        parts = self.resolve(parts)
        for ctype, media in self.get(parts).get("content", {}).items():
            if "schema" not in media:
                continue
            schema_parts = parts + ["content", ctype, "schema"]
            if "example" in media:
                self.check(media["example"], schema_parts, f"{what} example ({ctype})")
            for name, ex in media.get("examples", {}).items():
                if "value" in ex:
                    self.check(ex["value"], schema_parts, f"{what} example {name!r} ({ctype})")

    # -- live answers --------------------------------------------------------------------

    def samples(self, samples):
        for s in samples:
            method, path, status = s["method"].lower(), s["path"], str(s["status"])
            what = f"the service's {status} answer to {method.upper()} {path}"
            op = self.doc.get("paths", {}).get(path, {}).get(method)
            if op is None:
                self.problems.append(f"{what}: the document has no such operation")
                continue
            if status not in op["responses"]:
                self.problems.append(f"{what}: the document lists no {status} response")
                continue
            parts = self.resolve(["paths", path, method, "responses", status])
            content = self.get(parts).get("content", {})
            if "application/json" not in content:
                self.problems.append(f"{what}: the document gives no JSON body for it")
                continue
            self.check(s["body"], parts + ["content", "application/json", "schema"], what)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the OpenAPI document (JSON file)")
    parser.add_argument("--samples", help="JSON list of real answers to check against it")
    args = parser.parse_args()

    try:
        with open(args.spec, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{args.spec}: not a readable JSON document: {e}")
        return 1
    if not isinstance(doc, dict) or "openapi" not in doc:
        print(f"{args.spec}: not an OpenAPI document (no 'openapi' field): {str(doc)[:200]}")
        return 1

    try:
        validate(doc)
    except Exception as e:  # the validator's own error types vary between versions
        print(f"{args.spec}: invalid OpenAPI {doc.get('openapi')}: {e}")
        return 1

    checker = Checker(doc)
    checker.examples()
    if args.samples:
        with open(args.samples, encoding="utf-8") as f:
            checker.samples(json.load(f))
    for p in checker.problems:
        print(p)
    if checker.problems:
        print(f"{args.spec}: {len(checker.problems)} problem(s)")
        return 1
    print(f"{args.spec}: valid OpenAPI {doc['openapi']}; examples match their schemas"
          + ("; the service's answers match the document" if args.samples else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
