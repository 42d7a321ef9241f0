"""The types a shipml model file may hold beyond skops' own defaults, named one by one.

skops refuses to load a type it does not trust by default unless the caller names it. shipml
names exactly the classes its model families save (tests/test_model_security.py saves every
family's fitted model and checks this list against what it finds, both ways), never a module
prefix: under ``numpy.`` or ``sklearn.`` there are classes and functions that delete folders or
read and write files when a crafted model file makes them run.
"""

from __future__ import annotations

from shipml.errors import RegistryError

TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        # every model: the registered ensemble, its preprocessors, numpy's dtype objects
        "numpy.dtype",
        "shipml.features.DatetimeParts",
        "shipml.features.DerivedFeatures",
        "shipml.models.bagged.BaggedEnsemble",
        # regression on a log-transformed target
        "shipml.models.catalog.LogTarget",
        # the families' fitted estimators and what they keep
        "catboost.core.CatBoostClassifier",
        "catboost.core.CatBoostRegressor",
        "collections.OrderedDict",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMClassifier",
        "lightgbm.sklearn.LGBMRegressor",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.tree._tree.Tree",
        "shipml.models.keras_model.KerasClassifier",
        "shipml.models.keras_model.KerasRegressor",
        "shipml.models.torch_cnn.TorchCNNClassifier",
        "shipml.models.torch_mlp.TorchMLPClassifier",
        "shipml.models.torch_mlp.TorchMLPRegressor",
    }
)


def trusted_types_for(untrusted: list[str]) -> list[str]:
    """``untrusted`` (skops' ``get_untrusted_types`` of a model file) unchanged when every type
    is one shipml's families save; RegistryError naming the first that is not.

    >>> trusted_types_for(["shipml.models.bagged.BaggedEnsemble"])
    ['shipml.models.bagged.BaggedEnsemble']
    """
    for type_name in untrusted:
        if type_name not in TRUSTED_TYPES:
            raise RegistryError(
                f"the model file holds an untrusted type '{type_name}'",
                "shipml loads only the types its own model families save: retrain the model "
                "with `shipml train`, and find out who registered this file",
            )
    return list(untrusted)
