"""How a Policy row becomes a policy (its File rows by digest), and the store's schema version check."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ovsmgr.fleet.state import SCHEMA_VERSION, PolicySource, StoreError, file_digest, policy_of
from ovsmgr.fleet.store import _check_version


def row(digests: dict[int, str], names: dict[int, str], sources: str = "") -> SimpleNamespace:
    return SimpleNamespace(digest="p", file_digests=digests, names=names, sources=sources, runtime="")


def test_a_policy_has_its_files_in_merge_order_by_position() -> None:
    texts = {file_digest("base"): "base", file_digest("site"): "site"}
    policy = policy_of(row({1: file_digest("site"), 0: file_digest("base")}, {0: "base.yaml", 1: "site.yaml"}), texts)
    assert policy == PolicySource("p", (("base.yaml", "base"), ("site.yaml", "site")))


def test_a_policy_whose_file_has_not_arrived_is_not_there_yet() -> None:
    texts = {file_digest("base"): "base"}
    assert policy_of(row({0: file_digest("base"), 1: file_digest("site")}, {0: "a", 1: "b"}), texts) is None


def test_a_row_from_before_the_file_table_has_its_texts_in_sources() -> None:
    old = row({}, {}, json.dumps([["base.yaml", "base"]]))
    assert policy_of(old, {}) == PolicySource("p", (("base.yaml", "base"),))


def test_an_older_store_is_refused_with_the_command_that_converts_it() -> None:
    with pytest.raises(StoreError, match=r"schema version 1\.0\.0, this ovsmgr needs .*`ovsdb-client convert "
                                         r"unix:/s\.sock .*ovsmgr-fleet\.ovsschema`"):
        _check_version("unix:/s.sock", "1.0.0")
    with pytest.raises(StoreError, match="newer than this ovsmgr's"):
        _check_version("unix:/s.sock", "99.0.0")
    _check_version("unix:/s.sock", SCHEMA_VERSION)
