"""The HTML report: a results folder of tidy tables in, one self-contained HTML file out.

No Prefect or MLflow here: the orchestrator logs the file to MLflow and links it from Prefect.
"""

from orpo.report.paper import Correspondence, correspondence
from orpo.report.render import render_html, render_report
from orpo.report.sections import SECTION_IDS
from orpo.report.tables import (
    TABLE_COLUMNS,
    Meta,
    Results,
    ResultsContractError,
    load_results,
)

__all__ = [
    "SECTION_IDS",
    "TABLE_COLUMNS",
    "Correspondence",
    "Meta",
    "Results",
    "ResultsContractError",
    "correspondence",
    "load_results",
    "render_html",
    "render_report",
]
