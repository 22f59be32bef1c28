"""The buffer's statistics: raw replies of ``rtk_stats`` and the queue -> one JSON-ready dict.

This is what ``GET /v1/stats`` returns and the dashboard draws.  Shares are fractions in [0, 1]
(``None`` when undefined); counts are cumulative since the store was created or cleared; the
``series`` turns the time-series points written by the Lua library into per-interval shares and
rates, the ``by_version`` rows give the same shares per policy version (the "vanishing advantages"
curve: effective-group share per training step).
"""

from __future__ import annotations

from typing import Any, Sequence

import msgpack

from common.config import RethinkerConfig
from common.schemas import PolicyVersion
from common.staleness import staleness_bound

STATS_MAX_LAG = 8  # staleness histogram bins: lag 0..8, then "older"
ADV_BINS, ADV_LO, ADV_HI = 20, -2.5, 2.5  # must match the Lua library
POINT_FIELDS = (
    "t", "groups", "samples", "eff_samples", "zero_samples", "eff_groups", "allc_groups", "allw_groups",
    "draws", "draws_fresh", "draws_replay", "stale_evicted", "cap_evicted_samples", "fresh", "replay", "zero",
    "learner_version",
)
TOTAL_FIELDS = (
    "groups", "samples", "eff_samples", "zero_samples", "eff_groups", "allc_groups", "allw_groups", "dup_groups",
    "draws", "draws_fresh", "draws_replay", "sample_calls", "empty_sample_calls", "moved_to_replay", "retired",
    "replay_evicted", "replay_aged_out", "stale_evicted", "stale_evicted_fresh", "cap_evicted_samples", "cap_evicted_groups",
    "cap_evicted_fresh",
)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _share(num: float, den: float) -> float | None:
    return (num / den) if den else None


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {_s(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _unpack(raw: bytes) -> list[Any]:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def build_stats(
    raw: Sequence[Any],
    queue: Any,
    pv: PolicyVersion | None,
    live: dict[str, dict[str, Any]],
    cfg: RethinkerConfig,
) -> dict[str, Any]:
    sizes, counters_flat, stale_flat, series_raw, vser_flat, meta_flat, cur, now = raw
    now = float(_s(now))
    counters = {k: int(v) for k, v in _pairs(counters_flat).items()}
    c = lambda name: counters.get(name, 0)  # noqa: E731
    fresh, replay, zero, stored, n_groups = (int(x) for x in sizes)
    meta = {k: _s(v) for k, v in _pairs(meta_flat).items()}

    totals = {name: c(name) for name in TOTAL_FIELDS}
    shares = {
        "effective_samples": _share(c("eff_samples"), c("samples")),
        "zero_advantage_samples": _share(c("zero_samples"), c("samples")),
        "effective_groups": _share(c("eff_groups"), c("groups")),
        "all_correct_groups": _share(c("allc_groups"), c("groups")),
        "all_wrong_groups": _share(c("allw_groups"), c("groups")),
        "replayed_draws": _share(c("draws_replay"), c("draws")),
    }

    # time series: per-interval shares and rates between consecutive points
    points = [dict(zip(POINT_FIELDS, _unpack(p))) for p in series_raw]
    series = []
    for prev, p in zip([None] + points[:-1], points):
        row: dict[str, Any] = {
            "t": p["t"], "fresh": p["fresh"], "replay": p["replay"], "zero": p["zero"],
            "learner_version": p["learner_version"], "groups": p["groups"], "samples": p["samples"],
            "draws": p["draws"],
        }
        if prev is None:
            d = {k: p[k] for k in POINT_FIELDS if k != "t"}
            dt = None
        else:
            d = {k: p[k] - prev[k] for k in POINT_FIELDS if k != "t"}
            dt = p["t"] - prev["t"]
        row["effective_share"] = _share(d["eff_samples"], d["samples"])
        row["zero_share"] = _share(d["zero_samples"], d["samples"])
        row["effective_group_share"] = _share(d["eff_groups"], d["groups"])
        row["all_correct_share"] = _share(d["allc_groups"], d["groups"])
        row["all_wrong_share"] = _share(d["allw_groups"], d["groups"])
        row["insert_groups_per_s"] = (d["groups"] / dt) if dt else None
        row["draws_per_s"] = (d["draws"] / dt) if dt else None
        series.append(row)

    # rates over the last `rate_window_s` (current counters against the newest older point)
    window = cfg.buffer.rate_window_s
    older = [p for p in points if p["t"] <= now - window]
    base = older[-1] if older else (points[0] if points else None)
    rates = {"window_s": None, "insert_groups_per_s": 0.0, "insert_samples_per_s": 0.0, "draws_per_s": 0.0}
    if base is not None and now > base["t"]:
        dt = now - base["t"]
        rates = {
            "window_s": dt,
            "insert_groups_per_s": (c("groups") - base["groups"]) / dt,
            "insert_samples_per_s": (c("samples") - base["samples"]) / dt,
            "draws_per_s": (c("draws") - base["draws"]) / dt,
        }

    by_version = []
    vser = _pairs(vser_flat)
    for v in sorted(vser, key=lambda x: int(float(x))):
        g, eg, s, es, ac, aw = _unpack(vser[v])
        by_version.append({
            "version": int(float(v)), "groups": g, "samples": s,
            "effective_group_share": _share(eg, g), "effective_sample_share": _share(es, s),
            "all_correct_share": _share(ac, g), "all_wrong_share": _share(aw, g),
        })

    width = (ADV_HI - ADV_LO) / ADV_BINS
    adv_hist = {
        "edges": [round(ADV_LO + i * width, 6) for i in range(ADV_BINS + 1)],
        "counts": [c(f"ah:{i}") for i in range(ADV_BINS)],
        "zero": c("ah:zero"),
    }
    stale = _pairs(stale_flat)
    staleness = {"labels": list(stale.keys()), "counts": [int(v) for v in stale.values()], "learner_version": int(cur)}
    reuse = sorted(((int(k[3:]), v) for k, v in counters.items() if k.startswith("ru:")))
    categories: dict[str, dict[str, int]] = {}
    sources: dict[str, dict[str, int]] = {}
    for k, v in counters.items():
        for prefix, target, fieldname in (("cat:", categories, "groups"), ("cate:", categories, "effective_groups"),
                                          ("src:", sources, "groups"), ("srce:", sources, "effective_groups")):
            if k.startswith(prefix):
                name = k[len(prefix):] or "(none)"
                target.setdefault(name, {"groups": 0, "effective_groups": 0})[fieldname] = v
    ssr = cfg.algorithm.ssr
    return {
        "time": now,
        "namespace": cfg.redis.namespace,
        "policy_version": pv.version if pv else None,
        "policy_step": pv.step if pv else None,
        "learner_version": int(meta["learner_version"]) if "learner_version" in meta else None,
        "sizes": {
            "fresh": fresh, "replay": replay, "zero_fresh": zero, "total": stored, "groups": n_groups,
            "capacity": ssr.capacity, "replay_capacity": ssr.replay_capacity,
        },
        "totals": totals,
        "shares": shares,
        "series": series,
        "by_version": by_version,
        "advantage_histogram": adv_hist,
        "staleness_histogram": staleness,
        "reuse": {"times_sampled": [k for k, _ in reuse], "draws": [v for _, v in reuse]},
        "rates": rates,
        "categories": categories,
        "sources": sources,
        "queue": {
            "depth": queue.depth, "pending": queue.pending, "inflight": queue.inflight,
            "max_inflight": queue.max_inflight, "can_publish": queue.can_publish,
        },
        "servers": {"live": len(live), "ids": sorted(live)},
        "config": {
            "mode": ssr.mode, "alpha": ssr.alpha, "replay_eps": ssr.replay_eps, "staleness_bound": staleness_bound(cfg),
            "reuse_cap": ssr.reuse_cap, "std_normalize": cfg.algorithm.grpo.std_normalize,
        },
    }
