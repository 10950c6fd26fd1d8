"""Listing: one page of documents in list order, filtered, projected, with a skip token."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

from local.batch import odata
from local.batch.backend.records import Doc
from local.batch.errors import BatchApiError


def public(doc: Doc) -> Doc:
    """The REST representation, deep-copied (a caller may change it freely)."""
    return copy.deepcopy(doc)


def page(
    items: Iterable[tuple[int, Doc]], query: Mapping[str, str], filters: odata.FilterSpec, *, selectable: bool = True
) -> tuple[list[Doc], str | None]:
    """One page of a list of (sequence number, document): items after the skip token that match the filter."""
    predicate = odata.parse_filter(query.get("$filter"), filters)
    fields = odata.parse_select(query.get("$select")) if selectable else None
    limit = odata.max_results(query.get("maxresults"))
    skip_token = query.get("$skiptoken")
    after = 0
    if skip_token:
        try:
            after = int(skip_token)
        except ValueError:
            raise BatchApiError(
                400,
                "InvalidQueryParameterValue",
                "The $skiptoken is not valid.",
                {"QueryParameterName": "$skiptoken", "QueryParameterValue": skip_token},
            ) from None
    results: list[Doc] = []
    next_token: str | None = None
    last_seq = after
    for seq, doc in items:
        if seq <= after:
            continue
        # Filters only read documented (public) properties, so test before copying.
        if not predicate(doc):
            continue
        if len(results) == limit:
            next_token = str(last_seq)
            break
        results.append(copy.deepcopy(odata.project(doc, fields)) if fields is not None else public(doc))
        last_seq = seq
    return results, next_token


def page_of_docs(
    docs: Iterable[Doc], query: Mapping[str, str], filters: odata.FilterSpec, *, selectable: bool = True
) -> tuple[list[Doc], str | None]:
    """page() for documents built on the fly that carry their list position as "_seq" (files, images)."""

    def numbered() -> Iterable[tuple[int, Doc]]:
        for doc in docs:
            yield int(doc.get("_seq", 0)), {name: value for name, value in doc.items() if name != "_seq"}

    return page(numbered(), query, filters, selectable=selectable)
