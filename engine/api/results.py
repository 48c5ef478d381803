"""What the loop's functions return: small frozen objects holding the ids, the key figures and the stored document.

The document is what the CLI's ``--json`` prints for the same step, so a notebook and a script see one shape.
Where a table is natural (a profile's points, a recommendation's candidates, an autopilot's runs) ``to_pandas()``
returns it with numbers, not formatted text; ``repr`` reads as a sentence, and a notebook shows a small table.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..format import format_ms, grouped

__all__ = ["Profile", "NoiseEstimate", "NoiseCurve", "Recommendation", "Autopilot"]


def _frozen(document: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(document))


def _html(title: str, frame, lines: tuple[str, ...] = ()) -> str:
    """A notebook's view: the title, a few lines, the table."""
    parts = [f"<p><b>{html.escape(title)}</b></p>", *(f"<p>{html.escape(line)}</p>" for line in lines)]
    if frame is not None and len(frame):
        parts.append(frame.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    return "\n".join(parts)


@dataclass(frozen=True, repr=False)
class Profile:
    """A profile: step time, throughput and memory against batch size (``largestep.profile``)."""

    id: str
    workload: str
    device: str
    state: str  # FINISHED, or how the job ended when it measured some sizes all the same
    saturation_batch: int | None  # the smallest batch at 90% of the best throughput
    stop_reason: str | None
    document: Mapping[str, Any] = field(compare=False)  # as `largestep profile --json` prints it

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> "Profile":
        return cls(
            id=document["profile_id"],
            workload=document["workload"],
            device=(document.get("device") or {}).get("name") or "?",
            state=document.get("state") or "?",
            saturation_batch=document.get("saturation_batch"),
            stop_reason=document.get("stop_reason"),
            document=_frozen(document),
        )

    @property
    def points(self) -> list[dict]:
        return list(self.document["points"])

    def to_pandas(self):
        """One row per batch size: its status, step time (median and quartiles, seconds), throughput, memory and
        the flags the CLI shows (noisy, inconsistent, under load, input-bound)."""
        import pandas as pd

        rows = []
        for p in self.points:
            step = p.get("step_time_s") or {}
            rows.append(
                {
                    "batch_size": p["batch_size"],
                    "status": p["status"],
                    # the profile's estimate (its estimator of the timed steps), the median beside it
                    "step_time_s": step.get("estimate", step.get("median")),
                    "step_time_median_s": step.get("median"),
                    "step_time_p25_s": step.get("p25"),
                    "step_time_p75_s": step.get("p75"),
                    "timed_steps": step.get("n"),
                    **{k: v for k, v in p.items() if k not in ("batch_size", "status", "step_time_s")},
                }
            )
        return pd.DataFrame(rows)

    def _summary(self) -> str:
        ok = [p["batch_size"] for p in self.points if p["status"] == "ok"]
        sizes = f"{len(ok)} batch sizes measured ({min(ok)} to {max(ok)})" if ok else "no batch size measured"
        return (
            f"Profile {self.id}: {self.workload} on {self.device}, {sizes}, saturation batch "
            f"{self.saturation_batch if self.saturation_batch is not None else '-'}, {self.state}"
        )

    @property
    def refusal(self) -> str | None:
        """Why recommending from it is refused (measured under load, failing the physics check); None if it is not."""
        return self.document.get("refusal")

    def __repr__(self) -> str:
        lines = [self._summary(), *([self.refusal] if self.refusal else [])]
        for p in self.points:
            step = p.get("step_time_s") or {}
            lines.append(
                f"  batch {p['batch_size']:>6}: {p['status']}, "
                f"{format_ms(step.get('estimate', step.get('median')))} ms/step, "
                f"{grouped(p.get('samples_per_s'))} samples/s"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        frame = self.to_pandas()
        shown = [
            c
            for c in (
                "batch_size",
                "status",
                "step_time_s",
                "step_time_p25_s",
                "step_time_p75_s",
                "samples_per_s",
                "peak_memory_bytes",
            )
            if c in frame.columns
        ]
        return _html(self._summary(), frame[shown] if len(frame) else None)


@dataclass(frozen=True, repr=False)
class NoiseEstimate:
    """The gradient noise scale B_simple with its 90% interval (``largestep.noise``); None when unreliable."""

    id: str
    workload: str
    b_simple: float | None
    ci_low: float | None
    ci_high: float | None
    reason: str | None  # why it is unreliable, when it is
    document: Mapping[str, Any] = field(compare=False)  # as `largestep noise --json` prints it

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> "NoiseEstimate":
        return cls(
            id=document["noise_id"],
            workload=document["workload"],
            b_simple=document.get("b_simple"),
            ci_low=document.get("ci_low"),
            ci_high=document.get("ci_high"),
            reason=document.get("reason"),
            document=_frozen(document),
        )

    def __repr__(self) -> str:
        if self.b_simple is None:
            return f"NoiseEstimate {self.id}: {self.workload}, unreliable: {self.reason}"
        interval = (
            ""
            if self.ci_low is None
            else f" (90% interval {grouped(self.ci_low)} to {grouped(self.ci_high) if self.ci_high is not None else '∞'})"
        )
        return f"NoiseEstimate {self.id}: {self.workload}, B_simple = {grouped(self.b_simple)}{interval}"


@dataclass(frozen=True, repr=False)
class NoiseCurve:
    """The noise scale along one baseline run's training (``largestep.noise(..., at=[...])``)."""

    id: str
    workload: str | None
    document: Mapping[str, Any] = field(compare=False)  # as `largestep noise --at ... --json` prints it

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> "NoiseCurve":
        return cls(id=document["curve_id"], workload=document.get("workload"), document=_frozen(document))

    @property
    def points(self) -> list[dict]:
        return list(self.document["points"])

    def to_pandas(self):
        """One row per fraction of training: the baseline's step there, B_simple and its 90% interval."""
        import pandas as pd

        return pd.DataFrame(self.points)

    def __repr__(self) -> str:
        lines = [f"NoiseCurve {self.id}: {self.workload}, {len(self.points)} points"]
        lines += [
            f"  at {p['fraction']:g}: B_simple {grouped(p.get('b_simple'))}"
            + (f" (unreliable: {p['reason']})" if p.get("reason") else "")
            for p in self.points
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return _html(f"NoiseCurve {self.id}: {self.workload}", self.to_pandas())


@dataclass(frozen=True, repr=False)
class Recommendation:
    """A batch size and learning rate predicted to reach the target fastest (``largestep.recommend``)."""

    id: str
    profile_id: str
    workload: str
    batch_size: int
    learning_rate: float
    warmup_steps: int
    rule: str
    baseline_batch_size: int
    baseline_learning_rate: float
    speedup: float  # predicted, in time to target
    speedup_interval: tuple[float, float] | None  # over the noise scale's interval and the step times' quartiles
    document: Mapping[str, Any] = field(compare=False)  # as `largestep recommend --json` prints it

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> "Recommendation":
        speed = document.get("predicted_speedup") or {}
        interval = speed.get("time_to_target_interval")
        return cls(
            id=document["recommendation_id"],
            profile_id=document["profile_id"],
            workload=document["workload"],
            batch_size=document["batch_size"],
            learning_rate=document["learning_rate"],
            warmup_steps=document["warmup_steps"],
            rule=document["rule"],
            baseline_batch_size=document["baseline"]["batch_size"],
            baseline_learning_rate=document["baseline"]["learning_rate"],
            speedup=speed.get("time_to_target"),
            speedup_interval=tuple(interval) if interval else None,
            document=_frozen(document),
        )

    @property
    def reasons(self) -> list[str]:
        return list(self.document.get("reasons") or [])

    def to_pandas(self):
        """One row per measured batch size considered: its rate, step time, throughput, predicted speedups, rank,
        and why it was excluded; ``chosen`` marks the recommendation."""
        import pandas as pd

        frame = pd.DataFrame(self.document.get("candidates") or [])
        if len(frame):
            frame.insert(0, "chosen", frame["batch_size"] == self.batch_size)
        return frame

    def _summary(self) -> str:
        interval = (
            ""
            if not self.speedup_interval
            else f" ({self.speedup_interval[0]:.2f}x to {self.speedup_interval[1]:.2f}x)"
        )
        return (
            f"Recommendation {self.id} from {self.profile_id}: batch {self.batch_size}, learning rate "
            f"{self.learning_rate:.4g}, warm-up {self.warmup_steps} steps ({self.rule} rule); baseline batch "
            f"{self.baseline_batch_size}, lr {self.baseline_learning_rate:.4g}; predicted {self.speedup:.2f}x "
            f"faster to the target{interval}"
        )

    def __repr__(self) -> str:
        return "\n".join([self._summary(), *(f"- {reason}" for reason in self.reasons)])

    def _repr_html_(self) -> str:
        frame = self.to_pandas()
        shown = [
            c
            for c in (
                "chosen",
                "batch_size",
                "learning_rate",
                "step_time_s",
                "samples_per_s",
                "speedup_throughput",
                "speedup_time_to_target",
                "rank",
                "excluded",
            )
            if c in frame.columns
        ]
        return _html(self._summary(), frame[shown] if len(frame) else None, tuple(self.reasons))


@dataclass(frozen=True, repr=False)
class Autopilot:
    """The whole loop: profile, noise scale, recommendation, the arms trained and compared (``largestep.autopilot``)."""

    id: str
    headline: str  # the verdict in one sentence, its words following the measured intervals
    recommendation: Recommendation | None
    profile_id: str | None
    noise_id: str | None
    baseline_runs: tuple[str, ...]
    recommended_runs: tuple[str, ...]
    document: Mapping[str, Any] = field(compare=False)  # as `largestep autopilot --json` prints it

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> "Autopilot":
        rec = document.get("recommendation")
        return cls(
            id=document["autopilot_id"],
            headline=(document.get("headline") or {}).get("text") or "",
            recommendation=Recommendation.of(rec) if rec else None,
            profile_id=document.get("profile_id"),
            noise_id=document.get("noise_id"),
            baseline_runs=tuple(document.get("baseline_runs") or ()),
            recommended_runs=tuple(document.get("recommended_runs") or ()),
            document=_frozen(document),
        )

    @property
    def comparison(self) -> Mapping[str, Any] | None:
        return self.document.get("comparison")

    @property
    def verified(self) -> bool | None:
        """With ``until_verified``: whether a pair was verified (faster, quality equivalent or better); else None."""
        until = (self.document.get("headline") or {}).get("until_verified")
        return None if until is None else bool(until.get("verified"))

    @property
    def attempts(self) -> tuple[Mapping[str, Any], ...]:
        """With ``until_verified``: each pair tried, in order (batch, rule, verdict, quality, its runs)."""
        return tuple((self.document.get("headline") or {}).get("attempts") or ())

    def to_pandas(self):
        """One row per training run compared: its arm, seed, state, time to the target (or the time it was
        censored at), training time and final validation loss and metric."""
        import pandas as pd

        from ..plan.compare import comparison_runs

        return pd.DataFrame(comparison_runs(self.comparison) if self.comparison else [])

    def _summary(self) -> str:
        return f"Autopilot {self.id}: {self.headline}"

    def __repr__(self) -> str:
        lines = [self._summary()]
        if self.recommendation is not None:
            lines.append(f"  {self.recommendation._summary()}")
        lines.append(
            f"  runs: baseline {', '.join(self.baseline_runs) or '-'}; recommended "
            f"{', '.join(self.recommended_runs) or '-'}"
        )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import pandas as pd

        from ..plan.compare import comparison_table

        table = pd.DataFrame(comparison_table(self.comparison)) if self.comparison else None
        lines = (self.recommendation._summary(),) if self.recommendation is not None else ()
        return _html(self._summary(), table, lines)
