"""Shared plumbing of the Prefect tasks. Tasks receive the validated `Experiment` (and the
`Cell` they work on) from the flow, which parses the file and its overrides once."""

from __future__ import annotations


def flow_run_info() -> dict[str, str]:
    """Prefect flow run id and UI URL, for MLflow tags that point back at Prefect."""
    from prefect.runtime import flow_run

    info = {
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
    }
    url = str(flow_run.ui_url or "")
    if url.startswith("http"):  # a temporary local API has no UI: its URL starts with "None/"
        info["prefect.flow_run_url"] = url
    return info
