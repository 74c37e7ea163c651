"""The Markdown tables that `bench/scoring.py` prints for each model size."""

from __future__ import annotations

from bench.scoring_setup import MIB, describe_size, lm_head_bytes, param_bytes
from trainer.model import JointRewardModel


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def report(name: str, model: JointRewardModel, results: dict) -> None:
    """Print the four tables of one model size."""
    print(f"\n### {name}: {describe_size(model)}, {param_bytes(model) / MIB:.1f} MiB of float32 parameters\n")
    grid = [[str(b), str(n), f"{jrm:.1f}", f"{jdg:.1f}", f"{ratio:.1f}×"] for b, n, jrm, jdg, ratio in results["grid"]]
    print("(a) ms per pair, JRM scoring vs generative judge (N rationale tokens + verdict)\n")
    print(table(["batch (pairs)", "N", "JRM ms/pair", "judge ms/pair", "judge / JRM"], grid))
    rows = [
        [str(b), str(t), str(n), f"{pf:.1f}", f"{jrm:.1f}", f"{pct:+.1f} %", "yes" if pct <= 15 else "**no**"]
        for b, t, n, pf, jrm, pct in results["overhead"]
    ]
    print("\n(b) JRM scoring vs the bare prefill floor (same batch: 2 sequences per pair)\n")
    print(table(["batch (pairs)", "seq len", "rounds", "prefill ms/pair", "JRM ms/pair", "overhead", "≤ 15 %"], rows))
    if results.get("memory"):
        print_memory(model, results["memory"])
    t = results["train"]
    print(
        f"\n(d) training step at {t['pairs']} pairs ({2 * t['pairs']} sequences), forward + backward + AdamW, "
        f"{t['rounds']} rounds\n"
    )
    rows = [
        ["BT only (λ = 0, no rationale)", str(t["len_bt"]), "0", f"{t['bt_ms']:.0f}", "1.00×"],
        [
            "joint (λ = 0.5, rationale)",
            str(t["len_joint"]),
            f"{t['rationale_tokens']:.0f}",
            f"{t['joint_ms']:.0f}",
            f"{t['ratio']:.2f}×",
        ],
    ]
    print(table(["step", "seq len", "rationale tokens / pair", "ms / step", "vs BT only (≤ 2×)"], rows))


def print_memory(model: JointRewardModel, rows: list[tuple[str, dict]]) -> None:
    """(c) as a table: one row per variant, peak RSS per batch size and its excess over the lm_head=False scorer."""
    scorer = next(result for variant, result in rows if variant.startswith("scorer-dropped"))
    batches = list(scorer["peaks"])
    cuda = scorer["peaks"][batches[0]]["cuda_mib"] is not None
    print("\n(c) peak memory above the process before the model was loaded (a fresh process per variant), MiB\n")
    header = ["variant", "resident after warm-up"]
    for b in batches:
        header += [f"peak, {b} pair(s)", "vs scorer"] + (["CUDA peak"] if cuda else [])
    body = []
    for variant, result in rows:
        kind, n = variant.split(":")
        names = {"scorer-dropped": "JRM scorer, `lm_head=False`", "scorer-kept": "JRM scorer, LM head kept"}
        cells = [names.get(kind, f"judge, N = {n}"), f"{result['resident_mib']:.1f}"]
        for b in batches:
            peak, base = result["peaks"][b], scorer["peaks"][b]
            cells += [
                f"{peak['rss_mib']:.1f}",
                "–" if result is scorer else f"{peak['rss_mib'] - base['rss_mib']:+.1f}",
            ]
            cells += [f"{peak['cuda_mib']:.1f}"] if cuda else []
        body.append(cells)
    print(table(header, body))
    print(f"\nLM head: {lm_head_bytes(model) / MIB:.2f} MiB of parameters ({lm_head_bytes(model):,} bytes).")
