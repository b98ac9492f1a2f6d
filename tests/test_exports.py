from __future__ import annotations

import types

import asyncembed
import asyncembed.langchain
import asyncembed.llama_index
import asyncembed.ray
import asyncembed.testing


def test_all_is_sorted_and_complete() -> None:
    public = {name for name in dir(asyncembed) if not name.startswith("_")}
    # Public submodules (testing, the integrations) appear once imported, by this test.
    public -= {n for n in public if isinstance(getattr(asyncembed, n), types.ModuleType)}
    assert asyncembed.__all__ == sorted(asyncembed.__all__, key=lambda n: (n.startswith("_"), n))
    assert public == {n for n in asyncembed.__all__ if not n.startswith("_")}


def test_public_names_live_in_the_package_namespace() -> None:
    for name in asyncembed.__all__:
        obj = getattr(asyncembed, name)
        if isinstance(obj, type):
            assert obj.__module__ == "asyncembed", name


def test_every_public_name_has_a_docstring() -> None:
    modules = (asyncembed, asyncembed.testing, asyncembed.langchain, asyncembed.llama_index)
    for module in (*modules, asyncembed.ray):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj):
                assert (obj.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"


def test_testing_all_is_sorted() -> None:
    assert asyncembed.testing.__all__ == sorted(asyncembed.testing.__all__)


def test_the_integrations_export_one_class_each() -> None:
    assert asyncembed.langchain.__all__ == ["AsyncembedEmbeddings"]
    assert asyncembed.llama_index.__all__ == ["AsyncembedEmbedding"]
    assert "SyncEmbedder" in asyncembed.__all__
