"""Scheduling benchmarks (issue 13): six scenarios of many batches and owners sharing one
upstream, each run as a user would (the OpenAI SDK, two API keys) on the bundled service
with its default worker count (one qcluster, two worker processes) in front of the fake
upstream in a process of its own.

    .venv/bin/python bench/scheduling.py                          # all six, ~6-10 minutes
    .venv/bin/python bench/scheduling.py --only aimd recovery     # some of them
    .venv/bin/python bench/scheduling.py --tag before             # results: bench/results/scheduling_<scenario>-before.json
    .venv/bin/python bench/scheduling.py --table before after     # Markdown table of saved results, nothing run

Scenarios (targets from issue 13):

- head_of_line: owner A submits 5 x 400 lines, then owner B 10 lines; 500 ms upstream; per-batch
  cap 8. B's first result within 2 s of its submission; B's wall time <= 3x its time alone.
- budget: 4 x 2,000 lines, 50 ms, UPSTREAM_MAX_IN_FLIGHT=64, per-batch cap 64. The upstream sees
  64 +- 4 in flight most of the run (>= half of its 0.5 s slices), never more than 64.
- fair_share: A and B each submit 3 x 2,000 lines at once, 100 ms, budget 32. Completed-lines rates
  within 15 % of each other while both have work; with B's key at weight 3, B gets 3x +- 20 %.
- deadlines: one owner, a 24h batch then (once it runs) a 1h batch of the same size,
  COMPLETION_WINDOWS=1h,24h. The 1h batch finishes first.
- aimd: the upstream serves 24 at once (429 above), 100 ms; 3,000 lines; budget and per-batch cap
  128. >= 85 % of 240 lines/s; upstream calls <= 1.15 x lines; 0 failed lines.
- recovery: the same upstream goes from 24 to 64 at once mid-run (20,000 lines, cancelled once
  measured). The scheduler's adaptive limit (UpstreamState.concurrency_limit, sampled every 0.5 s)
  is within 20 % of 64 in under 30 s. Also reported, and the criterion on a version without an
  adaptive limit: when the upstream first serves >= 51.2 at once on average over a 0.5 s slice
  with under 15 % of that slice's calls refused.

Settings the scheduler adds are passed the way an operator would: BATCHES_UPSTREAM_MAX_IN_FLIGHT
in the environment, an API key's weight through the ORM (``manage.py shell``). On a version
without them they are ignored, and the figures show what that version does. Per-owner rates are
sampled from the API (each owner lists its batches' request_counts every second); the upstream's
side (in-flight per slice, calls, 429s) comes from the fake upstream's counters. Every result
records the load average before and after, and the commit measured.
"""

import argparse
import contextlib
import io
import json
import subprocess
import threading
import time

import common
import openai

TERMINAL = ("completed", "failed", "cancelled", "expired")
SLICE_S = 0.5  # the fake upstream's timeline slice


# --- owners, batches, sampling -------------------------------------------------------------


def owners(stack):
    """Two API keys of two users: A is the stack's own key, B a second user's."""
    key_b = stack.manage("create_api_key", "owner-b").strip().splitlines()[-1]
    return {
        "A": stack.client(timeout=120),
        "B": openai.OpenAI(base_url=stack.base_url, api_key=key_b, max_retries=2, timeout=120),
    }


def set_weight(stack, username, weight):
    """Give every key of ``username`` this weight, through the ORM. False when API keys have no weight."""
    code = (
        "from django.core.exceptions import FieldDoesNotExist, FieldError\n"
        "from files_app.models import ApiKey\n"
        "try:\n"
        f"    print('updated', ApiKey.objects.filter(user__username={username!r}).update(weight={weight}))\n"
        "except (FieldDoesNotExist, FieldError):\n"
        "    print('no weight field')\n"
    )
    return "updated" in stack.manage("shell", "-c", code)


def batch_lines(lines, owner, prefix):
    out = io.BytesIO()
    for i in range(lines):
        record = {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            # "user" tells the owners apart at the fake upstream (OpenAI's end-user field).
            "body": {
                "model": common.MODEL,
                "messages": [{"role": "user", "content": f"{prefix} line {i}"}],
                "max_tokens": 16,
                "user": owner,
            },
        }
        out.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    return out.getvalue()


def upload(client, lines, owner, prefix):
    content = io.BytesIO(batch_lines(lines, owner, prefix))
    return client.files.create(file=(f"{prefix}.jsonl", content, "application/jsonl"), purpose="batch").id


def submit(client, lines, owner, prefix, window="24h"):
    return client.batches.create(
        input_file_id=upload(client, lines, owner, prefix), endpoint="/v1/chat/completions", completion_window=window
    ).id


def first_result(client, lines, owner, prefix, timeout=900):
    """Upload, create, and poll every 0.1 s: seconds from the create call to the first finished
    line, and the batch id once it is over."""
    input_file_id = upload(client, lines, owner, prefix)
    created = time.time()
    batch_id = client.batches.create(input_file_id=input_file_id, endpoint="/v1/chat/completions", completion_window="24h").id
    first_s = None
    while True:
        batch = client.batches.retrieve(batch_id)
        if first_s is None and batch.request_counts.completed + batch.request_counts.failed > 0:
            first_s = time.time() - created
        if batch.status in TERMINAL:
            return (first_s if first_s is not None else float("inf")), batch_id
        if time.time() - created > timeout:
            raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout} s")
        time.sleep(0.1)


def wait_terminal(client, batch_id, timeout=900, interval=0.5):
    return common.wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status in TERMINAL and b, timeout, interval=interval, what=f"batch {batch_id}"
    )


def db_times(stack, batch_ids):
    """Each batch's lifecycle timestamps (Unix seconds, microsecond precision; None when not reached)."""
    columns = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "cancelled_at")
    query = f"SELECT id, {', '.join(columns)} FROM batches_batch WHERE id IN ({', '.join(['%s'] * len(batch_ids))})"
    if stack.db.pg_name:
        import psycopg

        with psycopg.connect(stack.db.url) as conn:
            rows = conn.execute(query, list(batch_ids)).fetchall()
        return {row[0]: {c: v and v.timestamp() for c, v in zip(columns, row[1:])} for row in rows}
    import sqlite3
    from datetime import UTC, datetime

    with sqlite3.connect(stack.db.url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute(query.replace("%s", "?"), list(batch_ids)).fetchall()
    return {row[0]: {c: v and datetime.fromisoformat(v).replace(tzinfo=UTC).timestamp() for c, v in zip(columns, row[1:])} for row in rows}


def query(stack, sql):
    """Rows of a read-only query on the stack's database; None when the table does not exist (an older version)."""
    try:
        if stack.db.pg_name:
            import psycopg

            with psycopg.connect(stack.db.url) as conn:
                return conn.execute(sql).fetchall()
        import sqlite3

        with sqlite3.connect(stack.db.url.removeprefix("sqlite:///"), timeout=10) as conn:
            return conn.execute(sql).fetchall()
    except Exception as exc:  # sqlite3.OperationalError / psycopg.errors.UndefinedTable: no such table
        if "no such table" in str(exc) or "does not exist" in str(exc):
            return None
        raise


class LimitSampler(common.Sampler):
    """Every ``interval`` seconds, the scheduler's adaptive in-flight limit of the upstream
    (``UpstreamState.concurrency_limit``): ``samples`` is [(t, limit)]; ``available`` is False
    on a version without it."""

    def __init__(self, stack, interval=0.5):
        super().__init__(interval)
        self.stack = stack
        self.samples, self.available = [], True

    def sample(self):
        rows = query(self.stack, "SELECT concurrency_limit FROM batches_upstreamstate")
        if rows is None:
            self.available = False
            self.stop()
        elif rows:
            self.samples.append((time.time(), max(row[0] for row in rows)))


class Progress:
    """Every ``interval`` seconds, each owner lists its batches through the API and the
    completed lines of the watched ones are summed: ``samples`` is [(t, {owner: completed})]."""

    def __init__(self, clients, batch_ids, interval=1.0):
        self.clients, self.batch_ids, self.interval = clients, batch_ids, interval
        self.samples = []
        self.done_at = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            now, counts = time.time(), {}
            for owner, client in self.clients.items():
                mine = [b for b in client.batches.list(limit=100).data if b.id in self.batch_ids[owner]]
                counts[owner] = sum(b.request_counts.completed for b in mine)
                if len(mine) == len(self.batch_ids[owner]) and all(b.status in TERMINAL for b in mine):
                    self.done_at.setdefault(owner, now)
            self.samples.append((now, counts))
            if len(self.done_at) == len(self.clients):
                return
            self._stop.wait(self.interval)

    def join(self, timeout):
        self._thread.join(timeout)
        self._stop.set()


def both_active_rates(samples, totals):
    """Completed lines a second per owner, from the first sample where any line is done to the
    first sample where one owner has all its lines done: the time both owners had work."""
    start = next((i for i, (_, c) in enumerate(samples) if any(c.values())), None)
    end = next((i for i, (_, c) in enumerate(samples) if any(c[o] >= totals[o] for o in totals)), len(samples) - 1)
    if start is None or end <= start:
        return None
    (t0, c0), (t1, c1) = samples[start], samples[end]
    return {owner: (c1[owner] - c0[owner]) / (t1 - t0) for owner in totals} | {"window_s": t1 - t0}


def run_slices(timeline):
    """The timeline from its first to its last slice with arrivals (the run)."""
    busy = [i for i, s in enumerate(timeline) if s["arrivals"]]
    return timeline[busy[0] : busy[-1] + 1] if busy else []


def chat_calls(stats):
    return stats["by_path"].get("/v1/chat/completions", 0)


# --- the scenarios -----------------------------------------------------------------------------


def with_overrides(args, params):
    """The scenario's parameters, with the --param overrides that name one of them."""
    return {**params, **{key: value for key, value in args.param.items() if key in params}}


def head_of_line(upstream, args):
    params = with_overrides(args, {"latency_ms": 500, "per_batch_cap": 8, "a_batches": 5, "a_lines": 400, "b_lines": 10})
    upstream.configure(latency_ms=params["latency_ms"])
    with common.live_stack(upstream.base_url, concurrency=params["per_batch_cap"], db=args.db) as stack:
        clients = owners(stack)
        alone_first_s, alone_id = first_result(clients["B"], params["b_lines"], "B", "b-alone")
        alone = db_times(stack, [alone_id])[alone_id]
        alone_s = alone["completed_at"] - alone["created_at"]

        a_ids = [submit(clients["A"], params["a_lines"], "A", f"a{i}") for i in range(params["a_batches"])]
        first_result_s, b_id = first_result(clients["B"], params["b_lines"], "B", "b")
        times = db_times(stack, [b_id])[b_id]
        wall_s = times["completed_at"] - times["created_at"]
        a_done = sum(clients["A"].batches.retrieve(i).request_counts.completed for i in a_ids)
    met = first_result_s <= 2.0 and wall_s <= 3 * alone_s
    figures = [
        ("B's first result after its submission", f"{first_result_s:.2f} s", "<= 2 s"),
        ("B's wall time (created -> completed)", f"{wall_s:.2f} s", f"<= 3x alone = {3 * alone_s:.2f} s"),
        ("B's wall time alone; its first result alone", f"{alone_s:.2f} s; {alone_first_s:.2f} s", ""),
        ("ratio", f"{wall_s / alone_s:.1f}x", "<= 3x"),
        (
            "B created -> in_progress (validated), with A; alone",
            f"{times['in_progress_at'] - times['created_at']:.2f} s; {alone['in_progress_at'] - alone['created_at']:.2f} s",
            "",
        ),
        ("A's lines done when B finished", f"{a_done:,} of {params['a_batches'] * params['a_lines']:,}", ""),
    ]
    return (
        params,
        {
            "b_first_result_s": first_result_s,
            "b_wall_s": wall_s,
            "b_alone_s": alone_s,
            "b_alone_first_result_s": alone_first_s,
            "b_validated_s": times["in_progress_at"] - times["created_at"],
            "b_alone_validated_s": alone["in_progress_at"] - alone["created_at"],
            "a_lines_done_when_b_done": a_done,
        },
        figures,
        met,
    )


def budget(upstream, args):
    params = with_overrides(
        args, {"latency_ms": 50, "batches": 4, "lines": 2000, "upstream_max_in_flight": 64, "per_batch_cap": 64, "band": [60, 68]}
    )
    upstream.configure(latency_ms=params["latency_ms"])
    env = {"BATCHES_UPSTREAM_MAX_IN_FLIGHT": str(params["upstream_max_in_flight"])}
    with common.live_stack(upstream.base_url, concurrency=params["per_batch_cap"], db=args.db, env=env) as stack:
        client = stack.client(timeout=120)
        with LimitSampler(stack) as limits, common.CpuUse(stack) as cpu:
            ids = [submit(client, params["lines"], "A", f"a{i}") for i in range(params["batches"])]
            finals = [wait_terminal(client, batch_id) for batch_id in ids]
        stats, slices = upstream.stats(), run_slices(upstream.timeline())
    # The adaptive limit beside the in-flight count: a limit held low and a dispatcher slow to refill are two causes.
    run_limits = [limit for t, limit in limits.samples]
    low, high = params["band"]
    in_band = sum(1 for s in slices if low <= s["in_flight_mean"] <= high) / max(1, len(slices))
    mean = sum(s["in_flight_mean"] for s in slices) / max(1, len(slices))
    completed = sum(b.request_counts.completed for b in finals)
    met = in_band >= 0.5 and stats["max_in_flight"] <= params["upstream_max_in_flight"]
    figures = [
        (f"share of the run at {low}-{high} in flight (0.5 s slices)", f"{100 * in_band:.0f} %", ">= 50 % (most of the run)"),
        ("upstream max in flight", stats["max_in_flight"], f"<= {params['upstream_max_in_flight']}"),
        ("mean in flight over the run", f"{mean:.1f}", ""),
        ("run length, lines completed", f"{len(slices) * SLICE_S:.1f} s, {completed:,}", ""),
        ("scheduler's limit during the run: mean (min-max)", limit_text(run_limits, limits.available), ""),
        cpu_figure(cpu.result, completed),
    ]
    result = {
        "share_in_band": in_band,
        "max_in_flight": stats["max_in_flight"],
        "mean_in_flight": mean,
        "run_s": len(slices) * SLICE_S,
        "completed": completed,
        "in_flight_per_slice": [round(s["in_flight_mean"], 1) for s in slices],
        "limit_samples": run_limits if limits.available else None,
        **cpu.result,
    }
    return params, result, figures, met


def fair_share(upstream, args):
    params = with_overrides(args, {"latency_ms": 100, "batches_per_owner": 3, "lines": 2000, "upstream_max_in_flight": 32, "weight_b": 3})
    upstream.configure(latency_ms=params["latency_ms"])
    env = {"BATCHES_UPSTREAM_MAX_IN_FLIGHT": str(params["upstream_max_in_flight"])}
    phases = {}
    with common.live_stack(upstream.base_url, db=args.db, env=env) as stack:
        clients = owners(stack)
        for phase in ("equal", "weighted"):
            if phase == "weighted" and not set_weight(stack, "owner-b", params["weight_b"]):
                phases[phase] = None  # this version has no per-key weight
                continue
            ids = {owner: [] for owner in clients}

            def submit_all(owner, phase=phase, ids=ids):
                for i in range(params["batches_per_owner"]):
                    ids[owner].append(submit(clients[owner], params["lines"], owner, f"{phase}-{owner}{i}"))

            threads = [threading.Thread(target=submit_all, args=(owner,)) for owner in clients]  # both owners at once
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            progress = Progress(clients, ids).start()
            progress.join(timeout=900)
            totals = {owner: params["batches_per_owner"] * params["lines"] for owner in clients}
            rates = both_active_rates(progress.samples, totals)
            phases[phase] = {"rates": rates, "samples": [(round(t - progress.samples[0][0], 2), c) for t, c in progress.samples]}
    equal, weighted = phases["equal"], phases["weighted"]
    equal_ratio = equal["rates"] and max(equal["rates"]["A"], equal["rates"]["B"]) / max(
        1e-9, min(equal["rates"]["A"], equal["rates"]["B"])
    )
    weighted_ratio = weighted and weighted["rates"] and weighted["rates"]["B"] / max(1e-9, weighted["rates"]["A"])
    met_equal = equal_ratio is not None and equal_ratio <= 1.15
    met_weighted = bool(weighted_ratio) and 2.4 <= weighted_ratio <= 3.6

    def rates_text(phase):
        if phase is None:
            return "not measured: API keys have no weight on this version"
        r = phase["rates"]
        return "no time with both owners active" if r is None else f"A {r['A']:.0f}, B {r['B']:.0f} lines/s over {r['window_s']:.0f} s"

    figures = [
        ("equal weights: rates while both active", rates_text(equal), ""),
        ("equal weights: faster / slower", f"{equal_ratio:.2f}" if equal_ratio else "n/a", "<= 1.15"),
        ("B at weight 3: rates while both active", rates_text(weighted), ""),
        ("B at weight 3: B / A", f"{weighted_ratio:.2f}" if weighted_ratio else "n/a", "3 +- 20 % (2.4-3.6)"),
    ]
    result = {"equal": equal, "weighted": weighted, "equal_ratio": equal_ratio, "weighted_ratio": weighted_ratio}
    result["met_equal"], result["met_weighted"] = met_equal, met_weighted
    return params, result, figures, met_equal and met_weighted


def deadlines(upstream, args):
    params = with_overrides(args, {"latency_ms": 100, "lines": 2000, "completion_windows": "1h,24h"})
    upstream.configure(latency_ms=params["latency_ms"])
    with common.live_stack(upstream.base_url, db=args.db, env={"BATCHES_COMPLETION_WINDOWS": params["completion_windows"]}) as stack:
        client = stack.client(timeout=120)
        slow_id = submit(client, params["lines"], "A", "window-24h", window="24h")
        common.wait_until(lambda: client.batches.retrieve(slow_id).status != "validating", 120, interval=0.2, what="the 24h batch to run")
        fast_id = submit(client, params["lines"], "A", "window-1h", window="1h")
        fast, slow = wait_terminal(client, fast_id), wait_terminal(client, slow_id)
        times = db_times(stack, [fast_id, slow_id])
    fast_done, slow_done = times[fast_id]["completed_at"], times[slow_id]["completed_at"]
    met = fast.status == slow.status == "completed" and fast_done < slow_done
    start = times[slow_id]["created_at"]
    figures = [
        ("24h batch (submitted first) completed at", f"{slow_done - start:.1f} s", ""),
        ("1h batch (submitted second) completed at", f"{fast_done - start:.1f} s", "before the 24h batch"),
        ("1h batch submitted at", f"{times[fast_id]['created_at'] - start:.1f} s", ""),
    ]
    result = {
        "fast_completed_s": fast_done - start,
        "slow_completed_s": slow_done - start,
        "fast_created_s": times[fast_id]["created_at"] - start,
    }
    return params, result, figures, met


def aimd(upstream, args):
    params = with_overrides(
        args, {"latency_ms": 100, "capacity": 24, "lines": 3000, "upstream_max_in_flight": 128, "per_batch_cap": 128, "retry_after_s": 1.0}
    )
    upstream.configure(latency_ms=params["latency_ms"], max_concurrency=params["capacity"], retry_after_s=params["retry_after_s"])
    ideal = params["capacity"] / (params["latency_ms"] / 1000)
    env = {"BATCHES_UPSTREAM_MAX_IN_FLIGHT": str(params["upstream_max_in_flight"])}
    with common.live_stack(upstream.base_url, concurrency=params["per_batch_cap"], db=args.db, env=env) as stack:
        client = stack.client(timeout=120)
        with LimitSampler(stack) as limits, common.CpuUse(stack) as cpu:
            batch_id = submit(client, params["lines"], "A", "aimd")
            final = wait_terminal(client, batch_id)
        times = db_times(stack, [batch_id])[batch_id]
        stats = upstream.stats()
    run_limits = [limit for t, limit in limits.samples if times["in_progress_at"] <= t <= (times["finalizing_at"] or t)]
    run_s = (times["finalizing_at"] or time.time()) - times["in_progress_at"]
    rate = final.request_counts.completed / run_s
    calls = chat_calls(stats)
    failed = final.request_counts.failed
    met = rate >= 0.85 * ideal and calls <= 1.15 * params["lines"] and failed == 0 and final.status == "completed"
    figures = [
        ("run phase lines/s", f"{rate:.0f} = {100 * rate / ideal:.0f} % of {ideal:.0f}", f">= 85 % ({0.85 * ideal:.0f})"),
        ("upstream calls for the lines", f"{calls:,} = {calls / params['lines']:.2f}x", f"<= 1.15x ({1.15 * params['lines']:,.0f})"),
        ("failed lines", failed, "0"),
        ("429s from the upstream (over capacity)", f"{stats['rejected_over_capacity']:,}", ""),
        ("batch status, run phase", f"{final.status}, {run_s:.1f} s", ""),
        ("scheduler's limit during the run: mean (min-max)", limit_text(run_limits, limits.available), ""),
        cpu_figure(cpu.result, final.request_counts.completed),
    ]
    result = {
        "lines_per_s": rate,
        "share_of_ideal": rate / ideal,
        "upstream_calls": calls,
        "calls_per_line": calls / params["lines"],
        "failed_lines": failed,
        "rejected_over_capacity": stats["rejected_over_capacity"],
        "status": final.status,
        "run_s": run_s,
        "limit_samples": run_limits if limits.available else None,
        **cpu.result,
    }
    return params, result, figures, met


def recovery(upstream, args):
    params = with_overrides(
        args,
        {
            "latency_ms": 100,
            "capacity_before": 24,
            "capacity_after": 64,
            "lines": 20000,
            "upstream_max_in_flight": 128,
            "per_batch_cap": 128,
            "settle_s": 10,
            "deadline_s": 30,
            "reached_at_least": 51.2,
            "max_refused_share": 0.15,
        },
    )
    upstream.configure(latency_ms=params["latency_ms"], max_concurrency=params["capacity_before"])
    env = {"BATCHES_UPSTREAM_MAX_IN_FLIGHT": str(params["upstream_max_in_flight"])}
    with (
        common.live_stack(upstream.base_url, concurrency=params["per_batch_cap"], db=args.db, env=env) as stack,
        LimitSampler(stack) as limits,
    ):
        client = stack.client(timeout=120)
        batch_id = submit(client, params["lines"], "A", "recovery")
        common.wait_until(lambda: upstream.stats()["responses_by_status"].get("200"), 120, interval=0.2, what="the first answer")
        time.sleep(params["settle_s"])
        before = run_slices(upstream.timeline())
        upstream.configure(max_concurrency=params["capacity_after"])
        changed_at = time.time()
        changed_t = before[-1]["t"] + SLICE_S  # slices from this one on started after the change
        upstream_reached_s = limit_reached_s = None
        deadline = time.monotonic() + params["deadline_s"] + 10
        while time.monotonic() < deadline and client.batches.retrieve(batch_id).status not in TERMINAL:
            time.sleep(1)
            after = [s for s in upstream.timeline() if s["t"] >= changed_t]
            reached = next((s for s in after if recovered(s, params)), None)
            if reached is not None and upstream_reached_s is None:
                upstream_reached_s = reached["t"] + SLICE_S - changed_t  # by the end of that slice
            if limit_reached_s is None:
                limit_reached_s = next(
                    (t - changed_at for t, limit in list(limits.samples) if t > changed_at and near(limit, params)), None
                )
            if all(x is not None for x in (upstream_reached_s, limit_reached_s)) and len(after) * SLICE_S >= upstream_reached_s + 10:
                break  # ten seconds of the new level seen
        with contextlib.suppress(openai.ConflictError):  # already finished
            client.batches.cancel(batch_id)
        after = [s for s in upstream.timeline() if s["t"] >= changed_t]
    steady_before = [s["in_flight_mean"] for s in before[-10:]]
    limit_before = [limit for t, limit in limits.samples if changed_at - 5 <= t < changed_at]
    limit_after = [(round(t - changed_at, 1), limit) for t, limit in limits.samples if t >= changed_at]
    # The target is on the scheduler's limit; a version without one is judged by what the upstream serves.
    reached_s = limit_reached_s if limits.available else upstream_reached_s
    met = reached_s is not None and reached_s <= params["deadline_s"]
    following = [s["in_flight_mean"] for s in after[int((upstream_reached_s or 0) / SLICE_S) :][:20]]
    figures = [
        ("scheduler's limit at capacity 24 (last 5 s before the change)", limit_text(limit_before, limits.available), ""),
        (
            "time until the scheduler's limit is 64 +- 20 %",
            "none on this version" if not limits.available else ("not reached" if limit_reached_s is None else f"{limit_reached_s:.1f} s"),
            "< 30 s",
        ),
        ("upstream in flight at capacity 24 (last 5 s before the change)", f"{mean(steady_before):.1f}", ""),
        (
            "time until the upstream serves >= 51.2 at once (< 15 % refused)",
            "not reached" if upstream_reached_s is None else f"{upstream_reached_s:.1f} s",
            "< 30 s" if not limits.available else "",
        ),
        ("upstream in flight in the 10 s after that", f"{mean(following):.1f}" if following else "n/a", ""),
    ]
    result = {
        "reached_s": reached_s,
        "limit_reached_s": limit_reached_s,
        "upstream_reached_s": upstream_reached_s,
        "in_flight_before": mean(steady_before),
        "in_flight_after": mean(following) if following else None,
        "limit_after_change": limit_after if limits.available else None,
        "slices_after_change": [{k: s[k] for k in ("in_flight_mean", "arrivals", "ok", "rejected")} for s in after],
    }
    return params, result, figures, met


def near(limit, params):
    return 0.8 * params["capacity_after"] <= limit <= 1.2 * params["capacity_after"]


def cpu_figure(cpu, lines):
    """Worker CPU per line and how busy the whole machine was: tells a CPU-bound run from a scheduling limit."""
    per_line = 1000 * cpu["workers_cpu_s"] / lines if lines else 0.0
    return ("worker CPU per line; machine busy", f"{per_line:.2f} ms; {100 * cpu['machine_busy_share']:.0f} %", "")


def limit_text(values, available):
    if not available:
        return "none on this version"
    return f"{mean(values):.1f} ({min(values)}-{max(values)})" if values else "no samples"


def recovered(slice_, params):
    refused = slice_["rejected"] / slice_["arrivals"] if slice_["arrivals"] else 0.0
    return slice_["in_flight_mean"] >= params["reached_at_least"] and refused < params["max_refused_share"]


def mean(values):
    return sum(values) / len(values) if values else 0.0


SCENARIOS = {
    "head_of_line": head_of_line,
    "budget": budget,
    "fair_share": fair_share,
    "deadlines": deadlines,
    "aimd": aimd,
    "recovery": recovery,
}


def commit():
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.ROOT, capture_output=True, text=True)
    return result.stdout.strip() or None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="scenarios to run (default: all)")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite", help="the bundled default is SQLite")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. before / after")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a scenario parameter, e.g. --param latency_ms=200 (for diagnosis; the targets are for the defaults)",
    )
    parser.add_argument("--table", nargs="+", metavar="TAG", help="run nothing: print a Markdown table of the saved results of these tags")
    args = parser.parse_args()
    args.param = {key: json.loads(value) for key, _, value in (item.partition("=") for item in args.param)}
    if args.table:
        print_markdown(args.only or list(SCENARIOS), args.table)
        return
    summary = []
    for name in args.only or list(SCENARIOS):
        print(f"\n=== {name}", flush=True)
        with common.UpstreamProcess() as upstream:
            load_before, started = common.load_average(), time.time()
            params, result, figures, met = SCENARIOS[name](upstream, args)
            load_after = common.load_average()
        common.print_table(f"{name}: {json.dumps(params)}", ["measure", "value", "target"], figures)
        print(
            f"{name}: {'MET' if met else 'NOT MET'}; load average {load_before} -> {load_after}; {time.time() - started:.0f} s", flush=True
        )
        saved = {
            "commit": commit(),
            "params": params,
            "figures": [list(f) for f in figures],
            **result,
            "met": met,
            "load_before": load_before,
            "load_after": load_after,
        }
        path = common.save(f"scheduling_{name}", saved, result_path(name, args.tag))
        print("results:", path)
        summary.append((name, "; ".join(f"{f[0]}: {f[1]}" for f in figures if f[2]), met, f"{load_before} -> {load_after}"))
    common.print_table(
        "Scheduling benchmarks", ["scenario", "figures", "met", "load"], [(n, f, "MET" if m else "NOT MET", lo) for n, f, m, lo in summary]
    )


def result_path(name, tag):
    return common.RESULTS_DIR / f"scheduling_{name}{'-' + tag if tag else ''}.json"


def print_markdown(names, tags):
    """One row per scenario: its targets, then per tag the judged figures, MET or not, and the load average."""
    print("| Scenario | Target | " + " | ".join(tags) + " |")
    print("|---|---|" + "---|" * len(tags))
    for name in names:
        results = [json.loads(path.read_text()) if (path := result_path(name, tag)).exists() else None for tag in tags]
        known = next((r for r in results if r), None)
        if known is None:
            continue
        target = "; ".join(f"{measure} {target}" for measure, _, target in known["figures"] if target)
        cells = [
            "not measured"
            if r is None
            else "; ".join(f"{measure}: {value}" for measure, value, target in r["figures"] if target)
            + f" — **{'met' if r['met'] else 'not met'}** (load {r['load_before']} → {r['load_after']}, {r['commit']})"
            for r in results
        ]
        print(f"| {name} | {target} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
