"""Simulated device fleet: realistic telemetry with faults on demand, published over MQTT.

Generation is pure and deterministic: the same seed gives byte-identical messages. Each device has
its own random stream, so a device's messages do not depend on how the fleet is split across
publisher processes. ``run`` publishes a fleet to a broker from one or more worker processes.
"""

from __future__ import annotations

import base64
import hashlib
import math
import multiprocessing
import queue
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

FORMATS = ("native", "event", "chirpstack", "tele")
KINDS = (  # fault markers, most notable first; ``SimMessage.kind`` is the first that applies
    "garbage",
    "epoch",
    "spike",
    "missing_fields",
    "duplicate",
    "out_of_order",
    "late",
    "counter_reset",
    "drift",
    "gap",
)
GARBAGE_VARIANTS = ("truncated", "nan", "non_utf8", "deep", "duplicate_key")

_NAN = "\x00nan\x00"  # placeholder value, replaced in the encoded bytes
_NAN_BYTES = orjson.dumps(_NAN)
_DEPTH = 200


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class _FaultSpec:
    alias: str
    default: float  # rate when named without a value
    maximum: float
    help: str


_SPECS: dict[str, _FaultSpec] = {
    "clock_drift": _FaultSpec(
        "drift", 0.1, 1.0, "fraction of devices with an offset, drifting clock"
    ),
    "duplicates": _FaultSpec("dup", 0.02, 0.5, "fraction of messages re-sent identically"),
    "out_of_order": _FaultSpec("ooo", 0.02, 0.5, "fraction of messages sent after the next one"),
    "late": _FaultSpec("late", 0.02, 0.9, "fraction of messages held back in batches"),
    "missing_fields": _FaultSpec("missing", 0.05, 1.0, "fraction of messages missing metrics"),
    "spikes": _FaultSpec("spike", 0.005, 1.0, "fraction of messages with an impossible value"),
    "garbage": _FaultSpec("garbage", 0.01, 1.0, "fraction of messages that are not valid JSON"),
    "offline": _FaultSpec("offline", 0.05, 0.9, "fraction of time devices are silent"),
    "counter_resets": _FaultSpec("reset", 0.001, 1.0, "rate of energy counter resets"),
}
_ALIASES: dict[str, str] = {name: name for name in _SPECS} | {
    spec.alias: name for name, spec in _SPECS.items()
}
_ALIASES |= {"duplicate": "duplicates", "spike": "spikes", "missing": "missing_fields"}
_ALIASES |= {"ooo": "out_of_order", "reset": "counter_resets", "counter_reset": "counter_resets"}


@dataclass(frozen=True)
class Faults:
    """Fault rates, 0 = off: ``clock_drift`` is a fraction of devices, the rest of messages."""

    clock_drift: float = 0.0
    duplicates: float = 0.0
    out_of_order: float = 0.0
    late: float = 0.0
    missing_fields: float = 0.0
    spikes: float = 0.0
    garbage: float = 0.0
    offline: float = 0.0
    counter_resets: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            spec = _SPECS[f.name]
            if not isinstance(value, int | float) or not 0.0 <= value <= spec.maximum:
                raise ValueError(
                    f"fault {spec.alias!r}: rate must be a number from 0 to {spec.maximum}, "
                    f"got {value!r}"
                )

    @classmethod
    def none(cls) -> Faults:
        """No faults: clean, in-order data."""
        return cls()

    @classmethod
    def all(cls) -> Faults:
        """Every fault at its default rate."""
        return cls(**{name: spec.default for name, spec in _SPECS.items()})

    @classmethod
    def parse(cls, text: str) -> Faults:
        """Parse ``"drift,dup=0.05,garbage=1%"``; ``"all"`` enables every fault, ``"none"`` none."""
        text = text.strip()
        if text.lower() in ("", "none", "off"):
            return cls()
        rates: dict[str, float] = {}
        use_all = False
        for raw_item in text.split(","):
            item = raw_item.strip()
            name, sep, raw_value = item.partition("=")
            key = name.strip().lower().replace("-", "_")
            if not key:
                raise ValueError(f"empty entry in fault list {text!r}")
            if key == "all" and not sep:
                use_all = True
                continue
            if key not in _ALIASES:
                known = ", ".join(f"{s.alias} ({s.help})" for s in _SPECS.values())
                raise ValueError(f"unknown fault {name.strip()!r}; known: all, {known}")
            field_name = _ALIASES[key]
            if field_name in rates:
                raise ValueError(f"fault {name.strip()!r} given twice")
            rates[field_name] = _SPECS[field_name].default if not sep else _rate(name, raw_value)
        base = {n: s.default for n, s in _SPECS.items()} if use_all else {}
        return cls(**(base | rates))

    def spec(self) -> str:
        """The parseable short form, e.g. ``"dup=0.05,garbage=0.01"`` (``"none"`` if clean)."""
        parts = [f"{_SPECS[f.name].alias}={getattr(self, f.name):g}" for f in fields(self)]
        return ",".join(p for p in parts if not p.endswith("=0")) or "none"

    def __str__(self) -> str:
        return self.spec()


def _rate(name: str, raw: str) -> float:
    raw = raw.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"fault {name.strip()!r}: rate must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"fault {name.strip()!r}: rate must be finite, got {raw!r}")
    return value


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One MQTT message as it is sent; ``faults`` names every fault injected into it."""

    topic: str
    payload: bytes
    device: str
    event_id: str
    ts_us: int  # the device time in the payload (ms precision)
    faults: tuple[str, ...] = ()
    format: str = "native"
    seq: int = 0  # per-device message number, from 1

    @property
    def kind(self) -> str:
        """The most notable fault, or ``"normal"``."""
        for kind in KINDS:
            if kind in self.faults:
                return kind
        return "normal"


_BASE_METRICS: tuple[tuple[str, str], ...] = (
    ("temperature", "C"),
    ("humidity", "%"),
    ("battery", "%"),
    ("rssi", "dBm"),
    ("pressure", "hPa"),
    ("co2", "ppm"),
    ("energy", "Wh"),
    ("voltage", "V"),
    ("current", "A"),
    ("power", "W"),
    ("lux", "lx"),
    ("noise", "dB"),
    ("pm25", "ug/m3"),
    ("pm10", "ug/m3"),
    ("voc", "ppb"),
    ("wind_speed", "m/s"),
    ("soil_moisture", "%"),
)
_SPIKES: dict[str, tuple[float, ...]] = {
    "temperature": (6000.0, -300.0, 850.0),
    "humidity": (250.0, -20.0),
    "battery": (255.0, -40.0),
    "pressure": (0.0, 20000.0),
    "co2": (-400.0, 99999.0),
}
_TELE_GROUPS: dict[str, tuple[str, str]] = {
    "temperature": ("AM2301", "Temperature"),
    "humidity": ("AM2301", "Humidity"),
    "pressure": ("BMP280", "Pressure"),
    "co2": ("MHZ19B", "CarbonDioxide"),
    "energy": ("ENERGY", "Total"),
    "power": ("ENERGY", "Power"),
    "voltage": ("ENERGY", "Voltage"),
    "current": ("ENERGY", "Current"),
    "rssi": ("Wifi", "RSSI"),
    "battery": ("Battery", "Percent"),
    "lux": ("ANALOG", "Illuminance"),
}


def metric_names(count: int) -> list[tuple[str, str]]:
    """The numeric metrics (name, unit) a message with ``count`` metrics carries."""
    names = list(_BASE_METRICS[:count])
    names += [(f"ch{i:02d}", "") for i in range(count - len(names))]
    return names


def _uid(seed: int, salt: str, device: str, seq: int) -> str:
    digest = hashlib.blake2b(f"{seed}|{salt}|{device}|{seq}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


def _naive_iso(ts_us: int, ms: bool = True) -> str:
    secs, us = divmod(ts_us, 1_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{text}.{us // 1000:03d}" if ms or us >= 1000 else text


def _round(x: float, digits: int = 2) -> float:
    return round(x, digits) + 0.0  # + 0.0 turns -0.0 into 0.0


@dataclass(slots=True)
class _Device:
    """Per-device signal parameters and state (mutable, private to one generator)."""

    index: int
    uid: str
    name: str
    fmt: str
    rng: random.Random
    flat: bool
    base_t: float
    amp_t: float
    phase: float
    base_h: float
    p0: float
    pressure: float
    co2_base: float
    battery: float
    drain: float
    energy: float
    power_base: float
    rssi_mean: float
    snr_mean: float
    extra_means: list[float]
    drift_us: int = 0
    drift_ppm: float = 0.0
    epoch_device: bool = False
    seq: int = 0
    last_ms: int = -1
    first_us: int | None = None
    offline_left: int = 0
    back_online: bool = False
    epoch_left: int = 0
    uptime_us: int = 0
    late_hold: list[SimMessage] | None = None
    late_left: int = 0
    ooo_held: SimMessage | None = None
    dup_later: SimMessage | None = None


class Fleet:
    """A deterministic fleet of simulated devices (see ``messages``)."""

    def __init__(
        self,
        devices: int,
        seed: int,
        start_us: int,
        interval_s: float,
        faults: Faults,
        formats: Sequence[str] = ("native",),
        metrics_per_message: int = 10,
        prefix: str = "sim",
        *,
        shard: tuple[int, int] = (0, 1),
        clock: Callable[[], int] | None = None,
        id_salt: str = "",
    ) -> None:
        """``shard=(i, n)`` keeps devices with index % n == i; ``clock`` (µs) gives real-time ts."""
        if devices < 1:
            raise ValueError("devices must be at least 1")
        if not interval_s >= 0.001:
            raise ValueError("interval_s must be at least 0.001")
        if not 1 <= metrics_per_message <= 1000:
            raise ValueError("metrics_per_message must be from 1 to 1000")
        unknown = [f for f in formats if f not in FORMATS]
        if not formats or unknown:
            raise ValueError(f"unknown format(s) {unknown}; known: {', '.join(FORMATS)}")
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"bad shard {shard}")
        self.devices = devices
        self.seed = seed
        self.start_us = start_us
        self.interval_s = interval_s
        self.faults = faults
        self.formats = tuple(formats)
        self.metrics = metric_names(metrics_per_message)
        self.prefix = prefix
        self.shard = shard
        self.clock = clock
        self.id_salt = id_salt
        tag = hashlib.blake2b(f"{prefix}|{seed}".encode(), digest_size=16).digest()
        self._eui_prefix = tag[:3].hex()
        self.app_id = str(uuid.UUID(bytes=tag, version=4))
        self.tenant_id = _uid(seed, "tenant", prefix, 0)
        self.profile_id = _uid(seed, "profile", prefix, 0)
        self.gateway_id = tag[8:16].hex()
        self._epoch_index = next(
            (i for i in range(devices) if self._drifting(i)), None
        )  # the one device whose clock sometimes falls back to 1970

    # -- devices

    def name(self, index: int) -> str:
        """The device name, ``{prefix}-{index:05d}``."""
        return f"{self.prefix}-{index:05d}"

    def device_id(self, index: int) -> str:
        """The id the topic carries: the name, or the DevEUI for ChirpStack devices."""
        if self.formats[index % len(self.formats)] == "chirpstack":
            return f"{self._eui_prefix}{index:010x}"
        return self.name(index)

    def device_ids(self) -> list[str]:
        """Ids of this shard's devices, as they appear in topics."""
        return [self.device_id(i) for i in range(self.shard[0], self.devices, self.shard[1])]

    def _rng(self, index: int, stream: str) -> random.Random:
        return random.Random(f"{self.seed}|{self.prefix}|{index}|{stream}")

    def _drifting(self, index: int) -> bool:
        rate = self.faults.clock_drift
        return rate > 0 and self._rng(index, "drift").random() < rate

    def _new_device(self, i: int) -> _Device:
        r = self._rng(i, "params")
        extra = len(self.metrics) - len(_BASE_METRICS)
        dev = _Device(
            index=i,
            uid=self.device_id(i),
            name=self.name(i),
            fmt=self.formats[i % len(self.formats)],
            rng=self._rng(i, "signal"),
            flat=r.random() < 0.5,
            base_t=r.uniform(16, 24),
            amp_t=r.uniform(2, 6),
            phase=r.random(),
            base_h=r.uniform(35, 60),
            p0=r.uniform(995, 1025),
            pressure=0.0,
            co2_base=r.uniform(400, 480),
            battery=r.uniform(40, 100),
            drain=r.uniform(0.002, 0.02),
            energy=r.uniform(0, 50_000),
            power_base=r.uniform(30, 1500),
            rssi_mean=r.uniform(-95, -50),
            snr_mean=r.uniform(-5, 10),
            extra_means=[r.uniform(0, 100) for _ in range(max(0, extra))],
        )
        dev.pressure = dev.p0
        if self._drifting(i):
            d = self._rng(i, "drift")
            d.random()
            dev.drift_us = round(d.choice((-1, 1)) * d.uniform(60, 600) * 1_000_000)
            dev.drift_ppm = d.uniform(-200, 200)
            dev.epoch_device = i == self._epoch_index
        return dev

    # -- generation

    def messages(
        self, count: int | None = None, *, until_us: int | None = None
    ) -> Iterator[SimMessage]:
        """Yield ``count`` messages (or until the fleet's time reaches ``until_us``; else forever).

        Devices report in turn, each every ``interval_s`` of simulated time (or at ``clock()``).
        """
        if count is not None and count <= 0:
            return
        devs = [self._new_device(i) for i in range(self.shard[0], self.devices, self.shard[1])]
        interval_us = round(self.interval_s * 1_000_000)
        out: list[SimMessage] = []
        emitted = 0
        step = 0
        while True:
            for dev in devs:
                if self.clock is not None:
                    now_us = self.clock()
                else:
                    now_us = self.start_us + step * interval_us
                    now_us += dev.index * interval_us // self.devices
                if until_us is not None and now_us >= until_us:
                    for d in devs:
                        self._flush(d, out)
                    yield from out[: None if count is None else count - emitted]
                    return
                self._step(dev, now_us, out)
                for msg in out:
                    yield msg
                    emitted += 1
                    if emitted == count:
                        return
                out.clear()
            step += 1

    def _step(self, dev: _Device, now_us: int, out: list[SimMessage]) -> None:
        f = self.faults
        r = dev.rng
        if dev.offline_left > 0:
            dev.offline_left -= 1
            return
        if f.offline > 0 and r.random() < f.offline / ((1 - f.offline) * 30):
            dev.offline_left = r.randint(10, 50) - 1
            dev.back_online = True
            return
        dev.seq += 1
        ms = max(now_us // 1000, dev.last_ms + 1)
        dev.last_ms = ms
        true_us = ms * 1000
        if dev.first_us is None:
            dev.first_us = true_us
        dev.uptime_us += round(self.interval_s * 1_000_000)
        values, tags = self._sample(dev, true_us)
        ts_us = true_us
        if dev.drift_us or dev.drift_ppm:
            tags.append("drift")
            ts_us += dev.drift_us + round((true_us - dev.first_us) * dev.drift_ppm / 1e6)
            ts_us -= ts_us % 1000
        if dev.epoch_device:
            if dev.epoch_left == 0 and r.random() < 0.01:
                dev.epoch_left = r.randint(1, 5)
                dev.uptime_us = r.randint(3, 20) * 1_000_000
            if dev.epoch_left > 0:
                dev.epoch_left -= 1
                ts_us = dev.uptime_us - dev.uptime_us % 1000
                tags.append("epoch")
        if dev.back_online:
            dev.back_online = False
            tags.append("gap")
        garbage: str | None = None
        x = r.random()
        if x < f.garbage:
            garbage = r.choice(GARBAGE_VARIANTS)
            tags += ["garbage", f"garbage.{garbage}"]
            values["temperature" if "temperature" in values else next(iter(values))] = _NAN
        elif x < f.garbage + f.spikes:
            candidates = [m for m in _SPIKES if m in values]
            if candidates:
                metric = r.choice(candidates)
                values[metric] = r.choice(_SPIKES[metric])
                tags.append("spike")
        elif x < f.garbage + f.spikes + f.missing_fields and len(values) > 1:
            for metric in r.sample(list(values), r.randint(1, max(1, len(values) // 2))):
                del values[metric]
            tags.append("missing_fields")
        eid = _uid(self.seed, self.id_salt, dev.uid, dev.seq)
        topic, body = self._encode(dev, eid, ts_us, values)
        payload = orjson.dumps(body)
        if garbage is not None:
            payload = _garble(payload, garbage)
        msg = SimMessage(topic, payload, dev.uid, eid, ts_us, tuple(tags), dev.fmt, dev.seq)
        self._deliver(dev, msg, out)

    def _deliver(self, dev: _Device, msg: SimMessage, out: list[SimMessage]) -> None:
        """Delivery faults: late batches, then out-of-order swaps, then duplicates."""
        f, r = self.faults, dev.rng
        batch = [msg]
        if dev.late_hold is not None:
            dev.late_hold.append(_tag(msg, "late"))
            dev.late_left -= 1
            if dev.late_left > 0:
                return
            batch, dev.late_hold = dev.late_hold, None
        elif f.late > 0 and r.random() < f.late / ((1 - f.late) * 10):
            dev.late_hold = [_tag(msg, "late")]
            dev.late_left = r.randint(4, 16) - 1
            return
        for m in batch:
            if dev.ooo_held is not None:
                self._emit(dev, m, out)
                self._emit(dev, dev.ooo_held, out)
                dev.ooo_held = None
            elif f.out_of_order > 0 and r.random() < f.out_of_order / (1 - f.out_of_order):
                dev.ooo_held = _tag(m, "out_of_order")
            else:
                self._emit(dev, m, out)

    def _emit(self, dev: _Device, msg: SimMessage, out: list[SimMessage]) -> None:
        out.append(msg)
        if dev.dup_later is not None:
            out.append(dev.dup_later)
            dev.dup_later = None
        f = self.faults
        if f.duplicates > 0 and dev.rng.random() < f.duplicates / (1 - f.duplicates):
            copy = _tag(msg, "duplicate")
            if dev.rng.random() < 0.5:
                out.append(copy)  # right away, else after this device's next message
            else:
                dev.dup_later = copy

    def _flush(self, dev: _Device, out: list[SimMessage]) -> None:
        for m in dev.late_hold or []:
            self._emit(dev, m, out)
        if dev.ooo_held is not None:
            self._emit(dev, dev.ooo_held, out)
        if dev.dup_later is not None:
            out.append(dev.dup_later)
        dev.late_hold, dev.ooo_held, dev.dup_later = None, None, None

    def _sample(self, dev: _Device, ts_us: int) -> tuple[dict[str, Any], list[str]]:
        """Signal values for one message, in metric order, plus ``status``."""
        r = dev.rng
        tags: list[str] = []
        day = ts_us / 86_400e6
        diurnal = math.sin(2 * math.pi * (day + dev.phase))
        occupancy = max(0.0, math.sin(2 * math.pi * (day + dev.phase - 0.1)))
        temperature = dev.base_t + dev.amp_t * diurnal + r.gauss(0, 0.2)
        humidity = min(
            99.0, max(5.0, dev.base_h - 2.5 * (temperature - dev.base_t) + r.gauss(0, 1))
        )
        dev.pressure += r.gauss(0, 0.05) + (dev.p0 - dev.pressure) * 0.001
        co2 = max(380.0, dev.co2_base + 350 * occupancy + r.gauss(0, 15))
        dev.battery = max(0.0, dev.battery - dev.drain)
        if (dev.battery < 15 and r.random() < 0.05) or r.random() < 0.0005:
            dev.battery = 100.0  # recharged / replaced
        power = max(
            0.0, dev.power_base * (0.5 + 0.5 * occupancy) + r.gauss(0, dev.power_base * 0.05)
        )
        dev.energy += power * self.interval_s / 3600
        if self.faults.counter_resets > 0 and r.random() < self.faults.counter_resets:
            dev.energy = 0.0
            tags.append("counter_reset")
        voltage = 230 + r.gauss(0, 1.5)
        lux = max(0.0, 800 * diurnal + r.gauss(0, 20))
        pm25 = max(0.0, 12 + 8 * occupancy + r.gauss(0, 2))
        known: dict[str, float] = {
            "temperature": _round(temperature),
            "humidity": _round(humidity),
            "battery": _round(dev.battery),
            "rssi": round(dev.rssi_mean + r.gauss(0, 3)),
            "pressure": _round(dev.pressure),
            "co2": round(co2),
            "energy": _round(dev.energy, 3),
            "voltage": _round(voltage),
            "current": _round(power / voltage, 3),
            "power": _round(power, 1),
            "lux": _round(lux, 1),
            "noise": _round(40 + 20 * occupancy + r.gauss(0, 2), 1),
            "pm25": _round(pm25, 1),
            "pm10": _round(pm25 * 1.6 + r.gauss(0, 1), 1),
            "voc": round(max(0.0, 120 + 200 * occupancy + r.gauss(0, 20))),
            "wind_speed": _round(abs(r.gauss(3, 2)), 1),
            "soil_moisture": _round(30 + 10 * math.cos(2 * math.pi * day / 7) + r.gauss(0, 0.5)),
        }
        values: dict[str, Any] = {}
        for j, (metric, _unit) in enumerate(self.metrics):
            if metric in known:
                values[metric] = known[metric]
            else:
                mean = dev.extra_means[j - len(_BASE_METRICS)]
                values[metric] = _round(mean + 5 * diurnal + r.gauss(0, 1))
        warn = dev.battery < 20 or co2 > 1200 or temperature > dev.base_t + 0.95 * dev.amp_t
        values["status"] = "warn" if warn or r.random() < 0.01 else "ok"
        return values, tags

    def _encode(
        self, dev: _Device, eid: str, ts_us: int, values: dict[str, Any]
    ) -> tuple[str, Any]:
        """Topic and JSON body of one message in the device's format."""
        if dev.fmt == "native":
            topic = f"devices/{dev.uid}/telemetry"
            if dev.flat:
                return topic, {"ts": ts_us // 1000, "event_id": eid, **values}
            return topic, {"ts": ts_us // 1000, "event_id": eid, "values": values}
        if dev.fmt == "event":
            units = dict(self.metrics)
            stamp = _naive_iso(ts_us)
            meta = {"seq": dev.seq, "fw": "1.4.2"}
            events = [
                {
                    "schema": 1,
                    "event_id": f"{eid}:{metric}",
                    "device_id": dev.uid,
                    "event_type": metric,
                    "value": value,
                    "unit": units.get(metric) or None,
                    "ts_device": stamp,
                    "meta": meta,
                }
                for metric, value in values.items()
            ]
            return f"qs/v1/{dev.uid}/events", events[0] if len(events) == 1 else events
        if dev.fmt == "chirpstack":
            return self._chirpstack(dev, eid, ts_us, values)
        sensor: dict[str, Any] = {"Time": _naive_iso(ts_us, ms=False)}
        for metric, value in values.items():
            group, key = _TELE_GROUPS.get(metric, ("SIM", metric))
            if metric == "status":
                group, key = "", "Status"
            elif metric == "energy" and value != _NAN:
                value = _round(value / 1000, 6)  # Tasmota counts kWh
            if group:
                sensor.setdefault(group, {})[key] = value
            else:
                sensor[key] = value
        sensor["TempUnit"] = "C"
        return f"tele/{dev.uid}/SENSOR", sensor

    def _chirpstack(
        self, dev: _Device, eid: str, ts_us: int, values: dict[str, Any]
    ) -> tuple[str, Any]:
        obj = {k: v for k, v in values.items() if k != "rssi"}
        rx: dict[str, Any] = {"gatewayId": self.gateway_id, "uplinkId": dev.seq & 0xFFFF}
        if "rssi" in values:
            rx["rssi"] = values["rssi"]
        rx |= {
            "snr": _round(dev.snr_mean + dev.rng.gauss(0, 1), 1),
            "channel": dev.seq % 8,
            "location": {},
            "context": "AAAAAA==",
            "crcStatus": "CRC_OK",
        }
        secs, us = divmod(ts_us, 1_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{us:06d}+00:00"
        body = {
            "deduplicationId": eid,
            "time": stamp,
            "deviceInfo": {
                "tenantId": self.tenant_id,
                "tenantName": self.prefix,
                "applicationId": self.app_id,
                "applicationName": f"{self.prefix}-app",
                "deviceProfileId": self.profile_id,
                "deviceProfileName": f"{self.prefix}-sensor",
                "deviceName": dev.name,
                "devEui": dev.uid,
                "deviceClassEnabled": "CLASS_A",
                "tags": {},
            },
            "devAddr": f"{dev.index & 0xFFFFFFFF:08x}",
            "adr": True,
            "dr": 5,
            "fCnt": dev.seq,
            "fPort": 2,
            "confirmed": False,
            "data": base64.b64encode(dev.seq.to_bytes(4, "big")).decode(),
            "object": obj,
            "rxInfo": [rx],
            "txInfo": {
                "frequency": 868_100_000,
                "modulation": {
                    "lora": {"bandwidth": 125_000, "spreadingFactor": 7, "codeRate": "CR_4_5"}
                },
            },
        }
        return f"application/{self.app_id}/device/{dev.uid}/event/up", body


def _tag(msg: SimMessage, fault: str) -> SimMessage:
    return replace(msg, faults=(*msg.faults, fault))


def _garble(payload: bytes, variant: str) -> bytes:
    """Turn a valid payload (holding the NaN placeholder) into one kind of garbage."""
    if variant == "nan":
        return payload.replace(_NAN_BYTES, b"NaN", 1)
    if variant == "non_utf8":
        return payload.replace(_NAN_BYTES, b'"\xff\xfe\xfd"', 1)
    clean = payload.replace(_NAN_BYTES, b"21.5", 1)
    if variant == "truncated":
        return clean[: len(clean) // 2]
    if variant == "deep":
        return clean.replace(b"21.5", b'{"x":' * _DEPTH + b"1" + b"}" * _DEPTH, 1)
    return clean.replace(b"{", b'{"dup":1,"dup":2,', 1)  # duplicate_key


# --------------------------------------------------------------------------- publishing


class SimError(RuntimeError):
    """The simulator could not do its job (connection refused, worker died, ...)."""


@dataclass
class SimReport:
    """What ``run`` published: counts by fault marker, and how long it took."""

    sent: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    unacked: int = 0  # QoS>0 publishes the broker never acknowledged
    failed: int = 0  # publishes refused by the client (not connected)
    processes: int = 1
    by_format: dict[str, int] = field(default_factory=dict)
    outcomes: Outcomes | None = None  # what ingest answered (``run(..., confirm=True)``)

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def merge(self, other: SimReport) -> None:
        """Add another worker's counts (elapsed time: the longest)."""
        self.sent += other.sent
        self.unacked += other.unacked
        self.failed += other.failed
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.by_kind = dict(Counter(self.by_kind) + Counter(other.by_kind))
        self.by_format = dict(Counter(self.by_format) + Counter(other.by_format))


@dataclass(frozen=True)
class _Spec:
    """Everything one publisher worker needs (picklable for spawned processes)."""

    url: str
    username: str | None
    password: str | None
    client_id: str
    shard: tuple[int, int]
    devices: int
    seed: int
    faults: Faults
    formats: tuple[str, ...]
    metrics_per_message: int
    prefix: str
    qos: int
    rate: float
    duration_s: float | None
    count: int | None
    realtime_ts: bool
    start_us: int
    interval_s: float
    id_salt: str
    max_inflight: int


class _Window:
    """Bounds the publishes awaiting acknowledgement (or, at QoS0, awaiting the socket)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.cond = threading.Condition()

    def acquire(self, stopped: Callable[[], bool], stall_s: float = 30.0) -> bool:
        with self.cond:
            waited = 0.0
            while self.inflight >= self.limit:
                if stopped():
                    return False
                if waited >= stall_s:
                    raise SimError(f"the broker acknowledged nothing for {stall_s:.0f} s")
                self.cond.wait(0.1)
                waited += 0.1
            self.inflight += 1
            return True

    def release(self) -> None:
        with self.cond:
            self.inflight -= 1
            self.cond.notify()

    def drain(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.inflight > 0 and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(min(left, 0.1))
            return self.inflight


def _client(
    mqtt_url: str, username: str | None, password: str | None, client_id: str
) -> tuple[Any, str, int]:
    """A paho MQTT 5 client for ``mqtt_url`` (not connected yet), its host and port."""
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    url = urlsplit(mqtt_url)
    if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise SimError(f"unsupported MQTT URL {mqtt_url!r} (use mqtt://host:port or mqtts://)")
    tls = url.scheme in ("mqtts", "ssl")
    host = url.hostname or "127.0.0.1"
    port = url.port or (8883 if tls else 1883)
    client = Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    username = username or (unquote(url.username) if url.username else None)
    password = password or (unquote(url.password) if url.password else None)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set()
    return client, host, port


def _connect(spec: _Spec) -> tuple[Any, _Window]:
    """A connected paho client (network loop running) and its in-flight window."""
    client, host, port = _client(spec.url, spec.username, spec.password, spec.client_id)
    client.max_inflight_messages_set(0)  # our window bounds in-flight; paho's scan is O(n)
    client.max_queued_messages_set(0)
    window = _Window(spec.max_inflight)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        else:
            receive_max = getattr(props, "ReceiveMaximum", None)
            if receive_max:
                window.limit = min(spec.max_inflight, int(receive_max))
        connected.set()

    def on_publish(_c: Any, _u: Any, _mid: int, _reason: Any, _props: Any) -> None:
        window.release()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise SimError(f"cannot connect to MQTT broker {host}:{port}: {exc}") from None
    client.loop_start()
    if not connected.wait(10) or refused:
        client.loop_stop()
        why = refused[0] if refused else "no CONNACK within 10 s"
        raise SimError(f"MQTT broker {host}:{port} refused the connection: {why}")
    return client, window


def _publish(
    spec: _Spec,
    *,
    ready: Callable[[], None],
    stopped: Callable[[], bool],
    tick: Callable[[int], None],
) -> SimReport:
    """Connect, wait for the go signal (``ready``), publish this shard, wait for all acks."""
    from paho.mqtt.enums import MQTTErrorCode

    client, window = _connect(spec)
    try:
        ready()
        t0 = time.monotonic()
        clock = (lambda: time.time_ns() // 1000) if spec.realtime_ts else None
        fleet = Fleet(
            spec.devices,
            spec.seed,
            spec.start_us,
            spec.interval_s,
            spec.faults,
            spec.formats,
            spec.metrics_per_message,
            spec.prefix,
            shard=spec.shard,
            clock=clock,
            id_salt=spec.id_salt,
        )
        deadline = t0 + spec.duration_s if spec.duration_s is not None else math.inf
        kinds: Counter[str] = Counter()
        formats: Counter[str] = Counter()
        sent = failed = 0
        messages = fleet.messages(spec.count)
        while not stopped():
            if not window.acquire(stopped):
                break
            now = time.monotonic()
            if spec.rate > 0:
                due = t0 + (sent + failed) / spec.rate
                if due > now:
                    time.sleep(due - now)
                    now = time.monotonic()
            msg = next(messages, None) if now < deadline else None
            if msg is None:
                window.release()
                break
            info = client.publish(msg.topic, msg.payload, qos=spec.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and (
                spec.qos == 0 or info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN
            ):
                window.release()
                failed += 1
                continue
            sent += 1
            formats[msg.format] += 1
            if msg.faults:
                kinds.update(msg.faults)
            else:
                kinds["normal"] += 1
            if not sent & 127:
                tick(sent)
        tick(sent)
        unacked = window.drain(60.0)
        elapsed = time.monotonic() - t0
        return SimReport(sent, dict(kinds), elapsed, unacked, failed, by_format=dict(formats))
    finally:
        client.disconnect()
        client.loop_stop()


# --------------------------------------------------------------------------- registering

SIM_DEVICE_TYPE = "sim"


def fleet_devices(
    devices: int, formats: Sequence[str] = ("native",), prefix: str = "sim", seed: int = 0
) -> list[tuple[str, str]]:
    """(device id, name) of every device of a fleet, as ``run`` publishes them.

    ChirpStack devices are named by a DevEUI that depends on the prefix and the seed.
    """
    fleet = Fleet(devices, seed, 0, 1.0, Faults(), formats, 1, prefix)
    return [(fleet.device_id(i), fleet.name(i)) for i in range(devices)]


@dataclass(frozen=True)
class Registered:
    """What ``register_fleet`` did: devices created, and those that were there already."""

    created: int
    existing: int
    inactive: list[str]  # already there, but disabled: ingest rejects them


async def register_fleet(conn: Any, fleet: Sequence[tuple[str, str]]) -> Registered:
    """Create the fleet's devices in the default tenant, type ``sim``; idempotent.

    Devices that exist already (in any tenant) are left as they are.
    """
    from sqlalchemy import select

    from telemetra.store.catalog import default_tenant_id, dialect_insert, now_us
    from telemetra.store.schema import devices

    tenant_id = await default_tenant_id(conn)
    uids = [uid for uid, _ in fleet]
    before: dict[str, str] = {}
    for i in range(0, len(uids), 1000):  # bounded IN lists
        query = select(devices.c.uid, devices.c.status).where(devices.c.uid.in_(uids[i : i + 1000]))
        before.update((row.uid, row.status) for row in await conn.execute(query))
    created = now_us()
    rows = [
        {"tenant_id": tenant_id, "uid": uid, "name": name, "type": SIM_DEVICE_TYPE,
         "metadata": {"simulated": True}, "status": "active", "created_at": created}
        for uid, name in fleet
        if uid not in before
    ]  # fmt: skip
    if rows:
        stmt = dialect_insert(conn, devices).on_conflict_do_nothing(index_elements=["uid"])
        await conn.execute(stmt, rows)
    inactive = sorted(uid for uid, status in before.items() if status != "active")
    return Registered(len(rows), len(before), inactive)


# --------------------------------------------------------------------------- what ingest answered

DEADLETTER_TOPIC = "telemetra/deadletter"  # as ``telemetra.ingest.pipeline`` publishes it


@dataclass
class Outcomes:
    """What the ingest pipeline answered for a run: ack-topic messages and dead letters.

    A route with an ack topic answers every message there after commit (accepted count and
    rejections); for routes without one (ChirpStack, Tasmota) only rejections are seen, on
    ``telemetra/deadletter``.
    """

    expected: int = 0  # messages sent on routes with an ack topic
    acked: int = 0  # ack-topic messages received for them
    accepted: int = 0  # readings accepted, by the acks
    rejected: Counter[str] = field(default_factory=Counter)  # rejections by reason
    without_ack: int = 0  # messages sent on routes without an ack topic
    unknown_devices: set[str] = field(default_factory=set)
    subscribe_error: str | None = None  # the broker refused the ack subscriptions

    def add_ack(self, device: str, payload: bytes) -> None:
        """Count one ack-topic message of a fleet device."""
        try:
            body = orjson.loads(payload)
            accepted = int(body.get("accepted", 0))
            rejected = list(body.get("rejected", []))
        except (ValueError, TypeError, AttributeError):
            return  # not an ack of the contract's shape
        self.acked += 1
        self.accepted += accepted
        for rejection in rejected:
            self._reject(device, str(rejection.get("reason", "unknown")))

    def add_dead_letter(self, device: str, payload: bytes) -> None:
        """Count one dead letter of a fleet device on a route without acks."""
        try:
            reason = str(orjson.loads(payload).get("reason", "unknown"))
        except (ValueError, TypeError, AttributeError):
            return
        self._reject(device, reason)

    def _reject(self, device: str, reason: str) -> None:
        self.rejected[reason] += 1
        if reason == "unknown_device":
            self.unknown_devices.add(device)

    @property
    def complete(self) -> bool:
        """Every message sent on a route with an ack topic has been answered."""
        return self.acked >= self.expected

    def summary(self) -> str:
        """One line: what was stored and what was rejected, by reason."""
        parts = []
        if self.expected:
            parts.append(
                f"ingest accepted {self.accepted} readings (duplicates included); {self.acked} "
                f"of {self.expected} messages acknowledged"
            )
        if self.without_ack:
            parts.append(
                f"{self.without_ack} messages on routes without an ack topic (only their "
                "rejections are seen)"
            )
        if self.rejected:
            reasons = ", ".join(f"{r} {n}" for r, n in self.rejected.most_common())
            parts.append(f"rejected: {reasons}")
        return "; ".join(parts)

    def problem(self, mqtt_url: str, wait_s: float) -> str | None:
        """Why nothing was stored, and what to do — or None when something was stored."""
        if self.subscribe_error is not None or self.accepted:
            return None  # outcomes unknown, or something was stored
        if self.expected:
            if not self.acked:
                return (
                    f"nothing was confirmed: no ingest worker answered on the ack topics "
                    f"within {wait_s:.0f} s; is `telemetra ingest` running against "
                    f"{_safe_url(mqtt_url)} (same TELEMETRA_MQTT_URL and routes)?"
                )
        elif not self.without_ack or self.rejected["unknown_device"] < self.without_ack:
            return None  # only routes without acks: stored readings cannot be seen
        if self.unknown_devices:
            example = ", ".join(sorted(self.unknown_devices)[:3])
            return (
                f"nothing was stored: ingest rejected the messages as unknown_device "
                f"({len(self.unknown_devices)} devices not registered, e.g. {example}); run "
                "again with --register, create them with `telemetra device create ID`, or "
                "run `telemetra ingest` with TELEMETRA_AUTO_REGISTER=true"
            )
        reasons = ", ".join(f"{r} {n}" for r, n in self.rejected.most_common(3))
        return (
            f"nothing was stored: ingest rejected every reading ({reasons}); the dead letters "
            "on `telemetra/deadletter` say why"
        )


def _safe_url(mqtt_url: str) -> str:
    url = urlsplit(mqtt_url)
    return f"{url.scheme}://{url.hostname or '127.0.0.1'}{f':{url.port}' if url.port else ''}"


def sample_topic(fmt: str) -> str:
    """The topic a simulated device of format ``fmt`` publishes on."""
    return next(Fleet(1, 0, 0, 1.0, Faults(), (fmt,)).messages(1)).topic


class _Observer:
    """Listens on the fleet's ack topics and the dead-letter topic while a run publishes."""

    def __init__(
        self,
        mqtt_url: str,
        username: str | None,
        password: str | None,
        client_id: str,
        devices: set[str],
        routes: Sequence[Any],
    ) -> None:
        from telemetra.ingest.routes import Route, match, subscription

        self.outcomes = Outcomes()
        self._lock = threading.Lock()
        self._heard = 0.0  # when the last ack or dead letter of the fleet arrived (monotonic)
        self._devices = devices
        self._routes = tuple(routes)
        self._match = match
        self._acks = [Route(r.ack, "native") for r in routes if r.ack is not None]
        filters = sorted({subscription(r) for r in self._acks} | {DEADLETTER_TOPIC})
        self._client, host, port = _client(mqtt_url, username, password, client_id)
        subscribed = threading.Event()
        connected: list[str] = []

        def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                connected.append(str(reason))
                subscribed.set()
            else:
                c.subscribe([(f, 1) for f in filters])

        def on_subscribe(_c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
            refused = [str(code) for code in codes if code.is_failure]
            if refused:
                self.outcomes.subscribe_error = f"ack subscription refused: {refused[0]}"
            subscribed.set()

        self._client.on_connect = on_connect
        self._client.on_subscribe = on_subscribe
        self._client.on_message = self._on_message
        try:
            self._client.connect(host, port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise SimError(f"cannot connect to MQTT broker {host}:{port}: {exc}") from None
        self._client.loop_start()
        if not subscribed.wait(10) or connected:
            self.close()
            why = connected[0] if connected else "no SUBACK within 10 s"
            raise SimError(f"MQTT broker {host}:{port} refused the ack listener: {why}")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        payload = bytes(msg.payload)
        with self._lock:
            if msg.topic == DEADLETTER_TOPIC:
                try:
                    letter = orjson.loads(payload)
                    device, topic = letter.get("device"), str(letter.get("topic"))
                except (ValueError, AttributeError):
                    return
                found = self._match(self._routes, topic)
                # Rejections on routes with an ack topic are counted from the ack.
                if device in self._devices and found is not None and found.ack_topic is None:
                    self.outcomes.add_dead_letter(device, payload)
                    self._heard = time.monotonic()
                return
            found = self._match(self._acks, msg.topic)
            if found is not None and found.device in self._devices:
                self.outcomes.add_ack(found.device, payload)
                self._heard = time.monotonic()

    def expect(self, with_ack: int, without_ack: int) -> None:
        """How many messages were sent on routes with and without an ack topic."""
        with self._lock:
            self.outcomes.expected = with_ack
            self.outcomes.without_ack = without_ack

    def wait(self, timeout_s: float, quiet_s: float = 0.5) -> Outcomes:
        """Wait for the outstanding acks while ingest answers: until ``timeout_s`` passes
        without one (a worker still draining a backlog is waited for), then a quiet moment
        for the dead letters of routes without acks."""
        started = time.monotonic()
        while time.monotonic() < max(started, self._heard) + timeout_s:
            with self._lock:
                if self.outcomes.complete or self.outcomes.subscribe_error:
                    time.sleep(quiet_s)
                    break
            time.sleep(0.05)
        return self.outcomes

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _worker(
    spec: _Spec,
    index: int,
    counters: Any,
    results: Any,
    go: Any,
    stop: Any,
) -> None:
    """Entry point of a spawned publisher process; reports through ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through ``stop``

    def ready() -> None:
        results.put(("ready", index, None))
        go.wait()

    def tick(sent: int) -> None:
        counters[index] = sent

    try:
        report = _publish(spec, ready=ready, stopped=stop.is_set, tick=tick)
    except SimError as exc:
        results.put(("error", index, str(exc)))
    except Exception as exc:
        results.put(("error", index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put(("done", index, report))


def run(
    mqtt_url: str,
    *,
    devices: int = 10,
    rate: float = 0.0,
    duration_s: float | None = None,
    count: int | None = None,
    seed: int = 0,
    faults: Faults | None = None,
    formats: Sequence[str] = ("native",),
    metrics_per_message: int = 10,
    qos: int = 1,
    processes: int = 1,
    realtime_ts: bool = True,
    username: str | None = None,
    password: str | None = None,
    progress: Callable[[int], None] | None = None,
    prefix: str = "sim",
    interval_s: float | None = None,
    start_us: int | None = None,
    max_inflight: int = 1000,
    confirm: bool = False,
    routes: Sequence[Any] | None = None,
    ack_wait_s: float = 10.0,
) -> SimReport:
    """Publish a simulated fleet to ``mqtt_url`` until ``count`` messages or ``duration_s``.

    ``rate`` is messages/s over all devices (0 = as fast as possible). With ``realtime_ts`` each
    payload's timestamp is its publish time; otherwise simulated time advances by ``interval_s``
    (default ``devices / rate``, or 1 s) and ends near now. At QoS>0 every publish is acknowledged
    before returning. ``progress`` receives the running total of messages sent. With
    ``confirm`` the run listens on its devices' ack topics (of ``routes``, default the built-in
    ones) and on ``telemetra/deadletter``, waits for the outstanding acks until ``ack_wait_s``
    pass without one, and reports what ingest stored in ``SimReport.outcomes``.
    """
    if count is None and duration_s is None:
        raise ValueError("give count or duration_s: the simulator must stop by itself")
    if (count or 0) < 0 or (duration_s or 0) < 0:
        raise ValueError("count and duration_s must not be negative")
    if rate < 0 or qos not in (0, 1, 2) or processes < 1 or max_inflight < 1:
        raise ValueError("rate >= 0, qos 0/1/2, processes >= 1 and max_inflight >= 1 required")
    Fleet(devices, seed, 0, interval_s or 1.0, Faults(), formats, metrics_per_message)  # validate
    faults = faults or Faults()
    processes = min(processes, devices)
    interval = interval_s or (devices / rate if rate > 0 else 1.0)
    if start_us is None:
        start_us = time.time_ns() // 1000
        if not realtime_ts:  # simulated history that ends around now
            steps = math.ceil(count / devices) if count is not None else 0
            if count is None and rate > 0 and duration_s is not None:
                steps = math.ceil(rate * duration_s / devices)
            start_us -= round(steps * interval * 1_000_000)
    run_tag = uuid.uuid4().hex[:8]
    shares = [len(range(i, devices, processes)) for i in range(processes)]
    counts: list[int | None] = [None] * processes
    if count is not None:
        exact = [count * s // devices for s in shares]
        for i in range(count - sum(exact)):
            exact[i] += 1
        counts = list(exact)
    specs = [
        _Spec(
            url=mqtt_url,
            username=username,
            password=password,
            client_id=f"{prefix}-sim-{run_tag}-{i}",
            shard=(i, processes),
            devices=devices,
            seed=seed,
            faults=faults,
            formats=tuple(formats),
            metrics_per_message=metrics_per_message,
            prefix=prefix,
            qos=qos,
            rate=rate * shares[i] / devices,
            duration_s=duration_s,
            count=counts[i],
            realtime_ts=realtime_ts,
            start_us=start_us,
            interval_s=interval,
            id_salt=run_tag if realtime_ts else "",
            max_inflight=max_inflight,
        )
        for i in range(processes)
    ]
    if not confirm:
        return (
            _run_inline(specs[0], progress) if processes == 1 else _run_processes(specs, progress)
        )
    from telemetra.ingest.routes import DEFAULT_ROUTES, match

    chosen = tuple(routes) if routes is not None else DEFAULT_ROUTES
    fleet = Fleet(devices, seed, 0, 1.0, Faults(), formats, metrics_per_message, prefix)
    observer = _Observer(
        mqtt_url, username, password, f"{prefix}-sim-{run_tag}-acks", set(fleet.device_ids()),
        chosen,
    )  # fmt: skip
    try:
        report = (
            _run_inline(specs[0], progress) if processes == 1 else _run_processes(specs, progress)
        )
        with_ack = set()
        for fmt in set(formats):
            found = match(chosen, sample_topic(fmt))
            if found is not None and found.ack_topic is not None:
                with_ack.add(fmt)
        expected = sum(n for fmt, n in report.by_format.items() if fmt in with_ack)
        observer.expect(expected, report.sent - expected)
        report.outcomes = observer.wait(ack_wait_s)
        return report
    finally:
        observer.close()


def _run_inline(spec: _Spec, progress: Callable[[int], None] | None) -> SimReport:
    """Publish from this process (Ctrl-C propagates after the client disconnects)."""
    last = [0.0]

    def tick(sent: int) -> None:
        now = time.monotonic()
        if progress is not None and now - last[0] >= 0.2:
            last[0] = now
            progress(sent)

    report = _publish(spec, ready=lambda: None, stopped=lambda: False, tick=tick)
    if progress is not None:
        progress(report.sent)
    return report


def _run_processes(specs: list[_Spec], progress: Callable[[int], None] | None) -> SimReport:
    """Spawn one publisher per shard, start them together, sum their reports."""
    ctx = multiprocessing.get_context("spawn")
    counters = ctx.Array("q", len(specs), lock=False)
    results = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(
            target=_worker,
            args=(spec, i, counters, results, go, stop),
            name=f"telemetra-sim-{i}",
            daemon=True,
        )
        for i, spec in enumerate(specs)
    ]
    for p in procs:
        p.start()
    total = SimReport(processes=len(specs))
    ready: set[int] = set()
    done: set[int] = set()
    error: str | None = None
    t0 = time.monotonic()
    try:
        while len(done) < len(specs) and error is None:
            try:
                kind, index, value = results.get(timeout=0.2)
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if i not in done and not p.is_alive()]
                if dead:
                    error = f"simulator worker {dead[0]} exited with code {procs[dead[0]].exitcode}"
                elif not go.is_set() and time.monotonic() - t0 > 60:
                    error = "simulator workers did not start within 60 s"
            else:
                if kind == "ready":
                    ready.add(index)
                    if len(ready) == len(specs):
                        go.set()
                        t0 = time.monotonic()
                elif kind == "error":
                    error = str(value)
                else:
                    done.add(index)
                    total.merge(value)
            if progress is not None and go.is_set():
                progress(sum(counters))
    except KeyboardInterrupt:
        stop.set()
        go.set()
        for _ in range(len(specs) - len(done)):
            try:
                kind, index, value = results.get(timeout=90)
            except queue.Empty:
                break
            if kind == "done":
                total.merge(value)
                done.add(index)
        raise
    finally:
        if error is not None or len(done) < len(specs):
            stop.set()
            go.set()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join()
        results.close()
    if error is not None:
        raise SimError(error)
    total.elapsed_s = time.monotonic() - t0
    return total
