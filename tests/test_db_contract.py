"""The document API, the same contract on SQLite, real PostgreSQL and MongoDB (mongomock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.base.errors import Conflict, DependencyUnavailable, ValidationError
from core.contracts.documents import Collection
from managers.db.manager import Database
from tests.db_backends import BACKEND_NAMES, database, unique_collection


@pytest.fixture(params=BACKEND_NAMES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from database(request.param, request, tmp_path)


@pytest.fixture
def people(db: Database) -> Collection:
    c = db.collection(unique_collection("people"))
    for doc in (
        {
            "_id": "ann",
            "name": "Ann",
            "age": 31,
            "score": 9.5,
            "admin": True,
            "address": {"city": "Oslo", "zip": "0150"},
            "tags": ["a", "b"],
        },
        {
            "_id": "bob",
            "name": "Bob",
            "age": 25,
            "score": 7,
            "admin": False,
            "address": {"city": "Bergen"},
        },
        {"_id": "cy", "name": "Cy", "age": 40, "nickname": None},
        {"_id": "dee", "name": "Dee", "age": "unknown", "score": 7.0},
    ):
        c.insert_one(doc)
    return c


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["_id"] for d in docs]


def test_insert_and_read_back_with_id_and_version(db: Database) -> None:
    c = db.collection(unique_collection())
    new_id = c.insert_one(
        {
            "title": "lamp",
            "price": 12.5,
            "meta": {"color": "red"},
            "sizes": [1, 2],
            "note": None,
            "text": 'it\'s "quoted"; --',
        }
    )
    assert isinstance(new_id, str) and len(new_id) == 32
    doc = c.find_one({"_id": new_id})
    assert doc == {
        "_id": new_id,
        "_version": 1,
        "title": "lamp",
        "price": 12.5,
        "meta": {"color": "red"},
        "sizes": [1, 2],
        "note": None,
        "text": 'it\'s "quoted"; --',
    }


def test_a_non_string_id_is_refused_on_every_backend(db: Database) -> None:
    c = db.collection(unique_collection())
    for bad in (5, 2.5, ["a"], {"x": 1}):
        with pytest.raises(ValidationError):
            c.insert_one({"_id": bad, "v": 1})
    assert c.count() == 0


def test_a_given_id_is_kept_and_a_duplicate_is_a_conflict(db: Database) -> None:
    c = db.collection(unique_collection())
    assert c.insert_one({"_id": "k1", "v": 1}) == "k1"
    with pytest.raises(Conflict):
        c.insert_one({"_id": "k1", "v": 2})
    assert c.find_one({"_id": "k1"})["v"] == 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["ann", "bob", "cy", "dee"]),
        ({"name": "Bob"}, ["bob"]),
        ({"age": 31}, ["ann"]),
        ({"score": 7}, ["bob", "dee"]),  # 7 and 7.0 are the same number
        ({"admin": True}, ["ann"]),
        ({"admin": False}, ["bob"]),
        ({"admin": 1}, []),  # a boolean is not a number
        ({"nickname": None}, ["ann", "bob", "cy", "dee"]),  # null or missing
        ({"address.city": "Oslo"}, ["ann"]),
        ({"address.zip": {"$exists": True}}, ["ann"]),
        ({"nickname": {"$exists": True}}, ["cy"]),
        ({"address": {"$exists": False}}, ["cy", "dee"]),
        ({"age": {"$gt": 30}}, ["ann", "cy"]),  # "unknown" is not compared with numbers
        ({"age": {"$gte": 31, "$lt": 40}}, ["ann"]),
        ({"age": {"$lte": 25}}, ["bob"]),
        ({"name": {"$gt": "B"}}, ["bob", "cy", "dee"]),
        ({"age": {"$gt": "a"}}, ["dee"]),  # strings compare with strings only
        ({"age": {"$ne": 31}}, ["bob", "cy", "dee"]),
        ({"admin": {"$ne": True}}, ["bob", "cy", "dee"]),  # $ne matches missing
        ({"name": {"$in": ["Ann", "Cy", "Zed"]}}, ["ann", "cy"]),
        ({"name": {"$in": []}}, []),
        ({"age": {"$nin": [31, 25]}}, ["cy", "dee"]),
        ({"$or": [{"age": 25}, {"address.city": "Oslo"}]}, ["ann", "bob"]),
        ({"$and": [{"score": {"$gte": 7}}, {"score": {"$lt": 9}}]}, ["bob", "dee"]),
        ({"tags": "a"}, []),  # filters do not reach into arrays
        ({"tags": {"$exists": True}}, ["ann"]),
        ({"_id": "bob"}, ["bob"]),
        ({"_id": {"$in": ["bob", "dee", "nobody"]}}, ["bob", "dee"]),
        ({"_id": {"$gt": "bz"}}, ["cy", "dee"]),
        ({"_version": 1}, ["ann", "bob", "cy", "dee"]),
        ({"name": "Ann'; DROP TABLE people; --"}, []),
    ],
)
def test_filters(people: Collection, query: dict[str, Any], expected: list[str]) -> None:
    assert ids(people.find(query)) == expected
    assert people.count(query) == len(expected)


def test_sort_limit_skip(people: Collection) -> None:
    assert ids(people.find({}, sort=[("name", -1)])) == ["dee", "cy", "bob", "ann"]
    # missing/null < numbers < strings, ties by _id
    assert ids(people.find({}, sort=[("score", 1)])) == ["cy", "bob", "dee", "ann"]
    assert ids(people.find({}, sort=[("age", 1)])) == ["bob", "ann", "cy", "dee"]
    assert ids(people.find({}, sort=[("score", 1)], limit=2, skip=1)) == ["bob", "dee"]
    assert ids(people.find({}, skip=3)) == ["dee"]
    assert people.find({}, limit=0) == []
    assert ids(people.find({}, sort=[("address.city", 1), ("name", -1)])) == [
        "dee",
        "cy",
        "bob",
        "ann",
    ]


def test_update_operators_and_versions(people: Collection) -> None:
    assert people.update_one(
        {"_id": "bob"},
        {
            "$set": {"address.zip": "5003", "age": 26},
            "$inc": {"score": 1.5, "visits": 1},
            "$unset": ["admin"],
        },
    )
    bob = people.find_one({"_id": "bob"})
    assert bob == {
        "_id": "bob",
        "_version": 2,
        "name": "Bob",
        "age": 26,
        "score": 8.5,
        "visits": 1,
        "address": {"city": "Bergen", "zip": "5003"},
    }
    assert people.update_one({"name": "Nobody"}, {"$set": {"x": 1}}) is False


def test_expected_version_guards_against_lost_updates(people: Collection) -> None:
    assert people.update_one({"_id": "ann"}, {"$inc": {"age": 1}}, expected_version=1)
    with pytest.raises(Conflict) as caught:
        people.update_one({"_id": "ann"}, {"$inc": {"age": 1}}, expected_version=1)
    assert caught.value.extra["current_version"] == 2
    ann = people.find_one({"_id": "ann"})
    assert ann is not None and ann["age"] == 32 and ann["_version"] == 2


def test_delete_one(people: Collection) -> None:
    assert people.delete_one({"age": {"$gte": 31}}) is True  # the first by _id: ann
    assert ids(people.find({})) == ["bob", "cy", "dee"]
    assert people.delete_one({"name": "Nobody"}) is False


def test_insert_many_is_all_or_nothing(db: Database) -> None:
    c = db.collection(unique_collection("many"))
    assert c.insert_many([{"_id": "a", "n": 1}, {"_id": "b", "n": 2}]) == ["a", "b"]
    assert c.insert_many([]) == []
    with pytest.raises(Conflict):
        c.insert_many([{"_id": "c", "n": 3}, {"_id": "a", "n": 4}])
    assert ids(c.find({}, sort=[("_id", 1)])) == ["a", "b"]  # "c" went with the batch
    with pytest.raises(ValidationError):
        c.insert_many([{"_id": "d"}, {"bad": "\x00"}])
    assert c.count() == 2


def test_delete_many(people: Collection, db: Database) -> None:
    assert people.delete_many({"age": {"$gte": 31}}) == 2
    assert ids(people.find({})) == ["bob", "dee"]
    assert people.delete_many({"name": "Nobody"}) == 0
    assert db.collection(unique_collection("never")).delete_many({}) == 0
    with pytest.raises(ValidationError):
        people.delete_many({"$where": "1"})


def test_unique_index(db: Database) -> None:
    c = db.collection(unique_collection("users"))
    c.create_index(["email"], unique=True)
    c.create_index(["profile.country", "age"])
    c.insert_one({"email": "a@x.io"})
    c.insert_one({"name": "no email"})
    c.insert_one({"name": "no email either"})  # missing fields do not collide
    with pytest.raises(Conflict):
        c.insert_one({"email": "a@x.io"})
    second = c.insert_one({"email": "b@x.io"})
    with pytest.raises(Conflict):
        c.update_one({"_id": second}, {"$set": {"email": "a@x.io"}})
    assert c.count({"email": "a@x.io"}) == 1


def test_rename_collection_keeps_documents_and_indexes(db: Database) -> None:
    old, new = unique_collection("old"), unique_collection("new")
    c = db.collection(old)
    c.create_index(["email"], unique=True)
    first = c.insert_one({"email": "a@x.io"})
    assert db.rename_collection(old, new) is True
    renamed = db.collection(new)
    assert renamed.find_one({"_id": first}) == {"_id": first, "_version": 1, "email": "a@x.io"}
    assert db.collection(old).count() == 0
    with pytest.raises(Conflict):  # the unique index came along
        renamed.insert_one({"email": "a@x.io"})
    renamed.create_index(["email"], unique=True)  # what the owner runs at start: a no-op
    assert db.rename_collection(old, new) is False  # nothing left to rename
    db.collection(old).insert_one({"email": "b@x.io"})
    assert db.rename_collection(old, new) is False  # never onto an existing collection
    assert renamed.count() == 1 and db.collection(old).count() == 1


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ({"$where": "1 == 1"}, "/$where"),
        ({"name; DROP TABLE x": 1}, "/name; DROP TABLE x"),
        ({"name": {"$regex": ".*"}}, "/name/$regex"),
        ({"name": {"$gt": None}}, "/name/$gt"),
        ({"name": {"$gt": True}}, "/name/$gt"),
        ({"name": {"nested": "object"}}, "/name/nested"),
        ({"name": ["a", "list"]}, "/name"),
        ({"name": {"$in": "not a list"}}, "/name/$in"),
        ({"name": {"$in": ["ok", 2**70]}}, "/name/$in/1"),
        ({"name": {"$exists": "yes"}}, "/name/$exists"),
        ({"$or": []}, "/$or"),
        ({"$or": [{"a": 1}, {"b": {"$bad": 1}}]}, "/$or/1/b/$bad"),
        ({"a..b": 1}, "/a..b"),
        ({"a.$where": 1}, "/a.$where"),
        ({"a/b": 1}, "/a~1b"),
        ({"age": float("nan")}, "/age"),
        ({"age": 2**70}, "/age"),
        ({"name": "nul\x00"}, "/name"),
        ({"name": "lone \ud800"}, "/name"),
    ],
)
def test_unsafe_or_unknown_filters_are_rejected(
    people: Collection, query: dict[str, Any], path: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        people.find(query)
    assert [e.path for e in caught.value.errors] == [path]
    assert caught.value.detail.startswith(f"invalid filter: {path}: ")


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"name": "replacement documents are not updates"}, "/name"),
        ({"$set": {"_id": "other"}}, "/$set/_id"),
        ({"$set": {"_version": 9}}, "/$set/_version"),
        ({"$inc": {"age": "1"}}, "/$inc/age"),
        ({"$inc": {"name": 1}}, "/$inc/name"),  # not a number
        ({"$rename": {"a": "b"}}, "/$rename"),
        ({"$set": {"a": 1}, "$unset": ["a"]}, "/"),
        ({"$set": {"bad.$key": 1}}, "/$set/bad.$key"),
        ({"$set": {"x": {"$where": 1}}}, "/$set/x/$where"),
    ],
)
def test_bad_updates_are_rejected_and_change_nothing(
    people: Collection, changes: dict[str, Any], path: str
) -> None:
    before = people.find_one({"_id": "bob"})
    with pytest.raises(ValidationError) as caught:
        people.update_one({"_id": "bob"}, changes)
    assert [e.path for e in caught.value.errors] == [path]
    assert caught.value.detail.startswith(f"invalid update: {path}: ")
    assert people.find_one({"_id": "bob"}) == before


def test_an_inc_that_would_reach_infinity_is_rejected(db: Database) -> None:
    c = db.collection(unique_collection("big"))
    c.insert_one({"_id": "x", "n": 1e308})
    with pytest.raises(ValidationError) as caught:
        c.update_one({"_id": "x"}, {"$inc": {"n": 1e308}})
    assert [e.path for e in caught.value.errors] == ["/$inc/n"]
    found = c.find_one({"_id": "x"})
    assert found is not None and float(found["n"]) == 1e308 and found["_version"] == 1


def test_bad_documents_are_rejected(db: Database) -> None:
    c = db.collection(unique_collection())
    for doc, path in (
        ({"a.b": 1}, "/a.b"),
        ({"$set": 1}, "/$set"),
        ({"x": float("inf")}, "/x"),
        ({"x": object()}, "/x"),
        ({"x": {1: 2}}, "/x/1"),
        ({"x": "nul\x00byte"}, "/x"),
        ({"x\x00": 1}, "/x\x00"),
        ({"x": ["ok", {"y": "\x00"}]}, "/x/1/y"),
        ({"x": "lone \ud800 half"}, "/x"),
        ({"k\udfff": 1}, "/k\udfff"),
        ({"_id": "id\ud800"}, "/_id"),
        ({"_id": 5}, "/_id"),
    ):
        with pytest.raises(ValidationError) as caught:
            c.insert_one(doc)
        assert [e.path for e in caught.value.errors] == [path], doc
        assert caught.value.detail.startswith("invalid document: "), doc
    assert c.count() == 0


def test_collection_names_are_validated(db: Database) -> None:
    for name in ("Bad", "has space", "x;drop", "", "a" * 49):
        with pytest.raises(ValueError, match="collection name"):
            db.collection(name)


def test_transactions_commit_or_roll_back_together(
    db: Database, request: pytest.FixtureRequest
) -> None:
    accounts = db.collection(unique_collection("acct"))
    accounts.insert_one({"_id": "a", "balance": 10})
    accounts.insert_one({"_id": "b", "balance": 0})
    if request.node.callspec.params["db"] == "mongo":
        with pytest.raises(DependencyUnavailable, match="replica set"), db.transaction():
            pass
        return
    with db.transaction():
        accounts.update_one({"_id": "a"}, {"$inc": {"balance": -4}})
        accounts.update_one({"_id": "b"}, {"$inc": {"balance": 4}})
        accounts.insert_one({"_id": "log1", "note": "moved 4"})
    with pytest.raises(RuntimeError), db.transaction():
        accounts.update_one({"_id": "a"}, {"$inc": {"balance": -6}})
        accounts.insert_one({"_id": "log2"})
        with db.transaction():  # nested blocks join the outer transaction
            accounts.update_one({"_id": "b"}, {"$inc": {"balance": 6}})
        raise RuntimeError("abort")
    balances = {d["_id"]: d.get("balance") for d in accounts.find({})}
    assert balances == {"a": 6, "b": 4, "log1": None}
