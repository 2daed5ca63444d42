"""List builders: official dataset release layouts -> the list files that ``lgiformer.data`` reads.

``python -m data_lists <dataset> --root RAW --out OUT`` (see README.md). The registry maps a dataset name to its
``build(opts) -> BuildReport`` function.
"""
from data_lists.common import BuildOptions, BuildReport, ListBuildError

__all__ = ["BuildOptions", "BuildReport", "ListBuildError"]
