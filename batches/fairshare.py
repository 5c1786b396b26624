"""Who gets the next free places of an upstream's in-flight budget.

Pure functions over a snapshot the claim transaction reads (``batches/claims.py``):
every runnable batch of one upstream with its owner, weight, live leases,
remaining lines and deadline. docs/scheduling.md explains the whole scheduler.

* **Between owners: weighted max-min fairness** (water-filling). Free places go
  one at a time to the owner with the lowest ``(in flight + given) / weight``,
  counting every dispatcher's live leases, so the division is exact
  cluster-wide. An owner whose batches want less than its share leaves the
  rest to the others; a newly active owner is served on the next claim,
  whatever the others have queued. This is what weighted deficit round robin
  converges to, decided at once instead of over rounds.
* **Within an owner: deadlines.** Its batches are served in order: first those
  that will miss their window at their current rate, then earliest
  ``expires_at``. Each batch takes at most its headroom (the per-batch cap
  minus its live leases, and no more than its remaining lines).
"""

import dataclasses
import heapq
from datetime import datetime


@dataclasses.dataclass
class Candidate:
    """A runnable batch as the claim transaction sees it."""

    batch_id: str
    owner_id: int
    weight: int
    live: int  # rows leased now (in flight), by any dispatcher
    remaining: int  # lines not finished (pending, in backoff or leased)
    cap: int  # MAX_CONCURRENT_REQUESTS_PER_BATCH
    expires_at: datetime | None
    created_at: datetime | None = None
    at_risk: bool = False

    @property
    def headroom(self):
        """How many more rows this batch could have in flight now."""
        return max(0, min(self.cap - self.live, self.remaining - self.live))

    def priority(self):
        """Sort key within an owner: at-risk batches first, then earliest deadline."""
        far = datetime.max.replace(tzinfo=self.expires_at.tzinfo) if self.expires_at else datetime.max
        return (not self.at_risk, self.expires_at or far, self.created_at or far, self.batch_id)


def will_miss_window(*, total, done, started_at, expires_at, now):
    """True when, at the rate it has finished lines since it started, a batch ends after ``expires_at``.

    Unknown (nothing done yet, no start or no deadline) counts as on time."""
    if not (started_at and expires_at) or done <= 0 or done >= total:
        return False
    elapsed = (now - started_at).total_seconds()
    if elapsed <= 0:
        return False
    needed = (total - done) * elapsed / done
    return needed > (expires_at - now).total_seconds()


def owner_order(candidates):
    """``{owner_id: [candidates in service order]}``."""
    owners = {}
    for candidate in candidates:
        owners.setdefault(candidate.owner_id, []).append(candidate)
    for batches in owners.values():
        batches.sort(key=Candidate.priority)
    return owners


def allocate(candidates, free):
    """``{batch_id: places}`` for up to ``free`` new requests across ``candidates``.

    Deterministic: ties between owners go to the one whose first batch comes
    first by priority, then to the lower owner id.
    """
    allocation = {}
    if free <= 0:
        return allocation
    owners = owner_order(candidates)
    # Per owner: weight (its largest: a key with a larger weight lifts its owner), in flight, headroom.
    state = {}
    for owner_id, batches in owners.items():
        wanted = sum(batch.headroom for batch in batches)
        if wanted:
            weight = max(1, max(batch.weight for batch in batches))
            state[owner_id] = [weight, sum(batch.live for batch in batches), wanted, 0]
    heap = [((live + 1) / weight, owners[owner_id][0].priority(), owner_id) for owner_id, (weight, live, _, _) in state.items()]
    heapq.heapify(heap)
    while free and heap:
        _, tie, owner_id = heapq.heappop(heap)
        entry = state[owner_id]
        entry[3] += 1
        free -= 1
        if entry[3] < entry[2]:
            weight, live, _, given = entry
            heapq.heappush(heap, ((live + given + 1) / weight, tie, owner_id))
    for owner_id, (_, _, _, given) in state.items():
        for batch in owners[owner_id]:
            if not given:
                break
            places = min(given, batch.headroom)
            if places:
                allocation[batch.batch_id] = places
                given -= places
    return allocation


def shares(candidates, limit):
    """What the admin shows: per batch, its owner's share of ``limit`` and the
    batch's place in its owner's queue (1 = served first).

    Returns ``{batch_id: {"owner_share": float, "owner_in_flight": int, "position": int}}``;
    the share is the owner's weight over the weights of every owner with runnable work.
    """
    owners = owner_order(candidates)
    weights = {owner_id: max(1, max(b.weight for b in batches)) for owner_id, batches in owners.items()}
    total_weight = sum(weights.values()) or 1
    result = {}
    for owner_id, batches in owners.items():
        in_flight = sum(b.live for b in batches)
        for position, batch in enumerate(batches, start=1):
            result[batch.batch_id] = {
                "owner_share": limit * weights[owner_id] / total_weight,
                "owner_in_flight": in_flight,
                "position": position,
            }
    return result
