"""The one definition of an item's text (no Triton needed)."""

from __future__ import annotations

from longtail.common.v1 import common_pb2
from services.suite.indexing import item_text


def test_item_text_is_title_description_categories_tags() -> None:
    item = common_pb2.Item(
        item_id="1",
        title=" Toy Story (1995) ",
        description="",
        categories=["Adventure", " ", "Animation"],
        tags=["pixar"],
    )
    assert item_text(item) == "Toy Story (1995)\nCategories: Adventure, Animation\nTags: pixar"
    assert item_text(common_pb2.Item(item_id="2")) == ""
    assert len(item_text(common_pb2.Item(item_id="3", title="x" * 9000))) == 8192
