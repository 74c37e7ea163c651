"""The Gradio page: layout and wiring only. Handlers live in `app.handlers` and get `deps` bound here.

Every event carries a deliberate `api_name`: the API ones are public so `gradio_client` can call them, the
browser-only ones (vote buttons, form reset, score reveal, example clicks, page load) are private. Every research and
admin endpoint checks the caller's role itself, so calling them directly grants nothing the page does not.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from app.deps import Deps
from app.handlers import admin, annotate, leaderboard, quality, research, score, session
from storage.models import ROLES

HEAVY = "heavy"  # concurrency group of CPU-bound events (scoring uploads, exports, bootstraps)
HEAVY_LIMIT = 2
RUNS_REFRESH_S = 2.0
PAIR_IMAGE_PX = 360  # display height of the pair's pictures (small demo images are scaled up to it)

# Keyboard shortcuts of the annotate tab: clicks the vote buttons by id, never while the user types.
KEYBOARD_HEAD = """
<script>
document.addEventListener("keydown", (event) => {
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  const typing = target && (target.isContentEditable || ["TEXTAREA", "SELECT"].includes(target.tagName) ||
    (target.tagName === "INPUT" && !["checkbox", "radio", "button", "submit"].includes(target.type)));
  if (typing) return;
  const ids = {"1": "vote-left", "ArrowLeft": "vote-left", "2": "vote-right", "ArrowRight": "vote-right",
               "3": "vote-tie", "t": "vote-tie", "4": "vote-both_bad", "b": "vote-both_bad", "s": "vote-skip"};
  const button = document.getElementById(ids[event.key] || "");
  if (!button || button.offsetParent === null || button.disabled) return;  // hidden: another tab is open
  event.preventDefault();
  button.click();
});
</script>
"""
CSS = """
.jrm-instruction { font-size: 1.15em; padding: 0.6em 0.8em; border-radius: 6px;
                   background: var(--block-background-fill); }
#pair-source img, #pair-left img, #pair-right img { width: 100%; height: 100%; object-fit: contain; }
.jrm-table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
.jrm-table th, .jrm-table td { border-bottom: 1px solid var(--border-color-primary); padding: 4px 8px;
                               text-align: left; }
.jrm-progress { position: relative; min-width: 120px; height: 18px; border-radius: 4px; background: #e5e7eb; }
.jrm-progress-fill { height: 100%; border-radius: 4px; background: #3b82f6; transition: width 0.5s; }
.jrm-progress-label { position: absolute; inset: 0; text-align: center; font-size: 12px; line-height: 18px; }
.jrm-alert { margin-top: 0.4em; padding: 0.4em 0.8em; border-radius: 6px; background: #fef2f2; color: #991b1b;
              border: 1px solid #fca5a5; }
"""
CLEAR_FORM_JS = f"() => {json.dumps(annotate.EMPTY_FORM)}"  # after a vote, in the browser: no server call
SHORTCUTS = ("Keys: **1** or **←** left · **2** or **→** right · **3** or **t** tie · **4** or **b** both bad · "
             "**s** skip")


def bind(handler: Callable[..., Any], deps: Deps) -> Callable[..., Any]:
    """`handler` with `deps` filled in; the signature Gradio inspects (for `gr.Request`) is the rest of it."""

    @functools.wraps(handler)
    def bound(*args: Any, **kwargs: Any) -> Any:
        return handler(deps, *args, **kwargs)

    signature = inspect.signature(handler)
    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    bound.__annotations__ = {k: v for k, v in handler.__annotations__.items() if k != "deps"}
    return bound


def as_sent(handler: Callable[..., Any]) -> Callable[..., Any]:
    """An annotate `handler` whose pair images come back as the file payloads Gradio sends.

    Its events then run with `postprocess=False`: Gradio's postprocessing would build the same payloads from the
    paths with a worker-thread hop per output, checking every image twice.
    """

    @functools.wraps(handler)
    def sent(*args: Any, **kwargs: Any) -> Any:
        view = handler(*args, **kwargs)
        return view._replace(source=_file(view.source), left=_file(view.left), right=_file(view.right))

    return sent


def _file(path: str | None) -> dict[str, Any] | None:
    return None if path is None else gr.FileData(path=path, orig_name=Path(path).name).model_dump()


def build_ui(deps: Deps) -> gr.Blocks:
    """The whole page: Annotate, Score, Leaderboard, Research and Admin tabs."""
    with gr.Blocks(title="JRM Studio") as blocks:
        who = gr.HTML(elem_id="who")
        with gr.Tabs():
            with gr.Tab("Annotate", id="annotate"):
                _annotate_tab(deps, blocks)
            with gr.Tab("Score", id="score"):
                _score_tab(deps)
            with gr.Tab("Leaderboard", id="leaderboard") as leaderboard_tab:
                _leaderboard_tab(deps, leaderboard_tab)
            with gr.Tab("Research", id="research", visible=False) as research_tab:
                timer = _research_tab(deps, research_tab)
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                _admin_tab(deps, admin_tab)
        blocks.load(bind(session.start_session, deps), outputs=[who, research_tab, admin_tab, timer],
                    api_name="whoami")
    return blocks


def _annotate_tab(deps: Deps, blocks: gr.Blocks) -> None:
    shown, cast = gr.State(None), gr.State(None)
    progress = gr.Markdown(elem_id="progress")
    instruction = gr.HTML(elem_id="instruction")
    with gr.Row(equal_height=True):
        source, left, right = (
            gr.Image(label=label, type="filepath", interactive=False, height=PAIR_IMAGE_PX, elem_id=f"pair-{key}")
            for key, label in (("source", "Source"), ("left", "Left edit"), ("right", "Right edit"))
        )
    with gr.Row():
        buttons = [gr.Button(label, elem_id=f"vote-{choice}", variant="primary" if choice in ("left", "right")
                             else "secondary") for label, choice in annotate.CHOICE_LABELS.items()]
        skip = gr.Button("Skip", elem_id="vote-skip", variant="stop")
    gr.Markdown(SHORTCUTS)
    minimum = deps.settings.rationale_min_chars
    rationale = gr.Textbox(label=f"Rationale ({f'at least {minimum} characters' if minimum else 'optional'})",
                           placeholder="e.g. B kept the background but ignored 'make it wood'", lines=2,
                           elem_id="rationale")
    low, high = annotate.DIMENSION_RANGE
    with gr.Accordion(f"Compare dimensions (optional): −{-low} left much better … 0 same … +{high} right much better",
                      open=False):
        rate = gr.Checkbox(label="Include these ratings with my vote", value=False)
        with gr.Row():
            sliders = [gr.Slider(low, high, value=0, step=1, label=label) for label in annotate.DIMENSIONS.values()]
    status, reveal = gr.Markdown(elem_id="vote-status"), gr.HTML(elem_id="reveal")
    refresh = gr.Button("Reload pair", size="sm")

    # The shown pair's submission id, on the page: a vote sends the one that was on screen when it was cast.
    token = gr.Textbox("", visible=False, elem_id="pair-token", label="pair_token")
    pair_outputs = [shown, instruction, source, left, right, progress, token]
    form = [rationale, rate, *sliders]
    # A vote button sends its own label as the choice; API clients send the choice to a hidden trigger instead.
    api_choice, api_trigger = gr.Radio(list(annotate.CHOICE_LABELS.values()), visible=False), gr.Button(visible=False)
    votes = [(button, button, "private", f"vote_{choice}") for button, choice in zip(
        buttons, annotate.CHOICE_LABELS.values(), strict=True)]
    # These handlers return what Gradio sends (`as_sent`), so their events skip Gradio's postprocessing; they check
    # their inputs themselves, so the events skip Gradio's preprocessing too (a worker-thread hop per input).
    submit, load, give_back = (bind(as_sent(h), deps) for h in (annotate.submit_vote, annotate.load_pair,
                                                                annotate.skip_pair))
    for trigger, choice, visibility, api_name in [*votes, (api_trigger, api_choice, "public", "submit_vote")]:
        event = trigger.click(
            submit, inputs=[shown, choice, *form, token], outputs=[*pair_outputs, cast, status], api_name=api_name,
            api_visibility=visibility, preprocess=False, postprocess=False,
        )
        event.success(None, outputs=form, js=CLEAR_FORM_JS, api_name=f"clear_form_{api_name}",
                      api_visibility="private").then(
            bind(annotate.reveal_scores, deps), inputs=[cast], outputs=[reveal], api_name=f"reveal_{api_name}",
            api_visibility="private", concurrency_id=HEAVY, concurrency_limit=HEAVY_LIMIT,
        )
    skip.click(give_back, inputs=[shown], outputs=pair_outputs, api_name="skip_pair", preprocess=False,
               postprocess=False)
    refresh.click(load, outputs=pair_outputs, api_name="next_pair", preprocess=False, postprocess=False)
    blocks.load(load, outputs=pair_outputs, api_name="load_pair", api_visibility="private", preprocess=False,
                postprocess=False)


def _score_tab(deps: Deps) -> None:
    gr.Markdown("Score your own edits with the active reward model. Files: PNG, JPEG or WebP, "
                f"up to {deps.settings.max_upload_mb:g} MB each.")
    with gr.Row():
        with gr.Column():
            source = gr.File(label="Source image", file_count="single", elem_id="score-source")
            instruction = gr.Textbox(label="Edit instruction", placeholder="make the sky purple",
                                     elem_id="score-instruction")
            edits = gr.File(label=f"Edited images (1–{score.MAX_EDITS})", file_count="multiple",
                            elem_id="score-edits")
            contribute = gr.Checkbox(label="I agree that these images and the instruction may be stored and "
                                           "shown to annotators as a new task", value=False)
            go = gr.Button("Score", variant="primary", elem_id="score-go")
            _score_examples([source, instruction, edits])
        with gr.Column():
            status = gr.HTML(elem_id="score-status")
            table = gr.Dataframe(headers=score.RESULT_COLUMNS, interactive=False, elem_id="score-table")
            gallery = gr.Gallery(label="Ranked edits", columns=4, height="auto")
    go.click(bind(score.score_edits, deps), inputs=[source, instruction, edits, contribute],
             outputs=[table, gallery, status], api_name="score", concurrency_id=HEAVY, concurrency_limit=HEAVY_LIMIT)


def _score_examples(inputs: list[gr.components.Component]) -> None:
    """Clickable examples (photos the model never saw in pretraining): a click fills the inputs, then press Score."""
    examples = score.load_examples()
    if examples:
        gr.Examples([example.inputs() for example in examples], inputs=inputs, label="Examples: click one, then Score",
                    example_labels=[example.label for example in examples], cache_examples=False,
                    elem_id="score-examples", api_name="load_score_example", api_visibility="private")
        gr.Markdown("\n".join(f"- *{e.label}*: {e.breakdown}" for e in examples), elem_id="score-example-key")


def _leaderboard_tab(deps: Deps, tab: gr.Tab) -> None:
    caption = gr.HTML(elem_id="leaderboard-caption")
    table = gr.Dataframe(headers=leaderboard.COLUMNS, interactive=False, elem_id="leaderboard-table")
    refresh = gr.Button("Refresh", size="sm")
    gr.on([tab.select, refresh.click], bind(leaderboard.leaderboard_view, deps), outputs=[table, caption],
          api_name="leaderboard", concurrency_id=HEAVY, concurrency_limit=HEAVY_LIMIT)


def _research_tab(deps: Deps, tab: gr.Tab) -> gr.Timer:
    with gr.Row():
        stats = gr.HTML(elem_id="stats")
        per_day = gr.BarPlot(x="time", y="votes", color="provenance", title="Votes over time (UTC)",
                             elem_id="votes-per-day")
    gr.Markdown("### Retrain")
    with gr.Row():
        lm_weight = gr.Number(0.5, label="λ (rationale LM weight; 0 = discriminative baseline)", minimum=0)
        epochs = gr.Number(3, label="Epochs", precision=0, minimum=1)
        backbone = gr.Dropdown(
            research.BACKBONES, value=research.BACKBONES[0], label="Backbone (preset, hub id or folder)",
            allow_custom_value=True,
        )
        max_steps = gr.Number(0, label="Max steps (0: every epoch)", precision=0, minimum=0, elem_id="max-steps")
    retrain = gr.Button("Train a new version", variant="primary", elem_id="retrain")
    retrain_status = gr.HTML(elem_id="retrain-status")
    gr.Markdown("### Runs")
    runs = gr.HTML(elem_id="runs")
    with gr.Row():
        run_id = gr.Number(None, label="Run (blank: newest) — curves, cancel", precision=0)
        cancel = gr.Button("Cancel run", size="sm")
    curves_caption = gr.HTML()
    curves = gr.LinePlot(x="step", y="loss", color="curve", title="Loss", elem_id="loss-curves")
    gr.Markdown("### Versions")
    versions = gr.Dataframe(headers=research.VERSION_COLUMNS, interactive=False, elem_id="versions")
    with gr.Row():
        version = gr.Dropdown(label="Version", choices=[], allow_custom_value=True, elem_id="version-pick")
        reason = gr.Textbox(label="Reason for promoting", placeholder="better on held-out tasks")
        promote = gr.Button("Promote", elem_id="promote")
        roll_back = gr.Button("Roll back", variant="stop", elem_id="rollback")
        refresh_versions = gr.Button("Refresh", size="sm", elem_id="refresh-versions")
    switch_status = gr.HTML()
    _quality_section(deps, tab)
    gr.Markdown("### Export votes")
    with gr.Row():
        kind = gr.Radio([(label, key) for key, label in research.EXPORT_KINDS.items()], value="parquet",
                        label="Format")
        export = gr.Button("Export")
    download = gr.File(label="Download", interactive=False)
    timer = gr.Timer(RUNS_REFRESH_S, active=False)

    gr.on([tab.select], bind(research.research_overview, deps), outputs=[stats, per_day], api_name="dataset_stats")
    gr.on([tab.select, refresh_versions.click], bind(research.versions_view, deps), outputs=[versions, version],
          api_name="model_versions")
    retrain.click(bind(research.trigger_retrain, deps), inputs=[lm_weight, epochs, backbone, max_steps],
                  outputs=[retrain_status], api_name="trigger_retrain")
    gr.on([timer.tick, tab.select, run_id.submit], bind(research.runs_view, deps), inputs=[run_id],
          outputs=[runs, curves, curves_caption], api_name="training_runs", show_progress="hidden")
    cancel.click(bind(research.cancel_training_run, deps), inputs=[run_id], outputs=[retrain_status],
                 api_name="cancel_run")
    promote.click(bind(research.promote, deps), inputs=[version, reason], outputs=[switch_status, versions, version],
                  api_name="promote_version")
    roll_back.click(bind(research.roll_back, deps), outputs=[switch_status, versions, version], api_name="rollback")
    export.click(bind(research.export_votes, deps), inputs=[kind], outputs=[download], api_name="export_votes",
                 concurrency_id=HEAVY, concurrency_limit=HEAVY_LIMIT)
    return timer


def _quality_section(deps: Deps, tab: gr.Tab) -> None:
    gr.Markdown("### Versions on the same held-out votes")
    accuracy_caption = gr.HTML(elem_id="accuracy-caption")
    accuracy = gr.LinePlot(x="version", y="accuracy", title="Held-out accuracy by version", elem_id="accuracy-plot")
    gr.Markdown("### Annotators: agreement and quality")
    check = gr.Button("Check annotators", size="sm", elem_id="check-annotators")
    summary = gr.HTML(elem_id="agreement")
    annotators = gr.Dataframe(headers=quality.ANNOTATOR_COLUMNS, interactive=False, elem_id="annotators")
    with gr.Row():
        flagged = gr.Textbox(label="Flagged annotator", elem_id="flag-name")
        why = gr.Textbox(label="Why the flag is cleared", placeholder="checked 20 of their votes by hand")
        clear = gr.Button("Clear flag", elem_id="clear-flag")
    clear_status = gr.HTML()
    gr.on([tab.select], bind(quality.accuracy_view, deps), outputs=[accuracy, accuracy_caption],
          api_name="version_accuracy")
    check.click(bind(quality.quality_view, deps), outputs=[summary, annotators], api_name="annotator_quality",
                concurrency_id=HEAVY, concurrency_limit=HEAVY_LIMIT)
    clear.click(bind(quality.clear_annotator_flag, deps), inputs=[flagged, why], outputs=[clear_status],
                api_name="clear_flag")


def _admin_tab(deps: Deps, tab: gr.Tab) -> None:
    table = gr.Dataframe(headers=admin.USER_COLUMNS, interactive=False, elem_id="users")
    with gr.Row():
        name = gr.Textbox(label="User name", elem_id="admin-name")
        role = gr.Dropdown(list(ROLES), value="annotator", label="Role")
        password = gr.Textbox(label="Password (new users)", type="password")
    with gr.Row():
        create = gr.Button("Create user", variant="primary")
        change = gr.Button("Change role")
        deactivate = gr.Button("Deactivate", variant="stop")
    status = gr.HTML()
    tab.select(bind(admin.list_users_view, deps), outputs=[table], api_name="list_users")
    create.click(bind(admin.add_user, deps), inputs=[name, role, password], outputs=[status, table],
                 api_name="create_user")
    change.click(bind(admin.change_role, deps), inputs=[name, role], outputs=[status, table], api_name="set_role")
    deactivate.click(bind(admin.deactivate_user, deps), inputs=[name], outputs=[status, table],
                     api_name="deactivate_user")
