"""Evaluation: trained cells -> generations, judges' rewards, win rates, diversity, log-ratios,
and the results folder the report renders. No Prefect here; MLflow only in `mlflow_log`.

- `generate`: K samples + a greedy answer per test prompt (`generate_samples`).
- `judges`: `OracleJudge`, `RewardModelJudge`, `load_judge`, `agreement`, `oracle_agreement`.
- `logratios`: log odds ratio vs log probability ratio of held-out pairs (paper Sec. 7.1).
- `cell`: the per-cell steps (`evaluate_cell`, `judge_cell`, `judge_quality`) and the files
  they write into the cell folder (layout in its docstring).
- `winrates`: the paper's comparisons per judge, model size and seed, and pooled over seeds.
- `collect`: `collect_results` (the results contract of `orpo.report.tables`),
  `rerender_report`; re-exports the per-cell steps and `cell_metrics`.
- `mlflow_log`: `cell_metrics` (metric names per cell), `log_eval_metrics`,
  `log_eval_artifacts`.
"""
