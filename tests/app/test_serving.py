"""How the page is served: the public API's names, images served in place, and the per-call work kept off.

The served-app tests run the app in-process as `python -m app` builds it and call it through `gradio_client`.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402

from app.serving import build_app  # noqa: E402
from tests.app.handler_support import PASSWORD, add_users, make_deps, served_app  # noqa: E402

PUBLIC_API = {
    "whoami", "next_pair", "submit_vote", "skip_pair", "score", "leaderboard", "dataset_stats", "model_versions",
    "trigger_retrain", "training_runs", "cancel_run", "promote_version", "rollback", "export_votes", "version_accuracy",
    "annotator_quality", "clear_flag", "list_users",
    "create_user", "set_role", "deactivate_user",
}


@pytest.mark.parametrize("app_store", ["sqlite"], indirect=True)
def test_every_endpoint_is_named_on_purpose_and_only_the_api_is_public(app_store):
    blocks = build_app(make_deps(app_store))
    functions = list(blocks.fns.values())
    assert {f.api_name for f in functions if f.api_visibility == "public"} == PUBLIC_API
    # Gradio numbers the names it makes up (clear_form_4) and names bare JavaScript steps js_fn.
    assert not [f.api_name for f in functions if re.search(r"_\d+$|^js_fn|^unnamed", f.api_name)]
    annotate = [f for f in functions if f.api_name in ("next_pair", "load_pair", "skip_pair", "submit_vote")
                or f.api_name.startswith("vote_")]
    assert len(annotate) == 8 and not any(f.preprocess or f.postprocess for f in annotate)  # handlers check inputs
    clear_form = [f for f in functions if f.api_name.startswith("clear_form_")]
    assert clear_form and all(f.fn is None and f.js for f in clear_form)  # runs in the browser: no server call


@pytest.mark.parametrize("app_store", ["sqlite"], indirect=True)
def test_a_round_trip_serves_the_stored_images_in_place(app_store):
    add_users(app_store, ann="annotator")
    deps = make_deps(app_store)
    blob_dir = deps.settings.blob_dir.resolve()
    with served_app(deps) as blocks:
        client = Client(blocks.local_url, auth=("ann", PASSWORD), verbose=False, download_files=False,
                        analytics_enabled=False)
        shown = client.predict(api_name="/next_pair")
        voted = client.predict(choice="left", rationale="", rate_dimensions=False, instruction_following=0,
                               quality=0, preservation=0, pair_token=shown[-1], api_name="/submit_vote")
        assert voted[-1] == "Vote saved."
        for image in [*shown[1:4], *voted[1:4]]:
            path = Path(image["path"])
            assert path.is_relative_to(blob_dir) and image["url"].endswith(f"/gradio_api/file={path}")
            fetched = httpx.get(image["url"], cookies=client.cookies)
            assert fetched.status_code == 200 and fetched.content == path.read_bytes()
        # Gradio's per-event analytics summary is off (it only feeds a monitoring page this app does not serve).
        assert blocks._queue.cached_event_analytics_summary == {"functions": {}}
        # uvicorn serves the page with its C event loop and HTTP parser (requirements.txt installs both).
        config = blocks.server.config
        assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
        assert config.get_loop_factory().__module__.startswith("uvloop")
