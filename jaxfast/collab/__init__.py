"""Collaborative filtering (lesson 4): MovieLens ratings, id maps, interpretation.

The models live in jaxfast.models.collab ('embedding_dot_bias', 'embedding_nn').
"""

from jaxfast.collab.data import (
    NA,
    CollabData,
    CollabPredictor,
    IdMap,
    Ratings,
    UnknownIdError,
    generate_ratings,
    load_collab_export,
    load_ratings,
    prepare,
    split_indices,
)

__all__ = [
    "NA", "CollabData", "collab_learner", "CollabPredictor", "IdMap", "Ratings", "UnknownIdError", "generate_ratings",
    "load_collab_export", "load_ratings", "prepare", "split_indices",
]


def __getattr__(attr: str):
    """`collab_learner` is imported on first use, so that reading data or predicting from an export
    does not load the training loop."""
    if attr == "collab_learner":
        from jaxfast.collab.learner import collab_learner

        return collab_learner
    raise AttributeError(f"module 'jaxfast.collab' has no attribute {attr!r}")
