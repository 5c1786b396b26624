"""Embeddings bundling: several lines of an embeddings batch in one upstream call.

``/v1/embeddings`` takes a list of inputs, so lines that share the model and every
other parameter (``encoding_format``, ``dimensions``, ``user``...) and are sent at
the same moment go out as one call of up to ``EMBEDDINGS_BUNDLE_SIZE`` inputs
(``upstream.send`` hands them to a ``Bundler``), and the answer is split back so
each line gets what a call of its own would have returned: its own ``data`` with
``index`` 0..k-1 in its input order, its share of ``usage``, and an ``id`` /
request id of its own (the bundle's, suffixed with the line's position).

Usage is apportioned by input length (token count for token arrays, UTF-8 bytes
for text; largest remainders, so the lines' shares add up to the bundle's total):
servers report one total per call, not one per input.

A bundle the upstream rejects (a 4xx: one bad input fails the whole call), or
whose answer cannot be split, is sent again line by line, so each line gets its
own answer. A transient failure (429, 5xx, connection) is that of every line in
it: each is retried later, like an unbundled line.
"""

import asyncio
import dataclasses
import json


def inputs_of(value):
    """A line's ``input`` as a list of items (strings or token arrays) and their kind,
    or ``(None, None)`` when it cannot be bundled."""
    if isinstance(value, str):
        return [value], "text"
    if not isinstance(value, list) or not value:
        return None, None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return [value], "tokens"  # one token array
    if all(isinstance(item, str) for item in value):
        return value, "text"
    if all(isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item) for item in value):
        return value, "tokens"
    return None, None


def bundle_key(body):
    """Lines with equal keys may share a call: same parameters but ``input``, and the
    same kind of input (OpenAI takes strings or token arrays in one call, not both)."""
    if not isinstance(body, dict):
        return None
    items, kind = inputs_of(body.get("input"))
    if items is None:
        return None
    return kind, json.dumps({name: value for name, value in body.items() if name != "input"}, sort_keys=True, separators=(",", ":"))


def plan(bodies, size):
    """Group the positions of ``bodies`` into calls: lists of positions whose bodies
    share a key and hold at most ``size`` inputs together. A body that cannot be
    bundled, or has ``size`` inputs or more, is a call of its own. First-come order."""
    calls, open_bundles = [], {}
    for position, body in enumerate(bodies):
        key = bundle_key(body) if size > 1 else None
        count = len(inputs_of(body["input"])[0]) if key else 0
        if key is None or count >= size:
            calls.append([position])
            continue
        bundle = open_bundles.get(key)
        if bundle is None or bundle[1] + count > size:
            bundle = open_bundles[key] = [[], 0]
            calls.append(bundle[0])
        bundle[0].append(position)
        bundle[1] += count
    return calls


def merge(bodies):
    """One request body carrying every input of ``bodies`` (which share a key), in order."""
    merged = dict(bodies[0])
    merged["input"] = [item for body in bodies for item in inputs_of(body["input"])[0]]
    return merged


def _weight(item):
    return len(item) if isinstance(item, list) else len(item.encode())


def apportion(total, weights):
    """``total`` split in proportion to ``weights`` (largest remainders; sums to ``total``)."""
    weight_sum = sum(weights)
    if not weight_sum:
        weights, weight_sum = [1] * len(weights), len(weights)
    exact = [total * weight / weight_sum for weight in weights]
    shares = [int(value) for value in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _split_usage(usage, weights):
    """Every integer in ``usage`` (nested dicts too) apportioned by ``weights``."""
    if isinstance(usage, bool) or not isinstance(usage, (int, dict)):
        return [usage] * len(weights)
    if isinstance(usage, int):
        return apportion(usage, weights) if usage >= 0 else [usage] * len(weights)
    parts = {name: _split_usage(value, weights) for name, value in usage.items()}
    return [{name: values[i] for name, values in parts.items()} for i in range(len(weights))]


def split(response, bodies):
    """The bundle's ``response`` body as one body per line of ``bodies``, or None when
    it does not answer every input exactly once."""
    line_items = [inputs_of(body["input"])[0] for body in bodies]
    total = sum(len(items) for items in line_items)
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list) or len(data) != total or not all(isinstance(item, dict) for item in data):
        return None
    by_index = {item.get("index"): item for item in data}
    if set(by_index) != set(range(total)):
        return None
    usage = response.get("usage")
    usage_parts = _split_usage(usage, [sum(_weight(item) for item in items) for items in line_items]) if usage is not None else None
    parts, start = [], 0
    for position, items in enumerate(line_items):
        part = dict(response)
        part["data"] = [{**by_index[start + offset], "index": offset} for offset in range(len(items))]
        if usage_parts is not None:
            part["usage"] = usage_parts[position]
        if isinstance(response.get("id"), str) and response["id"]:
            part["id"] = f"{response['id']}-{position}"
        parts.append(part)
        start += len(items)
    return parts


async def send_bundle(call, bodies):
    """The outcomes of sending ``bodies`` (which share a key) as one call, one per line in
    order; ``call(body)`` makes one classified upstream call. Falls back to a call per
    line when the bundle is rejected or its answer cannot be split."""
    if len(bodies) == 1:
        return [await call(bodies[0])]
    outcome = await call(merge(bodies))
    if outcome.kind == "retry":
        return [_share(outcome, position) for position in range(len(bodies))]
    parts = split(outcome.body, bodies) if outcome.kind == "succeeded" else None
    if parts is None:
        return list(await asyncio.gather(*(call(body) for body in bodies)))
    request_id = outcome.request_id
    return [
        _share(outcome, position, body=part, body_text=None, request_id=f"{request_id}-{position}" if request_id else "")
        for position, part in enumerate(parts)
    ]


def _share(outcome, position, **changes):
    """Line ``position``'s copy of a bundle's outcome. Only the first carries the call's
    latency, so the latency histogram counts the call once (batches/usage.py)."""
    return dataclasses.replace(outcome, latency=outcome.latency if position == 0 else None, **changes)


class Bundler:
    """Turns embeddings calls made at the same moment into bundles, in the event loop.

    The dispatching thread hands claimed rows to the loop together; each row's
    ``send`` lands here, waits up to ``WAIT_SECONDS`` for rows that share its key,
    and goes out with them once the bundle is full or the wait is over. Every row
    still gets its own outcome, so nothing upstream of ``upstream.send`` changes.
    """

    # Long enough for rows handed over together to meet; short next to any upstream call.
    WAIT_SECONDS = 0.002

    def __init__(self):
        self.open = {}  # key -> _Bundle still taking rows
        self.sending = set()  # tasks of bundles on their way (kept referenced)

    async def send(self, call, body, size):
        """``body``'s outcome; ``call(body)`` makes one classified upstream call."""
        key = bundle_key(body)
        count = len(inputs_of(body["input"])[0]) if key else 0
        if key is None or count >= size:
            return await call(body)
        bundle = self.open.get(key)
        if bundle is not None and bundle.inputs + count > size:
            self._close(key)
            bundle = None
        loop = asyncio.get_running_loop()
        if bundle is None:
            bundle = self.open[key] = _Bundle(call, loop.call_later(self.WAIT_SECONDS, self._close, key))
        future = loop.create_future()
        bundle.add(body, count, future)
        if bundle.inputs >= size:
            self._close(key)
        return await future

    def _close(self, key):
        bundle = self.open.pop(key, None)
        if bundle is None:
            return
        bundle.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._deliver(bundle))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _deliver(self, bundle):
        # Rows given up while the bundle waited (cancel, shutdown) are not sent at all.
        rows = [(body, future) for body, future in zip(bundle.bodies, bundle.futures, strict=True) if not future.done()]
        if not rows:
            return
        try:
            outcomes = await send_bundle(bundle.call, [body for body, _ in rows])
        except Exception as exc:  # a bug, or the client closed under us: each row's sender sees it
            for _, future in rows:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), outcome in zip(rows, outcomes, strict=True):
            if not future.done():  # a row given up while the call was out is simply dropped
                future.set_result(outcome)


class _Bundle:
    def __init__(self, call, timer):
        self.call, self.timer = call, timer
        self.bodies, self.futures, self.inputs = [], [], 0

    def add(self, body, count, future):
        self.bodies.append(body)
        self.futures.append(future)
        self.inputs += count
