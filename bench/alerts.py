"""Pure alert evaluation throughput: readings/s through 1 and through 100 rules of a tenant.

A simulated fleet (random walks of temperature and humidity, a reading every 10 s per device and
metric, in event-time order) is evaluated the way the engine does: for each reading, the rules
that watch its metric and whose scope takes the device, each against its own series' state.
No I/O: this is the ceiling of the evaluation itself, not of ingest.

    PYTHONPATH=src python bench/alerts.py [--devices 200] [--readings 50000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from typing import Any

from telemetra.alerts.evaluate import Point, SeriesState, observe
from telemetra.alerts.rules import Rule, applies_to

S = 1_000_000


def fleet(devices: int, readings: int, seed: int = 7) -> list[Point]:
    rnd = random.Random(seed)
    level = {(d, m): (4.0 if m == "temperature" else 50.0) for d in range(devices) for m in "th"}
    points = []
    t = 0
    while len(points) < readings:
        t += 10 * S
        for d in range(devices):
            for m, metric in (("t", "temperature"), ("h", "humidity")):
                level[(d, m)] += rnd.gauss(0, 0.3)
                points.append(Point(f"dev-{d}", metric, t + d * 1000, level[(d, m)]))
    return points[:readings]


def rules(n: int) -> list[Rule]:
    """A tenant's rules: a mix of kinds and scopes, like a real rule set would have."""
    specs: list[dict[str, Any]] = []
    for i in range(n):
        k = i % 5
        scope: dict[str, Any] = [{}, {"type": "freezer"}, {"tag": f"room-{i % 7}"}][i % 3]
        metric = "temperature" if i % 2 == 0 else "humidity"
        if k == 0:
            spec = {"kind": "threshold", "condition": {"op": ">", "value": 6 + i % 4}, "for": "1m"}
            spec["clear"] = {"op": "<=", "value": 5 + i % 4}
        elif k == 1:
            spec = {"kind": "threshold", "condition": {"outside": [-10, 70]}}
        elif k == 2:
            spec = {"kind": "rate", "condition": {"op": ">", "value": 1, "window": "5m"}}
        elif k == 3:
            spec = {"kind": "anomaly", "condition": {"sigma": 4, "halflife": "1h", "warmup": 30}}
        else:
            spec = {"kind": "no_data", "condition": {"for": "5m"}}
        specs.append({"name": f"rule-{i}", "metric": metric, "scope": scope} | spec)
    return [Rule.model_validate(spec) for spec in specs]


def run(rule_set: list[Rule], points: list[Point], devices: int) -> tuple[float, int, int]:
    """Seconds taken, rule evaluations done, events produced."""
    kinds = {
        f"dev-{d}": ("freezer" if d % 2 else "fridge", [f"room-{d % 7}"]) for d in range(devices)
    }
    by_metric: dict[str, list[tuple[int, Rule]]] = defaultdict(list)
    for i, rule in enumerate(rule_set):
        by_metric[rule.metric or ""].append((i, rule))
    states: dict[tuple[int, str, str], SeriesState] = {}
    empty = SeriesState()
    evaluations = events = 0
    started = time.perf_counter()
    for p in points:
        device_type, tags = kinds[p.device]
        for i, rule in by_metric.get(p.metric, ()):
            if not applies_to(rule.scope, p.device, device_type, tags):
                continue
            key = (i, p.device, p.metric)
            state, out = observe(rule, states.get(key, empty), p)
            states[key] = state
            evaluations += 1
            events += len(out)
    return time.perf_counter() - started, evaluations, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--readings", type=int, default=50_000)
    args = parser.parse_args()
    points = fleet(args.devices, args.readings)
    results = {}
    for n in (1, 100):
        seconds, evaluations, events = run(rules(n), points, args.devices)
        rate = len(points) / seconds
        results[n] = rate
        print(
            f"{n:>3} rules: {rate:>10,.0f} readings/s  {evaluations / seconds:>10,.0f} "
            f"rule evaluations/s  ({evaluations:,} evaluations, {events:,} events, "
            f"{seconds:.2f} s)"
        )
    print(f"ratio 100 rules / 1 rule: {results[100] / results[1]:.3f}")


if __name__ == "__main__":
    main()
