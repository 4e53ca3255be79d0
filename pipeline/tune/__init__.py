"""Ray Tune and Optuna at the edge: the only package that imports them.

``experiment.py`` turns a user's request into a validated search, ``runner.py`` builds and
runs it on Ray, ``trainable.py`` is the training actor, ``callback.py`` writes the Parquet
results, ``space.py`` reads declarative search spaces.
"""

from .runner import SearchOptions, run_search, start_ray
from .space import SearchSpace, SearchSpaceError, load_search_space, space_from_dict

__all__ = ["SearchOptions", "SearchSpace", "SearchSpaceError", "load_search_space", "run_search", "space_from_dict", "start_ray"]
