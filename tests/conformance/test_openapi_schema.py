"""The schema machinery of :mod:`tests.conformance.openapi`, on hand-written bodies.

The sample bodies follow ``shared/box-api-contract.md`` (section in each test's comment); they
exercise the OpenAPI -> JSON Schema conversion and the documented relaxations without the
emulator.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jsonschema import Draft7Validator

from tests.conformance.openapi import (
    ConformanceError,
    find_response,
    normalise_template,
    to_json_schema,
    validate_component,
    validate_response,
)

JSON = "application/json"
SHA1 = "6c86371a8b3e4a0b9c0ad2a5b9c8c1d0e2f3a4b5"
TS = "2012-12-12T10:53:43-08:00"

# contract §2.1
FOLDER_CONFLICT_409: dict[str, Any] = {
    "type": "error",
    "status": 409,
    "code": "item_name_in_use",
    "context_info": {
        "conflicts": [{"type": "folder", "id": "12345", "sequence_id": "0", "etag": "0", "name": "Backups"}]
    },
    "help_url": "https://developer.box.com/guides/api-calls/permissions-and-errors/common-errors/",
    "message": "Item with the same name already exists",
    "request_id": "abcdef123456",
}

# contract §2.1
PARAMETER_ERROR_400: dict[str, Any] = {
    "type": "error",
    "status": 400,
    "code": "bad_request",
    "context_info": {"errors": [{"reason": "missing_parameter", "name": "parent", "message": "'parent' is required"}]},
    "help_url": "http://developers.box.com/docs/#errors",
    "message": "Bad Request",
    "request_id": "cksn44gg20atvj21",
}

# contract §2.3
RATE_LIMIT_429: dict[str, Any] = {
    "type": "error",
    "status": 429,
    "code": "rate_limit_exceeded",
    "help_url": "https://developer.box.com/guides/api-calls/permissions-and-errors/rate-limits/",
    "message": "Request rate limit exceeded, please try again later",
    "request_id": "abc123",
}

# contract §4.1
FILE_CONFLICT: dict[str, Any] = {
    "type": "file",
    "id": "517752619323",
    "file_version": {"type": "file_version", "id": "548294480523", "sha1": SHA1},
    "sequence_id": "0",
    "etag": "0",
    "sha1": SHA1,
    "name": "sql-output.txt",
}

ROOT_MINI: dict[str, Any] = {"type": "folder", "id": "0", "sequence_id": None, "etag": None, "name": "All Files"}
USER_MINI: dict[str, Any] = {"type": "user", "id": "11446498", "name": "Aaron Levie", "login": "ceo@example.com"}

# contract §4.1 (standard file entry)
FILE_ENTRY: dict[str, Any] = {
    "type": "file",
    "id": "12345",
    "etag": "1",
    "sequence_id": "1",
    "name": "pack.bin",
    "sha1": SHA1,
    "file_version": {"type": "file_version", "id": "67890", "sha1": SHA1},
    "description": "",
    "size": 1024,
    "path_collection": {"total_count": 1, "entries": [ROOT_MINI]},
    "created_at": TS,
    "modified_at": TS,
    "trashed_at": None,
    "purged_at": None,
    "content_created_at": TS,
    "content_modified_at": TS,
    "created_by": USER_MINI,
    "modified_by": USER_MINI,
    "owned_by": USER_MINI,
    "shared_link": None,
    "parent": ROOT_MINI,
    "item_status": "active",
}

# contract §6.3 (standard fields of the root folder)
ROOT_FOLDER: dict[str, Any] = {
    "type": "folder",
    "id": "0",
    "etag": None,
    "sequence_id": None,
    "name": "All Files",
    "created_at": None,
    "modified_at": None,
    "description": "",
    "size": 1024,
    "path_collection": {"total_count": 0, "entries": []},
    "created_by": {"type": "user", "id": "", "name": "", "login": ""},
    "modified_by": USER_MINI,
    "trashed_at": None,
    "purged_at": None,
    "content_created_at": None,
    "content_modified_at": None,
    "owned_by": USER_MINI,
    "shared_link": None,
    "folder_upload_email": None,
    "parent": None,
    "item_status": "active",
    "item_collection": {
        "total_count": 1,
        "entries": [FILE_ENTRY],
        "offset": 0,
        "limit": 100,
        "order": [{"by": "type", "direction": "ASC"}, {"by": "name", "direction": "ASC"}],
    },
}

SHARED_LINK: dict[str, Any] = {
    "url": "https://app.box.com/s/abc",
    "download_url": None,
    "vanity_url": None,
    "vanity_name": None,
    "access": "open",
    "effective_access": "open",
    "effective_permission": "can_download",
    "unshared_at": None,
    "is_password_enabled": False,
    "permissions": {"can_download": True, "can_preview": True, "can_edit": False},
    "download_count": 3,
    "preview_count": 1,
}

# contract §3.2
ACCESS_TOKEN: dict[str, Any] = {
    "access_token": "c3FIOG9vSGV4VHlGakxBQm9pT0tEbUZ1OT",
    "expires_in": 3600,
    "token_type": "bearer",
    "refresh_token": "c3FIOG9vSGV4VHlGakxBQm9pT0tEbUZ1OT2",
    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
    "restricted_to": [],
}

# contract §5.2
UPLOAD_SESSION: dict[str, Any] = {
    "id": "F971964745A5CD0C001BBE4E58196BFD",
    "type": "upload_session",
    "session_expires_at": TS,
    "part_size": 8388608,
    "total_parts": 13,
    "num_parts_processed": 0,
    "session_endpoints": {
        name: f"https://upload.box.com/api/2.0/files/upload_sessions/F97{suffix}"
        for name, suffix in [
            ("upload_part", ""),
            ("commit", "/commit"),
            ("abort", ""),
            ("list_parts", "/parts"),
            ("status", ""),
            ("log_event", "/log"),
        ]
    },
}

# contract §5.4
UPLOADED_PART: dict[str, Any] = {
    "part": {"part_id": "6F2D3486", "offset": 16777216, "size": 3222784, "sha1": SHA1},
}


def _invalid(method: str, path: str, status: int, body: Any, match: str) -> None:
    with pytest.raises(ConformanceError, match=match):
        validate_response(method, path, status, JSON, body)


# ------------------------------------------------------------------ conversion (no spec needed


def test_nullable_true_lets_null_through_and_nullable_false_does_not() -> None:
    nullable = Draft7Validator(to_json_schema({"type": "string", "nullable": True}))
    plain = Draft7Validator(to_json_schema({"type": "string", "nullable": False}))
    assert nullable.is_valid(None) and nullable.is_valid("x")
    assert not plain.is_valid(None) and plain.is_valid("x")


def test_a_nullable_member_of_all_of_makes_the_whole_all_of_nullable() -> None:
    schema = {"allOf": [{"type": "object", "required": ["url"]}, {}, {"nullable": True}]}
    validator = Draft7Validator(to_json_schema(schema))
    assert validator.is_valid(None)
    assert validator.is_valid({"url": "u"})
    assert not validator.is_valid({})


def test_openapi_only_keywords_and_extensions_are_dropped_but_property_names_are_kept() -> None:
    schema = {
        "type": "object",
        "example": {"a": 1},
        "x-box-tag": "files",
        "properties": {"example": {"type": "integer", "readOnly": True}, "x-name": {"type": "string"}},
    }
    converted = to_json_schema(schema)
    assert "example" not in converted and "x-box-tag" not in converted
    assert converted["properties"] == {"example": {"type": "integer"}, "x-name": {"type": "string"}}


# ------------------------------------------------------------------ error bodies


def test_a_box_error_body_from_the_contract_validates() -> None:
    validate_response("post", "/folders", 409, JSON, FOLDER_CONFLICT_409)
    validate_response("post", "/2.0/folders", 400, "application/json; charset=utf-8", PARAMETER_ERROR_400)


def test_an_error_body_missing_type_is_rejected() -> None:
    body = {k: v for k, v in FOLDER_CONFLICT_409.items() if k != "type"}
    _invalid("post", "/folders", 409, body, "'type' is a required property")


def test_an_error_body_of_another_type_is_rejected() -> None:
    _invalid("post", "/folders", 409, {**FOLDER_CONFLICT_409, "type": "folder"}, "'folder' is not one of")


def test_error_codes_outside_the_spec_list_are_accepted_but_must_be_strings() -> None:
    validate_response("get", "/users/me", 429, JSON, RATE_LIMIT_429)  # `default` -> ClientError
    _invalid("get", "/users/me", 429, {**RATE_LIMIT_429, "code": 429}, "is not of type 'string'")


def test_an_error_body_with_a_null_context_info_validates() -> None:
    validate_response(
        "get", "/folders/{folder_id}", 404, JSON, {**PARAMETER_ERROR_400, "status": 404, "context_info": None}
    )


def test_a_folder_conflict_in_array_form_holds_folder_minis() -> None:
    for entry in FOLDER_CONFLICT_409["context_info"]["conflicts"]:
        validate_component("Folder--Mini", entry)
    with pytest.raises(ConformanceError, match="'id' is a required property"):
        validate_component("Folder--Mini", {"type": "folder", "name": "x"})


def test_the_preflight_conflict_accepts_the_object_form_and_the_array_form() -> None:
    base = {**FOLDER_CONFLICT_409, "context_info": {"conflicts": FILE_CONFLICT}}
    validate_response("options", "/files/content", 409, JSON, base)
    validate_response("options", "/files/content", 409, JSON, {**base, "context_info": {"conflicts": [FILE_CONFLICT]}})
    bad = {**base, "context_info": {"conflicts": {**FILE_CONFLICT, "type": "folder"}}}
    _invalid("options", "/files/content", 409, bad, "does not match")


# ------------------------------------------------------------------ items, files, folders


def test_the_root_folder_with_null_parent_etag_and_sequence_id_validates() -> None:
    validate_response("get", "/folders/{folder_id}", 200, JSON, ROOT_FOLDER)


def test_a_file_whose_size_is_null_is_rejected() -> None:
    files = {"total_count": 1, "entries": [{**FILE_ENTRY, "size": None}]}
    _invalid("post", "/files/content", 201, files, "None is not of type 'integer'")


def test_a_timestamp_that_is_not_rfc3339_is_rejected() -> None:
    files = {"total_count": 1, "entries": [{**FILE_ENTRY, "created_at": "2012-12-12 10:53"}]}
    _invalid("post", "/files/content", 201, files, "is not a 'date-time'")
    files = {"total_count": 1, "entries": [{**FILE_ENTRY, "created_at": "2012-13-12T10:53:43Z"}]}
    _invalid("post", "/files/content", 201, files, "is not a 'date-time'")


def test_a_shared_link_without_accessed_validates_but_one_without_url_does_not() -> None:
    files = {"total_count": 1, "entries": [{**FILE_ENTRY, "shared_link": SHARED_LINK}]}
    validate_response("post", "/files/content", 201, JSON, files)
    link = {k: v for k, v in SHARED_LINK.items() if k != "url"}
    files = {"total_count": 1, "entries": [{**FILE_ENTRY, "shared_link": link}]}
    _invalid("post", "/files/content", 201, files, "'url' is a required property")


def test_item_entries_must_be_files_folders_or_web_links() -> None:
    items = copy.deepcopy(ROOT_FOLDER["item_collection"])
    items["entries"].append({"type": "folder", "id": "5", "sequence_id": "0", "etag": "0", "name": "sub"})
    validate_response("get", "/folders/{folder_id}/items", 200, JSON, items)
    items["entries"].append({"type": "banana", "id": "6"})
    _invalid("get", "/folders/{folder_id}/items", 200, items, "is not valid under any of the given schemas|not one of")


def test_a_marker_page_with_a_null_next_marker_validates() -> None:
    page = {"entries": [FILE_ENTRY], "limit": 1000, "next_marker": None}
    validate_response("get", "/folders/{folder_id}/items", 200, JSON, page)


# ------------------------------------------------------------------ uploads and tokens


def test_upload_session_and_part_samples_validate() -> None:
    validate_response("post", "/api/2.0/files/upload_sessions", 201, JSON, UPLOAD_SESSION)
    validate_response("put", "/files/upload_sessions/{upload_session_id}", 200, JSON, UPLOADED_PART)
    parts = {"total_count": 1, "limit": 1000, "offset": 0, "entries": [UPLOADED_PART["part"]]}
    validate_response("get", "/files/upload_sessions/{upload_session_id}/parts", 200, JSON, parts)
    _invalid("post", "/files/upload_sessions", 201, {**UPLOAD_SESSION, "type": "session"}, "not one of")
    _invalid("post", "/files/upload_sessions", 201, {**UPLOAD_SESSION, "total_parts": "13"}, "not of type 'integer'")


def test_the_token_response_sample_validates_and_issued_token_type_bearer_does_not() -> None:
    validate_response("post", "/oauth2/token", 200, JSON, ACCESS_TOKEN)
    _invalid("post", "/oauth2/token", 200, {**ACCESS_TOKEN, "issued_token_type": "bearer"}, "not one of")


def test_an_oauth2_error_validates() -> None:
    body = {"error": "invalid_grant", "error_description": "Refresh token has expired"}
    validate_response("post", "/oauth2/token", 400, JSON, body)
    validate_response("post", "/api/oauth2/token", 401, JSON, body)  # `default` is OAuth2Error too
    _invalid("post", "/oauth2/token", 400, {"error": 400}, "not of type 'string'")


# ------------------------------------------------------------------ lookup rules


def test_body_less_answers_pass_only_where_the_spec_documents_them() -> None:
    validate_response("post", "/files/upload_sessions/{upload_session_id}/commit", 202, None, None)
    validate_response("delete", "/files/upload_sessions/{upload_session_id}", 204, None, None)
    validate_response("get", "/users/me", 401, None, None)
    _invalid("post", "/files/upload_sessions/{upload_session_id}/commit", 202, {"x": 1}, "documents no body")
    with pytest.raises(ConformanceError, match="got none"):
        validate_response("get", "/users/me", 200, JSON, None)


def test_downloaded_bytes_are_not_validated_as_json() -> None:
    validate_response("get", "/files/{file_id}/content", 200, "application/octet-stream", None)
    validate_response("get", "/files/{file_id}/content", 302, None, None)


def test_unknown_paths_methods_and_media_types_fail_loudly() -> None:
    with pytest.raises(ConformanceError, match="not in the spec"):
        validate_response("get", "/no/such/path", 200, JSON, {})
    with pytest.raises(ConformanceError, match="not in the spec"):
        validate_response("patch", "/users/me", 200, JSON, {})
    with pytest.raises(ConformanceError, match="is not documented"):
        validate_response("get", "/users/me", 200, "text/html", {"type": "user", "id": "1"})


def test_a_status_without_a_response_or_default_fails_loudly() -> None:
    # GET /ai_agents documents 200, 400 and 500 only: there is no `default` to fall back to.
    with pytest.raises(ConformanceError, match="documents no such response"):
        find_response("get", "/ai_agents", 404)


def test_exact_statuses_win_over_default() -> None:
    assert find_response("post", "/folders", 409)[0] == "409"
    assert find_response("post", "/folders", 418)[0] == "default"


def test_api_and_upload_prefixes_map_to_spec_paths() -> None:
    assert normalise_template("/2.0/folders/{folder_id}") == "/folders/{folder_id}"
    assert normalise_template("/api/2.0/files/content") == "/files/content"
    assert normalise_template("/api/oauth2/token") == "/oauth2/token"
    assert normalise_template("/oauth2/token") == "/oauth2/token"
