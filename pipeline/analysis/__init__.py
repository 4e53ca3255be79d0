"""After the search: the report (``report``), its plots (``plots``) and the patch-weight picture (``patch_weights``).

Each is imported on its own (``from pipeline.analysis.report import analyze``): the report
needs Polars and Optuna, the plots matplotlib, the picture torch and a checkpoint.
"""
