"""Pure evaluation of alert rules: state + input in, state + events out; no I/O, no clock.

A rule watches *series*: one per (rule, device, metric), or per (rule, device) for ``quality``
rules and ``no_data`` rules without a metric (their metric key is ``''``). Each series has a
small ``SeriesState`` that ``to_dict``/``from_dict`` turn into JSON, so the engine can persist it
and carry on after a restart exactly where it was.

- ``observe(rule, state, point)``: a committed reading. ``observe_quality`` takes a
  ``QualitySample`` (messages accepted/rejected since the previous sample, the clock offset).
- ``tick(rule, state, now_us)``: what time alone decides: a ``for`` duration or a silence
  (``no_data``) that ends without a new reading, a flapping alert that has been stable long
  enough, a rejection-rate window that empties.
- ``preview(rule, points, start_us, end_us)``: a rule over stored history.

Time is event time (the reading's own timestamp), never arrival time. A **late reading** — event
time at or before the latest the series has already seen — is ignored by the rule: ``observe``
returns the state unchanged and no events. It is stored as always; it just cannot flip an alert
after the fact, and the same readings in any arrival order per series give the same alerts.

One alert is open per series. It fires when the condition has held for ``for`` and resolves when
the clear condition holds (default: the condition no longer holds); values between the two
(the hysteresis band) change nothing. A ``for`` or silence that the clock ends (``tick``) is
final: a reading arriving later with an earlier event time does not undo it. Flapping: when a
series would clear for the ``flap.count``-th time with that many fires inside ``flap.window``,
its alert is held firing and marked flapping (a ``flapping`` event); it resolves once no fire has
happened for a whole window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from telemetra.alerts.rules import (
    AnomalyCondition,
    ClockOffset,
    Compare,
    Inside,
    NoDataCondition,
    Outside,
    RateCondition,
    RejectionRate,
    Rule,
    compare,
    describe,
    format_duration,
    holds,
    number,
)

EventKind = Literal["fired", "resolved", "flapping"]
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Point:
    """A committed reading: ``value`` is None for text (it still counts as data for no_data)."""

    device: str
    metric: str
    time_us: int
    value: float | None


@dataclass(frozen=True, slots=True)
class QualitySample:
    """A device's quality since the previous sample: messages accepted and rejected, and the
    latest clock offset estimate (device time minus receive time), when there is one."""

    device: str
    time_us: int
    accepted: int = 0
    rejected: int = 0
    clock_offset_us: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """An alert transition of one series: fired, resolved (automatically) or flapping."""

    kind: EventKind
    device: str
    metric: str  # '' for per-device series
    time_us: int
    value: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.kind,
            "device": self.device,
            "metric": self.metric,
            "time_us": self.time_us,
            "value": self.value,
            "message": self.message,
        }


@dataclass(slots=True)
class SeriesState:
    """Everything one series remembers between inputs (JSON-serialisable via ``to_dict``)."""

    last_us: int | None = None  # latest event time seen: anything at or before it is late
    value: float | None = None  # latest reading's value
    measure: float | None = None  # latest measured quantity: value, rate, rejection rate, ...
    raw: bool = False  # the condition's own verdict (breached), before any flapping hold
    open: bool = False  # an alert is open: firing (raw) or held by flapping
    flapping: bool = False
    pending_us: int | None = None  # when the condition began to hold, waiting for `for`
    fired_us: int | None = None
    clear_us: int | None = None  # held by flapping: since when no fire
    fires: tuple[int, ...] = ()  # fire times inside the flap window
    window: tuple[tuple[float, ...], ...] = ()  # rate: (t, v); quality: (t, accepted, rejected)
    mean: float = 0.0  # anomaly: EWMA mean and variance, samples seen
    var: float = 0.0
    n: int = 0

    def copy(self) -> SeriesState:
        """A copy to update (its tuples are shared: they are replaced, never changed)."""
        return SeriesState(
            self.last_us, self.value, self.measure, self.raw, self.open, self.flapping,
            self.pending_us, self.fired_us, self.clear_us, self.fires, self.window,
            self.mean, self.var, self.n,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": _STATE_VERSION,
            "last_us": self.last_us,
            "value": self.value,
            "measure": self.measure,
            "raw": self.raw,
            "open": self.open,
            "flapping": self.flapping,
            "pending_us": self.pending_us,
            "fired_us": self.fired_us,
            "clear_us": self.clear_us,
            "fires": self.fires,  # tuples: JSON arrays alike
            "window": self.window,
            "mean": self.mean,
            "var": self.var,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeriesState:
        if data.get("v") != _STATE_VERSION:
            raise ValueError(f"unknown alert series state version {data.get('v')!r}")
        return cls(
            last_us=data["last_us"],
            value=data["value"],
            measure=data["measure"],
            raw=data["raw"],
            open=data["open"],
            flapping=data["flapping"],
            pending_us=data["pending_us"],
            fired_us=data["fired_us"],
            clear_us=data["clear_us"],
            fires=tuple(data["fires"]),
            window=tuple(tuple(w) for w in data["window"]),
            mean=data["mean"],
            var=data["var"],
            n=data["n"],
        )


def series_metric(rule: Rule, metric: str) -> str | None:
    """The metric key of the series a reading of ``metric`` belongs to, or None if not watched."""
    if rule.metric is None:
        return "" if rule.kind == "no_data" else None
    return metric if metric == rule.metric else None


# --- inputs ---------------------------------------------------------------------------------
# Each input copies the state once and the helpers below update that copy: the caller's state
# is never changed (a late reading hands back the very same object).


def observe(rule: Rule, state: SeriesState, point: Point) -> tuple[SeriesState, list[Event]]:
    """Evaluate one committed reading of the series (late or unwatched: state unchanged)."""
    metric = series_metric(rule, point.metric)
    t = point.time_us
    previous = state.last_us
    if metric is None or rule.kind == "quality" or (previous is not None and t <= previous):
        return state, []
    s = state.copy()
    device = point.device
    events = _advance(rule, s, t, device, metric, final=False)
    s.last_us = t
    x = point.value
    cond = rule.condition
    if isinstance(cond, NoDataCondition):
        s.value, s.measure = x, None
        return s, events + _step(rule, s, t, False, True, device, metric)
    if x is None:
        return s, events
    s.value = x
    breach: bool | None
    clear: bool | None
    if isinstance(cond, RateCondition):
        s.window = _rate_window(s.window, t, x, cond.window)
        if len(s.window) < 2:
            return s, events
        (t0, x0), (t1, x1) = s.window[0], s.window[-1]
        r = s.measure = (x1 - x0) / (t1 - t0) * cond.per
        breach = compare(cond.op, r, cond.value)
        clear = not breach if rule.clear is None else holds(rule.clear, r)
    elif isinstance(cond, AnomalyCondition):
        breach = _anomaly(cond, s, previous, t, x)
        clear = None if breach is None else not breach
    else:
        assert isinstance(cond, Compare | Outside | Inside)  # quality rules returned above
        s.measure = x
        breach = holds(cond, x)
        clear = not breach if rule.clear is None else holds(rule.clear, x)
    return s, events + _step(rule, s, t, breach, clear, device, metric)


def observe_quality(
    rule: Rule, state: SeriesState, sample: QualitySample
) -> tuple[SeriesState, list[Event]]:
    """Evaluate a quality sample of the device (late, or not a quality rule: unchanged)."""
    t = sample.time_us
    if rule.kind != "quality" or (state.last_us is not None and t <= state.last_us):
        return state, []
    s = state.copy()
    events = _advance(rule, s, t, sample.device, "", final=False)
    s.last_us = t
    cond = rule.condition
    if isinstance(cond, RejectionRate):
        s.window = (*s.window, (t, sample.accepted, sample.rejected))
        breach = _rejections(cond, s, t)
    else:
        assert isinstance(cond, ClockOffset)
        if sample.clock_offset_us is None:
            return s, events
        s.measure = sample.clock_offset_us / 1e6
        breach = abs(sample.clock_offset_us) > cond.clock_offset
    return s, events + _step(rule, s, t, breach, not breach, sample.device, "")


def tick(
    rule: Rule, state: SeriesState, now_us: int, device: str, metric: str
) -> tuple[SeriesState, list[Event]]:
    """What the passing of time alone decides for the series ``(device, metric)`` at ``now_us``.

    A series that has never had a reading has no silence to measure: to watch a device that
    may never report, start its no_data series as ``SeriesState(last_us=watch_start_us)``.
    """
    s = state.copy()
    events = _advance(rule, s, now_us, device, metric, final=True)
    cond = rule.condition
    if isinstance(cond, RejectionRate) and s.raw and s.last_us is not None and now_us > s.last_us:
        breach = _rejections(cond, s, now_us)
        events += _step(rule, s, now_us, breach, not breach, device, metric)
    return s, events


def resolved_by_hand(state: SeriesState) -> SeriesState:
    """The state after someone resolved the series' alert by hand: nothing is open, and the
    condition must hold anew (for ``for``, from the next reading that satisfies it) to fire
    again — a still-breaching series does not re-fire on its very next reading."""
    s = state.copy()
    s.raw = s.open = s.flapping = False
    s.pending_us = s.fired_us = s.clear_us = None
    s.fires = ()
    return s


# --- the state machine shared by every kind -------------------------------------------------


def _advance(
    rule: Rule, s: SeriesState, t: int, device: str, metric: str, *, final: bool
) -> list[Event]:
    """Outcomes that time has decided by ``t``, before anything observed at ``t``.

    ``final`` (a tick) counts a duration ending exactly at ``t``; a reading at ``t`` itself
    has its say first otherwise.
    """
    events: list[Event] = []
    if not s.raw:
        end = None
        cond = rule.condition
        if isinstance(cond, NoDataCondition):
            end = None if s.last_us is None else s.last_us + cond.for_
        elif s.pending_us is not None:
            end = s.pending_us + rule.for_
        if end is not None and (end <= t if final else end < t):
            events = _raw_fire(rule, s, end, device, metric)
    if rule.flap is not None and s.open and not s.raw and s.clear_us is not None:
        end = s.clear_us + rule.flap.window
        if end <= t:
            events += _resolve(rule, s, end, device, metric)
    return events


def _step(
    rule: Rule,
    s: SeriesState,
    t: int,
    breach: bool | None,
    clear: bool | None,
    device: str,
    metric: str,
) -> list[Event]:
    """One verdict at ``t``: ``breach`` (the condition holds), ``clear`` (the clear condition
    holds); None = no verdict yet (warm-up, a single rate sample)."""
    if breach is None:
        return []
    if not s.raw:
        if not breach:
            s.pending_us = None
            return []
        if s.pending_us is None:
            s.pending_us = t
        if t - s.pending_us >= rule.for_:
            return _raw_fire(rule, s, s.pending_us + rule.for_, device, metric)
        return []
    if clear:
        return _raw_clear(rule, s, t, device, metric)
    return []


def _raw_fire(rule: Rule, s: SeriesState, t: int, device: str, metric: str) -> list[Event]:
    if rule.flap is not None:
        # the latest `count` fires are all the flapping test needs
        recent = [f for f in s.fires if f > t - rule.flap.window][-(rule.flap.count - 1) :]
        s.fires = (*recent, t)
    s.raw, s.pending_us, s.clear_us = True, None, None
    if s.open:  # held by flapping: the alert is already open
        return []
    s.open, s.fired_us = True, t
    return [Event("fired", device, metric, t, _value(rule, s), fired_message(rule, s, device))]


def _raw_clear(rule: Rule, s: SeriesState, t: int, device: str, metric: str) -> list[Event]:
    s.raw, s.pending_us = False, None
    flap = rule.flap
    if flap is not None:
        recent = sum(1 for f in s.fires if f > t - flap.window)
        if recent >= flap.count:
            s.clear_us = t
            if s.flapping:
                return []
            s.flapping = True
            message = (
                f"{fired_message(rule, s, device)}: flapping ({recent} fires within "
                f"{format_duration(flap.window)}), held firing until stable"
            )
            return [Event("flapping", device, metric, t, _value(rule, s), message)]
    return _resolve(rule, s, t, device, metric)


def _resolve(rule: Rule, s: SeriesState, t: int, device: str, metric: str) -> list[Event]:
    at = max(t, s.fired_us or t)  # a later reading may carry an earlier time than a tick's fire
    s.open = s.flapping = False
    s.clear_us = s.fired_us = None
    message = resolved_message(rule, s, device)
    return [Event("resolved", device, metric, at, _value(rule, s), message)]


# --- kinds ----------------------------------------------------------------------------------


def _anomaly(
    cond: AnomalyCondition, s: SeriesState, previous_us: int | None, t: int, x: float
) -> bool | None:
    """Judge ``x`` against the EWMA of the samples before it, then fold it in.

    The weight of the past halves every ``halflife`` of event time, so irregular sampling
    does not skew the mean the way a fixed per-sample weight would.
    """
    if s.n == 0 or previous_us is None:
        s.mean, s.var, s.n, s.measure = x, 0.0, 1, 0.0
        return None
    deviation = x - s.mean
    std = math.sqrt(s.var)
    breach = None if s.n < cond.warmup else abs(deviation) > cond.sigma * std
    alpha = 1.0 - 2.0 ** (-(t - previous_us) / cond.halflife)
    s.mean += alpha * deviation
    s.var = (1.0 - alpha) * (s.var + alpha * deviation * deviation)
    s.n += 1
    # sigmas off the mean; None when a spread-free (constant) past makes any change infinite,
    # which JSON could not hold
    s.measure = abs(deviation) / std if std > 0 else (0.0 if deviation == 0 else None)
    return breach


_RATE_SAMPLES = 64  # samples kept per rate window at most (plus the newest)


def _rate_window(
    window: tuple[tuple[float, ...], ...], t: int, x: float, length: int
) -> tuple[tuple[float, ...], ...]:
    """The rate samples after adding ``(t, x)``: those of the last ``length``, and the newest
    one before it as the baseline, so that after a gap longer than the window the rate is still
    measured (over the gap).

    Kept samples are at least ``length / 64`` apart (the newest excepted), so a dense series
    costs no more than a sparse one; the baseline is then at most that much older.
    """
    start = t - length
    inside = 0
    while inside < len(window) and window[inside][0] < start:
        inside += 1
    kept = window[max(inside - 1, 0) :]
    if len(kept) >= 2 and kept[-1][0] - kept[-2][0] < length / _RATE_SAMPLES:
        kept = kept[:-1]  # the previous newest was too close to the one before it
    return (*kept, (t, x))


def _rejections(cond: RejectionRate, s: SeriesState, t: int) -> bool:
    s.window = tuple(w for w in s.window if w[0] > t - cond.window)
    accepted = sum(w[1] for w in s.window)
    rejected = sum(w[2] for w in s.window)
    total = accepted + rejected
    s.measure = rejected / total if total else 0.0
    return total >= cond.min_messages and s.measure > cond.rejection_rate


# --- messages -------------------------------------------------------------------------------


def _value(rule: Rule, s: SeriesState) -> float | None:
    """An alert's value: the reading, or what a rate/quality rule measured."""
    if rule.kind in ("threshold", "anomaly"):
        return s.value
    if rule.kind == "no_data":
        return None
    return s.measure


def _for(rule: Rule) -> str:
    return f" for {format_duration(rule.for_)}" if rule.for_ else ""


def fired_message(rule: Rule, s: SeriesState, device: str) -> str:
    """Why the series fires, e.g. ``temperature -12.5 > -15 for 2m``."""
    cond = rule.condition
    metric = rule.metric or "data"
    m = number(s.measure) if s.measure is not None else "?"
    if isinstance(cond, NoDataCondition):
        return f"no {metric} from {device} for {format_duration(cond.for_)}"
    if isinstance(cond, RateCondition):
        return (
            f"{metric} changing {m} per {format_duration(cond.per)} over "
            f"{format_duration(cond.window)} {cond.op} {number(cond.value)}{_for(rule)}"
        )
    if isinstance(cond, AnomalyCondition):
        value = number(s.value) if s.value is not None else "?"
        return f"{metric} {value} is {_sigmas(s.measure)} from its mean{_for(rule)}"
    if isinstance(cond, RejectionRate):
        return (
            f"{_percent(s.measure)} of messages from {device} rejected over "
            f"{format_duration(cond.window)} > {_percent(cond.rejection_rate)}{_for(rule)}"
        )
    if isinstance(cond, ClockOffset):
        return (
            f"clock of {device} off by {m}s, beyond ±{format_duration(cond.clock_offset)}"
            f"{_for(rule)}"
        )
    return f"{metric} {m} {describe(cond)}{_for(rule)}"


def resolved_message(rule: Rule, s: SeriesState, device: str) -> str:
    """Why the series resolved, e.g. ``temperature -17.5 <= -17``."""
    cond = rule.condition
    metric = rule.metric or "data"
    m = number(s.measure) if s.measure is not None else "?"
    if isinstance(cond, NoDataCondition):
        return f"{metric} from {device} again"
    if isinstance(cond, RejectionRate):
        return f"{_percent(s.measure)} of messages from {device} rejected, back within bounds"
    if isinstance(cond, ClockOffset):
        return f"clock of {device} off by {m}s, back within ±{format_duration(cond.clock_offset)}"
    if isinstance(cond, AnomalyCondition):
        value = number(s.value) if s.value is not None else "?"
        return f"{metric} {value} back within {number(cond.sigma)}σ of its mean"
    quantity = f"{metric} {m}" if not isinstance(cond, RateCondition) else f"{metric} changing {m}"
    if rule.clear is not None:
        return f"{quantity} {describe(rule.clear)}"
    compared = Compare(op=cond.op, value=cond.value) if isinstance(cond, RateCondition) else cond
    return f"{quantity}, no longer {describe(compared)}"


def _percent(x: float | None) -> str:
    return "?" if x is None else f"{x * 100:.3g} %"


def _sigmas(z: float | None) -> str:
    return "far" if z is None else f"{z:.1f}σ"


# --- several series at once -----------------------------------------------------------------

SeriesKey = tuple[str, str]  # (device, metric key)


def observe_all(
    rule: Rule, states: dict[SeriesKey, SeriesState], points: Iterable[Point]
) -> list[Event]:
    """Evaluate readings in arrival order, each against its own series' state (updated in place
    in ``states``); the events in order."""
    events: list[Event] = []
    empty = SeriesState()
    for point in points:
        metric = series_metric(rule, point.metric)
        if metric is None:
            continue
        key = (point.device, metric)
        state, more = observe(rule, states.get(key, empty), point)
        states[key] = state
        events += more
    return events


def preview(rule: Rule, points: Iterable[Point], start_us: int, end_us: int) -> list[Event]:
    """When ``rule`` would have fired and resolved over stored readings, by event time.

    ``points`` are the readings of the devices in the rule's scope (the caller filters by
    scope); those before ``start_us`` only warm the state up (rate windows, anomaly means) and
    transitions are reported from ``start_us`` to ``end_us``. Durations still running at
    ``end_us`` are judged at ``end_us``, as the worker's clock would.
    """
    ordered = sorted(
        (p for p in points if p.time_us <= end_us), key=lambda p: (p.time_us, p.device, p.metric)
    )
    states: dict[SeriesKey, SeriesState] = {}
    events = observe_all(rule, states, ordered)
    for (device, metric), state in sorted(states.items()):
        _, more = tick(rule, state, end_us, device, metric)
        events += more
    events.sort(key=lambda e: e.time_us)  # stable: a series' own events keep their order
    return [e for e in events if start_us <= e.time_us <= end_us]
