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
    "NA", "CollabData", "CollabPredictor", "IdMap", "Ratings", "UnknownIdError", "generate_ratings",
    "load_collab_export", "load_ratings", "prepare", "split_indices",
]
