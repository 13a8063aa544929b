"""What a study found: the trials table (CSV and markdown), the best config as a ready YAML file, and
Optuna's optimisation-history and parameter-importance pictures."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import yaml

from capgen.io import atomic_path
from capgen.training.config import config_file_dict

BEST_CONFIG = "best_config.yaml"
TRIALS_CSV = "trials.csv"


def _value(t) -> float | None:
    """A trial's best val CIDEr-D (a pruned trial's best reported epoch)."""
    if t.value is not None:
        return t.value
    return max(t.intermediate_values.values()) if t.intermediate_values else None


def _note(t) -> str:
    a = t.user_attrs
    notes = []
    if a.get("baseline"):
        notes.append("base config")
    if a.get("resumed_from_trial") is not None:
        notes.append(f"resumes trial {a['resumed_from_trial']}")
    if a.get("interrupted"):
        notes.append("interrupted; point queued again")
    if a.get("error"):
        notes.append(a["error"])
    return "; ".join(notes)


def trial_rows(study) -> list[dict]:
    from optuna.trial import TrialState

    keys = sorted({k for t in study.trials for k in t.params})
    rows = []
    for t in study.trials:
        if t.state == TrialState.WAITING:
            continue
        v = _value(t)
        rows.append(
            {
                "trial": t.number,
                "status": t.state.name,
                "val_CIDEr": "" if v is None else f"{v:.4f}",
                "epochs": t.user_attrs.get("epochs", 0),
                "minutes": f"{t.user_attrs['seconds'] / 60:.1f}" if "seconds" in t.user_attrs else "",
                **{k: _fmt(t.params.get(k, "")) for k in keys},
                "note": _note(t),
            }
        )
    return rows


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no trials)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(r[k]).replace("|", "/") for k in head) + " |" for r in rows]
    return "\n".join(lines)


def describe_trial(t, study) -> str:
    v = _value(t)
    best = _best(study)
    params = " ".join(f"{k}={_fmt(x)}" for k, x in t.params.items())
    minutes = t.user_attrs.get("seconds", 0) / 60
    line = (
        f"trial {t.number} {t.state.name}: val CIDEr-D {'-' if v is None else f'{v:.4f}'}, "
        f"{t.user_attrs.get('epochs', 0)} epochs, {minutes:.1f} min; {params}"
    )
    if best is not None:
        line += f" (best so far: trial {best.number}, {best.value:.4f})"
    if t.user_attrs.get("error"):
        line += f" [{t.user_attrs['error']}]"
    return line


def _best(study):
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: t.value) if done else None


def write_report(study, study_dir: Path) -> list[str]:
    """Write trials.csv, best_config.yaml and the pictures; return the summary lines."""
    from optuna.trial import TrialState

    rows = trial_rows(study)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(study_dir / TRIALS_CSV) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    states = [t.state for t in study.trials]
    counts = ", ".join(
        f"{states.count(s)} {s.name.lower()}"
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
        if s in states
    )
    lines = [markdown_table(rows), "", f"{len(rows)} trials ({counts or 'none'})"]
    best = _best(study)
    if best is None:
        return lines + ["no completed trial yet: no best config"]
    _write_best_config(best, study_dir / BEST_CONFIG)
    lines.append(
        f"best: trial {best.number}, val CIDEr-D {best.value:.4f} -> {study_dir / BEST_CONFIG} "
        f"(checkpoint: {best.user_attrs.get('run_dir')}/best.pt)"
    )
    lines += _plots(study, study_dir)
    return lines


def _write_best_config(best, path: Path) -> None:
    cfg = best.user_attrs["config"]
    header = (
        f"# Best trial {best.number} of a capgen tune study: val CIDEr-D {best.value:.4f} after "
        f"{best.user_attrs.get('epochs', '?')} epochs.\n# Trials ran on a short budget (train.epochs, "
        f"train.val_images): raise them for a full run.\n# capgen train --config {path.name} ...\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(config_file_dict(cfg), sort_keys=False), encoding="utf-8")


def _plots(study, study_dir: Path) -> list[str]:
    """Optuna's matplotlib figures as PNGs; importances need two completed trials and a searched key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    made = []
    figures = {"optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) >= 2 and any(t.params for t in complete):
        figures["param_importances.png"] = optuna.visualization.matplotlib.plot_param_importances
    for name, plot in figures.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            with atomic_path(study_dir / name) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
            plt.close(fig)
            made.append(str(study_dir / name))
        except Exception as e:  # e.g. importances when every completed trial drew the same values
            made.append(f"({name} skipped: {type(e).__name__}: {e})")
            plt.close("all")
    return ["pictures: " + ", ".join(made)]
