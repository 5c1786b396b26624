"""Embeddings bundling (batches/bundling.py): which lines share a call, and how a
bundled answer is split back so each line reads as if it had been sent alone.
Answers in the shapes OpenAI, llama.cpp's server and vLLM return, and the fake
upstream end to end."""

import asyncio
import base64
import json
import struct

import pytest

from batches import bundling, tasks
from batches import upstream as upstream_api
from batches.models import Batch
from files_app.models import File
from tests.conftest import run_batches


def body(value, **params):
    return {"model": "fake-embed", "input": value, **params}


def vector(seed, dims=4):
    return [round(seed + i / 10, 3) for i in range(dims)]


def packed(values):
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


# --- which lines share a call --------------------------------------------------------


def test_lines_with_the_same_parameters_share_calls_of_at_most_size_inputs():
    bodies = [body("a"), body(["b", "c"]), body("d"), body("e"), body("f")]
    assert bundling.plan(bodies, size=4) == [[0, 1, 2], [3, 4]]


def test_any_other_parameter_keeps_lines_apart():
    bodies = [
        body("a"),
        body("b", encoding_format="base64"),
        body("c", dimensions=256),
        body("d", dimensions=256),
        body("e", user="u1"),
        {"model": "other-embed", "input": "f"},
        body("g"),
    ]
    assert bundling.plan(bodies, size=32) == [[0, 6], [1], [2, 3], [4], [5]]


def test_text_and_token_inputs_never_share_a_call():
    bodies = [body("a"), body([1, 2, 3]), body([[4], [5, 6]]), body(["b"])]
    assert bundling.plan(bodies, size=32) == [[0, 3], [1, 2]]


def test_a_line_with_size_inputs_or_more_goes_alone():
    bodies = [body("a"), body(["b", "c", "d"]), body("e")]
    assert bundling.plan(bodies, size=3) == [[0, 2], [1]]


def test_size_one_turns_bundling_off():
    assert bundling.plan([body("a"), body("b")], size=1) == [[0], [1]]


@pytest.mark.parametrize("value", [None, [], ["a", 1], [[1], "a"], [[]], {"text": "a"}, [True, False]])
def test_inputs_of_an_unexpected_shape_are_never_bundled(value):
    assert bundling.bundle_key(body(value)) is None
    assert bundling.plan([body(value), body("a"), body("b")], size=8) == [[0], [1, 2]]


def test_merge_keeps_every_parameter_and_the_inputs_in_order():
    merged = bundling.merge([body("a", dimensions=8), body(["b", "c"], dimensions=8), body("d", dimensions=8)])
    assert merged == {"model": "fake-embed", "input": ["a", "b", "c", "d"], "dimensions": 8}
    assert bundling.merge([body([1, 2]), body([[3], [4, 5]])])["input"] == [[1, 2], [3], [4, 5]]


# --- splitting answers ----------------------------------------------------------------


def test_apportion_adds_up_and_follows_the_weights():
    assert bundling.apportion(10, [1, 1, 2]) == [3, 2, 5]
    assert sum(bundling.apportion(7, [3, 3, 3])) == 7
    assert bundling.apportion(0, [5, 1]) == [0, 0]
    assert bundling.apportion(3, [0, 0, 0]) == [1, 1, 1]


def test_an_openai_answer_splits_into_per_line_answers():
    # OpenAI's /v1/embeddings: object, data (object, index, embedding), model, usage.
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector(i)} for i in range(4)],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 10, "total_tokens": 10},
    }
    parts = bundling.split(answer, [body("ab"), body(["cd", "efgh"]), body("ij")])
    assert parts == [
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector(0)}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        },
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": 0, "embedding": vector(1)},
                {"object": "embedding", "index": 1, "embedding": vector(2)},
            ],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 6, "total_tokens": 6},
        },
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector(3)}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        },
    ]


def test_a_llama_cpp_base64_answer_splits_with_token_counts_for_token_inputs():
    # llama.cpp's server (format_embeddings_response_oaicompat): model, object, usage, then data;
    # with encoding_format=base64 each item also says "encoding_format": "base64".
    answer = {
        "model": "gemma-embed",
        "object": "list",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
        "data": [{"embedding": packed(vector(i)), "index": i, "object": "embedding", "encoding_format": "base64"} for i in range(3)],
    }
    bodies = [body([1, 2, 3], encoding_format="base64"), body([[4], [5, 6]], encoding_format="base64")]
    first, second = bundling.split(answer, bodies)
    assert first["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert second["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert first["data"] == [{"embedding": packed(vector(0)), "index": 0, "object": "embedding", "encoding_format": "base64"}]
    assert [item["index"] for item in second["data"]] == [0, 1]
    assert [item["embedding"] for item in second["data"]] == [packed(vector(1)), packed(vector(2))]
    assert list(first) == list(answer)  # the server's key order is kept


def test_a_llama_cpp_python_answer_splits_as_its_own_calls_answered():
    # llama-cpp-python's server (the local model, SmolLM2): object, data (object, embedding, index), model, usage.
    # Answered alone, these lines counted 7, 12 and 7 tokens; bundled, 26 (tests/test_real_model.py checks it live).
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "embedding": vector(i), "index": i} for i in range(4)],
        "model": "smollm2-135m-instruct",
        "usage": {"prompt_tokens": 26, "total_tokens": 26},
    }
    bodies = [body("The cat sat on the mat."), body(["Two inputs", "in one line, with ünïcode"]), body("Taxes are due in April.")]
    parts = bundling.split(answer, bodies)
    assert [part["usage"] for part in parts] == [{"prompt_tokens": n, "total_tokens": n} for n in (7, 12, 7)]
    assert [[item["index"] for item in part["data"]] for part in parts] == [[0], [0, 1], [0]]
    assert [item["embedding"] for item in parts[1]["data"]] == [vector(1), vector(2)]


def test_a_vllm_answer_keeps_its_fields_and_gets_an_id_per_line():
    answer = {
        "id": "embd-3f2a",
        "object": "list",
        "created": 1764500000,
        "model": "BAAI/bge-m3",
        "data": [{"index": i, "object": "embedding", "embedding": vector(i, 8)} for i in range(2)],
        "usage": {"prompt_tokens": 9, "total_tokens": 9, "completion_tokens": 0, "prompt_tokens_details": None},
    }
    first, second = bundling.split(answer, [body("x" * 4, dimensions=8), body("y" * 5, dimensions=8)])
    assert (first["id"], second["id"]) == ("embd-3f2a-0", "embd-3f2a-1")
    assert first["created"] == second["created"] == 1764500000
    assert first["usage"] == {"prompt_tokens": 4, "total_tokens": 4, "completion_tokens": 0, "prompt_tokens_details": None}
    assert second["usage"] == {"prompt_tokens": 5, "total_tokens": 5, "completion_tokens": 0, "prompt_tokens_details": None}


def test_data_out_of_order_is_matched_by_index():
    answer = {"object": "list", "data": [{"index": 1, "embedding": [1.0]}, {"index": 0, "embedding": [0.0]}], "usage": None}
    first, second = bundling.split(answer, [body("a"), body("b")])
    assert first["data"] == [{"index": 0, "embedding": [0.0]}]
    assert second["data"] == [{"index": 0, "embedding": [1.0]}]
    assert first["usage"] is None


@pytest.mark.parametrize(
    "data",
    [
        [{"index": 0, "embedding": [0.0]}],  # an input unanswered
        [{"index": 0, "embedding": [0.0]}, {"index": 0, "embedding": [0.0]}],  # one answered twice
        [{"index": 0, "embedding": [0.0]}, {"index": 2, "embedding": [0.0]}],
        [{"embedding": [0.0]}, {"embedding": [0.0]}],
        "not a list",
    ],
)
def test_an_answer_that_does_not_match_the_inputs_cannot_be_split(data):
    assert bundling.split({"object": "list", "data": data}, [body("a"), body("b")]) is None


# --- sending, against the fake upstream -------------------------------------------------

EMBEDDINGS = "/v1/embeddings"


def run(coro_factory, base_url):
    async def call():
        client = upstream_api.AiohttpClient(upstream_api.Route(base_url, ""), max_connections=8)
        try:
            return await coro_factory(client)
        finally:
            await client.close()

    return asyncio.run(call())


def caller(client):
    return lambda request_body: upstream_api.call(client, EMBEDDINGS, request_body)


def send_all(bodies):
    """Every body through ``upstream.send`` at the same moment, as the dispatcher hands rows over."""
    return lambda client: asyncio.gather(*(upstream_api.send(client, EMBEDDINGS, b) for b in bodies))


def embedding_calls(fake):
    return fake.stats()["by_path"].get(EMBEDDINGS, 0)


@pytest.mark.parametrize(
    "bodies",
    [
        [body("the quick brown fox"), body(["jumps", "over"]), body("the lazy dog")],
        [body([1, 2, 3]), body([[4, 5], [6]]), body([7])],
        [body("a", encoding_format="base64"), body(["bb", "ccc"], encoding_format="base64")],
        [body("a", dimensions=8), body("b", dimensions=8)],
    ],
    ids=["strings", "token-arrays", "base64", "dimensions"],
)
def test_each_bundled_line_reads_as_if_sent_alone(upstream, bodies):
    alone = run(lambda client: asyncio.gather(*(upstream_api.call(client, EMBEDDINGS, b) for b in bodies)), upstream.base_url)
    upstream.reset()
    bundled = run(send_all(bodies), upstream.base_url)
    assert embedding_calls(upstream) == 1
    assert [outcome.kind for outcome in bundled] == ["succeeded"] * len(bodies)
    for single, part in zip(alone, bundled, strict=True):
        assert part.status_code == 200
        assert part.body["data"] == single.body["data"]
        assert part.body["object"] == single.body["object"] and part.body["model"] == single.body["model"]
    assert sum(part.body["usage"]["total_tokens"] for part in bundled) == sum(single.body["usage"]["total_tokens"] for single in alone)
    if all(isinstance(b["input"], list) and not isinstance(b["input"][0], str) for b in bodies):
        assert [part.body["usage"] for part in bundled] == [single.body["usage"] for single in alone]  # token counts are exact


def test_rows_sent_together_share_calls_of_at_most_the_bundle_size(upstream, settings):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "EMBEDDINGS_BUNDLE_SIZE": 4}
    bodies = [body(f"line {i}") for i in range(10)] + [body("other", dimensions=8), body(["x"] * 5)]
    outcomes = run(send_all(bodies), upstream.base_url)
    assert all(outcome.kind == "succeeded" for outcome in outcomes)
    assert [len(outcome.body["data"]) for outcome in outcomes] == [1] * 11 + [5]
    assert embedding_calls(upstream) == 3 + 1 + 1  # 4 + 4 + 2 lines, the other parameters, the line of 5 inputs
    assert upstream.stats()["content_counts"] == {
        **{json.dumps([f"line {i}" for i in range(start, min(start + 4, 10))], separators=(",", ":")): 1 for start in (0, 4, 8)},
        "other": 1,  # a bundle of one goes as the line itself
        json.dumps(["x"] * 5, separators=(",", ":")): 1,
    }


def test_a_bundle_size_of_one_sends_every_line_alone(upstream, settings):
    settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "EMBEDDINGS_BUNDLE_SIZE": 1}
    outcomes = run(send_all([body("a"), body("b"), body("c")]), upstream.base_url)
    assert [outcome.kind for outcome in outcomes] == ["succeeded"] * 3
    assert embedding_calls(upstream) == 3
    assert upstream.stats()["content_counts"] == {"a": 1, "b": 1, "c": 1}


def test_a_rejected_bundle_is_sent_again_line_by_line_so_only_the_bad_line_fails(upstream):
    bodies = [body("good one"), body("please FAIL_400"), body(["good", "two"])]
    outcomes = run(send_all(bodies), upstream.base_url)
    assert [outcome.kind for outcome in outcomes] == ["succeeded", "failed", "succeeded"]
    assert outcomes[1].status_code == 400
    assert [len(outcome.body["data"]) for outcome in (outcomes[0], outcomes[2])] == [1, 2]
    assert embedding_calls(upstream) == 1 + len(bodies)


def test_a_transient_failure_is_every_lines_and_sends_nothing_more(upstream):
    upstream.configure(error_503_rate=1.0)
    outcomes = run(send_all([body("a"), body("b")]), upstream.base_url)
    assert [(outcome.kind, outcome.status_code) for outcome in outcomes] == [("retry", 503), ("retry", 503)]
    assert outcomes[0] is not outcomes[1]
    assert embedding_calls(upstream) == 1


def test_a_row_given_up_while_its_bundle_is_out_leaves_the_others_their_answers(upstream):
    upstream.configure(latency_ms=100)

    async def scenario(client):
        rows = [asyncio.ensure_future(upstream_api.send(client, EMBEDDINGS, body(text))) for text in ("a", "b", "c")]
        await asyncio.sleep(0.03)  # the bundle is on its way
        rows[1].cancel()
        return await asyncio.gather(*rows, return_exceptions=True)

    first, second, third = run(scenario, upstream.base_url)
    assert isinstance(second, asyncio.CancelledError)
    assert (first.kind, third.kind) == ("succeeded", "succeeded")
    assert embedding_calls(upstream) == 1


def test_rows_given_up_before_their_bundle_leaves_are_not_sent(upstream):
    async def scenario(client):
        rows = [asyncio.ensure_future(upstream_api.send(client, EMBEDDINGS, body(text))) for text in ("a", "b", "c")]
        await asyncio.sleep(0)  # each row joins the open bundle
        rows[0].cancel()
        rows[2].cancel()
        return await asyncio.gather(*rows, return_exceptions=True)

    first, second, third = run(scenario, upstream.base_url)
    assert isinstance(first, asyncio.CancelledError) and isinstance(third, asyncio.CancelledError)
    assert second.kind == "succeeded"
    assert upstream.stats()["content_counts"] == {"b": 1}  # only the row still waiting went out, alone


class ShortAnswerClient:
    """Answers a bundle with one vector too few; single lines correctly."""

    api_key = "none"

    def __init__(self):
        self.calls = []

    async def post(self, path, request_body):
        self.calls.append(request_body["input"])
        count = len(request_body["input"]) if isinstance(request_body["input"], list) else 1
        data = [{"object": "embedding", "index": i, "embedding": [0.5]} for i in range(count if count == 1 else count - 1)]
        answer = {"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": count, "total_tokens": count}}
        return 200, {"x-request-id": "req_7"}, json.dumps(answer).encode()


def test_an_answer_that_cannot_be_split_is_asked_again_line_by_line():
    client = ShortAnswerClient()
    outcomes = asyncio.run(bundling.send_bundle(caller(client), [body("a"), body("b")]))
    assert client.calls == [["a", "b"], "a", "b"]
    assert [outcome.kind for outcome in outcomes] == ["succeeded", "succeeded"]
    assert [outcome.request_id for outcome in outcomes] == ["req_7", "req_7"]


def test_bundled_lines_get_a_request_id_each():
    class Client(ShortAnswerClient):
        async def post(self, path, request_body):
            data = [{"object": "embedding", "index": i, "embedding": [0.5]} for i in range(len(request_body["input"]))]
            return 200, {"x-request-id": "req_9"}, json.dumps({"object": "list", "data": data, "model": "m"}).encode()

    outcomes = asyncio.run(bundling.send_bundle(caller(Client()), [body("a"), body(["b", "c"]), body("d")]))
    assert [outcome.request_id for outcome in outcomes] == ["req_9-0", "req_9-1", "req_9-2"]


# --- a whole batch, through the runner ---------------------------------------------------


def embedding_line(custom_id, value, **params):
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS, "body": body(value, **params)}


def read_lines(file_id):
    if file_id is None:
        return {}
    with File.objects.get(pk=file_id).content.open("rb") as handle:
        return {line["custom_id"]: line for line in map(json.loads, handle)}


@pytest.fixture
def run_embeddings(make_batch, upstream, settings):
    """``run_embeddings(lines, bundle_size)`` -> (batch, output lines, error lines, upstream calls)."""

    def run_batch(lines, bundle_size):
        # The adaptive limit starts where it ends up against a fast upstream: rows go out 64 at a time.
        settings.OPENAI_BATCHES = {**settings.OPENAI_BATCHES, "EMBEDDINGS_BUNDLE_SIZE": bundle_size, "UPSTREAM_INITIAL_IN_FLIGHT": 64}
        upstream.reset()
        batch = make_batch(lines, endpoint=EMBEDDINGS)
        assert tasks.validate_batch(batch.id) == "in_progress"
        run_batches()
        batch = Batch.objects.get(pk=batch.id)
        return batch, read_lines(batch.output_file_id), read_lines(batch.error_file_id), embedding_calls(upstream)

    return run_batch


def test_a_bundled_batch_has_the_output_of_an_unbundled_one_in_far_fewer_calls(run_embeddings):
    lines = [embedding_line(f"line-{i}", f"sentence {i}" if i % 3 else [f"first {i}", f"second {i}"]) for i in range(60)]
    lines += [embedding_line("tokens", [[1, 2], [3]]), embedding_line("small", "x", dimensions=8)]
    alone, alone_output, _, alone_calls = run_embeddings(lines, bundle_size=1)
    bundled, bundled_output, errors, bundled_calls = run_embeddings(lines, bundle_size=32)
    assert alone_calls == len(lines)
    assert bundled_calls <= 8, bundled_calls
    assert errors == {} and bundled.completed_requests == len(lines)
    assert set(bundled_output) == set(alone_output) == {line["custom_id"] for line in lines}
    for custom_id, line in bundled_output.items():
        single = alone_output[custom_id]["response"]
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["data"] == single["body"]["data"]
        assert [item["index"] for item in line["response"]["body"]["data"]] == list(range(len(single["body"]["data"])))
    assert bundled.usage == alone.usage and bundled.usage["input_tokens"] > 0


def test_a_bad_line_in_a_bundled_batch_fails_alone(run_embeddings):
    lines = [embedding_line(f"line-{i}", f"sentence {i}") for i in range(20)]
    lines[7] = embedding_line("bad", "please FAIL_400")
    batch, output, errors, calls = run_embeddings(lines, bundle_size=32)
    assert set(errors) == {"bad"} and errors["bad"]["response"]["status_code"] == 400
    assert len(output) == 19 and batch.completed_requests == 19 and batch.failed_requests == 1
    assert calls <= 1 + len(lines)  # the rejected bundle, then its lines one by one
