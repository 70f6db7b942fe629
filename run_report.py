"""After a DAPO run: read its TensorBoard event files, draw dashboard.png, write summary.md.

train_dapo.py calls ``finish_run(output_dir, trainer)`` when training ends; the command line does the same
for any output directory (a finished run, a run still going, a resumed run):

    python run_report.py dashboard OUTPUT_DIR [--out dashboard.png]
    python run_report.py summary OUTPUT_DIR [--out summary.md]

The curves are read by their TensorBoard tags (docs/metrics.md); a tag missing from the logs just leaves
out its panel or row.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from pathlib import Path

from logging_utils import format_duration

logger = logging.getLogger("dapo")

SUMMARY_FILE = "summary.md"
DASHBOARD_FILE = "dashboard.png"


# ============================================================================ reading event files
def event_dirs(path: str) -> list[str]:
    """Directories under ``path`` holding TensorBoard event files."""
    found = set()
    for root, _dirs, files in os.walk(path):
        if any(name.startswith("events.out.tfevents") for name in files):
            found.add(root)
    return sorted(found)


def load_scalars(path: str) -> tuple[dict[str, list[tuple[int, float, float]]], list[dict]]:
    """All scalars under ``path``: {tag: [(step, value, wall_time), ...]} and one info dict per run.

    Runs (event directories) are merged in order of their first event; a later run replaces the earlier
    runs' points from its first step on (a resumed run continues a curve, a restarted one replaces it).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # "No path found after ..." at INFO per file
    runs = []
    for directory in event_dirs(path):
        acc = EventAccumulator(directory, size_guidance={"scalars": 0, "tensors": 1, "images": 1,
                                                         "histograms": 1, "audio": 1, "compressedHistograms": 1})
        acc.Reload()
        data = {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        data = {tag: points for tag, points in data.items() if points}
        if not data:
            continue
        walls = [p[2] for points in data.values() for p in points]
        steps = [p[0] for points in data.values() for p in points]
        runtime = data.get("train/train_runtime")  # logged by the Trainer when train() ends
        span = max(walls) - min(walls)
        runs.append({"dir": directory, "data": data, "first_wall": min(walls), "last_wall": max(walls),
                     "first_step": min(steps), "last_step": max(steps),
                     "wall_s": max(span, runtime[-1][1]) if runtime else span})
    runs.sort(key=lambda r: r["first_wall"])
    merged: dict[str, list] = {}
    for run in runs:
        for tag in merged:
            merged[tag] = [p for p in merged[tag] if p[0] < run["first_step"]]
        for tag, points in run["data"].items():
            merged.setdefault(tag, []).extend(points)
    merged = {tag: sorted(points, key=lambda p: p[0]) for tag, points in merged.items() if points}
    info = [{k: v for k, v in run.items() if k != "data"} for run in runs]
    return merged, info


def _series(scalars: dict, *tags: str):
    """First present tag among ``tags``: a DAPO alias first, then TRL's name (which a plain GRPOTrainer run
    also has)."""
    for tag in tags:
        if scalars.get(tag):
            return tag, scalars[tag]
    return None, None


EVAL_ACCURACY = re.compile(r"(avg@|pass@|maj@|acc|accuracy|score|reward)", re.IGNORECASE)


def eval_accuracy_tags(scalars: dict) -> list[str]:
    return sorted(t for t in scalars if t.startswith("eval/") and EVAL_ACCURACY.search(t[len("eval/"):]))


# (title, y label, [(legend label, candidate tags...)], options)
PANELS = [
    ("Reward (score + overlong penalty)", "reward per response",
     [("mean", "train/reward/mean", "train/reward")], {"band": ("train/reward/std", "train/reward_std")}),
    ("Training accuracy", "fraction correct", [("acc", "train/acc")], {"ylim01": True}),
    ("Eval accuracy", "fraction correct", "eval", {"ylim01": True}),
    ("Response length", "tokens",
     [("mean", "train/response_length/mean", "train/completions/mean_length"),
      ("max", "train/response_length/max", "train/completions/max_length")], {"nonneg": True}),
    ("Entropy (should not collapse)", "nats per token", [("entropy", "train/entropy")], {}),
    ("Clip fraction (clip-higher)", "fraction of tokens",
     [("low (ratio < 1-eps_low, A<0)", "train/clip_ratio/low_mean"),
      ("high (ratio > 1+eps_high, A>0)", "train/clip_ratio/high_mean")],
     {"nonneg": True}),
    ("Dynamic sampling: kept groups", "fraction of generated groups",
     [("kept fraction", "train/dynamic_sampling/kept_fraction")], {"ylim01": True}),
    ("Overlong responses", "fraction of responses",
     [("in overlong buffer (penalised)", "train/overlong/ratio"),
      ("truncated at max length", "train/response_length/clip_ratio", "train/completions/clipped_ratio")],
     {"ylim01": True}),
    ("Step time split (last rollout cycle)", "fraction of step time",
     [("generation", "train/timing/generation_frac"), ("scoring", "train/timing/scoring_frac"),
      ("update", "train/timing/update_frac")], {"ylim01": True}),
    ("Throughput", "tokens per second", [("prompt+completion tokens/s", "train/perf/tokens_per_second")],
     {"nonneg": True}),
    ("Loss", "policy loss", [("loss", "train/loss")], {}),
]


def _ema(values: list[float], weight: float) -> list[float]:
    out, last, debias = [], 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        debias = debias * weight + (1 - weight)
        out.append(last / debias)
    return out


def render_dashboard(path: str, out: str | None = None) -> str:
    """Render the key curves of the run(s) under ``path`` to a PNG; returns the PNG's path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    scalars, runs = load_scalars(path)
    if not scalars:
        raise FileNotFoundError(f"No TensorBoard scalars found under {path} (looked for events.out.tfevents*).")
    panels = []
    for title, ylabel, series_spec, opts in PANELS:
        if series_spec == "eval":
            series = [(tag[len("eval/"):], tag, scalars[tag]) for tag in eval_accuracy_tags(scalars)]
        else:
            series = []
            for label, *tags in series_spec:
                tag, points = _series(scalars, *tags)
                if points:
                    series.append((label, tag, points))
        if series:
            panels.append((title, ylabel, series, opts))

    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.5 * nrows + 0.7), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    last_step = max(p[0] for points in scalars.values() for p in points)
    first_step = min(p[0] for points in scalars.values() for p in points)
    wall = sum(r["wall_s"] for r in runs)
    fig.suptitle(
        f"DAPO run: {os.path.basename(os.path.abspath(path))} ({last_step} optimizer steps, "
        f"wall time {format_duration(wall)}, {len(runs)} run segment(s))",
        fontsize=13, fontweight="bold",
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, ylabel, series, opts) in zip(axes, panels, strict=False):
        for k, (label, _tag, points) in enumerate(series):
            color = f"C{k}"
            steps = [p[0] for p in points]
            values = [p[1] for p in points]
            many = len(points) > 30
            if many:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(steps, _ema(values, 0.8), color=color, linewidth=1.8, label=f"{label} (smoothed)")
            else:
                ax.plot(steps, values, color=color, marker="o", markersize=3.5, linewidth=1.5, label=label)
            band = opts.get("band")
            if band and k == 0:
                _, std_points = _series(scalars, *band)
                if std_points:
                    std = dict((p[0], p[1]) for p in std_points)
                    lo = [v - std.get(s, 0.0) for s, v in zip(steps, values, strict=True)]
                    hi = [v + std.get(s, 0.0) for s, v in zip(steps, values, strict=True)]
                    ax.fill_between(steps, lo, hi, color=color, alpha=0.15, label="± std")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(first_step - 0.5, last_step + 0.5)  # the same steps on every panel, also for a single point
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(True, alpha=0.3)
        values = [p[1] for _, _, points in series for p in points]
        lo, hi = min(values), max(values)
        if opts.get("ylim01"):
            ax.set_ylim(min(lo, 0.0) - 0.02, max(hi, 1.0) + 0.02)
        elif hi - lo <= 1e-3 * max(abs(lo), abs(hi)):  # (nearly) flat: no axis of 1e-6 steps
            pad = max(0.05 * abs(hi), 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        if opts.get("nonneg") and lo >= 0:
            ax.set_ylim(bottom=0, top=None if hi > 0 else 0.01)
        if all(v == 0 for v in values):
            ax.text(0.5, 0.6, "all values are 0", transform=ax.transAxes, ha="center", color="0.4")
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    out = out or os.path.join(path, DASHBOARD_FILE)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    return out


# ============================================================================ text summary
# (tag candidates, label, direction of "best": "max", "min" or None)
SUMMARY_METRICS = [
    (("train/reward/mean", "train/reward"), "reward/mean", "max"),
    (("train/acc",), "acc", "max"),
    (("train/response_length/mean", "train/completions/mean_length"), "response_length/mean (tokens)", None),
    (("train/response_length/clip_ratio", "train/completions/clipped_ratio"), "response_length/clip_ratio", "min"),
    (("train/overlong/ratio",), "overlong/ratio", "min"),
    (("train/entropy",), "entropy (nats/token)", None),
    (("train/clip_ratio/low_mean",), "clip_ratio/low_mean", None),
    (("train/clip_ratio/high_mean",), "clip_ratio/high_mean", None),
    (("train/dynamic_sampling/kept_fraction",), "dynamic_sampling/kept_fraction", None),
    (("train/dynamic_sampling/num_gen_batches",), "dynamic_sampling/num_gen_batches", None),
    (("train/loss",), "loss", None),
    (("train/step_time",), "step_time (s)", "min"),
    (("train/timing/generation_frac",), "timing/generation_frac", None),
    (("train/perf/tokens_per_second",), "perf/tokens_per_second", "max"),
]


def summarize(path: str) -> str:
    """A short markdown summary of the run(s) under ``path``: steps, wall time, first/last/best."""
    scalars, runs = load_scalars(path)
    if not scalars:
        raise FileNotFoundError(f"No TensorBoard scalars found under {path} (looked for events.out.tfevents*).")
    last_step = max(p[0] for points in scalars.values() for p in points)
    wall = sum(r["wall_s"] for r in runs)
    lines = [f"# DAPO run summary: {os.path.abspath(path)}", ""]
    lines.append(f"- optimizer steps logged: {last_step}")
    lines.append(f"- wall time: {format_duration(wall)} (training time; {len(runs)} run segment(s) in the event files)")
    _, tokens = _series(scalars, "train/num_tokens")
    if tokens:
        lines.append(f"- tokens sampled (prompt + completion): {int(tokens[-1][1]):,}")
    lines += ["", "| metric | first | last | best (step) | points |", "|---|---|---|---|---|"]
    rows = [(tags, label, best) for tags, label, best in SUMMARY_METRICS]
    rows += [((tag,), tag, "max") for tag in eval_accuracy_tags(scalars)]
    for tags, label, best in rows:
        _, points = _series(scalars, *tags)
        if not points:
            continue
        first, last = points[0], points[-1]
        best_cell = "-"
        if best:
            chosen = (max if best == "max" else min)(points, key=lambda p: p[1])
            best_cell = f"{_g(chosen[1])} ({chosen[0]})"
        lines.append(f"| {label} | {_g(first[1])} | {_g(last[1])} | {best_cell} | {len(points)} |")
    notes = health_notes(scalars)
    if notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _g(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def health_notes(scalars: dict) -> list[str]:
    """A few DAPO-specific warnings read off the curves (see docs/metrics.md)."""
    notes = []
    _, entropy = _series(scalars, "train/entropy")
    if entropy and len(entropy) >= 10:
        head = sum(p[1] for p in entropy[:5]) / 5
        tail = sum(p[1] for p in entropy[-5:]) / 5
        if head > 0 and tail < 0.5 * head:
            notes.append(f"entropy fell from {head:.3g} to {tail:.3g}: possible entropy collapse.")
    _, low = _series(scalars, "train/clip_ratio/low_mean")
    _, high = _series(scalars, "train/clip_ratio/high_mean")
    if low and high and all(p[1] == 0 for p in low + high):
        notes.append("clip fractions are always 0: the importance ratio never left [1-eps_low, 1+eps_high]. With "
                     "num_mini_batches=1 and num_iterations=1 the ratio is always 1 and clip-higher has no effect; "
                     "otherwise expect small non-zero values (~0.001-0.01) after the first steps.")
    _, kept = _series(scalars, "train/dynamic_sampling/kept_fraction")
    if kept and kept[-1][1] < 0.1:
        notes.append(f"dynamic sampling keeps only {kept[-1][1]:.1%} of the groups: the data is too easy or too "
                     "hard for the model (each step needs many generation batches).")
    _, overlong = _series(scalars, "train/overlong/ratio")
    if overlong and overlong[-1][1] > 0.5:
        notes.append(f"{overlong[-1][1]:.0%} of the responses end in the overlong buffer (last step).")
    return notes


def write_summary(path: str, out: str | None = None) -> tuple[str, str]:
    text = summarize(path)
    out = out or os.path.join(path, SUMMARY_FILE)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")
    return text, out


def finish_run(output_dir: str, trainer=None) -> None:
    """End of training (main process only): dashboard PNG and summary.md in ``output_dir``, summary printed.

    Never raises: the model is already saved, a plotting problem must not fail the run. The event files are
    complete by then: the Trainer's TensorBoardCallback closes its writer when train() ends.
    """
    if trainer is not None and not trainer.is_world_process_zero():
        return
    if trainer is None and int(os.environ.get("RANK", "0")) != 0:
        return
    logger.info("Run finished; logs and checkpoints are in %s", output_dir)
    try:
        text, summary_path = write_summary(output_dir)
        print(text, flush=True)
        png = render_dashboard(output_dir)
        logger.info("Dashboard: %s; summary: %s", png, summary_path)
    except FileNotFoundError as exc:
        logger.info("No dashboard: %s", exc)
    except Exception as exc:  # noqa: BLE001
        logger.warning("Could not write the dashboard/summary of %s: %s", output_dir, exc)


# ============================================================================ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python run_report.py",
        description="Dashboard (PNG) and summary of a DAPO run, read from the TensorBoard event files under "
        "OUTPUT_DIR.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    dash = sub.add_parser("dashboard", help="render the key curves to a PNG (default OUTPUT_DIR/dashboard.png)")
    dash.add_argument("output_dir")
    dash.add_argument("--out", help="PNG path")
    summ = sub.add_parser("summary", help="print first/last/best of the key metrics; write OUTPUT_DIR/summary.md")
    summ.add_argument("output_dir")
    summ.add_argument("--out", help="summary file path")
    opts = parser.parse_args(argv)
    if not os.path.isdir(opts.output_dir):
        print(f"error: {opts.output_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        if opts.command == "dashboard":
            print(render_dashboard(opts.output_dir, opts.out))
        else:
            text, out = write_summary(opts.output_dir, opts.out)
            print(text)
            print(f"(written to {out})")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
