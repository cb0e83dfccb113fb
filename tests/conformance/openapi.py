"""Validate Box API response bodies against Box's own OpenAPI spec.

The spec (``shared/box-openapi/openapi.json``, OpenAPI 3.0.2) is read at test time from
:data:`tests.conftest.OPENAPI_JSON`; nothing of it is copied into the repository. When it is
missing, :func:`spec` skips the calling test (and fails under ``CI=true``) through ``require``.

OpenAPI 3.0 schema objects are not JSON Schema. :func:`to_json_schema` converts them:

- ``nullable: true`` becomes ``anyOf: [{"type": "null"}, <schema>]``. Box's generator also
  writes "this ``$ref`` may be null" as ``allOf: [{"$ref": ...}, {}, {"nullable": true}]``
  (``parent``, ``shared_link``, ``lock`` ...); a ``nullable: true`` member of ``allOf`` makes the
  whole ``allOf`` nullable. ``nullable: false`` alone constrains nothing, as in OpenAPI 3.0.
- OpenAPI-only keywords (``example``, ``discriminator``, ``readOnly``, ``writeOnly``, ``xml``,
  ``externalDocs``, ``deprecated``) and every ``x-*`` extension are dropped.
- ``$ref: "#/components/schemas/X"`` is kept: each validator's root carries the converted
  ``components.schemas`` so the pointers resolve as written.
- ``format: date-time`` is checked as RFC 3339; other formats (Box's ``int64``, ``digest``,
  ``token``, ``url``...) are annotations only.

Relaxations and tightenings of the spec are listed in :func:`_patch_spec`, each naming the spec
path it touches and the contract section (``shared/box-api-contract.md``) that motivates it.

Response lookup follows OpenAPI 3.0: the exact status code, then its range (``4XX``), then
``default``. Anything the spec does not describe fails loudly (:class:`ConformanceError`), except
the documented body-less answers (202 commit, 204 abort, 302/304, and a 401 without a body).
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from functools import cache
from typing import Any

from jsonschema import Draft7Validator, FormatChecker
from jsonschema.exceptions import relevance

from tests.conftest import OPENAPI_JSON, require

JSON_MEDIA_TYPES = frozenset({"application/json"})

# Keywords of the OpenAPI 3.0 Schema Object that JSON Schema does not have (or means otherwise).
_OAS_ONLY_KEYWORDS = frozenset(
    {"nullable", "discriminator", "readOnly", "writeOnly", "xml", "externalDocs", "example", "deprecated"}
)
# Keywords whose value is a map of name -> schema, a list of schemas, or one schema.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "definitions"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf"})
_SCHEMA_SINGLES = frozenset({"items", "additionalProperties", "not"})

# Box's 401 carries its reason in `WWW-Authenticate`, often with an empty body (contract §2.2).
_BODYLESS_OK_STATUSES = frozenset({401})

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class ConformanceError(AssertionError):
    """A response the spec does not describe, or a body that does not match its schema."""


# --------------------------------------------------------------------------------------------
# Loading and patching the spec


@cache
def _load_spec() -> dict[str, Any]:
    with open(OPENAPI_JSON, encoding="utf-8") as f:
        raw: dict[str, Any] = json.load(f)
    if not str(raw.get("openapi", "")).startswith("3.0"):
        raise ConformanceError(f"{OPENAPI_JSON}: expected an OpenAPI 3.0 document, got {raw.get('openapi')!r}")
    _patch_spec(raw)
    return raw


def spec() -> dict[str, Any]:
    """The patched spec (see :func:`_patch_spec`); skips the caller when the file is missing."""
    require(OPENAPI_JSON.is_file(), f"Box OpenAPI spec not found at {OPENAPI_JSON} (set BOXD_SHARED)")
    return _load_spec()


def _node(doc: Any, path: str) -> Any:
    """The node at a dotted spec path such as ``components.schemas.File.allOf[1]``."""
    node = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


def _patch_spec(doc: dict[str, Any]) -> None:
    """Apply the documented relaxations (and one tightening) to the raw spec, in place.

    Each step asserts that the spec still has the shape it patches, so an updated spec that
    fixes (or moves) the problem fails here instead of silently changing what is checked.
    """
    schemas = doc["components"]["schemas"]

    # RELAXATION (contract §10) -- components.schemas.ClientError.properties.code.enum
    # The spec's `code` is a closed list that lacks codes Box really sends (item_name_in_use,
    # rate_limit_exceeded, bad_digest, ...). Any string is accepted.
    code = _node(doc, "components.schemas.ClientError.properties.code")
    if "enum" not in code:
        raise ConformanceError("spec changed: ClientError.properties.code has no enum to open up")
    del code["enum"]

    # RELAXATION (contract §10) -- the `required` list of shared_link in
    #   components.schemas.File.allOf[1].properties.shared_link.allOf[0].required
    #   components.schemas.Folder.allOf[1].properties.shared_link.allOf[0].required
    #   components.schemas.WebLink.allOf[1].properties.shared_link.allOf[0].required
    # names `accessed`, which the schema never defines and Box's own examples omit.
    for owner in ("File", "Folder", "WebLink"):
        link = _node(doc, f"components.schemas.{owner}.allOf[1].properties.shared_link.allOf[0]")
        if "accessed" not in link.get("required", ()) or "accessed" in link.get("properties", {}):
            raise ConformanceError(f"spec changed: {owner}.shared_link no longer requires an undefined 'accessed'")
        link["required"] = [name for name in link["required"] if name != "accessed"]

    # RELAXATION (contract §4.1, §4.3) --
    #   components.schemas.ConflictError.allOf[1].properties.context_info.properties.conflicts
    # The spec declares an array of FileConflict; real Box answers a file conflict (upload,
    # preflight, session create) with a single FileConflict object. Both forms are accepted;
    # each still has to be a valid FileConflict.
    conflicts = _node(doc, "components.schemas.ConflictError.allOf[1].properties.context_info.properties.conflicts")
    if conflicts.get("type") != "array" or "items" not in conflicts:
        raise ConformanceError("spec changed: ConflictError.context_info.conflicts is no longer an array")
    _node(doc, "components.schemas.ConflictError.allOf[1].properties.context_info.properties")["conflicts"] = {
        "oneOf": [conflicts, copy.deepcopy(conflicts["items"])]
    }

    # TIGHTENING (contract §2.1, §2.3) -- components.schemas.ClientError.required (absent in the spec)
    # The spec requires no property of an error body at all, so `{}` would pass. Every error
    # body Box sends carries `type`, `status`, `code` and `message`, and clients (boxd, the SDK)
    # branch on `code`; those four are required here.
    client_error = schemas["ClientError"]
    if "required" in client_error:
        raise ConformanceError("spec changed: ClientError now has a required list; revisit this tightening")
    client_error["required"] = ["type", "status", "code", "message"]


# --------------------------------------------------------------------------------------------
# OpenAPI 3.0 schema -> JSON Schema (draft 7)


def _allows_null(schema: dict[str, Any]) -> bool:
    if schema.get("nullable") is True:
        return True
    return any(isinstance(member, dict) and member.get("nullable") is True for member in schema.get("allOf", ()))


def to_json_schema(schema: Any) -> Any:
    """Convert one OpenAPI 3.0 Schema Object (recursively) to JSON Schema draft 7."""
    if not isinstance(schema, dict):
        return schema  # e.g. `additionalProperties: true`
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _OAS_ONLY_KEYWORDS or key.startswith("x-"):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key in _SCHEMA_SINGLES:
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if _allows_null(schema):
        return {"anyOf": [{"type": "null"}, out]}
    return out


@cache
def _converted_components() -> dict[str, Any]:
    return {name: to_json_schema(s) for name, s in spec()["components"]["schemas"].items()}


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    checker.checks("date-time")(_is_rfc3339)
    return checker


_FORMATS = _format_checker()


def _validator(schema: dict[str, Any]) -> Draft7Validator:
    root = {"allOf": [to_json_schema(schema)], "components": {"schemas": _converted_components()}}
    return Draft7Validator(root, format_checker=_FORMATS)


def _raise_on_errors(validator: Draft7Validator, instance: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(instance), key=relevance, reverse=True)
    if not errors:
        return
    lines = []
    for err in errors[:5]:
        # Descend into oneOf/anyOf failures to the most relevant leaf.
        leaf = err
        while leaf.context:
            # Like jsonschema's best_match: the deepest error, from a branch of the instance's type.
            leaf = min(leaf.context, key=relevance)
        lines.append(f"  at {leaf.json_path}: {leaf.message}")
    more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
    body = json.dumps(instance)[:2000]
    raise ConformanceError(f"{what}: body does not match the spec\n" + "\n".join(lines) + more + f"\nbody: {body}")


# --------------------------------------------------------------------------------------------
# Public API


def normalise_template(path_template: str) -> str:
    """``/2.0/folders/{folder_id}`` and ``/api/2.0/files/content`` -> the spec's path keys."""
    for prefix in ("/api/2.0", "/2.0"):
        if path_template.startswith(prefix + "/"):
            return path_template[len(prefix) :]
    if path_template == "/api/oauth2/token":
        return "/oauth2/token"
    return path_template


def _operation(method: str, template: str) -> dict[str, Any]:
    paths = spec()["paths"]
    if template not in paths:
        raise ConformanceError(f"path {template!r} is not in the spec")
    op = paths[template].get(method)
    if not isinstance(op, dict):
        raise ConformanceError(f"{method.upper()} {template} is not in the spec")
    return op


def find_response(method: str, path_template: str, status: int) -> tuple[str, dict[str, Any]]:
    """The spec's Response Object for an answer, and the key it was found under.

    OpenAPI 3.0 precedence: the exact code, then the range (``4XX``), then ``default``.
    """
    template = normalise_template(path_template)
    responses: dict[str, Any] = _operation(method.lower(), template).get("responses", {})
    for key in (str(status), f"{str(status)[0]}XX", "default"):
        if key in responses:
            return key, _response_object(responses[key])
    raise ConformanceError(
        f"{method.upper()} {template} -> {status}: the spec documents no such response (has {sorted(responses)})"
    )


def _response_object(response: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in response:
        resolved: dict[str, Any] = _node(spec(), response["$ref"].removeprefix("#/").replace("/", "."))
        return resolved
    return response


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def validate_response(method: str, path_template: str, status: int, content_type: str | None, body_json: Any) -> None:
    """Check one answer against the spec; raise :class:`ConformanceError` when it does not conform.

    ``body_json`` is the decoded JSON body, or ``None`` when the body is empty or not JSON
    (e.g. downloaded bytes); no Box response body is the JSON literal ``null``.
    """
    key, response = find_response(method, path_template, status)
    what = f"{method.upper()} {normalise_template(path_template)} -> {status} (spec response {key!r})"
    content: dict[str, Any] = response.get("content") or {}
    mtype = media_type(content_type)

    if not content:
        # Documented body-less answer: 202 commit (+Retry-After), 204, 302, 304.
        if body_json is not None:
            raise ConformanceError(f"{what}: the spec documents no body, got {json.dumps(body_json)[:500]}")
        return

    if body_json is None:
        if status in _BODYLESS_OK_STATUSES:
            return
        documented_binary = [t for t in content if t not in JSON_MEDIA_TYPES]
        if documented_binary and mtype not in JSON_MEDIA_TYPES:
            # Downloads: the spec documents application/octet-stream; bytes are not validated.
            return
        raise ConformanceError(
            f"{what}: the spec documents a {sorted(content)} body, got none (Content-Type {mtype!r})"
        )

    if mtype not in content:
        raise ConformanceError(f"{what}: Content-Type {mtype!r} is not documented (spec has {sorted(content)})")
    schema = content[mtype].get("schema")
    if schema is None:
        raise ConformanceError(f"{what}: the spec documents {mtype} but no schema for it")
    _raise_on_errors(_cached_validator(method.lower(), normalise_template(path_template), key, mtype), body_json, what)


@cache
def _cached_validator(method: str, template: str, key: str, mtype: str) -> Draft7Validator:
    response = _response_object(_operation(method, template)["responses"][key])
    return _validator(response["content"][mtype]["schema"])


def validate_component(name: str, instance: Any) -> None:
    """Check ``instance`` against ``components.schemas.<name>`` (e.g. a conflict entry)."""
    if name not in spec()["components"]["schemas"]:
        raise ConformanceError(f"components.schemas.{name} is not in the spec")
    _raise_on_errors(_component_validator(name), instance, f"components.schemas.{name}")


@cache
def _component_validator(name: str) -> Draft7Validator:
    return _validator({"$ref": f"#/components/schemas/{name}"})
