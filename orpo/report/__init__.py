"""The HTML report: a results folder of tidy tables in, one self-contained HTML file out.

No Prefect or MLflow here: the orchestrator logs the file to MLflow and links it from Prefect.
Names load on first use: the training worker needs only `orpo.report.tables`, and the
renderer brings matplotlib and pandas (about 0.6 s of every cell's start-up otherwise).
"""

from importlib import import_module

_EXPORTS = {
    "Correspondence": "orpo.report.paper",
    "correspondence": "orpo.report.paper",
    "render_html": "orpo.report.render",
    "render_report": "orpo.report.render",
    "SECTION_IDS": "orpo.report.sections",
    "TABLE_COLUMNS": "orpo.report.tables",
    "Meta": "orpo.report.tables",
    "Results": "orpo.report.tables",
    "ResultsContractError": "orpo.report.tables",
    "load_results": "orpo.report.tables",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
