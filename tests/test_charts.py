"""The chart builders are pure: frames in the store's shapes go in, plotly figures come out."""

import math

import numpy as np
import pandas as pd
import pytest

from largestep.ui.charts import profile as charts
from largestep.ui.charts.base import NO_DATA

MiB = 2**20


def make_points(profile_id="prof-aaaa", estimate=True):
    """Points as ``store.profile_points`` returns them, including a point refused over budget."""
    rows = [
        # batch, status, median_s, p25_s, p75_s, noisy, samples/s, peak bytes, flops/s
        (8, "ok", 0.010, 0.009, 0.012, False, 800.0, 10 * MiB, 1e9),
        (32, "ok", 0.012, 0.011, 0.013, False, 2667.0, 12 * MiB, 3e9),
        (128, "ok", 0.020, 0.015, 0.030, True, 6400.0, 20 * MiB, 7e9),
        (512, "ok", 0.070, 0.069, 0.071, False, 7314.0, 52 * MiB, 8e9),
    ]
    frame = pd.DataFrame(
        rows,
        columns=[
            "batch_size",
            "status",
            "median_s",
            "p25_s",
            "p75_s",
            "noisy",
            "samples_per_s",
            "peak_memory_bytes",
            "flops_per_s",
        ],
    )
    frame["n"] = 10
    frame["memory_is_estimate"] = estimate
    frame["flops_per_step"] = frame["flops_per_s"] * frame["median_s"]
    frame["predicted_memory_bytes"] = pd.array([None] * 4, dtype="Int64")
    refused = pd.DataFrame(
        [
            {
                "batch_size": 2048,
                "status": "over_budget",
                "median_s": np.nan,
                "p25_s": np.nan,
                "p75_s": np.nan,
                "noisy": None,
                "samples_per_s": np.nan,
                "peak_memory_bytes": pd.NA,
                "flops_per_s": np.nan,
                "n": 0,
                "memory_is_estimate": estimate,
                "flops_per_step": np.nan,
                "predicted_memory_bytes": 180 * MiB,
            }
        ]
    )
    frame = pd.concat([frame, refused], ignore_index=True)
    frame["predicted_memory_bytes"] = frame["predicted_memory_bytes"].astype("Int64")
    frame["peak_memory_bytes"] = frame["peak_memory_bytes"].astype("Int64")
    frame.insert(0, "profile_id", profile_id)
    return frame


def trace(fig, name_part):
    matches = [t for t in fig.data if t.name and name_part in t.name]
    assert matches, f"no trace named like {name_part!r} in {[t.name for t in fig.data]}"
    return matches[0]


def is_empty(fig):
    return not fig.data and any(a.text == NO_DATA for a in fig.layout.annotations)


# -- step time -----------------------------------------------------------------------------------


def test_step_time_is_log_log_with_median_and_quartile_error_bars():
    fig = charts.step_time_figure(make_points())
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    median = trace(fig, "median")
    assert list(median.x) == [8, 32, 128, 512]  # the refused batch is not drawn
    assert list(median.y) == pytest.approx([10.0, 12.0, 20.0, 70.0])  # ms
    assert list(median.error_y.array) == pytest.approx([2.0, 1.0, 10.0, 1.0])  # p75 - median
    assert list(median.error_y.arrayminus) == pytest.approx([1.0, 1.0, 5.0, 1.0])  # median - p25
    assert "ms" in fig.layout.yaxis.title.text and "batch" in fig.layout.xaxis.title.text


def test_step_time_reference_line_grows_linearly_from_the_smallest_batch():
    fig = charts.step_time_figure(make_points())
    reference = trace(fig, "time grows with batch")
    assert reference.line.dash == "dash"
    # t_ref(B) = t(B_min) * B / B_min with t(8) = 10 ms
    assert list(reference.y) == pytest.approx([10.0, 40.0, 160.0, 640.0])
    assert "64× the batch" in fig.layout.title.subtitle.text and "7× the step time" in fig.layout.title.subtitle.text


def test_step_time_marks_only_noisy_points():
    fig = charts.step_time_figure(make_points())
    assert list(trace(fig, "noisy").x) == [128]
    quiet = make_points().assign(noisy=False)
    assert not [t for t in charts.step_time_figure(quiet).data if "noisy" in (t.name or "")]


def test_uirevision_is_stable_for_one_profile_and_new_for_another():
    first = charts.step_time_figure(make_points()).layout.uirevision
    assert first and first == charts.step_time_figure(make_points().iloc[:2]).layout.uirevision
    assert first != charts.step_time_figure(make_points("prof-bbbb")).layout.uirevision
    assert charts.step_time_figure(make_points(), uirevision="fixed").layout.uirevision == "fixed"


# -- throughput ----------------------------------------------------------------------------------


def test_throughput_marks_the_saturation_batch():
    fig = charts.throughput_figure(make_points(), saturation_batch=128)
    assert fig.layout.xaxis.type == "log"
    assert list(trace(fig, "throughput").y) == pytest.approx([800, 2667, 6400, 7314])
    vertical = [s for s in fig.layout.shapes if s.x0 == s.x1 and s.xref == "x"]
    assert len(vertical) == 1 and vertical[0].x0 == 128
    label = [a for a in fig.layout.annotations if a.text == charts.SATURATION_LABEL]
    assert len(label) == 1 and label[0].x == pytest.approx(math.log10(128))  # annotations take log10 on log axes
    ninety = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert ninety and ninety[0].y0 == pytest.approx(0.9 * 7314)
    assert "samples/s" in fig.layout.yaxis.title.text


def test_throughput_without_saturation_batch_has_no_marker():
    fig = charts.throughput_figure(make_points(), saturation_batch=None)
    assert not [a for a in fig.layout.annotations if a.text == charts.SATURATION_LABEL]
    assert not [s for s in fig.layout.shapes if s.x0 == s.x1 and s.xref == "x"]


# -- memory --------------------------------------------------------------------------------------


def test_memory_fit_extends_to_the_largest_batch_and_budget_is_drawn():
    intercept, slope = 8 * MiB, 0.085 * MiB
    fig = charts.memory_figure(make_points(), intercept, slope, budget_bytes=150 * MiB)
    fit = trace(fig, "linear fit")
    assert min(fit.x) == 8 and max(fit.x) == pytest.approx(2048)  # up to the refused batch
    assert np.allclose(np.asarray(fit.y) * MiB, intercept + slope * np.asarray(fit.x))  # axis is in MiB
    assert fig.layout.yaxis.title.text == "peak memory (MiB)"
    assert list(trace(fig, "predicted").x) == [2048]
    budget = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert len(budget) == 1 and budget[0].y0 == pytest.approx(150)
    assert "budget 150 MiB" in fig.layout.title.subtitle.text


def test_memory_labels_cpu_estimates():
    estimated = charts.memory_figure(make_points(estimate=True), None, None, None)
    assert "estimate (CPU)" in estimated.layout.title.text
    assert "estimate (CPU)" in trace(estimated, "peak memory").name
    measured = charts.memory_figure(make_points(estimate=False), None, None, None)
    assert "estimate" not in measured.layout.title.text
    assert not [t for t in measured.data if "fit" in (t.name or "")]  # no fit given, none drawn
    assert not measured.layout.shapes  # no budget given, no line


def test_memory_budget_far_above_the_data_is_noted_not_drawn():
    fig = charts.memory_figure(make_points(), 8 * MiB, 0.085 * MiB, budget_bytes=12 * 2**30)
    assert not [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert "budget 12 GiB (off the chart)" in fig.layout.title.subtitle.text
    assert fig.layout.yaxis.title.text == "peak memory (MiB)"  # the data keeps its readable unit


# -- FLOP/s --------------------------------------------------------------------------------------


def test_flops_in_gflops_per_second():
    fig = charts.flops_figure(make_points())
    assert list(trace(fig, "GFLOP/s").y) == pytest.approx([1, 3, 7, 8])
    assert fig.layout.xaxis.type == "log" and "GFLOP/s" in fig.layout.yaxis.title.text


# -- telemetry -----------------------------------------------------------------------------------


def make_telemetry(source="psutil"):
    start = pd.Timestamp("2025-01-01 12:00:00", tz="UTC")
    batches = [None, 8, 8, 8, None, 32, 32, 32, 32, None]
    rows = []
    for i, batch in enumerate(batches):
        row = {
            "job_id": "prof-aaaa",
            "t": start + pd.Timedelta(seconds=0.5 * i),
            "batch_size": batch,
            "source": source,
            "cpu_util_pct": 50.0 + i,
            "rss_bytes": (100 + i) * MiB,
            "gpu_util_pct": None,
            "power_w": None,
            "temp_c": None,
            "sm_clock_mhz": None,
            "mem_used_bytes": None,
        }
        if source == "nvml":
            row.update(gpu_util_pct=90.0, power_w=250.0, temp_c=60.0, sm_clock_mhz=1400.0, mem_used_bytes=4 * 2**30)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["batch_size"] = frame["batch_size"].astype("Int32")
    return frame


def test_telemetry_without_nvml_shows_cpu_and_rss_shaded_by_batch():
    fig = charts.telemetry_figure(make_telemetry("psutil"))
    titles = [fig.layout[f"yaxis{i if i > 1 else ''}"].title.text for i in (1, 2)]
    assert titles == ["CPU util (%)", "process RSS (MiB)"]
    assert list(fig.data[0].x) == pytest.approx([0.5 * i for i in range(10)])  # seconds since start
    assert list(fig.data[1].y) == pytest.approx([100 + i for i in range(10)])  # MiB
    bands = {(s.x0, s.x1) for s in fig.layout.shapes if s.type == "rect"}
    assert bands == {(0.5, 2.0), (2.5, 4.5)}
    assert {a.text for a in fig.layout.annotations} >= {"B=8", "B=32"}
    assert "psutil" in fig.layout.title.subtitle.text


def test_telemetry_with_nvml_shows_gpu_panels():
    fig = charts.telemetry_figure(make_telemetry("nvml"))
    titles = [fig.layout[f"yaxis{i if i > 1 else ''}"].title.text for i in range(1, 5)]
    assert titles == ["GPU util (%)", "power (W)", "temp (°C)", "SM clock (MHz)"]
    assert "NVML" in fig.layout.title.subtitle.text


# -- empty input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [None, pd.DataFrame(), make_points().iloc[0:0], make_points().assign(status="oom", predicted_memory_bytes=None)],
)
def test_every_chart_handles_no_measured_points(frame):
    figures = [
        charts.step_time_figure(frame),
        charts.throughput_figure(frame, 128),
        charts.memory_figure(frame, None, None, 2**30),
        charts.flops_figure(frame),
    ]
    for fig in figures:
        assert is_empty(fig), fig.layout.title.text
        assert fig.layout.title.text and fig.layout.uirevision


def test_telemetry_handles_no_samples():
    assert is_empty(charts.telemetry_figure(None))
    assert is_empty(charts.telemetry_figure(make_telemetry().iloc[0:0]))


def test_a_single_point_draws_without_error():
    one = make_points().iloc[:1]
    assert list(trace(charts.step_time_figure(one), "median").x) == [8]
    assert len(charts.memory_figure(one, 8 * MiB, 0.1 * MiB, None).data) == 2


# -- other profiles overlaid, and energy per sample ------------------------------------------------


def test_other_profiles_are_overlaid_on_step_time_and_throughput_in_their_units():
    mine, other = make_points("prof-mine"), make_points("prof-other")
    other["median_s"] = other["median_s"] * 2
    other["samples_per_s"] = other["samples_per_s"] / 2
    step = charts.overlay_profiles(charts.step_time_figure(mine), "step time", {"fp16 on the A100": other})
    names = [t.name for t in step.data]
    assert names[0] == "median step time (this profile)" and names[-1] == "fp16 on the A100"
    overlaid = step.data[-1]
    assert list(overlaid.x) == [8, 32, 128, 512]  # the point refused over budget is not drawn
    assert list(overlaid.y) == pytest.approx([20.0, 24.0, 40.0, 140.0])  # ms, as this figure's own curve
    assert overlaid.line.dash == "dot" and step.layout.showlegend
    throughput = charts.overlay_profiles(charts.throughput_figure(mine, 128), "throughput", {"other": other})
    assert list(throughput.data[-1].y) == pytest.approx([400.0, 1333.5, 3200.0, 3657.0])
    # nothing to overlay: the figure is the profile's own, unchanged
    alone = charts.step_time_figure(mine)
    assert charts.overlay_profiles(charts.step_time_figure(mine), "step time", {}).to_dict() == alone.to_dict()


def test_energy_per_sample_is_charted_only_where_power_was_read():
    points = make_points()
    assert not charts.has_energy(points)  # CPU: no NVML power, no energy figures
    assert NO_DATA not in charts.energy_figure(points).layout.annotations[0].text  # its own note, not the generic one
    points["mean_power_w"] = [250.0, 260.0, 300.0, 310.0, np.nan]
    points["energy_per_sample_j"] = points["mean_power_w"] * points["median_s"] / points["batch_size"]
    assert charts.has_energy(points)
    fig = charts.energy_figure(points)
    [trace] = fig.data
    assert list(trace.x) == [8, 32, 128, 512]
    assert list(trace.y) == pytest.approx([250 * 0.010 / 8, 260 * 0.012 / 32, 300 * 0.020 / 128, 310 * 0.070 / 512])
    assert fig.layout.title.subtitle.text == "lowest 0.0424 J/sample at batch 512"  # 310 W x 70 ms / 512
