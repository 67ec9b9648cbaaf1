"""Random documents and filters: every backend agrees with the in-memory reference."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.contracts.documents import matches, parse_filter, sort_key
from managers.db.manager import Database
from tests.db_backends import BACKEND_NAMES, database, unique_collection

FIELDS = ["a", "b", "n.x"]
# Integers stay within 2**53 so that every engine compares them with floats exactly.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=6),
)
small_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 2.5]),
    st.sampled_from(["", "a", "b", "ab", "é", "Z"]),
)
values = st.one_of(
    small_scalars,
    scalars,
    st.lists(small_scalars, max_size=2),
    st.dictionaries(st.sampled_from(["p", "q"]), small_scalars, max_size=2),
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "a": values,
        "b": values,
        "n": st.one_of(
            st.dictionaries(st.sampled_from(["x", "y"]), values, max_size=2), small_scalars
        ),
    },
)
comparable = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 2.5]),
    st.sampled_from(["", "a", "ab", "b", "é"]),
)


def leaf() -> st.SearchStrategy[dict[str, Any]]:
    field = st.sampled_from(FIELDS)
    return st.one_of(
        st.builds(lambda f, v: {f: v}, field, small_scalars),
        st.builds(
            lambda f, op, v: {f: {op: v}},
            field,
            st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
            comparable,
        ),
        st.builds(
            lambda f, op, v: {f: {op: v}}, field, st.sampled_from(["$eq", "$ne"]), small_scalars
        ),
        st.builds(
            lambda f, op, v: {f: {op: v}},
            field,
            st.sampled_from(["$in", "$nin"]),
            st.lists(small_scalars, max_size=3),
        ),
        st.builds(lambda f, v: {f: {"$exists": v}}, field, st.booleans()),
    )


filters = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.builds(lambda parts: {"$and": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda parts: {"$or": parts}, st.lists(inner, min_size=1, max_size=3)),
    ),
    max_leaves=5,
)


@pytest.fixture(params=BACKEND_NAMES, scope="module")
def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    yield from database(request.param, request, tmp_path_factory.mktemp("props"))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(documents, max_size=12), queries=st.lists(filters, min_size=1, max_size=4))
def test_find_and_count_agree_with_the_reference(
    db: Database, docs: list[dict[str, Any]], queries: list[dict[str, Any]]
) -> None:
    collection = db.collection(unique_collection("p"))
    stored = []
    for index, doc in enumerate(docs):
        doc_id = f"d{index:02d}"
        collection.insert_one({"_id": doc_id, **doc})
        stored.append({"_id": doc_id, "_version": 1, **doc})
    for query in queries:
        node = parse_filter(query)
        expected = [d["_id"] for d in stored if matches(d, node)]
        assert [d["_id"] for d in collection.find(query)] == expected, query
        assert collection.count(query) == len(expected), query


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs=st.lists(st.fixed_dictionaries({}, optional={"k": scalars}), max_size=12),
    descending=st.booleans(),
    skip=st.integers(0, 4),
    limit=st.one_of(st.none(), st.integers(0, 5)),
)
def test_sort_and_paging_agree_with_the_reference(
    db: Database, docs: list[dict[str, Any]], descending: bool, skip: int, limit: int | None
) -> None:
    collection = db.collection(unique_collection("s"))
    stored = []
    for index, doc in enumerate(docs):
        doc_id = f"d{index:02d}"
        collection.insert_one({"_id": doc_id, **doc})
        stored.append({"_id": doc_id, **doc})
    direction = -1 if descending else 1
    # The reference: by kind then value (direction applies), ties by _id ascending.
    ordered = sorted(stored, key=lambda d: d["_id"])
    ordered.sort(key=lambda d: sort_key(d, ("k",)), reverse=descending)
    expected = [d["_id"] for d in ordered][skip:][: limit if limit is not None else None]
    found = collection.find({}, sort=[("k", direction)], skip=skip, limit=limit)
    assert [d["_id"] for d in found] == expected
