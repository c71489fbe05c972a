"""The tidy result store: Parquet partitions per (analysis, run) plus run manifests."""

from mechbench.store.result_store import ResultStore, new_run_id
from mechbench.store.schema import CORE_COLUMNS, conform

__all__ = ["CORE_COLUMNS", "ResultStore", "conform", "new_run_id"]
