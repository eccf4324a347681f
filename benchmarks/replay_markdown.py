"""A `raysearch replay --json` document as BENCHMARKS.md's markdown table: per method, the share at
each budget (mean +- standard error, the one-sided Mann-Whitney p against random sampling without
stopping, and the default's p of being ahead), trials, stopped trials, repeat proposals and the
latencies its latency model had measured.

    python benchmarks/replay_markdown.py benchmarks/results/replay-A-host.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cell(c: dict[str, Any], is_default: bool) -> str:
    notes = []
    if c.get("p_vs_random") is not None:
        notes.append(f"p {c['p_vs_random']:.3f}")
    if not is_default and c.get("p_default_ahead") is not None:
        notes.append(f"default ahead p {c['p_default_ahead']:.3f}")
    if c.get("budget_spent_share", 1) < 1:
        notes.append(f"{c['budget_spent_share'] * 100:.0f}% spent it")
    return f"{c['hv_share_mean']:.3f} +- {c['hv_share_se']:.3f}" + (f" ({', '.join(notes)})" if notes else "")


def markdown(doc: dict[str, Any]) -> str:
    methods = doc["methods"]
    budgets = list(next(iter(methods.values()))["budgets"])
    head = ["method", *(f"at {float(b) * 100:g}%" for b in budgets), "trials", "stopped", "repeat proposals",
            "latencies measured"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in methods.items():
        is_default = label == doc["default"]
        name = f"**{label} (default)**" if is_default else label
        extra = [f"{m['trials_mean']:.1f}", f"{m['stopped_mean']:.1f}",
                 f"{m['repeat_proposals_mean']:.1f}" if m.get("repeat_proposals_mean") is not None else "-",
                 f"{m['latency_measured_mean']:g}" if m.get("latency_measured_mean") is not None else "-"]
        lines.append("| " + " | ".join([name, *(cell(m["budgets"][b], is_default) for b in budgets), *extra]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("document", type=Path, help="the output of raysearch replay --json")
    args = p.parse_args()
    try:
        doc = json.loads(args.document.read_text())
    except (OSError, json.JSONDecodeError) as e:
        p.error(f"{args.document}: not a readable replay document ({e})")
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
