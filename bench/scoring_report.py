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
    print(f"\n### {name}: {describe_size(model)}, {param_bytes(model) / MIB:.1f} MiB of float32 parameters")
    if results.get("grid"):
        print_speed(results)
    if results.get("memory"):
        print_memory(model, results["memory"])
    if results.get("train"):
        print_train(results["train"])


def print_speed(results: dict) -> None:
    """(a) and (b)."""
    grid = [[str(b), str(n), f"{jrm:.1f}", f"{jdg:.1f}", f"{ratio:.1f}×"] for b, n, jrm, jdg, ratio in results["grid"]]
    print("\n(a) ms per pair, JRM scoring vs generative judge (N rationale tokens + verdict)\n")
    print(table(["batch (pairs)", "N", "JRM ms/pair", "judge ms/pair", "judge / JRM"], grid))
    rows = [
        [str(b), str(t), str(n), f"{pf:.1f}", f"{jrm:.1f}", f"{pct:+.1f} %", "yes" if pct <= 15 else "**no**"]
        for b, t, n, pf, jrm, pct in results["overhead"]
    ]
    print("\n(b) JRM scoring vs the bare prefill floor (same batch: 2 sequences per pair)\n")
    print(table(["batch (pairs)", "seq len", "rounds", "prefill ms/pair", "JRM ms/pair", "overhead", "≤ 15 %"], rows))


def print_train(t: dict) -> None:
    """(d)."""
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


VARIANT_NAMES = {
    "scorer": "JRM scorer, `load_scorer_model` (no LM head)",
    "full": "full model, `JointRewardModel.load` (LM head loaded)",
}


def print_memory(model: JointRewardModel, rows: list[tuple[str, dict]]) -> None:
    """(c) as a table: one row per variant, peak RSS of the load and per batch size, and its excess over the scorer."""
    scorer = next(result for variant, result in rows if variant.startswith("scorer:"))
    batches = list(scorer["peaks"])
    cuda = scorer["load"]["cuda_mib"] is not None
    print("\n(c) peak memory above the process before the model was loaded (a fresh process per variant), MiB\n")
    header = ["variant", "load peak", "vs scorer"] + (["CUDA load peak"] if cuda else []) + ["resident after warm-up"]
    for b in batches:
        header += [f"peak, {b} pair(s)", "vs scorer"] + (["CUDA peak"] if cuda else [])
    body = []
    for variant, result in rows:
        kind, n = variant.split(":")
        cells = [VARIANT_NAMES.get(kind, f"judge, N = {n}")]
        cells += _peak_cells(result["load"], scorer["load"], result is scorer, cuda)
        cells.append(f"{result['resident_mib']:.1f}")
        for b in batches:
            cells += _peak_cells(result["peaks"][b], scorer["peaks"][b], result is scorer, cuda)
        body.append(cells)
    print(table(header, body))
    print(f"\nLM head: {lm_head_bytes(model) / MIB:.2f} MiB of float32 parameters ({lm_head_bytes(model):,} bytes).")


def _peak_cells(peak: dict, base: dict, is_base: bool, cuda: bool) -> list[str]:
    """Peak RSS, its difference from the scorer's, and the CUDA peak when there is one."""
    cells = [f"{peak['rss_mib']:.1f}", "–" if is_base else f"{peak['rss_mib'] - base['rss_mib']:+.1f}"]
    return cells + ([f"{peak['cuda_mib']:.1f}"] if cuda else [])
