"""A corpus of hostile and broken inputs. Every one gets an OpenAI-shaped 4xx
(never a 5xx, never a traceback); broken batch files fail validation cleanly
with ``errors.data`` instead of crashing the worker."""

import codecs
import json

import pytest

from batches import tasks
from batches.models import Batch, BatchRequest, BatchStatus
from files_app.models import File
from tests.conftest import chat_line, jsonl, run_batches

BOUNDARY = "corpus-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts, close=True):
    """A raw multipart body: parts are (name, value) fields or (name, filename, bytes) files."""
    out = b""
    for part in parts:
        if len(part) == 2:
            name, value = part
            out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + _bytes(value) + b"\r\n"
        else:
            name, filename, content = part
            out += (
                (
                    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + content
                + b"\r\n"
            )
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _bytes(value):
    return value if isinstance(value, bytes) else str(value).encode()


GOOD_LINES = jsonl([chat_line("a")])


def batch_body(**overrides):
    body = {"input_file_id": "{file}", "endpoint": "/v1/chat/completions", "completion_window": "24h", **overrides}
    return json.dumps(body)


def raw_json(text):
    return text.encode() if isinstance(text, str) else text


# Each case: (id, method, path, body bytes or None, content type, extra headers, expected status).
# "{file}" in a path or body becomes the id of a valid batch input file the caller owns.
API_CASES = [
    # --- JSON bodies that are not JSON, or not an object ---
    ("truncated_json", "post", "/v1/batches", b"{", "application/json", {}, 400),
    ("trailing_comma", "post", "/v1/batches", b'{"input_file_id": "x",', "application/json", {}, 400),
    ("json_array", "post", "/v1/batches", b"[]", "application/json", {}, 400),
    ("json_string", "post", "/v1/batches", b'"batch please"', "application/json", {}, 400),
    ("json_null", "post", "/v1/batches", b"null", "application/json", {}, 400),
    ("json_number", "post", "/v1/batches", b"42", "application/json", {}, 400),
    ("json_true", "post", "/v1/batches", b"true", "application/json", {}, 400),
    ("empty_body", "post", "/v1/batches", b"", "application/json", {}, 400),
    ("nan_literal", "post", "/v1/batches", b'{"input_file_id": NaN}', "application/json", {}, 400),
    ("infinity_literal", "post", "/v1/batches", b'{"input_file_id": -Infinity}', "application/json", {}, 400),
    ("float_overflow", "post", "/v1/batches", raw_json(batch_body()[:-1] + ', "x": 1e400}'), "application/json", {}, 400),
    ("int_5000_digits", "post", "/v1/batches", raw_json('{"input_file_id": 1' + "0" * 5000 + "}"), "application/json", {}, 400),
    ("nested_arrays_100k", "post", "/v1/batches", b"[" * 100_000 + b"]" * 100_000, "application/json", {}, 400),
    ("nested_objects_50k", "post", "/v1/batches", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json", {}, 400),
    ("nested_metadata", "post", "/v1/batches", raw_json(batch_body(metadata={"a": {"b": {"c": {"d": "e"}}}})), "application/json", {}, 400),
    ("nul_in_id", "post", "/v1/batches", raw_json(batch_body(input_file_id="file-\u0000")), "application/json", {}, 400),
    ("nul_in_metadata", "post", "/v1/batches", raw_json(batch_body(metadata={"k": "v\u0000"})), "application/json", {}, 400),
    ("nul_in_key", "post", "/v1/batches", raw_json(batch_body(metadata={"k\u0000": "v"})), "application/json", {}, 400),
    ("lone_surrogate", "post", "/v1/batches", raw_json(batch_body()[:-1] + ', "metadata": {"k": "\\ud800"}}'), "application/json", {}, 400),
    ("utf8_bom", "post", "/v1/batches", codecs.BOM_UTF8 + raw_json(batch_body()), "application/json", {}, 400),
    ("latin1_bytes", "post", "/v1/batches", raw_json(batch_body(metadata={"k": "é"})).replace(b"\\u00e9", b"\xe9"), "application/json", {}, 400),
    ("utf16_body", "post", "/v1/batches", batch_body().encode("utf-16"), "application/json", {}, 400),
    ("wrong_declared_charset", "post", "/v1/batches", raw_json(batch_body(metadata={"k": "日本"})), "application/json; charset=utf-16", {}, 400),
    # --- wrong content types ---
    ("text_plain", "post", "/v1/batches", raw_json(batch_body()), "text/plain", {}, 415),
    ("urlencoded_batch", "post", "/v1/batches", b"input_file_id=x&endpoint=y", "application/x-www-form-urlencoded", {}, 415),
    ("multipart_batch", "post", "/v1/batches", form(("input_file_id", "x")), MULTIPART, {}, 415),
    ("xml_batch", "post", "/v1/batches", b"<batch/>", "application/xml", {}, 415),
    ("json_to_files", "post", "/v1/files", b'{"purpose": "batch"}', "application/json", {}, 415),
    ("urlencoded_to_files", "post", "/v1/files", b"purpose=batch&file=abc", "application/x-www-form-urlencoded", {}, 415),
    # --- wrong field types and values ---
    ("input_file_id_int", "post", "/v1/batches", raw_json(batch_body(input_file_id=12)), "application/json", {}, 400),
    ("input_file_id_list", "post", "/v1/batches", raw_json(batch_body(input_file_id=["file-1"])), "application/json", {}, 400),
    ("input_file_id_object", "post", "/v1/batches", raw_json(batch_body(input_file_id={"id": "x"})), "application/json", {}, 400),
    ("endpoint_unknown", "post", "/v1/batches", raw_json(batch_body(endpoint="/v1/images/generations")), "application/json", {}, 400),
    ("endpoint_traversal", "post", "/v1/batches", raw_json(batch_body(endpoint="/v1/../admin/")), "application/json", {}, 400),
    ("window_48h", "post", "/v1/batches", raw_json(batch_body(completion_window="48h")), "application/json", {}, 400),
    ("window_int", "post", "/v1/batches", raw_json(batch_body(completion_window=24)), "application/json", {}, 400),
    ("metadata_list", "post", "/v1/batches", raw_json(batch_body(metadata=["a", "b"])), "application/json", {}, 400),
    ("metadata_17_pairs", "post", "/v1/batches", raw_json(batch_body(metadata={f"k{n}": "v" for n in range(17)})), "application/json", {}, 400),
    ("metadata_10k_pairs", "post", "/v1/batches", raw_json(batch_body(metadata={f"k{n}": "v" for n in range(10_000)})), "application/json", {}, 400),
    ("metadata_int_value", "post", "/v1/batches", raw_json(batch_body(metadata={"k": 1})), "application/json", {}, 400),
    ("metadata_long_key", "post", "/v1/batches", raw_json(batch_body(metadata={"k" * 65: "v"})), "application/json", {}, 400),
    ("metadata_long_value", "post", "/v1/batches", raw_json(batch_body(metadata={"k": "v" * 513})), "application/json", {}, 400),
    ("expiry_bad_anchor", "post", "/v1/batches", raw_json(batch_body(output_expires_after={"anchor": "now", "seconds": 3600})), "application/json", {}, 400),
    ("expiry_string_seconds", "post", "/v1/batches", raw_json(batch_body(output_expires_after={"anchor": "created_at", "seconds": "3600"})), "application/json", {}, 400),
    ("expiry_huge_seconds", "post", "/v1/batches", raw_json(batch_body(output_expires_after={"anchor": "created_at", "seconds": 10**30})), "application/json", {}, 400),
    ("idempotency_key_300", "post", "/v1/batches", raw_json(batch_body()), "application/json", {"HTTP_IDEMPOTENCY_KEY": "k" * 300}, 400),
    ("body_over_memory_cap", "post", "/v1/batches", raw_json(batch_body(metadata={"k": "v" * (3 * 1024 * 1024)})), "application/json", {}, 413),
    # --- multipart uploads with the wrong fields ---
    ("no_file_field", "post", "/v1/files", form(("purpose", "batch")), MULTIPART, {}, 400),
    ("no_purpose", "post", "/v1/files", form(("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("unknown_purpose", "post", "/v1/files", form(("purpose", "world-domination"), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("output_purpose", "post", "/v1/files", form(("purpose", "batch_output"), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("nul_purpose", "post", "/v1/files", form(("purpose", "batch\x00"), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("file_as_text_field", "post", "/v1/files", form(("purpose", "batch"), ("file", "not a file")), MULTIPART, {}, 400),
    ("file_under_other_name", "post", "/v1/files", form(("purpose", "batch"), ("upload", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("batch_file_not_jsonl", "post", "/v1/files", form(("purpose", "batch"), ("file", "in.csv", b"a,b\n")), MULTIPART, {}, 400),
    ("no_boundary", "post", "/v1/files", form(("purpose", "batch")), "multipart/form-data", {}, 400),
    ("garbage_multipart", "post", "/v1/files", b"\x00\xff" * 500, MULTIPART, {}, 400),
    ("truncated_multipart", "post", "/v1/files", form(("purpose", "batch"), ("file", "in.jsonl", GOOD_LINES), close=False)[:-40], MULTIPART, {}, 400),
    ("expires_bad_anchor", "post", "/v1/files", form(("purpose", "batch"), ("expires_after[anchor]", "now"), ("expires_after[seconds]", "3600"), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("expires_text_seconds", "post", "/v1/files", form(("purpose", "batch"), ("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "soon"), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("expires_huge_seconds", "post", "/v1/files", form(("purpose", "batch"), ("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "9" * 400), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("expires_float_seconds", "post", "/v1/files", form(("purpose", "batch"), ("expires_after[anchor]", "created_at"), ("expires_after[seconds]", "1e400"), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("too_many_fields", "post", "/v1/files", form(*[(f"f{n}", "x") for n in range(1500)], ("purpose", "batch"), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 400),
    ("too_many_files", "post", "/v1/files", form(("purpose", "batch"), *[("file", f"in{n}.jsonl", GOOD_LINES) for n in range(150)]), MULTIPART, {}, 400),
    ("huge_text_field", "post", "/v1/files", form(("purpose", "b" * (12 * 1024 * 1024)), ("file", "in.jsonl", GOOD_LINES)), MULTIPART, {}, 413),
    # --- query strings and paths ---
    ("limit_text", "get", "/v1/batches?limit=many", None, None, {}, 400),
    ("limit_zero", "get", "/v1/batches?limit=0", None, None, {}, 400),
    ("limit_negative", "get", "/v1/files?limit=-5", None, None, {}, 400),
    ("limit_above_max", "get", "/v1/batches?limit=101", None, None, {}, 400),
    ("limit_huge", "get", "/v1/files?limit=" + "9" * 5000, None, None, {}, 400),
    ("limit_float", "get", "/v1/files?limit=1e3", None, None, {}, 400),
    ("limit_repeated", "get", "/v1/batches?limit=5&limit=1", None, None, {}, 400),
    ("after_repeated", "get", "/v1/files?after=file-a&after=file-b", None, None, {}, 400),
    ("order_sideways", "get", "/v1/files?order=sideways", None, None, {}, 400),
    ("after_nul", "get", "/v1/files?after=file-%00", None, None, {}, 400),
    ("purpose_nul", "get", "/v1/files?purpose=%00", None, None, {}, 400),
    ("param_name_nul", "get", "/v1/batches?li%00mit=5", None, None, {}, 400),
    ("after_10k_chars", "get", "/v1/batches?after=" + "b" * 10_000, None, None, {}, 400),
    ("path_nul", "get", "/v1/files/file-%00", None, None, {}, 400),
    ("cancel_path_nul", "post", "/v1/batches/batch_%00/cancel", None, None, {}, 400),
    ("path_snowman", "get", "/v1/batches/batch_\u2603", None, None, {}, 404),
    ("path_5000_chars", "get", "/v1/files/" + "f" * 5000, None, None, {}, 404),
    ("path_encoded_slash", "get", "/v1/files/..%2F..%2Fetc%2Fpasswd/content", None, None, {}, 404),
    # --- methods the routes do not have ---
    ("put_batch", "put", "/v1/batches/batch_x", b"{}", "application/json", {}, 405),
    ("patch_file", "patch", "/v1/files/file-x", b"{}", "application/json", {}, 405),
    ("delete_batches", "delete", "/v1/batches", None, None, {}, 405),
    ("options_batches", "options", "/v1/batches", b"{}", "application/json", {}, 405),
    ("options_cancel", "options", "/v1/batches/batch_x/cancel", None, None, {}, 405),
    ("options_files", "options", "/v1/files", None, None, {}, 405),
    ("trace_file", "trace", "/v1/files/file-x", None, None, {}, 405),
]  # fmt: skip


def test_corpus_is_big_enough():
    assert len(API_CASES) >= 40
    assert len({case[0] for case in API_CASES}) == len(API_CASES)


@pytest.fixture
def input_file(api, make_file):
    return make_file([chat_line("a")], owner=api.user)


@pytest.mark.parametrize("case", API_CASES, ids=[case[0] for case in API_CASES])
def test_hostile_request_gets_an_openai_4xx(case, api, input_file, settings):
    name, method, path, body, content_type, headers, expected = case
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
    path = path.replace("{file}", input_file.id)
    if body is not None:
        body = body.replace(b"{file}", input_file.id.encode())
    kwargs = {"content_type": content_type} if content_type else {}
    response = api.generic(method.upper(), path, body or b"", **kwargs, **headers)
    text = response.content.decode(errors="replace")
    assert response.status_code == expected, text[:300]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in text and 'File "' not in text
    assert Batch.objects.count() == 0
    assert File.objects.count() == 1


# --- broken batch files: validation fails cleanly -------------------------------------------------


def line(custom_id="a", **overrides):
    record = chat_line(custom_id)
    record.update(overrides)
    return json.dumps(record).encode()


def body_line(custom_id="a", **body):
    return json.dumps(chat_line(custom_id, **body)).encode()


def nested(depth):
    return "[" * depth + "]" * depth


ACCEPTED = "accepted"

# Each case: (id, raw file content, expected error code when the batch must fail; ACCEPTED when it
# must go on to run; None when either is fine as long as it is clean).
FILE_CASES = [
    ("empty_file", b"", "empty_file"),
    ("blank_lines_only", b"\n\n   \n\r\n", "empty_file"),
    ("not_utf8", b"\xff\xfe\x00garbage\n", "invalid_json_line"),
    ("latin1_line", line().replace(b"hello", b"h\xe9llo") + b"\n", "invalid_json_line"),
    ("utf8_bom_accepted", codecs.BOM_UTF8 + line() + b"\n", ACCEPTED),
    ("utf16_file", line().decode().encode("utf-16") + b"\n", "invalid_json_line"),
    ("line_is_array", b"[1, 2, 3]\n", "invalid_json_line"),
    ("line_is_number", b"42\n", "invalid_json_line"),
    ("line_is_null", b"null\n", "invalid_json_line"),
    ("truncated_json", line()[:-5] + b"\n", "invalid_json_line"),
    ("nan_in_body", body_line(temperature=1.0).replace(b"1.0", b"NaN") + b"\n", "invalid_json_line"),
    ("float_overflow", body_line(temperature=1.0).replace(b"1.0", b"1e400") + b"\n", "invalid_json_line"),
    ("int_5000_digits", body_line(max_tokens=1).replace(b'"max_tokens": 1', b'"max_tokens": 1' + b"0" * 5000) + b"\n", "invalid_json_line"),
    ("nested_100k", b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": ' + nested(100_000).encode() + b"}\n", "invalid_json_line"),
    ("custom_id_int", line(custom_id=7) + b"\n", "invalid_type"),
    ("custom_id_empty", line(custom_id="") + b"\n", "invalid_value"),
    ("custom_id_too_long", line(custom_id="c" * 513) + b"\n", "invalid_value"),
    ("custom_id_missing", json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": chat_line("a")["body"]}).encode() + b"\n", "missing_required_parameter"),
    ("custom_id_duplicate", line("same") + b"\n" + line("same") + b"\n", "duplicate_custom_id"),
    ("method_get", line(method="GET") + b"\n", "invalid_value"),
    ("url_mismatch", line(url="/v1/embeddings") + b"\n", "invalid_url"),
    ("body_string", line(body="hello") + b"\n", "invalid_type"),
    ("body_missing", json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}).encode() + b"\n", "missing_required_parameter"),
    ("stream_true", body_line(stream=True) + b"\n", "streaming_unsupported"),
    ("model_int", body_line(model=5) + b"\n", None),
    ("two_models", body_line("a") + b"\n" + body_line("b", model="other-model") + b"\n", "mismatched_model"),
    ("unknown_model", body_line(model="no-such-model") + b"\n", "model_not_found"),
    ("garbage_10mb_line", b"{" + b"x" * (10 * 1024 * 1024) + b"\n", "invalid_json_line"),
    # PostgreSQL cannot store these (and a surrogate cannot be written as UTF-8): rejected up front.
    ("nul_in_custom_id", line(custom_id="a\u0000b") + b"\n", "invalid_json_line"),
    ("lone_surrogate_custom_id", line().replace(b'"custom_id": "a"', b'"custom_id": "\\ud800"') + b"\n", "invalid_json_line"),
    ("lone_surrogate_in_body", body_line().replace(b'"hello"', b'"\\udfff"') + b"\n", "invalid_json_line"),
    ("nul_in_content", body_line().replace(b'"hello"', b'"a\\u0000b"') + b"\n", "invalid_json_line"),
    ("surrogate_pair_accepted", body_line().replace(b'"hello"', b'"\\ud83d\\ude80"') + b"\n", ACCEPTED),
    ("escaped_backslash_u0000_accepted", body_line().replace(b'"hello"', b'"\\\\u0000"') + b"\n", ACCEPTED),
]  # fmt: skip


def assert_clean_failure(batch, code):
    assert batch.status == BatchStatus.FAILED
    assert isinstance(batch.errors, list) and batch.errors
    for error in batch.errors:
        assert set(error) == {"code", "message", "param", "line"}
        assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert code in [error["code"] for error in batch.errors], batch.errors
    assert not BatchRequest.objects.filter(batch=batch).exists()


@pytest.mark.parametrize("case", FILE_CASES, ids=[case[0] for case in FILE_CASES])
def test_broken_batch_file_fails_validation_cleanly(case, make_batch, upstream):
    name, content, code = case
    batch = make_batch(content)
    outcome = tasks.validate_batch(batch.id)  # must never raise
    batch.refresh_from_db()
    if code == ACCEPTED:
        assert outcome == "in_progress", batch.errors
        return
    if code is None:
        # Either rejected as a whole, or accepted with the line answered as a 400 in the error file.
        assert outcome in ("failed", "in_progress")
        if outcome == "failed":
            assert_clean_failure(batch, None)
        return
    assert outcome == "failed"
    assert_clean_failure(batch, code)


def test_broken_batch_through_the_api_reports_errors_data(api, make_file, upstream):
    bad = make_file(b"not json\n" + line("ok") + b"\n" + line("ok") + b"\n", owner=api.user)
    created = api.post(
        "/v1/batches", {"input_file_id": bad.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, format="json"
    )
    assert created.status_code == 200
    tasks.validate_batch(created.json()["id"])
    batch = api.get(f"/v1/batches/{created.json()['id']}").json()
    assert batch["status"] == "failed"
    assert batch["errors"]["object"] == "list"
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("invalid_json_line", 1), ("duplicate_custom_id", 3)]


def test_valid_10mb_single_line_runs(make_batch, upstream, settings):
    content = "word " * (2 * 1024 * 1024)  # 10 MB of message in one line
    batch = make_batch([chat_line("big", content=content)])
    assert tasks.validate_batch(batch.id) == "in_progress"
    assert BatchRequest.objects.get(batch=batch).custom_id == "big"


def test_too_many_lines_fail_with_the_limit(make_batch, upstream, settings):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "MAX_REQUESTS_PER_BATCH": 3}
    batch = make_batch([chat_line(f"r{n}") for n in range(5)])
    assert tasks.validate_batch(batch.id) == "failed"
    batch.refresh_from_db()
    assert_clean_failure(batch, "too_many_requests")


def test_error_flood_is_capped(make_batch, upstream, settings):
    batch = make_batch(b"oops\n" * 5000)
    assert tasks.validate_batch(batch.id) == "failed"
    batch.refresh_from_db()
    assert_clean_failure(batch, "invalid_json_line")
    assert len(batch.errors) <= 100


UNICODE_IDS = ["🚀", "日本語の行", "\u202eevil", "e\u0301", "zero\u200bwidth", "Ω" * 512, "tab\there", 'quote"and\\backslash']


def test_unicode_custom_ids_round_trip_through_a_batch(api, make_file, upstream):
    lines = [chat_line(custom_id) for custom_id in UNICODE_IDS]
    input_file = make_file(lines, owner=api.user)
    created = api.post(
        "/v1/batches", {"input_file_id": input_file.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, format="json"
    )
    batch_id = created.json()["id"]
    tasks.validate_batch(batch_id)
    run_batches()
    batch = api.get(f"/v1/batches/{batch_id}").json()
    assert batch["status"] == "completed", batch
    output = api.get(f"/v1/files/{batch['output_file_id']}/content")
    records = [json.loads(row) for row in b"".join(output.streaming_content).decode().splitlines()]
    assert sorted(record["custom_id"] for record in records) == sorted(UNICODE_IDS)
